#!/usr/bin/env python3
"""Calibration: the `calibrate` scenario in the simulator and on a real guest, side by side.

    sudo .venv/bin/python bench/calibrate.py [--policy step|target] [--json] [--every S] [--duration S]
                                             [--scenario NAME|PATH] [--seed N] [--save FILE] [--no-probe]

For each policy (default: step and target):
  1. the scenario runs in the simulator, in virtual time (the real daemon's code against the model);
  2. the same scenario is replayed on a real guest with the end-to-end harness (tests/e2e/harness.py):
     a busybox guest of the scenario's current / maximum size is booted, the real `balloon-2395
     --policy P` runs against it (every other domain excluded by its config, its own lock dir, its
     log in a file), the guest's memory hog starts at the scenario's ramp time, grows at the
     scenario's rate up to its size and is freed at the scenario's time; dommemstat is sampled
     every 0.5 s.
It prints, per policy, the two runs every --every seconds (actual MiB, usable %) and a summary:
the idle size reached before the ramp, the lowest usable % during it, the time from the ramp's
start until usable is back at the band's minimum, peak actual, OOM kills, setmem calls (the
daemon's grow/shrink log lines), the mean absolute difference of actual and usable %, and what the
real run says about stats lag and balloon speed. After each real run, with the daemon stopped, it
measures the guest facts the model has constants for (balloon speed both ways, memory outside
MemTotal, how much a process can hold before the OOM killer takes it) and prints them next to the
model's values (--no-probe skips that).

Needs root, libvirt and the e2e guest assets (sudo bash tests/e2e/prepare.sh); exits 2 with the
reason when they are missing. Only domains it creates (b2395e2e-*) are touched, and removed after.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "tests"))  # `e2e` is a regular package: it wins over any other on the path

from balloon2395 import PROG  # noqa: E402
from balloon2395.config import Config  # noqa: E402
from balloon2395.policy import POLICIES  # noqa: E402
from balloon2395.sim.model import BALLOON_KIB_S, capacity_kib  # noqa: E402
from balloon2395.sim.run import run_scenario  # noqa: E402
from balloon2395.sim.scenario import Scenario, ScenarioError, load  # noqa: E402
from e2e.harness import DAEMON, DaemonProcess, Guest, GuestError, GuestFactory, HarnessError, check_prerequisites  # noqa: E402

MIB = 1024  # KiB
SAMPLE_S = 0.5  # real dommemstat sampling period
RAMP_STEP_S = 0.2  # the real hog grows every 200 ms: close to the model's linear rise
HOG = "work"
CHANGE = re.compile(r"INFO (grow|shrink) (\S+) (\d+) -> (\d+) MiB")
PROG_NAME = "calibrate.py"


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


# --------------------------------------------------------------------- the simulator
class _Changes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def model_facts(scenario: Scenario, plan: Plan, size_mib: int) -> Dict[str, object]:
    """The model's counterparts of what probe() measures on the real guest."""
    g = next(p for p in scenario.guests if p.name == plan.guest)
    spec = g.spec
    return {"size_mib": size_mib, "balloon_mib_s": BALLOON_KIB_S // MIB,
            "outside_memtotal_mib": round(spec.reserved_kib / MIB, 1),
            "capacity_mib": round((capacity_kib(spec, size_mib * MIB) - spec.base_anon_kib) / MIB, 1)}


def simulate(scenario: Scenario, plan: Plan, policy: str, seed: int, config: Config) -> Run:
    """The scenario in virtual time; setmem calls from the daemon's own log lines."""
    logger = logging.getLogger(PROG)
    handler, saved = _Changes(), (logger.level, logger.propagate)
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
    # A change's time: the first second whose balloon target is the one the log line names.
    changes, i = [], 0
    for line in handler.lines:
        m = re.match(r"(grow|shrink) (\S+) (\d+) -> (\d+) MiB", line)
        if not m or m.group(2) != plan.guest:
            continue
        to_mib = int(m.group(4))
        while i < len(g.series) and g.series[i].target_kib // MIB != to_mib:
            i += 1
        changes.append(Change(float(g.series[i].t_s) if i < len(g.series) else None, m.group(1),
                              int(m.group(3)), to_mib))
    oom_at = [float(b.t_s) for a, b in zip(g.series, g.series[1:]) if b.oom_kills > a.oom_kills]
    work_full = next((p.t for p in points if p.work_mib is not None and p.work_mib >= plan.ramp_top_mib), None)
    return Run("sim", points, changes, g.oom_kills, g.setmem_calls, oom_at, work_full)


