"""Scenarios: a host, its guests and each guest's workload as a trace, from a YAML file.

The format is described in examples/scenarios/README.md. Every mistake is
reported as one line naming the file and the key.
"""

from __future__ import annotations

import bisect
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import ConfigError, parse_reserve, read_file
from ..quoted import shortened, shown
from ..resources import scenario_dir
from ..units import parse_size_kib
from .model import MIB, GuestSpec, HostSpec, boot

SCENARIO_DIR = scenario_dir()
DEFAULT_SCENARIO = "demo"
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h)?\s*$")
_UNIT_S = {None: 1, "s": 1, "m": 60, "h": 3600}
_GUEST_KEYS = ("name", "current", "maximum", "touched", "swap", "base", "cache", "stats_period", "noise", "hot",
               "deflate_on_oom", "free_page_reporting", "repeat", "workload")
_HOST_KEYS = ("total", "own", "cache", "swap", "reserve", "accel", "workload")
ACCELS = ("kvm", "tcg")  # how QEMU runs the guests: hardware virtualisation, or software emulation
_STEP_KEYS = ("at", "anon", "cache", "over", "rate")
MAX_SECONDS = 366 * 86400  # a year of virtual time: any time beyond is a typo (or .inf)
MIN_REPEAT_S = 1.0  # the model moves in ticks of 0.1 s: a shorter period would only be ticks


class ScenarioError(Exception):
    """One line: file, key, problem."""


@dataclass(frozen=True)
class Ramp:
    """A level moving linearly, in whole MiB, from `from_kib` at `start_s` to `to_kib` at `end_s`, then staying."""

    start_s: float
    end_s: float
    from_kib: int
    to_kib: int


def _level(ramps: Sequence[Ramp], starts: Sequence[float], t: float) -> int:
    i = bisect.bisect_right(starts, t) - 1
    if i < 0:
        return 0
    r = ramps[i]
    if t >= r.end_s:
        return r.to_kib
    # in whole MiB: between two, a slow ramp leaves the guest, and so the simulator's work, alone
    return r.from_kib + int((r.to_kib - r.from_kib) * (t - r.start_s) / (r.end_s - r.start_s) / MIB) * MIB


def _steady_until(ramps: Sequence[Ramp], starts: Sequence[float], t: float) -> float:
    """Until when the level at `t` holds: `t` itself inside a ramp, else the next ramp's start."""
    i = bisect.bisect_right(starts, t) - 1
    if i >= 0 and t < ramps[i].end_s:
        return t
    return starts[i + 1] if i + 1 < len(starts) else math.inf


@dataclass(frozen=True)
class Trace:
    """What a guest's workload wants over time, on top of the guest's own services and boot cache."""

    anon: Tuple[Ramp, ...] = ()
    cache: Tuple[Ramp, ...] = ()
    repeat_s: Optional[float] = None
    # the ramps' start times, for bisect: derived, set once
    _anon_starts: Tuple[float, ...] = field(init=False, repr=False, compare=False)
    _cache_starts: Tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_anon_starts", tuple(r.start_s for r in self.anon))
        object.__setattr__(self, "_cache_starts", tuple(r.start_s for r in self.cache))

    def _local(self, t: float) -> float:
        return t % self.repeat_s if self.repeat_s else t

    def anon_kib(self, t: float) -> int:
        return _level(self.anon, self._anon_starts, self._local(t))

    def cache_kib(self, t: float) -> int:
        return _level(self.cache, self._cache_starts, self._local(t))

    def steady_until(self, t: float) -> float:
        """Until when anon_kib and cache_kib keep their values at `t` (`t` itself while one moves)."""
        local = self._local(t)
        until = min(_steady_until(self.anon, self._anon_starts, local),
                    _steady_until(self.cache, self._cache_starts, local), self.repeat_s or math.inf)
        return t - local + until

    def bursts(self, until_s: float) -> List[Tuple[float, float]]:
        """(start, end) of every rise in anonymous demand before `until_s`, repeats included."""
        rises = [(r.start_s, r.end_s) for r in self.anon if r.to_kib > r.from_kib]
        period = self.repeat_s or until_s
        out, offset = [], 0.0
        while offset < until_s:
            out += [(offset + a, offset + b) for a, b in rises if offset + a < until_s]
            offset += period
        return out


