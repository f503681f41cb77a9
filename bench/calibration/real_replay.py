"""A simulator scenario replayed on real Debian guests under the real daemon, in wall time (bench/real.py).

Each scenario guest becomes a Debian guest of its size (scaled down to what fits: sizing()); a driver
thread per guest turns its trace into agent calls once a second (Holder: anonymous memory as hogs of
at least STEP_MIB, the page cache as the first N MiB of the image's files; a guest named `redis*` holds
its anonymous memory as Redis data instead), and a sampler thread per guest reads dommemstat every
SAMPLE_S (actual, usable, page cache, swap-in, QEMU's RSS). guest_result() turns those samples into the
simulator's GuestResult, so bench/control.py's row() measures both alike. The noise of a trace is not
replayed; the guest's own services and boot cache are the Debian guest's, not the scenario's `base` and
`cache`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from balloon2395.settings import DomainSettings
from balloon2395.sim.run import STARVED_PCT, STARVED_SWAP_IN_KIB_S, GuestResult, RunResult, Sample
from balloon2395.sim.scenario import GuestPlan, Ramp, Scenario, Trace
from balloon2395_testkit.daemon_process import DaemonProcess
from balloon2395_testkit.debian_guest import DebianGuest, DebianGuestFactory

from .plan import logged_changes
from .replay import attempt, sleep_until

MIB = 1024
SAMPLE_S = 1.0
STEP_MIB = 16  # smaller moves of a trace wait: a hog per MiB would swamp the agent
GUEST_CAP_MIB = 1024  # the largest Debian guest a replay boots
HOST_SPARE_MIB = 2048  # host memory left to the host beside the guests at their maximum
CACHE_FILES_MIB = 512  # the image's files the page cache can be filled from
OOM_CHECK_S = 5.0  # the driver asks the guest for its OOM kills this often
RELIEF_LAG_S = 10.0  # how far a real guest's allocations may run behind its trace (7 s seen for a 2 s ramp)
SERVICE_PREFIX = "redis"  # a guest so named holds its anonymous memory as Redis data

Action = Tuple[str, str, int]  # (verb, hog name, MiB)


# --------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizing:
    """A scenario guest as a Debian guest: MiB, and the factor its trace is scaled by."""

    name: str
    current_mib: int
    max_mib: int
    swap_mib: int
    factor: float


def sizing(scenario: Scenario, host_free_mib: int, cap_mib: int = GUEST_CAP_MIB) -> Tuple[List[Sizing], List[str]]:
    """Every guest's real size, capped at `cap_mib` and at an equal share of the host's free memory less
    HOST_SPARE_MIB; warnings for each one scaled down."""
    plans = scenario.guests
    cap = min(cap_mib, (host_free_mib - HOST_SPARE_MIB) // max(1, len(plans)))
    if cap < 256:
        raise ValueError(f"{len(plans)} guests do not fit in {host_free_mib} MiB free")
    out, warnings = [], []
    for p in plans:
        max_mib = p.spec.maximum_kib // MIB
        factor = min(1.0, cap / max_mib)
        if factor < 1:
            warnings.append(f"{scenario.name}/{p.name}: scaled by {factor:.2f} to a {cap} MiB maximum "
                            f"(was {max_mib} MiB); its current size, swap and workload too")
        out.append(Sizing(p.name, max(256, round(p.current_kib / MIB * factor)), round(max_mib * factor),
                          round(p.spec.swap_kib / MIB * factor), factor))
    return out, warnings


def _scaled_trace(trace: Trace, factor: float) -> Trace:
    def ramps(rs: Sequence[Ramp]) -> Tuple[Ramp, ...]:
        return tuple(replace(r, from_kib=round(r.from_kib * factor), to_kib=round(r.to_kib * factor)) for r in rs)
    return Trace(ramps(trace.anon), ramps(trace.cache), trace.repeat_s)


def scaled(scenario: Scenario, sizes: Sequence[Sizing]) -> Scenario:
    """The scenario as replayed: each guest at its real size, its trace scaled alike (for the simulator)."""
    plans = []
    for p, s in zip(scenario.guests, sizes):
        if s.factor == 1:
            plans.append(p)
            continue
        spec = replace(p.spec, maximum_kib=s.max_mib * MIB, swap_kib=s.swap_mib * MIB)
        touched = None if p.touched_kib is None else round(p.touched_kib * s.factor)
        plans.append(replace(p, spec=spec, current_kib=s.current_mib * MIB, trace=_scaled_trace(p.trace, s.factor),
                             touched_kib=touched))
    return replace(scenario, guests=tuple(plans))


def levels(plan: GuestPlan, t: float) -> Tuple[int, int]:
    """(anonymous, page cache) MiB the trace wants at `t`; the cache within the image's files."""
    return plan.trace.anon_kib(t) // MIB, min(CACHE_FILES_MIB, plan.trace.cache_kib(t) // MIB)