# --------------------------------------------------------------------- the real guest
class Sampler:
    """In the background, every SAMPLE_S: the guest's dommemstat, and the daemon's new change lines
    (stamped when first seen, so to within a sampling period)."""

    def __init__(self, guest: Guest, daemon_log: Path, t0: float) -> None:
        self.guest, self.daemon_log, self.t0 = guest, daemon_log, t0
        self.points: List[Point] = []
        self.changes: List[Change] = []
        self.work_mib: Optional[float] = None  # set by the main thread
        self.errors = 0
        self._offset = 0
        self._pending = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            stats = self.guest.dommemstat()
        except (HarnessError, OSError, subprocess.TimeoutExpired):
            self.errors += 1
            return
        now = time.monotonic()
        if "actual" in stats and "usable" in stats and stats["actual"] > 0:
            age = time.time() - stats["last_update"] if "last_update" in stats else None
            self.points.append(Point(now - self.t0, stats["actual"], stats["usable"], self.work_mib, age))

    def _read_log(self) -> None:
        try:
            with open(self.daemon_log, "r", errors="replace") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except OSError:
            return
        now = time.monotonic() - self.t0
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            m = CHANGE.search(line)
            if m and m.group(2) == self.guest.name:
                self.changes.append(Change(now, m.group(1), int(m.group(3)), int(m.group(4))))

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self._sample()
            self._read_log()
            tick += 1
            # on a fixed grid from t0; a slow virsh call skips slots instead of drifting
            delay = self.t0 + tick * SAMPLE_S - time.monotonic()
            while delay < 0:
                tick += 1
                delay += SAMPLE_S
            self._stop.wait(delay)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._read_log()


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def _try(what, default=None):
    """A guest command that may fail under memory pressure: a missing reading, not an abort."""
    try:
        return what()
    except (GuestError, HarnessError, OSError, subprocess.TimeoutExpired):
        return default


def _balloon_move(g: Guest, to_kib: int) -> Dict[str, float]:
    """setmem, then poll `actual` as fast as virsh answers: seconds until it is there, and MiB/s
    (a lower bound: one virsh call, ~30 ms, is the resolution)."""
    start_kib = g.dommemstat()["actual"]
    t = time.monotonic()
    g.setmem_kib(to_kib)
    polls = 0
    while True:
        polls += 1
        if abs(g.dommemstat()["actual"] - to_kib) <= MIB:
            break
        if time.monotonic() - t > 30:
            raise HarnessError(f"{g.name}: actual never reached {to_kib} KiB")
    took = time.monotonic() - t
    return {"mib": abs(to_kib - start_kib) // MIB, "s": round(took, 3), "polls": polls,
            "mib_s": round(abs(to_kib - start_kib) / MIB / took)}