@dataclass(frozen=True)
class GuestPlan:
    spec: GuestSpec
    current_kib: int
    stats_period_s: int = 1  # 0: the guest reports no usable figure until one is set
    trace: Trace = Trace()
    noise_kib: int = 0
    hot: bool = True
    touched_kib: Optional[int] = None  # RSS at the start; None: all of current_kib

    @property
    def name(self) -> str:
        return self.spec.name

    def workload_kib(self, t: float, seed: int) -> int:
        """The trace plus this second's noise, the same for the same seed."""
        if not self.noise_kib:
            return self.trace.anon_kib(t)
        draw = zlib.crc32(f"{seed}/{self.name}/{int(t)}".encode()) / 2 ** 32
        return self.trace.anon_kib(t) + int(self.noise_kib * draw)

    def inputs(self, t: float, seed: int) -> Tuple[int, int, float]:
        """(workload_kib, the trace's page cache, until when both keep these values) at `t`."""
        until = self.trace.steady_until(t)
        if self.noise_kib:
            until = min(until, math.floor(t) + 1)
        return self.workload_kib(t, seed), self.trace.cache_kib(t), until


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    duration_s: float
    host: HostSpec
    guests: Tuple[GuestPlan, ...]
    # the host's own use beyond `own` over time (its `anon`): services that start, a leak, a backup
    host_workload: Trace = Trace()
    # the daemon's host_reserve on this host (None: the daemon's default)
    reserve: Optional[Tuple[str, float]] = None

    def host_own_kib(self, t: float) -> int:
        return self.host.own_kib + self.host_workload.anon_kib(t)


# ---------------------------------------------------------------- parsing

def _fail(where: str, problem: str) -> ScenarioError:
    return ScenarioError(f"{where}: {shortened(problem)}")


def _size(value: Any, where: str) -> int:
    try:
        return parse_size_kib(value)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None


def _signed_size(value: Any, where: str) -> Tuple[bool, int]:
    """(relative, KiB): '+300MiB' and '-300MiB' are changes, '300MiB' a level."""
    text = value.strip() if isinstance(value, str) else ""
    if text[:1] in ("+", "-"):
        return True, (-1 if text[0] == "-" else 1) * _size(text[1:], where)
    return False, _size(value, where)


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_SECONDS:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)] if match else math.nan
    if not 0 <= seconds <= MAX_SECONDS:  # nan, inf, a number of thousands of digits: all end here
        raise _fail(where, f"expected seconds such as 90, 90s, 10m or 2h (at most {MAX_SECONDS // 86400:g} days), "
                           f"got {shown(value)}")
    return seconds


def _rate(value: Any, where: str) -> float:
    if not isinstance(value, str) or not value.strip().endswith("/s"):
        raise _fail(where, f"expected a size per second such as 50MiB/s, got {shown(value)}")
    kib = _size(value.strip()[:-2], where)
    if kib <= 0:
        raise _fail(where, f"must be more than 0, got {shown(value)}")
    return float(kib)


def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _fail(f"{where}.{key}", f"expected true or false, got {shown(value)}")
    return value


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(where, f"expected a whole number from {lo} to {hi}, got {shown(value)}")
    return value


