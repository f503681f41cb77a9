"""Calibration, the real side: a Plan replayed on a real guest under the real daemon, in wall time.

A busybox guest of the plan's current / maximum size is booted, the real `balloon-2395 --policy P` runs
against it (every other domain excluded by its config, its own lock dir, its log in a file), the guest's
memory hog starts at the ramp time, grows at the plan's rate up to its size and is freed at the plan's
time; dommemstat is sampled every SAMPLE_S. After the run, with the daemon stopped, probe() measures the
guest facts the model has constants for.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from balloon2395_testkit.daemon_process import DaemonProcess
from balloon2395_testkit.guest_channel import GuestError
from balloon2395_testkit.guests import Guest, GuestFactory
from balloon2395_testkit.waiting import HarnessError

from .plan import MIB, SAMPLE_S, Change, Plan, Point, Run, logged_changes, parse_change

RAMP_STEP_S = 0.2  # the real hog grows every 200 ms: close to the model's linear rise
HOG = "work"
MEMINFO_AT_BOOT = ("MemTotal", "MemFree", "MemAvailable", "Cached", "AnonPages", "Shmem", "Slab")
MEMINFO_PROBED = ("MemTotal", "MemFree", "MemAvailable", "Cached", "Shmem", "AnonPages", "Slab", "SReclaimable",
                  "SUnreclaim", "KernelStack", "PageTables", "Percpu")

T = TypeVar("T")


def attempt(what: Callable[[], T], default: T) -> T:
    """A guest command that may fail under memory pressure: a missing reading, not an abort."""
    try:
        return what()
    except (GuestError, HarnessError, OSError, subprocess.TimeoutExpired):
        return default


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def ramp_steps(plan: Plan) -> Tuple[int, int]:
    """(MiB per step, ms between steps) of the real hog: the plan's rate in steps of about RAMP_STEP_S."""
    step_mib = max(1, round(plan.ramp_rate_mib_s * RAMP_STEP_S))
    return step_mib, round(step_mib / plan.ramp_rate_mib_s * 1000)


def picked(meminfo: Dict[str, int], keys: Tuple[str, ...]) -> Dict[str, int]:
    return {k: meminfo[k] for k in keys if k in meminfo}


# --------------------------------------------------------------------- sampling
class ChangeLog:
    """The daemon's text log read as it grows: the new change lines of one guest, complete lines only."""

    def __init__(self, path: Path, guest: str) -> None:
        self.path, self.guest = path, guest
        self._offset = 0
        self._pending = ""  # a line the daemon has not finished writing

    def read(self, now: float) -> List[Change]:
        """The change lines written since the last read, stamped `now` (when first seen)."""
        try:
            with open(self.path, "r", errors="replace") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except OSError:
            return []
        *lines, self._pending = (self._pending + text).split("\n")
        return [Change(now, *c) for c in (parse_change(line, self.guest) for line in lines) if c is not None]


class Sampler:
    """In the background, every SAMPLE_S on a fixed grid from t0: the guest's dommemstat, and the daemon's
    new change lines (stamped when first seen, so to within a sampling period)."""

    def __init__(self, guest: Guest, daemon_log: Path, t0: float) -> None:
        self.guest, self.t0 = guest, t0
        self.log = ChangeLog(daemon_log, guest.name)
        self.points: List[Point] = []
        self.changes: List[Change] = []
        self.work_mib: Optional[float] = None  # set by the main thread
        self.errors = 0
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
        self.changes += self.log.read(time.monotonic() - self.t0)

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

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._read_log()


# --------------------------------------------------------------------- the replay
@dataclass
class Watch:
    """What the main thread saw of the hog and the OOM killer while the workload was held."""

    oom_seen: int
    oom_at: List[float] = field(default_factory=list)
    work_full: Optional[float] = None  # when the hog first held all of it


def hold_workload(g: Guest, sampler: Sampler, plan: Plan, t0: float, oom_before: int) -> Watch:
    """Until the plan's free time: the hog's size to the sampler, when it was full, every OOM kill."""
    watch = Watch(oom_before)
    while time.monotonic() < t0 + plan.free_at_s:
        status = attempt(lambda: g.hog_status(HOG), None)
        if status is not None:
            alive, held = status
            sampler.work_mib = float(held) if alive else 0.0
            if watch.work_full is None and alive and held >= plan.ramp_top_mib:
                watch.work_full = time.monotonic() - t0
        kills = attempt(g.oom_kills, None)
        if kills is not None and kills > watch.oom_seen:
            watch.oom_at += [round(time.monotonic() - t0, 1)] * (kills - watch.oom_seen)
            watch.oom_seen = kills
        time.sleep(SAMPLE_S)
    return watch


