"""How log lines look: timestamped text for a terminal or file, bare lines with sd-daemon
priority prefixes for the journal (it stamps them itself), or JSON for log shippers."""

from __future__ import annotations

import json
import logging
import os
from typing import IO, Dict, Mapping, Optional

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

# syslog priorities (sd-daemon(3)): what journalctl -p filters on
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def to_journal(stream: IO, env: Optional[Mapping[str, str]] = None) -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it connected to the journal;
    a match means this very stream goes there (not merely that we run under systemd)."""
    env = os.environ if env is None else env
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return env.get("JOURNAL_STREAM", "") == f"{info.st_dev}:{info.st_ino}"


class _Formatter(logging.Formatter):
    """`per_uri`: one process serves several connections (service.py runs each in a thread
    named for its URI), so each line a connection's thread logs names it."""

    def __init__(self, fmt: str, per_uri: bool) -> None:
        super().__init__(fmt, TIME_FORMAT)
        self.per_uri = per_uri

    def where(self, record: logging.LogRecord) -> str:
        """`[URI] ` before a line a connection's thread logs, else nothing."""
        return f"[{record.threadName}] " if self.per_uri and record.threadName != "MainThread" else ""

    def format(self, record: logging.LogRecord) -> str:
        record.where = self.where(record)
        return super().format(record)


class JournalFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        # every line of a multi-line record (the debug block, a traceback) keeps its priority
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        super().format(record)  # sets the exception text
        entry: Dict[str, Optional[str]] = {"time": self.formatTime(record, TIME_FORMAT), "level": record.levelname,
                                           "message": record.getMessage()}
        if self.where(record):
            entry["uri"] = record.threadName
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def formatter(fmt: str, journal: bool, per_uri: bool = False) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter("%(message)s", per_uri)
    if journal:
        return JournalFormatter("%(where)s%(message)s", per_uri)
    return _Formatter("%(asctime)s %(levelname)s %(where)s%(message)s", per_uri)
