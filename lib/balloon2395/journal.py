"""When each domain was last changed, on disk next to the instance lock, written before every setmem.

A daemon killed in the middle of a cycle (SIGKILL, OOM killer, a crash) and
started again knows nothing of the changes it made; the guests' figures can
still be those its predecessor acted on, and it would act on them again. The
new instance reads this file (domains by uuid) and waits, like its predecessor would have, for
figures newer than each change. Entries older than the staleness limit are
dropped: figures that old are not acted on anyway.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional

from . import PROG
from .safefiles import write_atomic

log = logging.getLogger(PROG)


def path_for(lock_path: str) -> str:
    return lock_path[: -len(".lock")] + ".changes.json"


class ChangeJournal:
    def __init__(self, path: str) -> None:
        self.path = path
        self._failed: Optional[str] = None  # the last write error, said once

    def load(self, now: float, keep_s: float) -> Dict[str, float]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        # a stamp that is no wall time (true, "noon", a number of hundreds of digits) is no change of ours
        return {name: float(at) for name, at in data.items()
                if isinstance(name, str) and _stamp(at) and 0 <= now - at <= keep_s}

    def save(self, changed_at: Dict[str, float]) -> None:
        """Atomically (a temp file renamed over it), never through a symlink."""
        try:
            write_atomic(self.path, json.dumps(changed_at).encode("utf-8"), 0o600)
            self._failed = None
        except OSError as exc:
            if self._failed != exc.strerror:  # a restart could then repeat a change: say so, once
                self._failed = exc.strerror
                log.warning("cannot write %s: %s", self.path, exc.strerror)


def _stamp(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2 ** 53
