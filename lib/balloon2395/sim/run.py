"""The real daemon against the simulated host, cycle by cycle in virtual time, and what it achieved.

`Daemon(config, SimVirsh(host), clock)` is the daemon's own code path:
parsing, observing, the policy and setmem are the real ones; only the virsh
process and the clock are the simulator's.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

from ..config import Config, DomainSettings
from ..daemon import Daemon
from ..policy import Decision
from .host import EPOCH, TICKS_PER_S, SimGuest, SimHost
from .model import GuestState, usable_kib
from .scenario import Scenario
from .virsh import SimVirsh

STARVED_PCT = 5  # usable under this share of actual: the guest is out of memory in all but name


@dataclass(frozen=True)
class Sample:
    """One guest at one virtual second."""

    t_s: int
    actual_kib: int
    target_kib: int
    usable_kib: int
    demand_kib: int  # anonymous memory its processes ask for: services + workload
    anon_kib: int
    swapped_kib: int
    cache_kib: int
    oom_kills: int  # so far

    @property
    def used_kib(self) -> int:
        """What the guest could not give back."""
        return self.actual_kib - self.usable_kib


@dataclass(frozen=True)
class GuestResult:
    name: str
    maximum_kib: int
    band: Tuple[float, float]  # minimal, maximal usable %
    oom_kills: int
    oom_kills_beyond_max: int  # of those, demand beyond the maximum plus swap: no daemon could help
    starved_s: float  # usable under STARVED_PCT % of actual, or swapping in
    swap_in_kib: int
    setmem_calls: int
    avg_actual_kib: int
    # time average of the smallest size that leaves `headroom` usable above what the guest
    # used in this run (and respects the floor): no policy that keeps the headroom goes lower
    avg_least_actual_kib: int
    relief_s: Tuple[float, ...]  # per burst: from its end until usable is back at the band's minimum
    series: Tuple[Sample, ...]


@dataclass(frozen=True)
class RunResult:
    scenario: str
    policy: str
    seed: int
    duration_s: float
    guests: Tuple[GuestResult, ...]


class _Tracker:
    """One guest's running measures, updated every tick."""

    __slots__ = ("settings", "maximum_kib", "state", "low", "least_actual_kib", "starved_ticks", "actual_sum",
                 "least_actual_sum", "need_since", "need_spans", "series")

    def __init__(self, settings: DomainSettings, maximum_kib: int) -> None:
        self.settings, self.maximum_kib = settings, maximum_kib
        self.state: Optional[GuestState] = None
        self.low = False
        self.least_actual_kib = 0
        self.starved_ticks = self.actual_sum = self.least_actual_sum = 0
        self.need_since: Optional[int] = None  # tick usable fell below the band's minimum
        self.need_spans: List[Tuple[int, int]] = []
        self.series: List[Sample] = []

    def observe(self, tick: int, g: SimGuest) -> None:
        s = g.state
        swapping_in = False
        if s is not self.state:  # the model hands back the same object when nothing moved
            swapping_in = self.state is not None and s.swap_in_kib > self.state.swap_in_kib
            usable = usable_kib(g.plan.spec, s)
            self.low = usable * 100 < STARVED_PCT * s.actual_kib
            least = max(s.actual_kib - usable + self.settings.headroom_kib, self.settings.critical_kib)
            self.least_actual_kib = min(least, self.maximum_kib)
            need = usable * 100 // s.actual_kib < self.settings.minimal
            if need and self.need_since is None:
                self.need_since = tick
            elif not need and self.need_since is not None:
                self.need_spans.append((self.need_since, tick))
                self.need_since = None
            self.state = s
        self.starved_ticks += self.low or swapping_in
        self.actual_sum += s.actual_kib
        self.least_actual_sum += self.least_actual_kib

    def relief_s(self, bursts: List[Tuple[float, float]], now_tick: int) -> Tuple[float, ...]:
        spans = self.need_spans + ([(self.need_since, now_tick)] if self.need_since is not None else [])
        starts = [a for a, _ in spans]
        out = []
        for _, end_s in bursts:
            tick = math.ceil(end_s * TICKS_PER_S)
            if tick > now_tick:
                continue
            i = bisect.bisect_right(starts, tick) - 1
            out.append((spans[i][1] - tick) / TICKS_PER_S if i >= 0 and tick < spans[i][1] else 0.0)
        return tuple(out)


class Simulation:
    def __init__(self, scenario: Scenario, config: Config, seed: int = 0, epoch: float = EPOCH) -> None:
        self.scenario, self.config, self.seed = scenario, config, seed
        self.host = SimHost(scenario, seed, epoch)
        # The simulated host is the host: read it through virsh, never this machine's /proc.
        watched = config if config.host_memory == "off" else replace(config, host_memory="virsh")
        self.daemon = Daemon(watched, SimVirsh(self.host), clock=lambda: self.host.now)
        self.cycle_ticks = max(1, round(config.secs * TICKS_PER_S))
        self.trackers = [_Tracker(config.for_domain(g.name), g.plan.spec.maximum_kib) for g in self.host.guests]
        self.last_change: Dict[str, Tuple[float, Decision]] = {}  # guest -> (virtual s, the change)

    def step(self) -> None:
        """One tick of the model; a daemon cycle every `secs`; a sample every second."""
        host = self.host
        host.step()
        for g, tracker in zip(host.guests, self.trackers):
            tracker.observe(host.tick, g)
        if host.tick % self.cycle_ticks == 0:
            for decision in self.daemon.cycle() or ():
                if decision.changes:
                    self.last_change[decision.name] = (host.elapsed_s, decision)
        if host.tick % TICKS_PER_S == 0:
            self._sample()

    def _sample(self) -> None:
        t = self.host.elapsed_s
        for g, tracker in zip(self.host.guests, self.trackers):
            s, spec = g.state, g.plan.spec
            demand = spec.base_anon_kib + g.plan.workload_kib(t, self.seed)
            tracker.series.append(Sample(int(t), s.actual_kib, s.target_kib, usable_kib(spec, s), demand,
                                         s.anon_kib, s.swapped_kib, s.cache_kib, s.oom_kills))

    def result(self) -> RunResult:
        host, ticks = self.host, max(1, self.host.tick)
        guests = []
        for g, tracker in zip(host.guests, self.trackers):
            settings = tracker.settings
            guests.append(GuestResult(
                name=g.name, maximum_kib=g.plan.spec.maximum_kib, band=(settings.minimal, settings.maximal),
                oom_kills=g.state.oom_kills, oom_kills_beyond_max=g.state.oom_kills_beyond_max,
                starved_s=tracker.starved_ticks / TICKS_PER_S,
                swap_in_kib=g.state.swap_in_kib, setmem_calls=g.setmems, avg_actual_kib=tracker.actual_sum // ticks,
                avg_least_actual_kib=tracker.least_actual_sum // ticks,
                relief_s=tracker.relief_s(g.plan.trace.bursts(host.elapsed_s), host.tick),
                series=tuple(tracker.series)))
        return RunResult(self.scenario.name, self.config.policy, self.seed, host.elapsed_s, tuple(guests))


def run_scenario(scenario: Scenario, policy: str = "step", seed: int = 0, duration_s: Optional[float] = None,
                 config: Optional[Config] = None) -> RunResult:
    """The scenario from start to end (its own duration unless given) under one policy; no wall time spent waiting."""
    sim = Simulation(scenario, replace(config or Config(), policy=policy), seed)
    ticks = round((scenario.duration_s if duration_s is None else duration_s) * TICKS_PER_S)
    while sim.host.tick < ticks:
        sim.step()
    return sim.result()
