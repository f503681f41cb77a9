"""Calibration: a simulated run and a real one side by side. Pure functions of two Runs and their Plan:
the summary figures of each, how far apart they are, the side-by-side rows, what the real run says about
the balloon's speed and the stats' age."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

from balloon2395.sim.run import STARVED_PCT

from .plan import MIB, SAMPLE_S, Plan, Run

Doc = Dict[str, Any]  # JSON-shaped: what --json prints and the text report reads


def relief_s(run: Run, plan: Plan) -> Optional[float]:
    """From the ramp's start until usable is back at the band's minimum (or above) for good, before
    the free; 0 when it never fell below; None when it was still below at the free."""
    window = run.between(plan.ramp_start_s, plan.free_at_s)
    low = [i for i, p in enumerate(window) if p.below(plan.minimal)]
    if not low:
        return 0.0
    if low[-1] == len(window) - 1:
        return None
    return round(window[low[-1] + 1].t - plan.ramp_start_s, 1)


def settled_at(run: Run, plan: Plan) -> Optional[float]:
    """When the idle guest reached the size it holds at the ramp: the last change before the ramp."""
    before = [c.t for c in run.changes if c.t is not None and c.t < plan.ramp_start_s]
    return round(before[-1], 1) if before else None


def _mib(kib: Optional[int]) -> Optional[float]:
    return None if kib is None else round(kib / MIB, 1)


def _median(values: Sequence[float]) -> Optional[float]:
    return round(statistics.median(values), 2) if values else None


def _spans(run: Run) -> List[float]:
    """How long each point stood: until the next one (the last, one sampling period)."""
    times = [p.t for p in run.points]
    return [b - a for a, b in zip(times, times[1:])] + [SAMPLE_S] if times else []


def returned_gib(run: Run, plan: Plan) -> Optional[float]:
    """bench/control.py's RETURNED_GiB for this guest: what its balloon held back (maximum - actual), time
    average."""
    spans = _spans(run)
    if not spans:
        return None
    held = sum((plan.max_mib * MIB - p.actual_kib) * s for p, s in zip(run.points, spans))
    return round(held / sum(spans) / MIB ** 2, 2)


def starved_s(run: Run) -> float:
    """bench/control.py's STARVED_S for this swapless guest: seconds with usable under STARVED_PCT % of actual."""
    return round(sum(s for p, s in zip(run.points, _spans(run)) if p.pct < STARVED_PCT), 1)


def summary(run: Run, plan: Plan) -> Doc:
    """One run's figures: idle, through the ramp and the hold, at the end, and its counts."""
    idle = run.before(plan.ramp_start_s)
    held = run.before(plan.free_at_s)
    ramp = run.between(plan.ramp_start_s, plan.free_at_s)
    low = min(ramp, key=lambda p: p.pct, default=None)
    after = run.between(plan.ramp_start_s, plan.duration_s + 1)
    end = run.points[-1] if run.points else None
    grows = sum(c.action == "grow" for c in run.changes)
    return {
        "idle_actual_mib": _mib(idle.actual_kib) if idle else None,
        "idle_usable_pct": round(idle.pct, 1) if idle else None,
        "idle_used_mib": _mib(idle.actual_kib - idle.usable_kib) if idle else None,
        "idle_settled_at_s": settled_at(run, plan),
        "work_full_after_s": None if run.work_full_t is None else round(run.work_full_t - plan.ramp_start_s, 1),
        "lowest_usable_pct_ramp": round(low.pct, 1) if low else None,
        "lowest_usable_at_s": round(low.t, 1) if low else None,
        "relief_s": relief_s(run, plan),
        "peak_actual_mib": _mib(max(p.actual_kib for p in after)) if after else None,
        "held_actual_mib": _mib(held.actual_kib) if held else None,
        "held_used_mib": _mib(held.actual_kib - held.usable_kib) if held else None,
        "end_actual_mib": _mib(end.actual_kib) if end else None,
        "oom_kills": run.oom_kills,
        "oom_at_s": run.oom_at,
        "returned_gib": returned_gib(run, plan),
        "starved_s": starved_s(run),
        "setmem_calls": run.setmem_calls,
        "grows": grows,
        "shrinks": len(run.changes) - grows,
    }


