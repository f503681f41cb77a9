"""A real host under memory pressure (issue 23, point 5): three real guests in a memory cgroup whose limit
makes a small host, their demands overlapping beyond it, run three times: with no daemon, and twice with
the real daemon (target) reading the host from that cgroup (`host_memory: cgroup`): as the e2e tests run
the band, and with the settings as shipped.

The "host" is a memory cgroup of our own under the one this process runs in (v1 here: the sub-cgroup's
memory.limit_in_bytes; v2: memory.max). prepare.sh gives QEMU no cgroup of its own, so each guest's QEMU
is moved into ours once it answers, by its pid (libvirt's pid file, checked against the guest's name).
A cgroup v1 of this kernel does not move a process's past charges with it (memory.move_charge_at_immigrate
is gone), so what the cgroup counts, and limits, is what each QEMU touches after the move: the guests'
boot (~200 MiB of RSS each) stays charged to the parent. The limit is sized for that.

Counted: guests lost (their QEMU killed by the cgroup's OOM killer: the domain is no longer running;
the cgroup's own oom_kill counter says who did it), OOM kills inside the guests (`oom`), the cgroup's
peak usage, and what the daemon had handed back before the load (the guests' balloons). Figures are
printed as a Markdown table row (docs/pressure.md, "Real host under pressure") and in the e2e report.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from balloon2395_testkit.daemon_process import DaemonProcess
from balloon2395_testkit.guest_channel import GuestError
from balloon2395_testkit.guests import Guest, GuestFactory
from balloon2395_testkit.waiting import HarnessError, wait_for

MIB = 1024  # KiB
LIMIT_MIB = 900  # the small host: what the three QEMUs may touch after joining the cgroup
GUESTS = ("a", "b", "c")
CURRENT_MIB, MAX_MIB = 512, 1024
# Each guest ramps to HOG_MIB, holds it HOLD_S, frees it; the guests start STAGGER_S apart, so two hold
# theirs at once (700 MiB: fits) and the three touch 1050 MiB in all, more than the host has. Without a
# daemon what a guest freed stays resident in its QEMU (the host gets it back only through the balloon),
# so the third guest's ramp fills the cgroup. SHAPES["together"]: the three at once and held (3 x 380 MiB
# wanted at the same time where 900 are): no policy can keep all three hogs, only choose who pays.
SHAPES = {"staggered": dict(hog_mib=350, step_mib=35, stagger_s=8.0, hold_s=4.0, free=True),
          "together": dict(hog_mib=380, step_mib=20, stagger_s=0.0, hold_s=5.0, free=False)}
RAMP_MS = 1000
RESERVE = "10%"
QUIET_S = 4.0  # s without a change: the idle guests are settled
SETTLE_S = 5.0  # s after the load: the daemon hands back what the killed hogs left


class MemoryCgroup:
    """A memory cgroup of our own, below the one this process is in; removed by remove()."""

    def __init__(self, name: str, limit_mib: int) -> None:
        here, self.v2 = own_memory_cgroup()
        self.parent = here
        self.path = here / name
        self.path.mkdir()
        self.write("memory.max" if self.v2 else "memory.limit_in_bytes", str(limit_mib * 1024 * 1024))
        if not self.v2:
            self.write("memory.swappiness", "0")  # no host swap here anyway; never page QEMU out instead

    def write(self, name: str, value: str) -> None:
        with open(self.path / name, "w") as handle:
            handle.write(value)

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def add(self, pid: int) -> None:
        self.write("cgroup.procs", str(pid))

    def pids(self) -> List[int]:
        return [int(p) for p in self.read("cgroup.procs").split()]

    def usage_mib(self) -> int:
        return int(self.read("memory.current" if self.v2 else "memory.usage_in_bytes")) >> 20

    def peak_mib(self) -> Optional[int]:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int(self.read(name)) >> 20 if (self.path / name).exists() else None

    def oom_kills(self) -> int:
        text = self.read("memory.events" if self.v2 else "memory.oom_control")
        return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")), 0)

    def remove(self) -> None:
        """Back to the parent with whatever is still in it (our QEMUs), then gone."""
        if not self.path.exists():
            return
        for pid in self.pids():
            try:
                with open(self.parent / "cgroup.procs", "w") as handle:
                    handle.write(str(pid))
            except OSError:  # it ended meanwhile
                pass
        wait_for(lambda: not self.pids() or None, timeout=10, interval=0.2, what=f"{self.path} empty")
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()


def own_memory_cgroup():
    """(the memory cgroup directory this process is in, True for cgroup v2)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = next((line.split(":", 2)[2] for line in lines if "memory" in line.split(":", 2)[1].split(",")), None)
    if v1 is not None:
        return Path("/sys/fs/cgroup/memory" + v1.rstrip("/")), False
    unified = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    if unified is None or not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("no memory cgroup to make a small host in")
    return Path("/sys/fs/cgroup" + unified.rstrip("/")), True


