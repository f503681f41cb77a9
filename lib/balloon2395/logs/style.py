"""How log lines look: timestamped text for a terminal or file, bare lines with sd-daemon
priority prefixes for the journal (it stamps them itself; journald.py sends the same text as a
record's MESSAGE), or JSON for log shippers."""

from __future__ import annotations

import copy
import json
import logging
import os
import traceback
from typing import IO, Any, Dict, Mapping, Optional

from ..quoted import Lines, escaped

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

# syslog priorities (sd-daemon(3)): what journalctl -p filters on
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def priority(record: logging.LogRecord) -> int:
    return _PRIORITY.get(record.levelno, 6)


def to_journal(stream: IO, env: Optional[Mapping[str, str]] = None) -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it connected to the journal;
    a match means this very stream goes there (not merely that we run under systemd)."""
    env = os.environ if env is None else env
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return env.get("JOURNAL_STREAM", "") == f"{info.st_dev}:{info.st_ino}"


def _safe_arg(value: Any) -> Any:
    """A log argument as it may be printed: a number as it is (for %d, %g), a Lines block as made (its
    lines already escaped), anything else, a name, virsh's stderr, an exception, as escaped text."""
    if isinstance(value, (int, float, Lines)):
        return value
    return escaped(str(value))


def safe_message(record: logging.LogRecord) -> str:
    """The record's message with every control and format character of its template and its arguments
    escaped (quoted.escaped): whatever a name holds, a record is one line (but for a Lines argument's own
    line breaks), so no domain name, virsh message or metadata can forge a log or journal line."""
    template = escaped(str(record.msg))
    if not record.args:
        return template
    args = record.args
    safe = ({key: _safe_arg(value) for key, value in args.items()} if isinstance(args, Mapping)
            else tuple(_safe_arg(value) for value in args))
    try:
        return template % safe
    except (TypeError, ValueError):  # a template not for its arguments: what logging itself would say
        return escaped(record.getMessage())


def exception_text(exc_info: Any) -> str:
    """A traceback whose exception messages (and notes) are escaped: its frames are code, its messages
    may quote a name or virsh's stderr, which must not add a line that looks like a log line."""
    error = traceback.TracebackException(*exc_info[:3])
    pending, seen = [error], set()
    while pending:
        one = pending.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        text = getattr(one, "_str", None)  # the message format_exception_only() prints (3.9 to 3.13)
        if not isinstance(text, str):  # a Python that keeps it elsewhere: the whole traceback as one line
            return escaped("".join(traceback.format_exception(*exc_info[:3])).rstrip("\n"))
        setattr(one, "_str", escaped(text))  # noqa: B010 (a private attribute: mypy knows it not)
        notes = getattr(one, "__notes__", None)
        if isinstance(notes, list):
            setattr(one, "__notes__", [escaped(str(note)) for note in notes])  # noqa: B010 (3.11+ only)
        pending.extend(e for e in (one.__cause__, one.__context__, *(getattr(one, "exceptions", None) or ()))
                       if e is not None)
    return "".join(error.format()).rstrip("\n")


class _Formatter(logging.Formatter):
    """`per_uri`: one process serves several connections (service.py runs each in a thread
    named for its URI), so each line a connection's thread logs names it. Every record is formatted
    from a copy whose message is safe_message() and whose traceback is exception_text(): no call site
    can forget to escape, and other handlers (pytest's caplog) still see the record as logged."""

    def __init__(self, fmt: str, per_uri: bool) -> None:
        super().__init__(fmt, TIME_FORMAT)
        self.per_uri = per_uri

    def where(self, record: logging.LogRecord) -> str:
        """`[URI] ` before a line a connection's thread logs, else nothing."""
        return f"[{record.threadName}] " if self.per_uri and record.threadName != "MainThread" else ""

    def format(self, record: logging.LogRecord) -> str:
        safe = copy.copy(record)
        safe.msg, safe.args = safe_message(record), None
        safe.where = escaped(self.where(record))
        if safe.exc_info:
            safe.exc_text = None  # formatted here, escaped, whatever another formatter cached
        return self.render(safe)

    def render(self, record: logging.LogRecord) -> str:
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        return exception_text(ei)


class JournalFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record)}>"
        # every line of a multi-line record (the debug block, a traceback) keeps its priority
        return "\n".join(prefix + line for line in self.message(record).split("\n"))

    def message(self, record: logging.LogRecord) -> str:
        """The record's text without priority prefixes: the journal's MESSAGE, line breaks and all."""
        return super().format(record)


class JsonFormatter(_Formatter):
    def render(self, record: logging.LogRecord) -> str:
        super().render(record)  # sets the exception text
        entry: Dict[str, Optional[str]] = {"time": self.formatTime(record, TIME_FORMAT), "level": record.levelname,
                                           "message": record.getMessage()}
        if self.where(record):
            entry["uri"] = escaped(str(record.threadName))
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def formatter(fmt: str, journal: bool, per_uri: bool = False) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter("%(message)s", per_uri)
    if journal:
        return JournalFormatter("%(where)s%(message)s", per_uri)
    return _Formatter("%(asctime)s %(levelname)s %(where)s%(message)s", per_uri)