def _mapping(value: Any, where: str, keys: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in keys:
            raise _fail(f"{where}.{key}", f"unknown key (known: {', '.join(keys)})")
    return value


def _ramps(steps: List[Tuple[float, Any, Any, Optional[float], Optional[float]]], quantity: str,
           where: str) -> Tuple[Ramp, ...]:
    """Steps (at, raw value, its where, over, rate) of one quantity, in file order, as ramps."""
    ramps: List[Ramp] = []
    level = 0
    for at, raw, step_where, over, rate in steps:
        relative, kib = _signed_size(raw, f"{step_where}.{quantity}")
        to = level + kib if relative else kib
        if to < 0:
            raise _fail(f"{step_where}.{quantity}", f"takes {quantity} below zero ({to // MIB} MiB)")
        if rate is not None:
            over = abs(to - level) / rate
        end = at + (over or 0.0)
        if ramps and at < ramps[-1].end_s:
            raise _fail(f"{step_where}.at", f"starts at {at:g}s, before the {quantity} change before it ends "
                                            f"({ramps[-1].end_s:g}s)")
        ramps.append(Ramp(at, end, level, to))
        level = to
    return tuple(ramps)


def _trace(raw: Any, repeat_s: Optional[float], where: str) -> Trace:
    if raw is None:
        return Trace(repeat_s=repeat_s)
    if not isinstance(raw, list):
        raise _fail(where, f"expected a list of steps, got {type(raw).__name__}")
    by_quantity: Dict[str, list] = {"anon": [], "cache": []}
    last_at = 0.0
    for i, raw_step in enumerate(raw):
        step_where = f"{where}[{i}]"
        at, over, rate, values = _step(raw_step, step_where, last_at)
        last_at = at
        for quantity, value in values.items():
            by_quantity[quantity].append((at, value, step_where, over, rate))
    trace = Trace(_ramps(by_quantity["anon"], "anon", where), _ramps(by_quantity["cache"], "cache", where), repeat_s)
    ends = [r.end_s for r in trace.anon + trace.cache]
    if repeat_s is not None and ends and max(ends) > repeat_s:
        raise _fail(where, f"the steps run to {max(ends):g}s, past the repeat period ({repeat_s:g}s)")
    return trace


def _step(raw: Any, where: str, after_s: float) -> Tuple[float, Optional[float], Optional[float], Dict[str, Any]]:
    """One workload step, not before `after_s`: (at, over, rate, {quantity: its raw value})."""
    step = _mapping(raw, where, _STEP_KEYS)
    if "at" not in step:
        raise _fail(where, "needs 'at' (seconds from the start)")
    at = _seconds(step["at"], f"{where}.at")
    if at < after_s:
        raise _fail(f"{where}.at", f"steps must be in time order ({at:g}s after {after_s:g}s)")
    values = {q: step[q] for q in ("anon", "cache") if q in step}
    if not values:
        raise _fail(where, "needs 'anon' or 'cache'")
    if "over" in step and "rate" in step:
        raise _fail(where, "give 'over' or 'rate', not both")
    if "rate" in step and len(values) > 1:
        raise _fail(f"{where}.rate", "a rate applies to one of 'anon' or 'cache', not both")
    over = _seconds(step["over"], f"{where}.over") if "over" in step else None
    rate = _rate(step["rate"], f"{where}.rate") if "rate" in step else None
    return at, over, rate, values


def _guest(raw: Any, where: str, emulated: bool) -> GuestPlan:
    raw = _mapping(raw, where, _GUEST_KEYS)
    for key in ("name", "current", "maximum"):
        if key not in raw:
            raise _fail(where, f"needs '{key}'")
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise _fail(f"{where}.name", f"expected a non-empty string, got {shown(name)}")
    current, maximum = _size(raw["current"], f"{where}.current"), _size(raw["maximum"], f"{where}.maximum")
    if current > maximum:
        raise _fail(f"{where}.current", f"above maximum ({current // MIB} > {maximum // MIB} MiB)")
    optional = {"swap": "swap_kib", "base": "base_anon_kib", "cache": "boot_cache_kib"}
    spec = GuestSpec(name, maximum, **{field: _size(raw[key], f"{where}.{key}")
                                        for key, field in optional.items() if key in raw},
                     deflate_on_oom=_bool(raw, "deflate_on_oom", where, False),
                     free_page_reporting=_bool(raw, "free_page_reporting", where, False), emulated=emulated)
    touched = _touched(raw, spec, current, where)
    repeat = _seconds(raw["repeat"], f"{where}.repeat") if "repeat" in raw else None
    if repeat is not None and repeat < MIN_REPEAT_S:
        raise _fail(f"{where}.repeat", f"must be at least {MIN_REPEAT_S:g}s, got {shown(raw['repeat'])}")
    if repeat == 0:
        raise _fail(f"{where}.repeat", "must be more than 0")
    return GuestPlan(
        spec=spec, current_kib=current,
        stats_period_s=_int(raw.get("stats_period", 1), f"{where}.stats_period", 0, 3600),
        trace=_trace(raw.get("workload"), repeat, f"{where}.workload"),
        noise_kib=_size(raw.get("noise", 0), f"{where}.noise"), hot=_bool(raw, "hot", where, True),
        touched_kib=touched)


def _touched(raw: Mapping[str, Any], spec: GuestSpec, current_kib: int, where: str) -> Optional[int]:
    """The guest's RSS at the start (None: all of its size), once its size is known to hold the guest."""
    touched = _size(raw["touched"], f"{where}.touched") if "touched" in raw else None
    for key, kib in (("current", None), ("touched", touched)):
        try:
            boot(spec, current_kib, kib)
        except ValueError as exc:
            raise _fail(f"{where}.{key}", str(exc)) from None
    return touched


def _host(data: Mapping[str, Any]) -> Tuple[HostSpec, Trace, str, Optional[Tuple[str, float]]]:
    """The host's spec, its own workload, how QEMU runs its guests and the reserve the daemon keeps."""
    if "host" not in data:
        raise _fail("scenario", "needs 'host' (total, own)")
    host = _mapping(data["host"], "host", _HOST_KEYS)
    if "total" not in host:
        raise _fail("host", "needs 'total'")
    host_spec = HostSpec(_size(host["total"], "host.total"), _size(host.get("own", "1GiB"), "host.own"),
                         _size(host.get("cache", 0), "host.cache"), _size(host.get("swap", 0), "host.swap"))
    if host_spec.own_kib >= host_spec.total_kib:
        raise _fail("host.own", "must be below host.total")
    host_workload = _trace(host.get("workload"), None, "host.workload")
    if host_workload.cache:
        raise _fail("host.workload", "takes 'anon' steps only: the host's page cache is host.cache")
    accel = host.get("accel", "kvm")
    if accel not in ACCELS:
        raise _fail("host.accel", f"expected one of {', '.join(ACCELS)}, got {shown(accel)}")
    try:
        reserve = parse_reserve(host.get("reserve"))
    except ValueError as exc:
        raise _fail("host.reserve", str(exc)) from None
    return host_spec, host_workload, accel, reserve


def parse(data: Any, name: str, path: str) -> Scenario:
    """A Scenario from loaded YAML; errors start with `path`."""
    try:
        data = _mapping(data, "scenario", ("duration", "host", "guests"))
        host_spec, host_workload, accel, reserve = _host(data)
        guests = data.get("guests")
        if not isinstance(guests, list) or not guests:
            raise _fail("guests", "expected a non-empty list of guests")
        plans = tuple(_guest(g, f"guests[{i}]", accel == "tcg") for i, g in enumerate(guests))
        names = [p.name for p in plans]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise _fail(f"guests[{i}].name", f"{n!r} is used twice")
        duration = _seconds(data.get("duration", "1h"), "duration")
        if duration <= 0:
            raise _fail("duration", "must be more than 0")
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return Scenario(name, path, duration, host_spec, plans, host_workload, reserve)


def names() -> List[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def find(name_or_path: str) -> Path:
    """A scenario name from examples/scenarios/, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = SCENARIO_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and named.is_file():
        return named
    raise ScenarioError(f"{name_or_path}: no such scenario (known: {', '.join(names())}; "
                        "or give a path to a YAML file)")


def load(name_or_path: str) -> Scenario:
    path = find(name_or_path)
    try:
        data = read_file(str(path))
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    return parse(data, path.stem, str(path))