def balloon_speed(run: Run) -> Doc:
    """Real run: how long after a change line the sampled actual reached its target, and the
    fastest move seen between two samples (a lower bound of the balloon's speed)."""
    delays = []
    for c in run.changes:
        if c.t is None:
            continue
        hit = next((p.t for p in run.points if p.t >= c.t - SAMPLE_S and abs(p.actual_kib - c.to_mib * MIB) <= MIB),
                   None)
        if hit is not None:
            delays.append(max(0.0, hit - c.t))
    rates = [abs(b.actual_kib - a.actual_kib) / MIB / (b.t - a.t)
             for a, b in zip(run.points, run.points[1:]) if b.t > a.t and b.actual_kib != a.actual_kib]
    ages = [p.stats_age_s for p in run.points if p.stats_age_s is not None]
    return {"target_reached_median_s": _median(delays),
            "target_reached_max_s": round(max(delays), 2) if delays else None,
            "fastest_move_mib_s": round(max(rates)) if rates else None,
            "stats_age_median_s": _median(ages), "stats_age_max_s": round(max(ages), 2) if ages else None}


def mean_abs_diff(sim: Run, real: Run) -> Dict[str, Optional[float]]:
    """Over every simulated second that has a real sample within a sampling period."""
    pairs = [(s, r) for s in sim.points for r in (real.at(s.t),) if r is not None]
    if not pairs:
        return {"actual_mib": None, "usable_pct": None, "seconds": 0}
    return {"actual_mib": round(statistics.fmean(abs(s.actual_kib - r.actual_kib) / MIB for s, r in pairs), 1),
            "usable_pct": round(statistics.fmean(abs(s.pct - r.pct) for s, r in pairs), 1),
            "seconds": len(pairs)}


def side_by_side(sim: Run, real: Run, plan: Plan, every: float) -> List[Doc]:
    """Both runs every `every` seconds from 0 to the end; a side without a sample near a time shows None."""
    rows, t = [], 0.0
    while t <= plan.duration_s + 1e-9:
        s, r = sim.at(t), real.at(t)
        rows.append({
            "t": t, "phase": phase(plan, t),
            "sim_actual_mib": _mib(s.actual_kib) if s else None, "sim_usable_pct": round(s.pct, 1) if s else None,
            "sim_work_mib": round(s.work_mib) if s and s.work_mib is not None else None,
            "real_actual_mib": _mib(r.actual_kib) if r else None, "real_usable_pct": round(r.pct, 1) if r else None,
            "real_work_mib": round(r.work_mib) if r and r.work_mib is not None else None,
        })
        t += every
    return rows


def phase(plan: Plan, t: float) -> str:
    if t < plan.ramp_start_s:
        return "idle"
    if t < plan.ramp_full_s:
        return "ramp"
    if t < plan.free_at_s:
        return "hold"
    return "freed"


def detail(sim: Run, real: Run, plan: Plan) -> List[Doc]:
    """Per second where it moves fast: the ramp and the free."""
    windows = [(plan.ramp_start_s - 1, plan.ramp_full_s + 12), (plan.free_at_s - 1, plan.free_at_s + 12)]
    rows: List[Doc] = []
    for a, b in windows:
        rows += [r for r in side_by_side(sim, real, plan, 1.0) if a <= r["t"] <= min(b, plan.duration_s)]
        rows.append({})  # a gap between the windows
    return rows[:-1]


@dataclass
class Comparison:
    policy: str
    plan: Plan
    sim: Run
    real: Run
    every: float
    model: Doc

    def as_dict(self) -> Doc:
        """The whole comparison, as --json prints it and render() reads it."""
        return {
            "policy": self.policy, "plan": asdict(self.plan), "model": self.model,
            "summary": {"sim": summary(self.sim, self.plan), "real": summary(self.real, self.plan)},
            "mean_abs_diff": mean_abs_diff(self.sim, self.real),
            "real_balloon": balloon_speed(self.real),
            "real_notes": self.real.notes,
            "changes": {src: [asdict(c) for c in run.changes] for src, run in (("sim", self.sim), ("real", self.real))},
            "rows": side_by_side(self.sim, self.real, self.plan, self.every),
            "detail": detail(self.sim, self.real, self.plan),
            "points": {src: [asdict(p) for p in run.points] for src, run in (("sim", self.sim), ("real", self.real))},
        }
