"""`status`: what every running domain looks like and what the next cycle would do, as a table or JSON."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..decide.eligibility import cap_kib
from ..decide.records import Decision
from ..observation import Observation
from ..quoted import escaped, json_escaped
from ..settings import DomainSettings
from ..units import mib

COLUMNS = ("DOMAIN", "ACTUAL_MiB", "USABLE_MiB", "USABLE%", "BAND", "FLOOR_MiB", "MAX_MiB", "BALLOON", "NEXT", "WHY")
FEATURES = (("autodeflate", "autodeflate"), ("fpr", "free_page_reporting"))  # (as the table shows it, row key)


def _mib_text(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


def row_dict(obs: Observation, settings: DomainSettings, decision: Decision) -> Dict[str, Any]:
    s, facts = obs.stats, obs.facts
    pct = None if s.usable_kib is None or not s.actual_kib else s.usable_kib * 100 // s.actual_kib
    cap = cap_kib(s, settings)
    return {
        "domain": s.name,
        "actual_mib": None if s.actual_kib is None else mib(s.actual_kib),
        "usable_mib": None if s.usable_kib is None else mib(s.usable_kib),
        "usable_pct": pct,
        "band_pct": [settings.minimal, settings.maximal],
        "floor_mib": mib(settings.floor_kib),
        "maximum_mib": None if cap is None else mib(cap),
        # the balloon device and its features; None: the domain XML could not be read
        "balloon": None if facts is None else facts.balloon_model or "absent",
        "autodeflate": None if facts is None else facts.autodeflate,
        "free_page_reporting": None if facts is None else facts.free_page_reporting,
        "last_update": s.last_update,
        "next": decision.action,
        "target_mib": None if decision.target_kib is None else mib(decision.target_kib),
        "code": decision.code,
        "why": decision.reason,
    }


def balloon_cell(d: Dict[str, Any]) -> str:
    """`virtio,autodeflate,fpr`: the device model and the features it has on; `-` when not known."""
    if d["balloon"] is None:
        return "-"
    return ",".join([d["balloon"], *(flag for flag, key in FEATURES if d[key])])


def render_json(rows: Sequence[Dict[str, Any]]) -> str:
    """`rows`: row_dict()s (explain's inputs, when present, are left to `explain`); with a daemon
    running, "last" is its last decision and what became of it (applied, failed, ...)."""
    return json_escaped(  # a name's controls and bidi characters as \u escapes: the same JSON, inert on a terminal
        json.dumps([{k: v for k, v in d.items() if k != "explain"} for d in rows], indent=2, ensure_ascii=False))


def render_table(rows: Sequence[Dict[str, Any]]) -> str:
    if not rows:
        return "no running domains"
    with_last = any("last" in d for d in rows)  # a daemon runs: its last decision and its outcome
    columns = COLUMNS[:-2] + ("LAST",) * with_last + COLUMNS[-2:]
    lines: List[Tuple[str, ...]] = [columns]
    for d in rows:
        next_action = d["next"] + (f" -> {d['target_mib']}" if d["target_mib"] is not None else "")
        low, high = d["band_pct"]
        lines.append(tuple(escaped(cell) for cell in (  # names, reasons, outcomes: one row each, whatever they hold
            d["domain"], _mib_text(d["actual_mib"]), _mib_text(d["usable_mib"]),
            "-" if d["usable_pct"] is None else f"{d['usable_pct']}%",
            f"{low:g}-{high:g}%", str(d["floor_mib"]), _mib_text(d["maximum_mib"]), balloon_cell(d),
            *((d.get("last", "-"),) if with_last else ()), next_action, d["why"],
        )))
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
        for line in lines
    )
