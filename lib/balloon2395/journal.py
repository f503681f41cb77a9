"""When each domain was last changed, on disk next to the instance lock, written before every setmem.

A daemon killed in the middle of a cycle (SIGKILL, OOM killer, a crash) and
started again knows nothing of the changes it made; the guests' figures can
still be those its predecessor acted on, and it would act on them again. The
new instance reads this file (domains by uuid) and waits, like its predecessor would have, for
figures newer than each change. Entries older than the staleness limit are
dropped: figures that old are not acted on anyway.

It also keeps, per domain (by uuid, with the domain id of that run), the size the daemon found it at
and the largest a report showed since (`idle_shrink: needed`): a new instance that took the size
then for what doing nothing would have left a guest it had shrunk would never give it back. A
domain started again since (another id) is a new run: its sizes are not used.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, NamedTuple, Optional

from . import PROG
from .safefiles import write_atomic

log = logging.getLogger(PROG)


class Sizes(NamedTuple):
    """A domain's run, and the sizes the daemon remembers of it."""

    domain_id: int
    found_kib: int
    peak_kib: int


def path_for(lock_path: str) -> str:
    return lock_path[: -len(".lock")] + ".changes.json"


class ChangeJournal:
    def __init__(self, path: str) -> None:
        self.path = path
        self._failed: Optional[str] = None  # the last write error, said once

    def load(self, now: float, keep_s: float) -> Dict[str, float]:
        """When each domain was last changed, within keep_s of now."""
        data = self._read().get("changed")
        if not isinstance(data, dict):
            return {}
        # a stamp that is no wall time (true, "noon", a number of hundreds of digits) is no change of ours
        return {name: float(at) for name, at in data.items()
                if isinstance(name, str) and _stamp(at) and 0 <= now - at <= keep_s}

    def load_sizes(self) -> Dict[str, Sizes]:
        """The sizes remembered of each domain's run; an entry that is not three whole sizes is dropped."""
        data = self._read().get("sizes")
        if not isinstance(data, dict):
            return {}
        return {uuid: Sizes(*entry) for uuid, entry in data.items()
                if isinstance(uuid, str) and isinstance(entry, list) and len(entry) == 3
                and all(_whole(v) for v in entry) and entry[1] <= entry[2]}

    def _read(self) -> Dict[str, Any]:
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
        # the format before the sizes: the stamps alone
        return data if isinstance(data.get("changed"), dict) else {"changed": data}

    def save(self, changed_at: Dict[str, float], sizes: Optional[Dict[str, Sizes]] = None) -> None:
        """Atomically (a temp file renamed over it), never through a symlink."""
        data = {"changed": changed_at, "sizes": {uuid: list(entry) for uuid, entry in (sizes or {}).items()}}
        try:
            write_atomic(self.path, json.dumps(data).encode("utf-8"), 0o600)
            self._failed = None
        except OSError as exc:
            if self._failed != exc.strerror:  # a restart could then repeat a change: say so, once
                self._failed = exc.strerror
                log.warning("cannot write %s: %s", self.path, exc.strerror)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 53


def _stamp(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2 ** 53