# --------------------------------------------------------------------- what a guest holds
@dataclass
class Holder:
    """What the replay holds in one guest, and the agent calls that bring it to a trace's levels."""

    service: bool = False  # anonymous memory as Redis data, not hogs
    hogs: List[Tuple[str, int]] = field(default_factory=list)
    cache_mib: int = 0
    made: int = 0

    @property
    def anon_mib(self) -> int:
        return sum(mib for _, mib in self.hogs)

    def actions(self, anon_mib: int, cache_mib: int) -> List[Action]:
        return self._anon(anon_mib) + self._cache(cache_mib)

    def _anon(self, want: int) -> List[Action]:
        held = self.anon_mib
        if abs(want - held) < STEP_MIB and (want > 0) == (held > 0):
            return []
        if self.service:
            out: List[Action] = [("redis_flush", "", 0)] if want < held else []
            self.hogs = [("redis", want)] if want else []
            return out + ([("redis", "", want)] if want else [])
        out = []
        while self.hogs and self.anon_mib > want:  # the newest first, as a workload shrinking frees
            name, _ = self.hogs.pop()
            out.append(("free", name, 0))
        if want - self.anon_mib >= STEP_MIB or (want and not self.hogs):
            self.made += 1
            name = f"w{self.made}"
            out.append(("hog", name, want - self.anon_mib))
            self.hogs.append((name, want - self.anon_mib))
        return out

    def _cache(self, want: int) -> List[Action]:
        if abs(want - self.cache_mib) < STEP_MIB and (want > 0) == (self.cache_mib > 0):
            return []
        out: List[Action] = [("uncache", "", 0)] if want < self.cache_mib else []
        self.cache_mib = want
        return out + ([("cache", "", want)] if want else [])

    def lost(self, name: str) -> None:
        """A hog the OOM killer took."""
        self.hogs = [h for h in self.hogs if h[0] != name]


def perform(g: DebianGuest, action: Action, holder: Holder) -> None:
    verb, name, mib = action
    calls: Dict[str, Callable[[], object]] = {
        "hog": lambda: g.hog(name, mib, timeout=300.0), "free": lambda: g.free(name),
        "cache": lambda: g.cache_fill(mib), "uncache": lambda: g.cache_drop(),
        "redis": lambda: g.redis_load(mib), "redis_flush": lambda: g.redis_flush()}
    # a slow or failed call under memory pressure is part of the measurement, not an abort
    def call() -> bool:
        calls[verb]()
        return True

    done = attempt(call, False)
    if not done and verb == "hog":
        holder.lost(name)  # it died before it held all of it: the OOM killer


