"""`status` (once, or `--watch`: a live table like virt-top's, sorted by pressure) and
`explain DOMAIN`: the inputs and the rule behind a domain's last and next decision.

A running daemon leaves its last cycle in a state file (statefile.py); the views
show that, and what a cycle would do now. Without a daemon they read the
domains themselves (changing nothing) and say so.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Set

from .. import PROG, config as cfg
from ..daemon import Cycle, Daemon
from ..decide.history import History
from ..lock import InstanceLock, LockError, default_dir
from ..quoted import escaped
from ..units import mib_text
from ..virsh.commands import VirshError, default_uri
from ..virsh.session import open_virsh
from . import statefile
from .status import render_json, render_table

NO_DAEMON = "no daemon running: showing what a cycle would do now"


@dataclass(frozen=True)
class View:
    uri: str
    daemon: Optional[Dict[str, Any]]  # the running daemon's last cycle (statefile.snapshot), if any
    now: Dict[str, Any]  # what a cycle would do now, with the daemon's memory of each domain

    def header(self) -> str:
        if self.daemon is None:
            return escaped(f"{self.uri}: {NO_DAEMON}")
        at = clock(self.daemon["at"])
        return escaped(f"{self.uri}: daemon pid {self.daemon['pid']}, last cycle at {at}; "
                       "NEXT is what a cycle would do now")


def daemon_state(config: cfg.Config, uri: str) -> Optional[Dict[str, Any]]:
    try:
        directory = config.connection.lock_dir or default_dir()
    except LockError:
        return None
    try:
        return statefile.read(statefile.path_for(InstanceLock(uri, directory)))
    except statefile.StateError as exc:  # one line, once (not every redraw of --watch); then as without one
        if str(exc) not in _SAID:
            _SAID.add(str(exc))
            print(escaped(f"{PROG}: ignoring {exc}"), file=sys.stderr)
        return None


_SAID: Set[str] = set()


def clock(at: float) -> str:
    """`HH:MM:SS` of a wall time, or the number itself when no clock shows it."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(at))
    except (OverflowError, ValueError, OSError):
        return f"{at:.0f}"


def read_now(config: cfg.Config, uri: str, histories: Dict[str, History]) -> Cycle:
    """One read of the domains and the decisions a cycle would make: the daemon's own read-and-decide,
    as a dry run (no setmem, no stats period switched on); changes nothing."""
    config = replace(config.for_uri(uri), dry_run=True)
    virsh = open_virsh(config)
    try:
        return Daemon(config, virsh).read_and_decide(histories)
    finally:
        virsh.close()


def view(config: cfg.Config, uri: str) -> View:
    """Raises VirshError when the domains cannot be read."""
    state = daemon_state(config, uri)
    histories = {} if state is None else statefile.histories(state)  # read() checked it: of the types History has
    now = statefile.snapshot(uri, read_now(config, uri, histories))
    if state is not None:
        last = {d["domain"]: d for d in state["domains"]}
        for row in now["domains"]:
            row["last"] = last_decision(last.get(row["domain"]))
    return View(uri, state, now)


def last_decision(row: Optional[Dict[str, Any]]) -> str:
    """The daemon's latest change of a domain and what became of it, or "-" when it made none."""
    change = None if row is None else row.get("last_change")
    if not change:
        return "-"
    at = clock(change["at"])
    sizes = "->".join(mib_text(change[key], unit=False) for key in ("from_kib", "target_kib"))
    return (f"{change['action']} {sizes} "
            f"{change['outcome']} {at}")