def probe(g: Guest, size_mib: int, max_mib: int) -> Dict[str, object]:
    """Facts of the real guest the model has constants for, measured with the daemon stopped:
    balloon speed both ways, memory outside MemTotal, and how much a process can hold at `size_mib`
    before the OOM killer takes it (no swap)."""
    out: Dict[str, object] = {"size_mib": size_mib}
    g.setmem_kib(size_mib * MIB)
    g.wait_actual(size_mib * MIB)
    up = min(max_mib, size_mib + 400)
    out["deflate"] = _balloon_move(g, up * MIB)  # the guest grows
    out["inflate"] = _balloon_move(g, size_mib * MIB)  # the guest shrinks
    g.wait_fresh_stats()
    stats = g.wait_fresh_stats()  # a report from a whole period after the move
    mi = g.meminfo()
    out["usable_mib"] = round(stats["usable"] / MIB, 1)
    out["outside_memtotal_mib"] = round((size_mib * MIB - mi["MemTotal"]) / MIB, 1)
    out["meminfo_kib"] = {k: mi[k] for k in ("MemTotal", "MemFree", "MemAvailable", "Cached", "Shmem", "AnonPages",
                                             "Slab", "SReclaimable", "SUnreclaim", "KernelStack", "PageTables",
                                             "Percpu") if k in mi}
    ooms = g.oom_kills()
    g.ramp("probe", 4, size_mib, 40)  # 100 MiB/s in 4 MiB steps, until the OOM killer stops it
    dead = wait_for_hog_end(g, "probe", size_mib)
    out["capacity_mib"] = dead[1]
    out["capacity_oom_killed"] = g.oom_kills() > ooms
    _try(lambda: g.free("probe"))
    return out


def wait_for_hog_end(g: Guest, name: str, top_mib: int, timeout: float = 60.0) -> Tuple[bool, int]:
    """(alive, MiB held) once the hog died or holds `top_mib`."""
    deadline, last = time.monotonic() + timeout, (True, 0)
    while time.monotonic() < deadline:
        status = _try(lambda: g.hog_status(name))
        if status is not None:
            last = status
            if not status[0] or status[1] >= top_mib:
                return status
        time.sleep(0.2)
    return last


def replay(plan: Plan, policy: str, log_dir: Path, probing: bool = True) -> Run:
    """The scenario on a real guest, in wall time, under the real daemon."""
    step_mib = max(1, round(plan.ramp_rate_mib_s * RAMP_STEP_S))
    interval_ms = round(step_mib / plan.ramp_rate_mib_s * 1000)
    notes: Dict[str, object] = {}
    with GuestFactory() as factory:
        boot_t = time.monotonic()
        g = factory.create(f"calib-{policy}", current_mib=plan.current_mib, max_mib=plan.max_mib,
                           stats_period=plan.stats_period_s or None)
        g.wait_fresh_stats()
        notes["boot_s"] = round(time.monotonic() - boot_t, 1)
        meminfo = _try(g.meminfo, {})
        notes["boot_meminfo_kib"] = {k: meminfo[k] for k in ("MemTotal", "MemFree", "MemAvailable", "Cached",
                                                              "AnonPages", "Shmem", "Slab") if k in meminfo}
        oom_before = g.oom_kills()
        workdir = Path(tempfile.mkdtemp(prefix="daemon-", dir=factory.workdir))
        daemon = DaemonProcess(workdir, g.name, "--policy", policy)
        t0 = time.monotonic()
        oom_at: List[float] = []
        work_full: Optional[float] = None
        with Sampler(g, daemon.log_path, t0) as sampler, daemon:
            oom_seen = oom_before
            _sleep_until(t0 + plan.ramp_start_s)
            g.ramp(HOG, step_mib, plan.ramp_top_mib, interval_ms)
            notes["ramp_started_at_s"] = round(time.monotonic() - t0, 2)
            while time.monotonic() < t0 + plan.free_at_s:
                status = _try(lambda: g.hog_status(HOG))
                if status is not None:
                    alive, held = status
                    sampler.work_mib = float(held) if alive else 0.0
                    if work_full is None and alive and held >= plan.ramp_top_mib:
                        work_full = time.monotonic() - t0
                kills = _try(g.oom_kills)
                if kills is not None and kills > oom_seen:
                    oom_at += [round(time.monotonic() - t0, 1)] * (kills - oom_seen)
                    oom_seen = kills
                time.sleep(SAMPLE_S)
            _try(lambda: g.free(HOG))
            sampler.work_mib = 0.0
            notes["freed_at_s"] = round(time.monotonic() - t0, 2)
            _sleep_until(t0 + plan.duration_s)
            exit_code = daemon.stop()
        oom_after = _try(g.oom_kills, oom_seen)
        log = daemon.log()
        log_copy = log_dir / f"daemon-{policy}.log"
        log_copy.write_text(log)
        notes.update(daemon_exit=exit_code, daemon_log=str(log_copy), sample_errors=sampler.errors,
                     ramp=f"{step_mib} MiB every {interval_ms} ms up to {plan.ramp_top_mib} MiB")
        if "Traceback" in log:
            notes["daemon_traceback"] = True
        # every change line of the whole log: the count never depends on the sampler having seen it
        logged = [m for m in map(CHANGE.search, log.splitlines()) if m and m.group(2) == g.name]
        changes = sampler.changes
        if len(changes) != len(logged):
            notes["changes_unstamped"] = len(logged) - len(changes)
        if probing:
            idle = [p for p in sampler.points if p.t < plan.ramp_start_s]
            size = idle[-1].actual_kib // MIB if idle else plan.current_mib
            notes["probe"] = _try(lambda: probe(g, size, plan.max_mib), "failed")
        return Run("real", sampler.points, changes, oom_after - oom_before, len(logged), oom_at, work_full, notes)


