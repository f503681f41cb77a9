"""The running daemon's last cycle, as a small JSON file next to its lock (under /run), so
`status --watch` and `explain` can show what the daemon itself saw and decided.

Written atomically (a temp file renamed over it) after every cycle; removed on a clean
stop. A file whose writer is gone (killed) is recognised by its pid and ignored.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat
from typing import Any, Callable, Dict, Optional, Tuple

from ..daemon import Cycle
from ..decide.history import History
from ..lock import InstanceLock, alive
from ..quoted import shortened, shown
from ..safefiles import kind, write_atomic
from .status import row_dict

MAX_BYTES = 16 * 1024 * 1024  # some 8000 domains; a state file larger than that is no daemon's
_PID_MAX = 1 << 22  # the kernel's highest pid_max
_LIMIT = 1 << 64  # no figure of the daemon's is larger (virsh's unsigned long long)


class StateError(ValueError):
    """A state file that is there but no daemon's last cycle: the message says why, in one line."""


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
    """The last cycle of a daemon that still runs, else None (no file, or its writer is gone). Raises
    StateError for a file that is not one: not a regular file of root's, ours or the lock directory's
    owner's (a symlink, a FIFO, another user's), not UTF-8 JSON, or not the shape the views read (a list
    where a number belongs, a number beyond any figure, a key missing): what `histories` and the views
    take from it is checked here, at the one place it comes in."""
    state = _load(path)
    if state is _MISSING:
        return None
    pid = state.get("pid") if isinstance(state, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < _PID_MAX:
        raise StateError(f"{path}: no daemon's state file (pid {shown(pid)})")
    if not alive(pid):
        return None  # its writer is gone (a torn file cannot exist: rename)
    try:
        _check_state(state)
    except _Bad as exc:
        raise StateError(f"{path}: {exc}") from None
    return state


def histories(state: Dict[str, Any]) -> Dict[str, History]:
    """What the daemon remembers of each domain, as History: every field of the type it has (a JSON list
    where a tuple belongs made a tuple), a field this version does not know left out, a missing one at its
    default. `state` is one read() returned."""
    return {row["domain"]: _history(row["explain"]["history"], f"domains[{i}].explain.history")
            for i, row in enumerate(state["domains"])}


def _load(path: str) -> Any:
    try:
        # nothing but the file the daemon wrote: no symlink followed, no FIFO waited on
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        why = "a symlink, not the file a daemon writes" if exc.errno == errno.ELOOP else exc.strerror
        raise StateError(f"{path}: {why}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path}: {kind(info.st_mode)}, not the file a daemon writes")
        owners = {0, os.geteuid(), _owner(os.path.dirname(os.path.abspath(path)))}
        if info.st_uid not in owners:
            raise StateError(f"{path}: belongs to uid {info.st_uid}, neither root, you nor its directory's owner")
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise StateError(f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB, no daemon's state file")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise StateError(f"{path}: not UTF-8, no daemon's state file") from None
    except ValueError as exc:  # also a number of more digits than Python converts
        raise StateError(f"{path}: not JSON: {shortened(str(exc), 80)}") from None


_MISSING = object()


def _owner(directory: str) -> int:
    try:
        return os.stat(directory).st_uid
    except OSError:
        return 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no figure")


class _Bad(Exception):
    """`where: what is wrong`, said by StateError with the file's path."""


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and not
            (isinstance(value, float) and not math.isfinite(value)) and abs(value) < _LIMIT)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_whole(value: Any) -> bool:
    return _whole(value) and abs(value) < _LIMIT


_KINDS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "number": (_is_number, "a number"), "whole": (_is_whole, "a whole number"), "text": (_is_text, "text"),
    "flag": (lambda value: isinstance(value, bool), "true or false"),
}
_ROW = {"domain": "text", "next": "text", "code": "text", "why": "text", "target_mib": "whole?", "outcome": "text?"}
_LAST_CHANGE = {"at": "number", "action": "text", "from_kib": "whole?", "target_kib": "whole?", "outcome": "text"}
_RECENT = "recent"  # History.recent: (actual, MemFree) pairs
# History's fields by their annotation (tests/test_watch_real_state.py checks that every field has one here)
HISTORY_KINDS = {"Optional[float]": "number?", "Optional[int]": "whole?", "bool": "flag", "float": "number",
                 "Tuple[Tuple[int, int], ...]": _RECENT}


def _checked(value: Any, kind_name: str, where: str) -> Any:
    if kind_name.endswith("?") and value is None:
        return None
    test, what = _KINDS[kind_name.rstrip("?")]
    if not test(value):
        raise _Bad(f"{where}: {shown(value)} is not {what}")
    return value


def _fields(data: Any, kinds: Dict[str, str], where: str) -> None:
    if not isinstance(data, dict):
        raise _Bad(f"{where}: {shown(data)} is not an object")
    for key, kind_name in kinds.items():
        if key not in data and not kind_name.endswith("?"):
            raise _Bad(f"{where}: no {key!r}")
        _checked(data.get(key), kind_name, f"{where}.{key}")


def _check_state(state: Dict[str, Any]) -> None:
    _checked(state.get("at"), "number", "at")
    rows = state.get("domains")
    if not isinstance(rows, list):
        raise _Bad(f"domains: {shown(rows)} is not a list")
    for i, row in enumerate(rows):
        where = f"domains[{i}]"
        _fields(row, _ROW, where)
        if row.get("last_change") is not None:
            _fields(row["last_change"], _LAST_CHANGE, f"{where}.last_change")
        inputs = row.get("explain")
        if not isinstance(inputs, dict):
            raise _Bad(f"{where}.explain: {shown(inputs)} is not an object")
        _history(inputs.get("history"), f"{where}.explain.history")


def _history(data: Any, where: str) -> History:
    if not isinstance(data, dict):
        raise _Bad(f"{where}: {shown(data)} is not an object")
    values: Dict[str, Any] = {}
    for field in dataclasses.fields(History):
        if field.name in data:
            kind_name, value = HISTORY_KINDS.get(str(field.type)), data[field.name]
            if kind_name is None:
                continue  # a field of a type not checked here keeps its default
            values[field.name] = (_pairs(value, f"{where}.{field.name}") if kind_name == _RECENT
                                  else _checked(value, kind_name, f"{where}.{field.name}"))
    return History(**values)


def _pairs(value: Any, where: str) -> Tuple[Tuple[int, int], ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(map(_is_whole, pair)) for pair in value):
        raise _Bad(f"{where}: {shown(value)} is not a list of [actual, MemFree] pairs")
    return tuple((pair[0], pair[1]) for pair in value)
