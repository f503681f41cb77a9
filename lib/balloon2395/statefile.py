"""The running daemon's last cycle, as a small JSON file next to its lock (under /run), so
`status --watch` and `explain` can show what the daemon itself saw and decided.

Written atomically (a temp file renamed over it) after every cycle; removed on a clean
stop. A file whose writer is gone (killed) is recognised by its pid and ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

from .daemon import Cycle
from .lock import InstanceLock, alive
from .safefiles import write_atomic
from .status import row_dict


def path_for(lock: InstanceLock) -> str:
    return lock.pid_path[: -len(".pid")] + ".state.json"


def snapshot(uri: str, cycle: Cycle) -> Dict[str, Any]:
    rows = []
    for obs, decision in zip(cycle.observations, cycle.decisions):
        settings = cycle.settings[obs.name]
        row = row_dict(obs, settings, decision)
        row["outcome"] = cycle.outcomes.get(obs.name)  # what became of this cycle's change, if one was decided
        change = cycle.last_changes.get(obs.name)
        row["last_change"] = None if change is None else dataclasses.asdict(change)
        # explain's inputs: every figure the rule read, and what the daemon remembers
        row["explain"] = {"stats": dataclasses.asdict(obs.stats), "settings": dataclasses.asdict(settings),
                          "history": dataclasses.asdict(decision.history),
                          "stats_since": obs.stats_since}
        rows.append(row)
    host = None if cycle.host is None else dataclasses.asdict(cycle.host)
    return {"uri": uri, "pid": os.getpid(), "at": cycle.at, "duration_s": cycle.duration_s,
            "host": host, "domains": rows}


def write(path: str, uri: str, cycle: Cycle) -> None:
    write_atomic(path, json.dumps(snapshot(uri, cycle), ensure_ascii=False).encode("utf-8"), 0o644)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read(path: str) -> Optional[Dict[str, Any]]:
    """The last cycle of a daemon that still runs, else None."""
    try:
        # nothing but the file the daemon wrote: no symlink followed, no FIFO waited on
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as handle:
            state = json.load(handle)
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no file (a torn one cannot exist: rename)
    return state if alive(pid) else None  # else its writer is gone