# --------------------------------------------------------------------- comparison
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


def summary(run: Run, plan: Plan) -> Dict[str, object]:
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
        "setmem_calls": run.setmem_calls,
        "grows": grows,
        "shrinks": len(run.changes) - grows,
    }


def balloon_speed(run: Run) -> Dict[str, object]:
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
    return {"target_reached_median_s": _median(delays), "target_reached_max_s": round(max(delays), 2) if delays else None,
            "fastest_move_mib_s": round(max(rates)) if rates else None,
            "stats_age_median_s": _median(ages), "stats_age_max_s": round(max(ages), 2) if ages else None}


def mean_abs_diff(sim: Run, real: Run) -> Dict[str, Optional[float]]:
    """Over every simulated second that has a real sample within a sampling period."""
    pairs = [(s, real.at(s.t)) for s in sim.points]
    pairs = [(s, r) for s, r in pairs if r is not None]
    if not pairs:
        return {"actual_mib": None, "usable_pct": None, "seconds": 0}
    return {"actual_mib": round(statistics.fmean(abs(s.actual_kib - r.actual_kib) / MIB for s, r in pairs), 1),
            "usable_pct": round(statistics.fmean(abs(s.pct - r.pct) for s, r in pairs), 1),
            "seconds": len(pairs)}


def side_by_side(sim: Run, real: Run, plan: Plan, every: float) -> List[Dict[str, object]]:
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


def detail(sim: Run, real: Run, plan: Plan) -> List[Dict[str, object]]:
    """Per second where it moves fast: the ramp and the free."""
    windows = [(plan.ramp_start_s - 1, plan.ramp_full_s + 12), (plan.free_at_s - 1, plan.free_at_s + 12)]
    rows: List[Dict[str, object]] = []
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
    model: Dict[str, object]

    def as_dict(self) -> Dict[str, object]:
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


