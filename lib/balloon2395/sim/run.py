"""The real daemon against the simulated host, cycle by cycle in virtual time, and what it achieved.

`Daemon(config, SimVirsh(host), clock)` is the daemon's own code path:
parsing, observing, the policy and setmem are the real ones; only the virsh
process and the clock are the simulator's. The baselines (BASELINES) run the
same guests with no daemon at all.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

from ..config import Config
from ..daemon import Daemon
from ..decide.records import Decision
from ..host import MEMINFO
from ..settings import DomainSettings
from .host import EPOCH, TICKS_PER_S, SimGuest, SimHost
from .model import GuestState, usable_kib
from .scenario import Scenario
from .virsh import SimVirsh

STARVED_PCT = 5  # usable under this share of actual: the guest is out of memory in all but name
# swapping in faster than this starves the guest; slower is idle daemons waking (decide.tuning: swap_in_kib_per_s)
STARVED_SWAP_IN_KIB_S = 1024
# Policies that are no daemon: "none" leaves the guests alone, "fpr" too, with free page reporting on in every guest.
BASELINES = ("none", "fpr")


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
    rss_kib: int = 0  # what it costs the host: the guest pages QEMU has backed (0 once lost; 0 when not given)

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
    oom_deflations: int  # times its balloon deflated on OOM instead of a kill
    lost_at_s: Optional[float]  # when the host's OOM killer killed its QEMU
    # usable under STARVED_PCT % of actual, swapping in, or faulting pages in while the host swaps
    starved_s: float
    swap_in_kib: int
    setmem_calls: int
    avg_actual_kib: int  # a lost guest counts as its maximum from its loss on, as for avg_rss_kib
    # time average of its QEMU's RSS; a lost guest counts as its maximum and QEMU's own from its loss on
    avg_rss_kib: int
    # time average of the smallest RSS of a guest that keeps `headroom` usable above what it used in this
    # run (and respects the floor): that size, all touched, and QEMU's own memory
    avg_least_rss_kib: int
    relief_s: Tuple[float, ...]  # per burst: from its end until usable is back at the band's minimum
    series: Tuple[Sample, ...]


@dataclass(frozen=True)
class RunResult:
    scenario: str
    policy: str
    seed: int
    duration_s: float
    guests: Tuple[GuestResult, ...]
    host_total_kib: int
    host_swap_s: float  # time the host's own use and the guests' RSS were more than its RAM
    guests_lost: int  # to the host's OOM killer


class _Tracker:
    """One guest's running measures, updated every tick. While the model leaves the guest as it was, its
    measures stay too: the ticks are counted, and added up when it moves (flush)."""

    __slots__ = ("settings", "maximum_kib", "state", "low", "actual_kib", "rss_kib", "usable_kib", "least_rss_kib",
                 "still_ticks", "starved_ticks", "actual_sum", "least_rss_sum", "rss_sum", "need_since",
                 "need_spans", "series")

    def __init__(self, settings: DomainSettings, maximum_kib: int) -> None:
        self.settings, self.maximum_kib = settings, maximum_kib
        self.state: Optional[GuestState] = None
        self.low = False
        self.actual_kib = self.rss_kib = self.least_rss_kib = 0  # this state's, counted for each still tick
        self.usable_kib = 0
        self.still_ticks = self.starved_ticks = self.actual_sum = self.least_rss_sum = self.rss_sum = 0
        self.need_since: Optional[int] = None  # tick usable fell below the band's minimum
        self.need_spans: List[Tuple[int, int]] = []
        self.series: List[Sample] = []

    def observe(self, tick: int, g: SimGuest, host_swapping: bool) -> None:
        s, before = g.state, self.state
        if s is before:  # the model hands back the same object when nothing moved
            self.still_ticks += 1
            return
        self.flush()
        self.state, self.still_ticks = s, 1
        if g.lost_at_s is not None:  # its loss saves the host nothing: it counts as holding its maximum
            self.low, self.usable_kib = False, usable_kib(g.plan.spec, s)
            self.actual_kib = self.maximum_kib
            self.rss_kib = self.least_rss_kib = self.maximum_kib + g.plan.spec.qemu_own_kib
            return
        self._judge(tick, g, s)
        if before is not None and not self.low:
            # swapping in, or faulting pages in on a host that swaps: each new page waits for the host's disk
            self.starved_ticks += (s.swap_in_kib - before.swap_in_kib > STARVED_SWAP_IN_KIB_S / TICKS_PER_S
                                   or (host_swapping and s.touched_kib > before.touched_kib))

    def flush(self) -> None:
        """The still ticks' measures into the sums."""
        ticks, self.still_ticks = self.still_ticks, 0
        self.starved_ticks += ticks * self.low
        self.actual_sum += ticks * self.actual_kib
        self.rss_sum += ticks * self.rss_kib
        self.least_rss_sum += ticks * self.least_rss_kib

    def _judge(self, tick: int, g: SimGuest, s: GuestState) -> None:
        self.usable_kib = usable = usable_kib(g.plan.spec, s)
        self.low = usable * 100 < STARVED_PCT * s.actual_kib
        self.actual_kib, self.rss_kib = s.actual_kib, g.rss_kib
        least = max(s.actual_kib - usable + self.settings.headroom_kib, self.settings.floor_kib)
        self.least_rss_kib = min(least, self.maximum_kib) + g.plan.spec.qemu_own_kib
        need = usable * 100 // s.actual_kib < self.settings.minimal
        if need and self.need_since is None:
            self.need_since = tick
        elif not need and self.need_since is not None:
            self.need_spans.append((self.need_since, tick))
            self.need_since = None

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
        if config.policy == "fpr":
            scenario = _reporting(scenario)
        self.scenario, self.config, self.seed = scenario, config, seed
        self.host = SimHost(scenario, seed, epoch)
        # The simulated host is the host: its /proc/meminfo (with its swap, as a local host's), never this
        # machine's; a reserve the scenario sets, unless the config does.
        host = config.host if config.host.memory == "off" else replace(config.host, memory="local")
        watched = replace(config, host=host if host.reserve is not None else replace(host, reserve=scenario.reserve))
        self.daemon = Daemon(watched, SimVirsh(self.host), clock=lambda: self.host.now, host_files=self._host_file)
        self.cycle_ticks = max(1, round(config.secs * TICKS_PER_S))
        self.daemon_runs = config.policy not in BASELINES
        self.trackers = [_Tracker(config.for_domain(g.name), g.plan.spec.maximum_kib) for g in self.host.guests]
        self.last_change: Dict[str, Tuple[float, Decision]] = {}  # guest -> (virtual s, the change)

    def _host_file(self, path: str) -> str:
        if path == MEMINFO:
            return self.host.meminfo()
        raise FileNotFoundError(2, "not on the simulated host", path)

    def step(self) -> None:
        """One tick of the model; a daemon cycle every `secs`; a sample every second."""
        host = self.host
        host.step()
        for g, tracker in zip(host.guests, self.trackers):
            tracker.observe(host.tick, g, host.swapping)
        if self.daemon_runs and host.tick % self.cycle_ticks == 0:
            for decision in self.daemon.cycle() or ():
                if decision.changes:
                    self.last_change[decision.name] = (host.elapsed_s, decision)
        if host.tick % TICKS_PER_S == 0:
            self._sample()

    def _sample(self) -> None:
        t = self.host.elapsed_s
        for g, tracker in zip(self.host.guests, self.trackers):
            s = g.state
            demand = g.plan.spec.base_anon_kib + g.plan.workload_kib(t, self.seed)
            # usable: the tracker judged this tick's state
            tracker.series.append(Sample(int(t), s.actual_kib, s.target_kib, tracker.usable_kib, demand,
                                         s.anon_kib, s.swapped_kib, s.cache_kib, s.oom_kills,
                                         0 if g.lost_at_s is not None else g.rss_kib))

    def result(self) -> RunResult:
        host, ticks = self.host, max(1, self.host.tick)
        guests = []
        for g, tracker in zip(host.guests, self.trackers):
            tracker.flush()
            settings = tracker.settings
            guests.append(GuestResult(
                name=g.name, maximum_kib=g.plan.spec.maximum_kib, band=(settings.minimal, settings.maximal),
                oom_kills=g.state.oom_kills, oom_kills_beyond_max=g.state.oom_kills_beyond_max,
                oom_deflations=g.state.oom_deflations, lost_at_s=g.lost_at_s,
                starved_s=tracker.starved_ticks / TICKS_PER_S,
                swap_in_kib=g.state.swap_in_kib, setmem_calls=g.setmems, avg_actual_kib=tracker.actual_sum // ticks,
                avg_rss_kib=tracker.rss_sum // ticks, avg_least_rss_kib=tracker.least_rss_sum // ticks,
                relief_s=tracker.relief_s(g.plan.trace.bursts(host.elapsed_s), host.tick),
                series=tuple(tracker.series)))
        return RunResult(self.scenario.name, self.config.policy, self.seed, host.elapsed_s, tuple(guests),
                         host_total_kib=self.scenario.host.total_kib, host_swap_s=host.swap_ticks / TICKS_PER_S,
                         guests_lost=len(host.guests) - len(host.running))


def _reporting(scenario: Scenario) -> Scenario:
    """The scenario with free page reporting on in every guest."""
    plans = tuple(replace(p, spec=replace(p.spec, free_page_reporting=True)) for p in scenario.guests)
    return replace(scenario, guests=plans)


def run_scenario(scenario: Scenario, policy: str = "step", seed: int = 0, duration_s: Optional[float] = None,
                 config: Optional[Config] = None) -> RunResult:
    """The scenario from start to end (its own duration unless given) under one policy, or a baseline
    (BASELINES); no wall time spent waiting."""
    sim = Simulation(scenario, replace(config or Config(), policy=policy), seed)
    ticks = round((scenario.duration_s if duration_s is None else duration_s) * TICKS_PER_S)
    while sim.host.tick < ticks:
        sim.step()
    return sim.result()