def qemu_pid(g: Guest) -> int:
    pid = int(Path(f"/run/libvirt/qemu/{g.name}.pid").read_text().strip())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert g.name.encode() in cmdline, f"pid {pid} is not {g.name}'s QEMU: {cmdline[:200]!r}"
    return pid


def boot(factory: GuestFactory, run: str) -> List[Guest]:
    """Three guests started together, then each waited for (the boots overlap)."""
    guests = [factory.guest(f"{run}-{label}", current_mib=CURRENT_MIB, max_mib=MAX_MIB) for label in GUESTS]
    for g in guests:
        g.define()
        g.start()
    for g in guests:
        g.wait_booted(120)
    return guests


def alive(g: Guest) -> bool:
    return g.is_running() and g.ping(timeout=5)


class Quiet:
    """True once the daemon has made no change for QUIET_S (the idle guests settled): holds are not logged."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d, self.changes, self.since = d, -1, time.monotonic()

    def __call__(self) -> Optional[bool]:
        changes = sum(1 for line in self.d.log().splitlines() if " INFO grow " in line or " INFO shrink " in line)
        if changes != self.changes:
            self.changes, self.since = changes, time.monotonic()
        return (changes > 0 and time.monotonic() - self.since >= QUIET_S) or None


def workload(g: Guest, delay: float, shape: Dict, outcome: Dict[str, str]) -> None:
    """One guest's demand: after `delay`, ramp to the top, hold, free. Its outcome: "done" (the hog held
    its top), "killed" (the guest's OOM killer took the hog) or "lost" (the guest is gone)."""
    time.sleep(delay)
    top = shape["hog_mib"]
    try:
        g.ramp("load", shape["step_mib"], top, RAMP_MS)

        def over() -> Optional[str]:
            if not g.is_running():
                return "lost"
            living, held = g.hog_status("load")
            return "done" if living and held >= top else None if living else "killed"

        outcome[g.name] = wait_for(over, timeout=top / shape["step_mib"] * RAMP_MS / 1000 + 40, interval=0.5,
                                   what=f"{g.name}'s ramp over")
        if outcome[g.name] == "done":
            time.sleep(shape["hold_s"])
            if not g.is_running():
                outcome[g.name] = "lost"
            elif g.hog_status("load")[0]:
                if shape["free"]:
                    g.free("load")
            else:
                outcome[g.name] = "killed"
    except (GuestError, HarnessError):
        outcome[g.name] = "lost" if not g.is_running() else outcome.get(g.name, "no answer")


# The daemon's runs: "target" as the testkit runs the band (burst_wait 0, idle_shrink always: the idle guests
# shrink before the load), "defaults" with every setting as shipped (idle_shrink needed, burst_wait 600 s).
TARGETS = {"target": "", "defaults": "idle_shrink: needed\nburst_wait: 600\n"}


def scenario(factory: GuestFactory, run: str, daemon: bool, shape_name: str = "staggered",
             settings: str = "") -> Dict[str, object]:
    shape = SHAPES[shape_name]
    t0 = time.monotonic()
    cgroup = MemoryCgroup(factory.name_for(f"{run}-host"), LIMIT_MIB)
    d: Optional[DaemonProcess] = None
    try:
        guests = boot(factory, run)
        for g in guests:
            cgroup.add(qemu_pid(g))
        booted = time.monotonic() - t0
        if daemon:
            config = (f"policy: target\nhost_memory: cgroup\nhost_cgroup: {cgroup.path}\n"
                      f"host_reserve: {RESERVE}\n{settings}")
            d = DaemonProcess(factory.workdir / f"daemon-{run}", factory.name_for(f"{run}-*"), config=config)
            d.start()
            try:
                wait_for(Quiet(d), timeout=90, interval=0.5, what="the idle guests settled")
            except HarnessError as exc:
                tail = "\n".join(d.log().splitlines()[-30:])
                raise AssertionError(f"{exc}; the daemon's log ends:\n{tail}") from None
        actual_before = {g.name: g.dommemstat()["actual"] for g in guests}
        oom_before = {g.name: g.oom_kills() for g in guests}
        t_load = time.monotonic()
        outcome: Dict[str, str] = {}
        threads = [threading.Thread(target=workload, args=(g, at * shape["stagger_s"], shape, outcome), daemon=True)
                   for at, g in enumerate(guests)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        time.sleep(SETTLE_S)
        load_s = time.monotonic() - t_load
        lost = [g.name for g in guests if not alive(g)]
        kept = [g for g in guests if g.name not in lost]
        guest_ooms = sum(g.oom_kills() - oom_before[g.name] for g in kept)
        ramps_done = sum(1 for g in kept if outcome.get(g.name) == "done")
        actual_after = {g.name: g.dommemstat()["actual"] for g in kept}
        figures: Dict[str, object] = {
            "run": run if daemon else "none", "shape": shape_name, "outcome": outcome,
            "lost": len(lost), "lost_names": lost,
            "guest_ooms": guest_ooms, "cgroup_oom_kills": cgroup.oom_kills(), "ramps_done": ramps_done,
            "peak_mib": cgroup.peak_mib(), "usage_mib": cgroup.usage_mib(),
            "settled_mib": sum(actual_before.values()) // MIB,
            "returned_mib": (len(guests) * CURRENT_MIB * MIB - sum(actual_before.values())) // MIB,
            "actual_after_mib": sum(actual_after.values()) // MIB,
            "boot_s": booted, "load_s": load_s, "total_s": time.monotonic() - t0,
            "daemon_log": d.log() if d else "",
        }
        if d is not None:
            d.stop()
        return figures
    finally:
        if d is not None:
            d.stop()
        for g in factory.guests:
            if g.name.startswith(factory.name_for(run)):
                g.cleanup()
        cgroup.remove()


def row(f: Dict[str, object]) -> str:
    return (f"| real, {f['run']} | {f['lost']} | {f['guest_ooms']} | {f['cgroup_oom_kills']} | "
            f"{f['ramps_done']}/3 | {f['peak_mib']} | {f['returned_mib']} | {f['load_s']:.0f} s |  |")


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_target_on_a_cgroup_host_loses_no_guest_where_no_daemon_loses_one(guest_factory, e2e_report, shape):
    t0 = time.monotonic()
    none = scenario(guest_factory, "none", daemon=False, shape_name=shape)
    print(f"\nno daemon: {row(none)}")
    targets = [scenario(guest_factory, run, daemon=True, shape_name=shape, settings=settings)
               for run, settings in TARGETS.items()]
    took = time.monotonic() - t0
    header = ("| run | guests lost | guest OOM kills | cgroup OOM kills | ramps done | peak MiB | "
              "returned before load MiB | load | simulator |")
    table = "\n".join([header, "|---|---|---|---|---|---|---|---|---|", row(none), *map(row, targets)])
    print(f"\nhost: memory cgroup, limit {LIMIT_MIB} MiB (v{'2' if own_memory_cgroup()[1] else '1'}); "
          f"3 guests {CURRENT_MIB}/{MAX_MIB} MiB, {shape}: {SHAPES[shape]}; reserve {RESERVE}; test {took:.0f} s\n"
          f"{table}")
    for f in (none, *targets):
        e2e_report(f"{f['run']}: lost {f['lost']} {f['lost_names']}, guest OOM kills {f['guest_ooms']}, cgroup OOM "
                   f"kills {f['cgroup_oom_kills']}, ramps done {f['ramps_done']}/3, peak {f['peak_mib']} MiB of "
                   f"{LIMIT_MIB}, returned before the load {f['returned_mib']} MiB, after it the guests hold "
                   f"{f['actual_after_mib']} MiB; boot {f['boot_s']:.0f} s, load {f['load_s']:.0f} s, "
                   f"run {f['total_s']:.0f} s")
    e2e_report(f"both runs {took:.0f} s")
    assert none["lost"] >= 1, f"the scenario did not bite: no daemon lost no guest ({none})"
    for target in targets:
        changes = [line for line in str(target["daemon_log"]).splitlines()
                   if " grow " in line or " shrink " in line or "host" in line]
        assert target["lost"] == 0, f"{target['run']} lost a guest:\n" + "\n".join(changes[-40:])