# --------------------------------------------------------------------- text output
def _fmt(v: object, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _diff(sim: object, real: object, pct: bool = False) -> str:
    if not isinstance(sim, (int, float)) or not isinstance(real, (int, float)):
        return "-"
    d = f"{real - sim:+.1f}"
    if pct and sim:
        d += f" ({(real - sim) * 100.0 / sim:+.0f}%)"
    return d


def _rows_table(rows: List[Dict[str, object]]) -> List[str]:
    head = ("t", "phase", "sim MiB", "sim use%", "sim work", "real MiB", "real use%", "real work", "Δ MiB", "Δ use%")
    cells = [head]
    for r in rows:
        if not r:
            cells.append(("...",) + ("",) * (len(head) - 1))
            continue
        cells.append((f"{r['t']:g}", r["phase"], _fmt(r["sim_actual_mib"]), _fmt(r["sim_usable_pct"]),
                      _fmt(r["sim_work_mib"]), _fmt(r["real_actual_mib"]), _fmt(r["real_usable_pct"]),
                      _fmt(r["real_work_mib"]),
                      _diff(r["sim_actual_mib"], r["real_actual_mib"]).split(".")[0],
                      _diff(r["sim_usable_pct"], r["real_usable_pct"]).split(".")[0]))
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return ["  ".join(x.rjust(w) if i != 1 else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
            for row in cells]


def _probe_lines(model: Dict[str, object], probe: object) -> List[str]:
    if not isinstance(probe, dict):
        return [f"real guest probe: {probe}"]
    d, i = probe["deflate"], probe["inflate"]
    return [
        f"guest facts at {probe['size_mib']} MiB, daemon stopped (model -> real):",
        f"  balloon speed: {model['balloon_mib_s']} MiB/s -> grow {d['mib']} MiB in {d['s']:.2f} s "
        f"(>= {d['mib_s']} MiB/s), shrink {i['mib']} MiB in {i['s']:.2f} s (>= {i['mib_s']} MiB/s)",
        f"  memory outside MemTotal: {model['outside_memtotal_mib']:g} -> {probe['outside_memtotal_mib']:g} MiB",
        f"  a workload's most before the OOM killer (no swap): {model['capacity_mib']:g} -> "
        f"{probe['capacity_mib']} MiB{'' if probe['capacity_oom_killed'] else ' (not OOM-killed!)'}",
        f"  usable when idle: {probe['usable_mib']:g} MiB; meminfo kB: "
        + ", ".join(f"{k} {v}" for k, v in probe["meminfo_kib"].items()),
    ]


def render(c: Dict[str, object]) -> str:
    plan, out = c["plan"], []
    out.append(f"== {plan['scenario']} / policy {c['policy']}: {plan['current_mib']} MiB current / "
               f"{plan['max_mib']} MiB max, band {plan['minimal']:g}-{plan['maximal']:g}%, workload "
               f"+{plan['ramp_rate_mib_s']:g} MiB/s from t={plan['ramp_start_s']:g}s up to {plan['ramp_top_mib']} MiB, "
               f"freed at t={plan['free_at_s']:g}s, {plan['duration_s']:g}s ==")
    out += _rows_table(c["rows"])
    out += ["", "per second through the ramp and the free:"] + _rows_table(c["detail"])
    s, r = c["summary"]["sim"], c["summary"]["real"]
    lines = [
        ("idle size before the ramp (MiB)", "idle_actual_mib", True),
        ("idle usable %", "idle_usable_pct", False),
        ("idle used = actual - usable (MiB)", "idle_used_mib", True),
        ("idle size reached at (s)", "idle_settled_at_s", False),
        ("workload fully held after ramp start (s)", "work_full_after_s", False),
        ("lowest usable % during the ramp/hold", "lowest_usable_pct_ramp", False),
        ("  ... at (s)", "lowest_usable_at_s", False),
        (f"ramp start -> usable >= {plan['minimal']:g}% for good (s; 0: never below)", "relief_s", False),
        ("peak actual from the ramp on (MiB)", "peak_actual_mib", True),
        ("size holding the workload (MiB)", "held_actual_mib", True),
        ("used holding the workload (MiB)", "held_used_mib", True),
        ("size at the end (MiB)", "end_actual_mib", True),
        ("OOM kills", "oom_kills", False),
        ("setmem calls", "setmem_calls", False),
        ("  grows / shrinks", None, False),
    ]
    out.append("")
    cells = [("summary", "sim", "real", "real - sim")]
    for label, key, pct in lines:
        if key is None:
            cells.append((label, f"{s['grows']} / {s['shrinks']}", f"{r['grows']} / {r['shrinks']}", ""))
        else:
            cells.append((label, _fmt(s[key], 1), _fmt(r[key], 1), _diff(s[key], r[key], pct)))
    if s["oom_at_s"] or r["oom_at_s"]:
        cells.append(("  OOM kill at (s)", ",".join(f"{x:g}" for x in s["oom_at_s"]) or "-",
                      ",".join(f"{x:g}" for x in r["oom_at_s"]) or "-", ""))
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    out += ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
            for row in cells]
    m, b = c["mean_abs_diff"], c["real_balloon"]
    out.append(f"mean |sim - real| over {m['seconds']} s: actual {_fmt(m['actual_mib'], 1)} MiB, "
               f"usable {_fmt(m['usable_pct'], 1)} percentage points")
    out.append(f"real balloon: actual at a change's target after {_fmt(b['target_reached_median_s'], 1)} s median "
               f"(max {_fmt(b['target_reached_max_s'], 1)} s, sampled every {SAMPLE_S:g} s); fastest move seen "
               f"{_fmt(b['fastest_move_mib_s'])} MiB/s; usable figure {_fmt(b['stats_age_median_s'], 1)} s old "
               f"median (max {_fmt(b['stats_age_max_s'], 1)} s; last_update is whole seconds, so up to 1 s high)")
    for src in ("sim", "real"):
        ch = c["changes"][src]
        out.append(f"{src} changes: " + (", ".join(
            f"{_fmt(x['t'], 1)}s {x['action']} {x['from_mib']}->{x['to_mib']}" for x in ch) or "none"))
    n = dict(c["real_notes"])
    probe_result = n.pop("probe", None)
    out.append("real run: " + ", ".join(f"{k} {v}" for k, v in n.items()))
    if probe_result is not None:
        out += _probe_lines(c["model"], probe_result)
    return "\n".join(out)


# --------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", action="append", choices=sorted(POLICIES),
                        help="only this policy (repeatable; default: step and target)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--every", type=float, default=5.0, metavar="S", help="side-by-side rows every S seconds (5)")
    parser.add_argument("--duration", type=float, metavar="S", help="seconds to run (default: the scenario's)")
    parser.add_argument("--scenario", default="calibrate", metavar="NAME|PATH", help="default: calibrate")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON object to FILE")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip measuring the real guest's balloon speed, reserved memory and OOM point after each run")
    args = parser.parse_args(argv)
    policies = args.policy or ["step", "target"]
    config = Config()
    try:
        scenario = load(args.scenario)
        plan = Plan.of(scenario, args.duration, config)
    except ScenarioError as exc:
        print(f"{PROG_NAME}: {exc}", file=sys.stderr)
        return 2
    if plan.free_at_s > plan.duration_s:
        print(f"{PROG_NAME}: --duration {plan.duration_s:g} ends before the workload is freed "
              f"(t={plan.free_at_s:g}s)", file=sys.stderr)
        return 2
    reason = check_prerequisites()
    if reason is None and not os.access(DAEMON, os.X_OK):
        reason = f"{DAEMON} is not executable"
    if reason:
        print(f"{PROG_NAME}: cannot replay on a real guest: {reason}", file=sys.stderr)
        return 2

    log_dir = Path(tempfile.mkdtemp(prefix="balloon-2395-calibrate-"))
    started = time.monotonic()
    results = []
    for policy in policies:
        print(f"{PROG_NAME}: {policy}: simulating, then replaying on a real guest "
              f"(~{plan.duration_s + 15:.0f}s)", file=sys.stderr, flush=True)
        sim = simulate(scenario, plan, policy, args.seed, config)
        try:
            real = replay(plan, policy, log_dir, probing=not args.no_probe)
        except (HarnessError, subprocess.SubprocessError, OSError) as exc:
            print(f"{PROG_NAME}: {policy}: the real replay failed (its guest is removed): {exc}", file=sys.stderr)
            return 1
        probed = real.notes.get("probe")
        size = probed["size_mib"] if isinstance(probed, dict) else plan.current_mib
        results.append(Comparison(policy, plan, sim, real, args.every, model_facts(scenario, plan, size)).as_dict())
        if not args.json:
            print(render(results[-1]) + "\n", flush=True)
    elapsed = time.monotonic() - started
    document = {"scenario": plan.scenario, "elapsed_s": round(elapsed, 1), "runs": results}
    if args.json:
        print(json.dumps(document, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(document, indent=2) + "\n")
    print(f"{PROG_NAME}: {len(results)} policies in {elapsed:.0f}s; daemon logs in {log_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