# --------------------------------------------------------------------- one guest's replay
class GuestReplay:
    """A driver thread (the trace into agent calls) and a sampler thread (dommemstat) for one guest."""

    def __init__(self, g: DebianGuest, plan: GuestPlan, t0: float, duration_s: float) -> None:
        self.g, self.plan, self.t0, self.duration_s = g, plan, t0, duration_s
        self.holder = Holder(service=plan.name.startswith(SERVICE_PREFIX))
        self.oom_base = attempt(g.oom_kills, 0)
        self.oom_seen = 0
        self.samples: List[Sample] = []
        self.errors = 0
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._drive, self._sample)]

    def _drive(self) -> None:
        t, next_oom = 0.0, 0.0
        while t < self.duration_s:
            sleep_until(self.t0 + t)
            for action in self.holder.actions(*levels(self.plan, t)):
                perform(self.g, action, self.holder)
            if t >= next_oom:
                self.oom_seen = max(self.oom_seen, attempt(self.g.oom_kills, self.oom_base) - self.oom_base)
                next_oom = t + OOM_CHECK_S
            # a slow call skips the seconds it took instead of replaying them late
            t = max(t + SAMPLE_S, float(math.floor(time.monotonic() - self.t0)))

    def _sample(self) -> None:
        tick = 0
        while tick * SAMPLE_S < self.duration_s:
            sleep_until(self.t0 + tick * SAMPLE_S)
            missing: Dict[str, int] = {}
            stats = attempt(self.g.dommemstat, missing)
            if stats.get("actual") and "usable" in stats:
                self.samples.append(sample(tick * SAMPLE_S, stats, self.holder.anon_mib * MIB, self.oom_seen))
            else:
                self.errors += 1
            tick = max(tick + 1, math.ceil((time.monotonic() - self.t0) / SAMPLE_S))

    def start(self) -> None:
        for th in self._threads:
            th.start()

    def join(self) -> int:
        """Waits for both threads; the guest's OOM kills during the replay."""
        for th in self._threads:
            th.join()
        self.oom_seen = max(self.oom_seen, attempt(self.g.oom_kills, self.oom_base) - self.oom_base)
        return self.oom_seen


def sample(t: float, stats: Dict[str, int], anon_kib: int, oom_kills: int) -> Sample:
    """A dommemstat reading as the simulator's Sample (swapped_kib: the swap-in so far; target: actual)."""
    actual = stats["actual"]
    return Sample(int(t), actual, actual, stats["usable"], anon_kib, anon_kib, stats.get("swap_in", 0),
                  stats.get("disk_caches", 0), oom_kills, stats.get("rss", 0))


# --------------------------------------------------------------------- figures
def starved_s(samples: Sequence[Sample]) -> float:
    """Seconds with usable under STARVED_PCT % of actual, or swapping in faster than STARVED_SWAP_IN_KIB_S (as
    the simulator counts them)."""
    starved = 0
    for prev, s in zip([None, *samples], samples):
        swapping = prev is not None and s.swapped_kib - prev.swapped_kib > STARVED_SWAP_IN_KIB_S * SAMPLE_S
        starved += s.usable_kib * 100 < STARVED_PCT * s.actual_kib or swapping
    return starved * SAMPLE_S


def relief_s(samples: Sequence[Sample], minimal: float, bursts: Sequence[Tuple[float, float]]) -> Tuple[float, ...]:
    """Per burst: seconds from its end until usable is back at the band's minimum (0 when it never fell;
    until the last sample when it never came back). A real guest allocates behind the trace: a fall that
    starts up to RELIEF_LAG_S after the burst's end is still that burst's."""
    out = []
    for start, end in bursts:
        window = [x for x in samples if x.t_s >= start]
        if not window or window[-1].t_s < end:
            continue
        low = [i for i, x in enumerate(window) if x.t_s <= end + RELIEF_LAG_S and _below(x, minimal)]
        if not low:
            out.append(0.0)
            continue
        back = next((x.t_s for x in window[low[0]:] if not _below(x, minimal)), window[-1].t_s)
        out.append(max(0.0, back - end))
    return tuple(out)


def _below(x: Sample, minimal: float) -> bool:
    return x.usable_kib * 100 // x.actual_kib < minimal


def guest_result(plan: GuestPlan, maximum_kib: int, settings: DomainSettings, samples: Sequence[Sample],
                 oom_kills: int, setmem_calls: int, duration_s: float) -> GuestResult:
    """The real guest's samples measured as the simulator measures its guests (GuestResult)."""
    n = max(1, len(samples))
    least = [min(maximum_kib, max(s.actual_kib - s.usable_kib + settings.headroom_kib, settings.floor_kib))
             + plan.spec.qemu_own_kib for s in samples]
    swap_in = samples[-1].swapped_kib - samples[0].swapped_kib if samples else 0
    return GuestResult(
        name=plan.name, maximum_kib=maximum_kib, band=(settings.minimal, settings.maximal), oom_kills=oom_kills,
        oom_kills_beyond_max=0, oom_deflations=0, lost_at_s=None, starved_s=starved_s(samples),
        swap_in_kib=swap_in, setmem_calls=setmem_calls,
        avg_actual_kib=sum(s.actual_kib for s in samples) // n, avg_rss_kib=sum(s.rss_kib for s in samples) // n,
        avg_least_rss_kib=sum(least) // n,
        relief_s=relief_s(samples, settings.minimal, plan.trace.bursts(duration_s)), series=tuple(samples))


