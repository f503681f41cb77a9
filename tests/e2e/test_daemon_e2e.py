"""balloon-2395 against real libvirt, QEMU and Linux guests with the virtio balloon driver.

Each test runs the real `balloon-2395` executable as a subprocess, restricted
by its config to this run's guests (every other domain on the host is
excluded), and ends it by PID.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Dict, List, Optional

import pytest

from balloon2395_testkit.daemon_process import DaemonProcess
from balloon2395_testkit.guests import Guest, GuestFactory
from balloon2395_testkit.waiting import wait_for

from .libvirtd import restart_recorded_libvirtd

MIB = 1024


class Daemon(DaemonProcess):
    """balloon-2395 for this run's guests only."""

    def __init__(self, factory: GuestFactory, *args: str, config: str = "") -> None:
        super().__init__(factory.workdir / f"daemon-{time.monotonic_ns()}", factory.name_for("*"), *args,
                         config=config)

    def changes(self, name: str) -> List[re.Match]:
        pattern = re.compile(rf"INFO (grow|shrink) {re.escape(name)} (\d+) -> (\d+) MiB: (.*)")
        return [m for m in map(pattern.search, self.log().splitlines()) if m]


class Sampler:
    """Samples a guest's balloon figures in the background (for never-above / never-below checks)."""

    def __init__(self, guest: Guest, every: float = 0.25) -> None:
        self.guest, self.every = guest, every
        self.samples: List[Dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self.guest.dommemstat()
                stats["t"] = time.monotonic()
                self.samples.append(stats)
            except Exception:  # noqa: BLE001 - a missed sample is not a failure
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def actuals_mib(self) -> List[float]:
        return [s["actual"] / MIB for s in self.samples if "actual" in s]


@pytest.fixture
def daemons(guest_factory):
    started: List[Daemon] = []

    def start(*args: str, config: str = "", run: bool = True) -> Daemon:
        d = Daemon(guest_factory, *args, config=config)
        started.append(d)
        return d.start() if run else d

    yield start
    for d in started:
        d.stop()


def usable_pct(stats: Dict[str, int]) -> float:
    return stats["usable"] * 100.0 / stats["actual"]


def in_band(guest: Guest, lo: float, hi: float) -> Optional[Dict[str, int]]:
    stats = guest.dommemstat()
    return stats if "usable" in stats and lo <= usable_pct(stats) <= hi else None


def settled_at_hold(g: Guest, d: Daemon, what: str) -> Dict[str, int]:
    """The guest's figures a little after the daemon first held it: settled."""
    wait_for(lambda: f"hold {g.name}: " in d.log(), timeout=60, interval=0.5, what=f"{what} settled")
    time.sleep(2)
    return g.dommemstat()


def test_idle_guest_is_shrunk_into_the_band_never_below_the_floor(guest_factory, daemons, e2e_report):
    g = guest_factory.create("idle", current_mib=512, max_mib=1024)
    g.hog("resident", 200)  # a service's resident memory; the busybox guest alone uses ~90 MiB
    small = guest_factory.create("floor", current_mib=512, max_mib=1024)  # nothing resident
    start = g.wait_fresh_stats()
    assert usable_pct(start) > 35, f"an idle guest should start above the band: {start}"
    with Sampler(g) as sampler:
        d = daemons("--policy", "step")  # the band rule itself, as the original had it
        settled = wait_for(lambda: in_band(g, 25, 35), timeout=90, interval=0.5,
                           what=f"{g.name} usable in 25-35%")
        time.sleep(4)  # more cycles: it stays there
        final = g.dommemstat()
    assert 25 <= usable_pct(final) <= 35, final
    assert min(sampler.actuals_mib()) >= 300
    assert d.changes(g.name) and all(m.group(1) == "shrink" and int(m.group(3)) >= 300 for m in d.changes(g.name))
    e2e_report(f"idle shrink: {start['actual'] // MIB} -> {settled['actual'] // MIB} MiB, "
               f"usable {usable_pct(start):.0f}% -> {usable_pct(settled):.0f}%, "
               f"{len(d.changes(g.name))} setmem calls")

    # an idle guest with nothing resident stops at the floor, never below it
    wait_for(lambda: f"hold {small.name}: " in d.log(), timeout=60, interval=0.5, what="held at the floor")
    assert small.dommemstat()["actual"] >= 300 * MIB
    assert f"hold {small.name}: usable" in d.log() and "but floor is 300 MiB" in d.log()


def test_idle_guest_under_target_keeps_its_headroom(guest_factory, daemons, e2e_report):
    g = guest_factory.create("tidle", current_mib=1024, max_mib=2048)
    start = g.wait_fresh_stats()
    with Sampler(g) as sampler:
        d = daemons()  # the default policy, target
        wait_for(lambda: f"hold {g.name}: " in d.log(), timeout=60, interval=0.5, what="settled at its target")
        time.sleep(3)
        final = g.dommemstat()
    assert final["actual"] < start["actual"] and min(sampler.actuals_mib()) >= 300
    assert final["usable"] >= 256 * MIB  # never planned below the headroom
    assert len(d.changes(g.name)) <= 4  # large steps, not 50 MiB at a time
    e2e_report(f"target idle shrink: {start['actual'] // MIB} -> {final['actual'] // MIB} MiB in "
               f"{len(d.changes(g.name))} setmem calls, usable {final['usable'] // MIB} MiB")


@pytest.mark.parametrize("policy", ["target", "step"])
def test_growing_workload_is_followed_without_oom(guest_factory, daemons, e2e_report, policy):
    g = guest_factory.create("ramp", current_mib=512, max_mib=1024)
    g.wait_fresh_stats()
    d = daemons("--policy", policy)
    # let the daemon settle the idle guest first (down to its floor)
    wait_for(lambda: "hold " + g.name in d.log() or in_band(g, 25, 35), timeout=90, interval=0.5,
             what="the idle guest settled")
    settled = g.dommemstat()
    oom_before = g.oom_kills()
    with Sampler(g, every=0.2) as sampler:
        t0 = time.monotonic()
        g.ramp("work", 50, 300)  # +50 MiB a second up to 300 MiB
        wait_for(lambda: g.hog_status("work") == (True, 300), timeout=60, interval=0.2, what="ramp reached 300 MiB")
        relieved = wait_for(lambda: in_band(g, 25, 100), timeout=60, interval=0.2, what="usable back in the band")
        t_relief = time.monotonic() - t0
    assert g.oom_kills() == oom_before, g.console_tail(40)
    assert g.hog_status("work") == (True, 300)
    low = min((s["usable"] * 100.0 / s["actual"] for s in sampler.samples if "usable" in s), default=None)
    assert max(sampler.actuals_mib()) <= 1024
    e2e_report(f"{policy}: ramp 50 MiB/s to 300 MiB from {settled['actual'] // MIB} MiB: no OOM, lowest usable "
               f"{low:.0f}%, back in band after {t_relief:.1f}s at {relieved['actual'] // MIB} MiB")


def test_never_above_the_domain_maximum(guest_factory, daemons):
    g = guest_factory.create("cap", current_mib=512, max_mib=640)
    g.hog("big", 380)
    g.wait_fresh_stats()
    with Sampler(g) as sampler:
        d = daemons()
        wait_for(lambda: d.changes(g.name), timeout=60, interval=0.5, what="grown")
        g.hog("more", 100)  # short of memory again: grows to its <memory>, then nowhere to grow
        wait_for(lambda: f"hold {g.name}: " in d.log() and "at maximum 640 MiB" in d.log(), timeout=60,
                 interval=0.5, what="held at its maximum")
        time.sleep(2)
    assert max(sampler.actuals_mib()) <= 640
    assert g.domstats()["balloon.current"] == 640 * MIB
    assert d.changes(g.name) and all(int(m.group(3)) <= 640 for m in d.changes(g.name))


def test_guests_without_driver_or_stats_are_never_acted_on_blind(guest_factory, daemons):
    nodriver = guest_factory.create("nodrv", current_mib=512, max_mib=1024, balloon_driver=False)
    nostats = guest_factory.create("nostat", current_mib=512, max_mib=1024, stats_period=None)
    # Without a period the guest's one report from boot stays: present, but frozen.
    frozen = nostats.dommemstat()
    time.sleep(2)
    assert nostats.dommemstat()["last_update"] == frozen["last_update"]
    assert "usable" not in nodriver.dommemstat()
    d = daemons()
    wait_for(lambda: f"skip {nodriver.name}: guest reports no usable memory" in d.log(), timeout=30,
             interval=0.5, what="the driverless guest explained in the log")
    wait_for(lambda: f"{nostats.name}: no fresh usable figure: stats period set to 1s" in d.log(),
             timeout=30, interval=0.5, what="the stats period switched on")
    wait_for(lambda: d.changes(nostats.name), timeout=30, interval=0.5, what="the guest managed once stats flow")
    time.sleep(5)
    log = d.log()
    assert d.changes(nodriver.name) == [] and nodriver.dommemstat()["actual"] == 1024 * MIB  # stuck at <memory>
    assert log.count(f"skip {nodriver.name}:") == 1  # said once, not every cycle
    # the guest without a period was acted on only after it reported fresh stats
    assert nostats.dommemstat()["last_update"] > frozen["last_update"]
    period_at = log.index(f"{nostats.name}: no fresh usable figure")
    assert all(log.index(m.group(0)) > period_at for m in d.changes(nostats.name))


def test_daemon_survives_a_libvirtd_restart(guest_factory, daemons, e2e_report):
    g = guest_factory.create("restart", current_mib=512, max_mib=1024)
    g.wait_fresh_stats()
    d = daemons("--critical", "400MiB")
    wait_for(lambda: "hold " + g.name in d.log(), timeout=60, interval=0.5, what="settled at the floor")
    downtime = restart_recorded_libvirtd()
    g.hog("after", 250)  # needs a grow, which only a resumed daemon can give
    wait_for(lambda: any(m.group(1) == "grow" for m in d.changes(g.name)), timeout=60, interval=0.5,
             what="a grow after the restart")
    assert d.proc.poll() is None, d.log()
    log = d.log()
    assert log.count("cannot read running domains") <= 1 and "Traceback" not in log
    e2e_report(f"libvirtd restart: down {downtime:.1f}s, daemon resumed")


def test_dry_run_changes_nothing_and_once_does_one_cycle(guest_factory, daemons):
    g = guest_factory.create("dry", current_mib=512, max_mib=1024)
    g.wait_fresh_stats()
    d = daemons("--dry-run")
    wait_for(lambda: f"dry-run: shrink {g.name}" in d.log(), timeout=30, interval=0.5, what="a dry-run line")
    time.sleep(3)
    assert g.dommemstat()["actual"] == 512 * MIB and d.changes(g.name) == []
    d.stop()
    once = daemons(run=False).run_once("--once")
    assert once.returncode == 0, once.stderr
    change = re.search(rf"INFO shrink {re.escape(g.name)} 512 -> (\d+) MiB", once.stderr)
    assert change, once.stderr
    target_kib = int(change.group(1)) * MIB
    g.wait_actual(target_kib)
    time.sleep(2)
    assert g.dommemstat()["actual"] == target_kib  # one cycle, one change, nothing after


def test_two_daemons_one_runs_one_exits_3(guest_factory, daemons):
    g = guest_factory.create("lock", current_mib=512, max_mib=1024)
    first = daemons()
    wait_for(lambda: g.name in first.log(), timeout=30, interval=0.5, what="the first daemon at work")
    second = Daemon(guest_factory)
    second.argv[second.argv.index("--lock-dir") + 1] = str(first.dir / "lock")
    result = second.run_once("--once")
    assert result.returncode == 3
    assert f"pid {first.proc.pid}" in result.stderr
    assert first.proc.poll() is None


def test_a_jump_that_kills_under_step_does_not_under_target(guest_factory, daemons, e2e_report):
    """Issue 5's case: an idle guest settled by the daemon, then one sudden allocation."""
    outcomes = {}
    jump_mib = None
    for policy in ("step", "target"):
        g = guest_factory.create(f"jump-{policy}", current_mib=512, max_mib=1024)
        g.wait_fresh_stats()
        d = daemons("--policy", policy)
        settled = settled_at_hold(g, d, policy)
        if jump_mib is None:  # just more than what step leaves usable at its floor
            jump_mib = max(200, settled["usable"] // MIB + 35)
        # The daemon stops first: under software emulation the allocation takes seconds, so step's
        # +100 MiB grows sometimes won the race (a jump on real hardware beats any 1 s stats period).
        # What is measured is what each policy left usable for a jump no daemon can see coming.
        d.stop()
        before = g.oom_kills()
        try:
            g.hog("jump", jump_mib, timeout=60)
        except Exception:  # noqa: BLE001 - a hog killed by the OOM killer is the outcome measured
            pass
        time.sleep(3)
        outcomes[policy] = (g.oom_kills() - before, settled["actual"] // MIB, settled["usable"] // MIB)
    e2e_report(f"sudden {jump_mib} MiB: step settled at {outcomes['step'][1]} MiB ({outcomes['step'][2]} usable) "
               f"-> {outcomes['step'][0]} OOM kill(s); target settled at {outcomes['target'][1]} MiB "
               f"({outcomes['target'][2]} usable) -> {outcomes['target'][0]} OOM kill(s)")
    assert outcomes["step"][0] >= 1, outcomes  # the original's rule leaves too little
    assert outcomes["target"][0] == 0, outcomes
