"""Logs an operator can grep: one line per change, skips explained once; stderr (under systemd, the
journal, with fields) or a rotated file."""

from __future__ import annotations

import logging
import os
import shlex
import stat
import sys
from typing import IO, Dict, Optional

from .. import PROG
from ..decide.eligibility import cap_kib
from ..decide.records import Decision
from ..observation import Observation
from ..quoted import Lines
from ..safefiles import RotatingLogFile
from ..settings import DomainSettings
from ..units import mib_text
from . import journald, style as logstyle

log = logging.getLogger(PROG)

LOG_FILE = "balloon-2395.log"
ROTATE_BYTES = 10 * 1024 * 1024
ROTATE_KEEP = 5


def setup(logdir: Optional[str], debug: bool, stream=None, fmt: str = "text", per_uri: bool = False,
          journal_socket: str = journald.SOCKET) -> None:
    """Replace any earlier handler: setup may run again after a config reload."""
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    if logdir:
        os.makedirs(logdir, mode=0o750, exist_ok=True)
        handler: logging.Handler = RotatingLogFile(
            os.path.join(logdir, LOG_FILE), maxBytes=ROTATE_BYTES, backupCount=ROTATE_KEEP, encoding="utf-8")
        handler.setFormatter(logstyle.formatter(fmt, False, per_uri))
    else:
        handler = _to_stream(stream or sys.stderr, fmt, per_uri, journal_socket)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def _to_stream(out: IO, fmt: str, per_uri: bool, journal_socket: str) -> logging.Handler:
    """The journal's own stream is a socket (systemd connects one): its records go by the native protocol,
    with fields. A file JOURNAL_STREAM names (a redirection, a test) keeps the journal's lines."""
    lines = logstyle.formatter(fmt, logstyle.to_journal(out), per_uri)
    if isinstance(lines, logstyle.JournalFormatter) and stat.S_ISSOCK(os.fstat(out.fileno()).st_mode):
        return journald.JournalHandler(out, lines, journal_socket)
    handler = logging.StreamHandler(out)
    handler.setFormatter(lines)
    return handler


def about(event: str, domain: Optional[str] = None, code: Optional[str] = None) -> Dict[str, str]:
    """A log call's `extra=`: the kind of event its line tells (a key of journald.MESSAGE_IDS), the domain
    it concerns and the decision's code. The journal gets them as fields; the lines stay as they are."""
    fields = {"event": event}
    if domain is not None:
        fields["domain"] = domain
    if code is not None:
        fields["code"] = code
    return fields


def change_line(decision: Decision) -> str:
    """`grow web1 2048 -> 2148 MiB: usable 18% < 25%`"""
    return f"{decision.action} {decision.name} {change_sizes(decision)} MiB: {decision.reason}"


def change_sizes(decision: Decision) -> str:
    """`2048 -> 2148`: from and to, in MiB (`-` for one a decision has not)."""
    return " -> ".join(mib_text(kib, unit=False) for kib in (decision.actual_kib, decision.target_kib))


def autodeflate_note(name: str, uuid: str, uri: Optional[str]) -> str:
    """Said once per domain lifetime of a guest the daemon may shrink whose balloon has no autodeflate,
    with a command safe to paste: the name shell-quoted after `--` (a leading dash is no option);
    a name with a newline or another control character, which no quoting keeps on one line, by its uuid.
    virt-xml looks a domain up by name first, so a name that looks like an id is still that domain."""
    command = ["virt-xml", *(("--connect", uri) if uri else ()), "--edit", "--memballoon", "autodeflate=on",
               "--", name if name.isprintable() else uuid]
    shown = name if name.isprintable() else repr(name)
    return (f"note {shown}: no autodeflate: out of memory after a shrink, the guest kills a process instead of "
            f"taking memory back from its balloon; turn it on (from the guest's next start) with: "
            f"{shlex.join(command)}")


def debug_block(obs: Observation, settings: DomainSettings, decision: Decision, now: float) -> str:
    """The original's per-domain debug block, with what it never showed: age, cap, reason."""
    s = obs.stats

    pct = "-" if s.usable_kib is None or not s.actual_kib else f"{s.usable_kib * 100 // s.actual_kib}%"
    age = "-" if s.last_update is None else f"{now - s.last_update:.1f}s"
    target = f" -> {mib_text(decision.target_kib)}" if decision.target_kib is not None else ""
    return Lines.of([  # each line escaped (a name, a reason), its line breaks kept by the log formatter
        f"----- {s.name} -----",
        f"  actual   {mib_text(s.actual_kib)}   usable {mib_text(s.usable_kib)} ({pct})   stats age {age}",
        f"  band     {settings.minimal:g}-{settings.maximal:g}%   floor {mib_text(settings.floor_kib)}   "
        f"maximum {mib_text(cap_kib(s, settings))}",
        f"  decision {decision.action}{target}: {decision.reason}",
    ])