def differences(real: Dict[str, object], sim: Dict[str, object]) -> Dict[str, object]:
    """real - sim for every numeric column of control.py's row; the labels of `real`."""
    out: Dict[str, object] = {}
    for key, value in real.items():
        other = sim.get(key)
        numeric = isinstance(value, (int, float)) and isinstance(other, (int, float))
        if key in ("scenario", "seed"):
            out[key] = value
        elif key == "policy":
            out[key] = f"{value} diff"
        else:
            out[key] = round(value - other, 2) if numeric else None  # type: ignore[operator]
    return out


CALIBRATED_WITHIN = 0.15  # issue 16: the simulator within 15 % of the real guests' returned, saved and starved
# (row key, label, resolution): below the real figures' own resolution no difference counts (a 1 s sample,
# the table's 0.01 GiB)
MEASURES = (("reclaimed_gib_avg", "returned GiB", 0.01), ("host_saved_gib", "saved GiB", 0.01),
            ("starved_s", "starved s", SAMPLE_S))


def calibration_misses(real: Dict[str, Any], sim: Dict[str, Any]) -> List[str]:
    """Where the simulator's row is not calibrated to the real one: OOM kills must match exactly, returned and
    saved memory and starved seconds be within CALIBRATED_WITHIN of the real figure."""
    out = [] if real["kills"] == sim["kills"] else [f"kills {sim['kills']} simulated, {real['kills']} real"]
    for key, label, resolution in MEASURES:
        r, s = real[key], sim[key]
        if round(abs(s - r), 2) > max(CALIBRATED_WITHIN * abs(r), resolution):  # the rows' figures are rounded
            off = f"{(s - r) / r:+.0%}" if r else "real 0"
            out.append(f"{label} {s} simulated, {r} real ({off})")
    return out


# --------------------------------------------------------------------- the whole replay
def replay(scenario: Scenario, sizes: Sequence[Sizing], policy: str, duration_s: float, settings_for:
           Callable[[str], DomainSettings], daemon_args: Sequence[str], host_total_kib: int,
           log_dir: Path, say: Callable[[str], None]) -> Tuple[RunResult, Dict[str, object]]:
    """Boots a Debian guest per scenario guest (one after the other), runs the daemon on them all and every
    guest's trace at once for `duration_s`; the run measured as the simulator's, and notes."""
    notes: Dict[str, object] = {}
    factory = DebianGuestFactory()
    with factory:
        guests: List[DebianGuest] = []
        boot_t = time.monotonic()
        for plan, size in zip(scenario.guests, sizes):
            g = factory.create(plan.name, current_mib=size.current_mib, max_mib=size.max_mib,
                               swap_mib=size.swap_mib, autodeflate=plan.spec.deflate_on_oom,
                               free_page_reporting=plan.spec.free_page_reporting)
            g.wait_fresh_stats(timeout=60.0)
            guests.append(g)
        notes["boot_s"] = round(time.monotonic() - boot_t, 1)
        say(f"{policy}: {len(guests)} guest(s) booted in {notes['boot_s']} s; replaying {duration_s:.0f} s")
        daemon = DaemonProcess(factory.workdir / f"daemon-{policy}", factory.name_for("*"), "--policy", policy,
                               *daemon_args)
        with daemon:
            t0 = time.monotonic() + 1.0
            runs = [GuestReplay(g, plan, t0, duration_s) for g, plan in zip(guests, scenario.guests)]
            for r in runs:
                r.start()
            kills = [r.join() for r in runs]
            notes["daemon_exit"] = daemon.stop()
        log = daemon.log()
        (log_dir / f"{scenario.name}-{policy}.log").write_text(log)
        notes["daemon_traceback"] = "Traceback" in log
        notes["sample_errors"] = sum(r.errors for r in runs)
        results = tuple(guest_result(plan, size.max_mib * MIB, settings_for(plan.name), r.samples, k,
                                     len(logged_changes(log, g.name)), duration_s)
                        for plan, size, g, r, k in zip(scenario.guests, sizes, guests, runs, kills))
    return RunResult(scenario.name, policy, 0, duration_s, results, host_total_kib, 0.0, 0), notes
