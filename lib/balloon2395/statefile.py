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
from .lock import InstanceLock
from .status import row_dict


def path_for(lock: InstanceLock) -> str:
    return lock.pid_path[: -len(".pid")] + ".state.json"


def snapshot(uri: str, cycle: Cycle) -> Dict[str, Any]:
    rows = []
    for obs, decision in zip(cycle.observations, cycle.decisions):
        settings = cycle.settings[obs.name]
        row = row_dict(obs, settings, decision)
        # explain's inputs: every figure the rule read, and what the daemon remembers
        row["explain"] = {"stats": dataclasses.asdict(obs.stats), "settings": dataclasses.asdict(settings),
                          "history": dataclasses.asdict(decision.history),
                          "stats_since": obs.stats_since}
        rows.append(row)
    host = None if cycle.host is None else dataclasses.asdict(cycle.host)
    return {"uri": uri, "pid": os.getpid(), "at": cycle.at, "duration_s": cycle.duration_s,
            "host": host, "domains": rows}


def write(path: str, uri: str, cycle: Cycle) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(snapshot(uri, cycle), handle, ensure_ascii=False)
    os.replace(tmp, path)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read(path: str) -> Optional[Dict[str, Any]]:
    """The last cycle of a daemon that still runs, else None."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        _alive(int(state["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no file (a torn one cannot exist: rename), or its writer is gone
    return state


def _alive(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, and someone else's (root's daemon, read by a user)