def boot(factory: GuestFactory, plan: Plan, policy: str) -> Tuple[Guest, Dict[str, object]]:
    """The plan's guest, booted with fresh stats; notes: how long that took, its meminfo then."""
    boot_t = time.monotonic()
    g = factory.create(f"calib-{policy}", current_mib=plan.current_mib, max_mib=plan.max_mib,
                       stats_period=plan.stats_period_s or None)
    g.wait_fresh_stats()
    notes: Dict[str, object] = {"boot_s": round(time.monotonic() - boot_t, 1)}
    notes["boot_meminfo_kib"] = picked(attempt(g.meminfo, {}), MEMINFO_AT_BOOT)
    return g, notes


def replay(plan: Plan, policy: str, log_dir: Path, probing: bool = True) -> Run:
    """The scenario on a real guest, in wall time, under the real daemon; the daemon's log copied to log_dir."""
    step_mib, interval_ms = ramp_steps(plan)
    with GuestFactory() as factory:
        g, notes = boot(factory, plan, policy)
        oom_before = g.oom_kills()
        daemon = DaemonProcess(Path(tempfile.mkdtemp(prefix="daemon-", dir=factory.workdir)), g.name,
                               "--policy", policy)
        t0 = time.monotonic()
        with Sampler(g, daemon.log_path, t0) as sampler, daemon:
            sleep_until(t0 + plan.ramp_start_s)
            g.ramp(HOG, step_mib, plan.ramp_top_mib, interval_ms)
            notes["ramp_started_at_s"] = round(time.monotonic() - t0, 2)
            watch = hold_workload(g, sampler, plan, t0, oom_before)
            attempt(lambda: g.free(HOG), None)
            sampler.work_mib = 0.0
            notes["freed_at_s"] = round(time.monotonic() - t0, 2)
            sleep_until(t0 + plan.duration_s)
            exit_code = daemon.stop()
        oom_after = attempt(g.oom_kills, watch.oom_seen)
        log = daemon.log()
        log_copy = log_dir / f"daemon-{policy}.log"
        log_copy.write_text(log)
        notes.update(daemon_exit=exit_code, daemon_log=str(log_copy), sample_errors=sampler.errors,
                     ramp=f"{step_mib} MiB every {interval_ms} ms up to {plan.ramp_top_mib} MiB")
        # every change line of the whole log: the count never depends on the sampler having seen it
        logged = logged_changes(log, g.name)
        notes.update(log_notes(log, len(logged), len(sampler.changes)))
        if probing:
            idle = [p for p in sampler.points if p.t < plan.ramp_start_s]
            size = idle[-1].actual_kib // MIB if idle else plan.current_mib
            notes["probe"] = attempt(lambda: probe(g, size, plan.max_mib), None) or "failed"
        return Run("real", sampler.points, sampler.changes, oom_after - oom_before, len(logged), watch.oom_at,
                   watch.work_full, notes)


def log_notes(log: str, logged: int, stamped: int) -> Dict[str, object]:
    """What the daemon's log says beyond its changes: a traceback, change lines the sampler never stamped."""
    notes: Dict[str, object] = {}
    if "Traceback" in log:
        notes["daemon_traceback"] = True
    if stamped != logged:
        notes["changes_unstamped"] = logged - stamped
    return notes


# --------------------------------------------------------------------- the probe
def balloon_move(g: Guest, to_kib: int) -> Dict[str, float]:
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


def wait_for_hog_end(g: Guest, name: str, top_mib: int, timeout: float = 60.0) -> Tuple[bool, int]:
    """(alive, MiB held) once the hog died or holds `top_mib`."""
    deadline, last = time.monotonic() + timeout, (True, 0)
    while time.monotonic() < deadline:
        status = attempt(lambda: g.hog_status(name), None)
        if status is not None:
            last = status
            if not status[0] or status[1] >= top_mib:
                return status
        time.sleep(0.2)
    return last


def probe(g: Guest, size_mib: int, max_mib: int) -> Dict[str, object]:
    """Facts of the real guest the model has constants for, measured with the daemon stopped:
    balloon speed both ways, memory outside MemTotal, and how much a process can hold at `size_mib`
    before the OOM killer takes it (no swap)."""
    out: Dict[str, object] = {"size_mib": size_mib}
    g.setmem_kib(size_mib * MIB)
    g.wait_actual(size_mib * MIB)
    up = min(max_mib, size_mib + 400)
    out["deflate"] = balloon_move(g, up * MIB)  # the guest grows
    out["inflate"] = balloon_move(g, size_mib * MIB)  # the guest shrinks
    g.wait_fresh_stats()
    stats = g.wait_fresh_stats()  # a report from a whole period after the move
    mi = g.meminfo()
    out["usable_mib"] = round(stats["usable"] / MIB, 1)
    out["outside_memtotal_mib"] = round((size_mib * MIB - mi["MemTotal"]) / MIB, 1)
    out["meminfo_kib"] = picked(mi, MEMINFO_PROBED)
    ooms = g.oom_kills()
    g.ramp("probe", 4, size_mib, 40)  # 100 MiB/s in 4 MiB steps, until the OOM killer stops it
    out["capacity_mib"] = wait_for_hog_end(g, "probe", size_mib)[1]
    out["capacity_oom_killed"] = g.oom_kills() > ooms
    attempt(lambda: g.free("probe"), None)
    return out