def pressure_order(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Most pressed first: the lowest usable %; domains without a figure last."""
    return sorted(rows, key=lambda d: (d["usable_pct"] is None, d["usable_pct"] or 0, d["domain"]))


def status(config: cfg.Config, as_json: bool, watch: bool, refresh_s: float, count: Optional[int]) -> int:
    """The table (or JSON) once; with `watch`, redrawn every `refresh_s` until `count` or Ctrl-C, the
    way out of it (exit 0). Ctrl-C in a one-shot view reaches the command line (exit 130)."""
    if not watch:
        return _show(config, as_json, watch=False)
    shown = 0
    try:
        while count is None or shown < count:
            if shown:
                time.sleep(refresh_s)
                if not sys.stdout.isatty():
                    print()
            failed = _show(config, as_json, watch=True)
            if failed:
                return failed
            shown += 1
    except KeyboardInterrupt:
        pass
    return 0


def _show(config: cfg.Config, as_json: bool, watch: bool) -> int:
    uris = config.connection.uris or (default_uri(),)
    try:
        views = [view(config, uri) for uri in uris]
    except VirshError as exc:
        print(f"{PROG}: cannot read running domains: {escaped(exc.message)}", file=sys.stderr)
        return 1
    rows = {v.uri: pressure_order(v.now["domains"]) if watch else v.now["domains"] for v in views}
    if as_json:
        text = render_json([dict(d, uri=uri) for uri, r in rows.items() for d in r]) \
            if len(uris) > 1 else render_json(rows[uris[0]])
    else:
        headed = watch or len(views) > 1  # a plain one-host `status` stays a bare table
        text = "\n\n".join((v.header() + "\n" if headed else "") + render_table(rows[v.uri]) for v in views)
    if watch and sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J")  # redraw in place, as top does
    print(text, flush=True)
    return 0


def explain(config: cfg.Config, name: str) -> int:
    uris = config.connection.uris or (default_uri(),)
    for uri in uris:
        try:
            v = view(config, uri)
        except VirshError as exc:
            print(escaped(f"{PROG}: {uri}: cannot read running domains: {exc.message}"), file=sys.stderr)
            return 1
        now = _named(v.now["domains"], name)
        if now is not None:
            last = None if v.daemon is None else next(
                (d for d in v.daemon["domains"] if d["domain"] == now["domain"]), None)
            print(render_explain(config, v, now, last))
            return 0
    print(escaped(f"{PROG}: {name}: not a running domain on {', '.join(uris)}"), file=sys.stderr)
    return 1


def _named(rows: List[Dict[str, Any]], name: str) -> Optional[Dict[str, Any]]:
    """The row of the domain `name`, or else of the one whose name the views show as `name` (escaped): an
    operator can paste what `status` showed."""
    return next((d for d in rows if d["domain"] == name), None) or next(
        (d for d in rows if escaped(d["domain"]) == name), None)


def render_explain(config: cfg.Config, v: View, now: Dict[str, Any], last: Optional[Dict[str, Any]]) -> str:
    inputs = now["explain"]
    stats, settings, history = inputs["stats"], inputs["settings"], inputs["history"]
    age = "-" if stats["last_update"] is None else f"{v.now['at'] - stats['last_update']:.1f}s"
    pct = "-" if now["usable_pct"] is None else f"{now['usable_pct']}%"
    host = v.now["host"]
    lines = [
        f"{now['domain']} on {v.uri} ({config.policy} policy)",
        "inputs:",
        f"  actual {mib_text(stats['actual_kib'])}, usable {mib_text(stats['usable_kib'])} ({pct}), "
        f"maximum {mib_text(stats['maximum_kib'])}, stats age {age}",
        f"  swap_in {mib_text(stats['swap_in_kib'])}, swap_out {mib_text(stats['swap_out_kib'])}, "
        f"major faults {stats['major_fault'] if stats['major_fault'] is not None else '-'}",
        f"  band {settings['minimal']:g}-{settings['maximal']:g}%, floor {mib_text(settings['floor_kib'])}, "
        f"cap {'-' if now['maximum_mib'] is None else str(now['maximum_mib']) + ' MiB'}, "
        f"headroom {mib_text(settings['headroom_kib'])}, "
        f"max shrink {mib_text(settings['max_shrink_kib'])}, shares {settings['shares']}"
        + (", excluded" if settings["exclude"] else ""),
        "  " + _balloon(now),
        "  host: " + ("not watched" if host is None else
                      f"available {mib_text(host['available_kib'])}, reserve {mib_text(host['reserve_kib'])}"
                      + (", PSI pressure" if host["pressure"] else "")),
        "  remembered: " + _history(history),
    ]
    daemon = v.daemon
    if daemon is None or last is None:
        lines.append("last decision: " + (NO_DAEMON if daemon is None else "none yet (new to the daemon)"))
    else:
        at = clock(daemon["at"])
        outcome = last.get("outcome")
        lines.append(f"last decision ({at}, daemon pid {daemon['pid']}): {_decision(last)}"
                     + (f"; outcome: {outcome}" if outcome else ""))
        lines.append(f"last change: {last_decision(last)}")
    lines.append(f"next decision (a cycle now): {_decision(now)}")
    return "\n".join(escaped(line) for line in lines)  # whatever a name or a reason holds: these lines


def _balloon(d: Dict[str, Any]) -> str:
    """`balloon: virtio, autodeflate on, free page reporting off`"""
    if d["balloon"] is None:
        return "balloon: not known (its domain XML could not be read)"
    return (f"balloon: {d['balloon']}, autodeflate {_on_off(d['autodeflate'])}, "
            f"free page reporting {_on_off(d['free_page_reporting'])}")


def _on_off(on: bool) -> str:
    return "on" if on else "off"


def _decision(d: Dict[str, Any]) -> str:
    target = f" -> {d['target_mib']} MiB" if d["target_mib"] is not None else ""
    return f"{d['next']}{target} [rule {d['code']}]: {d['why']}"


def _history(h: Dict[str, Any]) -> str:
    parts = []
    if h["changed_at"] is not None:
        parts.append(f"setmem {mib_text(h['from_kib'])} -> {mib_text(h['target_kib'])} at "
                     f"{clock(h['changed_at'])}, waiting for fresh stats")
    if h["unresponsive"]:
        parts.append("a setmem had no effect: left alone")
    if h["burst_kib"]:
        parts.append(f"recent burst {mib_text(int(h['burst_kib']))}")
    if h["paged_at"] is not None:
        parts.append(f"paged at {clock(h['paged_at'])}")
    return "; ".join(parts) or "nothing (no change pending, no burst, no paging)"
