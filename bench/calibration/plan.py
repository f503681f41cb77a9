"""Calibration, the parts without a real guest: the plan a scenario makes for a real replay, a run as
sampled points and size changes, and the same scenario in the simulator, in virtual time.

bench/calibrate.py runs both sides; calibration_replay.py is the real side, calibration_compare.py
sets the two runs side by side, calibration_report.py prints that.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from balloon2395 import PROG
from balloon2395.config import Config
from balloon2395.sim.model import BALLOON_KIB_S, capacity_kib
from balloon2395.sim.run import Sample, run_scenario
from balloon2395.sim.scenario import Scenario, ScenarioError

MIB = 1024  # KiB
SAMPLE_S = 0.5  # real dommemstat sampling period


# --------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """The scenario's one guest and its workload, as a real replay needs them."""

    scenario: str
    guest: str
    current_mib: int
    max_mib: int
    stats_period_s: int
    ramp_start_s: float
    ramp_top_mib: int
    ramp_rate_mib_s: float
    free_at_s: float
    duration_s: float
    minimal: float
    maximal: float

    @property
    def ramp_full_s(self) -> float:
        """When the model's workload holds all of it."""
        return self.ramp_start_s + self.ramp_top_mib / self.ramp_rate_mib_s

    @classmethod
    def of(cls, scenario: Scenario, duration_s: Optional[float], config: Config) -> "Plan":
        """A scenario of one guest whose workload rises once (at a rate) and later drops to nothing."""
        if len(scenario.guests) != 1:
            raise ScenarioError(f"{scenario.path}: a calibration scenario has exactly one guest")
        g = scenario.guests[0]
        anon = g.trace.anon
        ok = (len(anon) == 2 and not g.trace.cache and g.trace.repeat_s is None and not g.noise_kib
              and anon[0].from_kib == 0 and anon[0].to_kib > 0 and anon[0].end_s > anon[0].start_s
              and anon[1].to_kib == 0 and anon[1].end_s == anon[1].start_s)
        if not ok:
            raise ScenarioError(f"{scenario.path}: a calibration workload is one rise at a rate, then a drop to "
                                f"nothing at once (no cache steps, noise or repeat)")
        rise, drop = anon
        settings = config.for_domain(g.name)
        return cls(scenario.name, g.name, g.current_kib // MIB, g.spec.maximum_kib // MIB, g.stats_period_s,
                   rise.start_s, rise.to_kib // MIB, rise.to_kib / MIB / (rise.end_s - rise.start_s), drop.start_s,
                   scenario.duration_s if duration_s is None else duration_s, settings.minimal, settings.maximal)


# --------------------------------------------------------------------- one run
@dataclass(frozen=True)
class Point:
    t: float  # seconds since the daemon started
    actual_kib: int
    usable_kib: int
    work_mib: Optional[float] = None  # what the workload holds (sim: its demand; real: the hog's report)
    stats_age_s: Optional[float] = None  # real: how old the guest's usable figure was

    @property
    def pct(self) -> float:
        return self.usable_kib * 100.0 / self.actual_kib

    def below(self, minimal: float) -> bool:
        """The daemon's rule: integer percent under the band's minimum."""
        return self.usable_kib * 100 // self.actual_kib < minimal


@dataclass(frozen=True)
class Change:
    t: Optional[float]
    action: str
    from_mib: int
    to_mib: int


@dataclass
class Run:
    source: str  # "sim" or "real"
    points: List[Point]
    changes: List[Change]
    oom_kills: int
    setmem_calls: int
    oom_at: List[float] = field(default_factory=list)
    work_full_t: Optional[float] = None  # when the workload held all of it
    notes: Dict[str, object] = field(default_factory=dict)

    def at(self, t: float) -> Optional[Point]:
        """The point nearest to t (within one real sampling period, or exact for the per-second sim)."""
        best = min(self.points, key=lambda p: abs(p.t - t), default=None)
        return best if best is not None and abs(best.t - t) <= SAMPLE_S + 0.01 else None

    def before(self, t: float) -> Optional[Point]:
        """The last point before t."""
        earlier = [p for p in self.points if p.t < t]
        return earlier[-1] if earlier else None

    def between(self, a: float, b: float) -> List[Point]:
        return [p for p in self.points if a <= p.t < b]


# --------------------------------------------------------------------- the daemon's change lines
CHANGE_LINE = re.compile(r"(?:^|INFO )(grow|shrink) (\S+) (\d+) -> (\d+) MiB")


def parse_change(line: str, guest: str) -> Optional[Tuple[str, int, int]]:
    """(action, from MiB, to MiB) of the daemon's change line for `guest` (a log record's message, or a
    line of its text log); None for any other line."""
    m = CHANGE_LINE.search(line)
    if not m or m.group(2) != guest:
        return None
    return m.group(1), int(m.group(3)), int(m.group(4))


def logged_changes(log: str, guest: str) -> List[Tuple[str, int, int]]:
    """Every change line for `guest` in a daemon's text log."""
    return [c for c in (parse_change(line, guest) for line in log.splitlines()) if c is not None]


# --------------------------------------------------------------------- the simulator
class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def stamp_changes(messages: Sequence[str], guest: str, series: Sequence[Sample]) -> List[Change]:
    """The simulated daemon's changes, each at the first second (on or after the previous change's)
    whose balloon target is the size the line names; None when no later second has it."""
    changes, i = [], 0
    for line in messages:
        change = parse_change(line, guest)
        if change is None:
            continue
        action, from_mib, to_mib = change
        while i < len(series) and series[i].target_kib // MIB != to_mib:
            i += 1
        changes.append(Change(float(series[i].t_s) if i < len(series) else None, action, from_mib, to_mib))
    return changes


def simulate(scenario: Scenario, plan: Plan, policy: str, seed: int, config: Config) -> Run:
    """The scenario in virtual time; setmem calls from the daemon's own log lines."""
    logger = logging.getLogger(PROG)
    handler, saved = _Messages(), (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        result = run_scenario(scenario, policy, seed, plan.duration_s, config)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    g = next(x for x in result.guests if x.name == plan.guest)
    base_kib = next(p for p in scenario.guests if p.name == plan.guest).spec.base_anon_kib
    points = [Point(float(s.t_s), s.actual_kib, s.usable_kib, work_mib=(s.demand_kib - base_kib) / MIB)
              for s in g.series]
    oom_at = [float(b.t_s) for a, b in zip(g.series, g.series[1:]) if b.oom_kills > a.oom_kills]
    work_full = next((p.t for p in points if p.work_mib is not None and p.work_mib >= plan.ramp_top_mib), None)
    return Run("sim", points, stamp_changes(handler.lines, plan.guest, g.series), g.oom_kills, g.setmem_calls,
               oom_at, work_full)


def model_facts(scenario: Scenario, plan: Plan, size_mib: int) -> Dict[str, object]:
    """The model's counterparts of what the real guest's probe measures."""
    spec = next(p for p in scenario.guests if p.name == plan.guest).spec
    return {"size_mib": size_mib, "balloon_mib_s": BALLOON_KIB_S // MIB,
            "outside_memtotal_mib": round(spec.reserved_kib / MIB, 1),
            "capacity_mib": round((capacity_kib(spec, size_mib * MIB) - spec.base_anon_kib) / MIB, 1)}
