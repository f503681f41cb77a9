"""`status`: what every running domain looks like and what the next cycle would do, as a table or JSON."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence, Tuple

from .config import DomainSettings
from .policy import Decision, Observation, cap_kib
from .units import mib

Row = Tuple[Observation, DomainSettings, Decision]
COLUMNS = ("DOMAIN", "ACTUAL_MiB", "USABLE_MiB", "USABLE%", "BAND", "FLOOR_MiB", "MAX_MiB", "NEXT", "WHY")


def _mib(kib) -> str:
    return "-" if kib is None else str(mib(kib))


def row_dict(obs: Observation, settings: DomainSettings, decision: Decision) -> Dict[str, Any]:
    s = obs.stats
    pct = None if s.usable_kib is None or not s.actual_kib else s.usable_kib * 100 // s.actual_kib
    return {
        "domain": s.name,
        "actual_mib": None if s.actual_kib is None else mib(s.actual_kib),
        "usable_mib": None if s.usable_kib is None else mib(s.usable_kib),
        "usable_pct": pct,
        "band_pct": [settings.minimal, settings.maximal],
        "floor_mib": mib(settings.critical_kib),
        "maximum_mib": None if cap_kib(s, settings) is None else mib(cap_kib(s, settings)),
        "last_update": s.last_update,
        "next": decision.action,
        "target_mib": None if decision.target_kib is None else mib(decision.target_kib),
        "code": decision.code,
        "why": decision.reason,
    }


def render_json(rows: Sequence[Row]) -> str:
    return json.dumps([row_dict(*row) for row in rows], indent=2, ensure_ascii=False)


def render_table(rows: Sequence[Row]) -> str:
    if not rows:
        return "no running domains"
    lines: List[Tuple[str, ...]] = [COLUMNS]
    for obs, settings, decision in rows:
        d = row_dict(obs, settings, decision)
        next_action = d["next"] + (f" -> {d['target_mib']}" if d["target_mib"] is not None else "")
        lines.append((
            d["domain"], _mib(obs.stats.actual_kib), _mib(obs.stats.usable_kib),
            "-" if d["usable_pct"] is None else f"{d['usable_pct']}%",
            f"{settings.minimal:g}-{settings.maximal:g}%", str(d["floor_mib"]),
            "-" if d["maximum_mib"] is None else str(d["maximum_mib"]), next_action, d["why"],
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
        for line in lines
    )
