"""The modern balloon features and what a guest costs the host, on real guests (issue 15, point 6).

What the simulator and the benchmark assume, checked against QEMU and Linux:
- autodeflate (deflate-on-oom): a guest the daemon shrank takes a burst larger than what it left usable
  without an OOM kill, the balloon giving the memory back; the same guest without it is killed;
- a shrink lowers QEMU's RSS by what the balloon took of memory the guest had touched, and by little
  in a guest that never touched it;
- free page reporting: memory the guest frees goes back to the host by itself, with no balloon change.
Each figure is reported (e2e report section) and named in the failure message.
"""

from __future__ import annotations

import time
from typing import Dict, Tuple

from balloon2395_testkit.daemon_process import DaemonProcess
from balloon2395_testkit.guest_channel import GuestError
from balloon2395_testkit.guests import Guest, GuestFactory
from balloon2395_testkit.waiting import wait_for

MIB = 1024  # KiB
BEYOND_MIB = 200  # how far past what the daemon left usable the burst goes
TOUCHED_MIB = 300
SHRINK_MIB = 200  # less than TOUCHED_MIB: the balloon can take all of it from touched memory
FREE_PAGE_WINDOW = 10.0  # s: after it, a freed page not reported counts as kept
FREE_PAGE_TIMEOUT = 30.0  # s: the most the reporting may take (a busy host starves the guest)


def settled_by_target(factory: GuestFactory, g: Guest) -> Dict[str, int]:
    """Run the daemon (target policy) on `g` alone until it holds it at its target, then stop it.

    Stopped: under software emulation the burst takes seconds, and a daemon growing the guest meanwhile
    would hide whether the guest survives on its own (as in test_daemon_e2e's jump test)."""
    with DaemonProcess(factory.workdir / "daemon", g.name, "--policy", "target") as d:
        wait_for(lambda: f"hold {g.name}: " in d.log(), timeout=90, interval=0.5, what=f"{g.name} settled")
    return g.wait_fresh_stats()


def boots(*guests: Guest) -> str:
    return "booted in " + ", ".join(f"{g.boot_seconds:.1f}" for g in guests) + " s"


def burst(g: Guest, mib: int) -> int:
    """Allocate `mib` MiB at once in the guest; returns the OOM kills it caused."""
    before = g.oom_kills()
    try:
        g.hog("burst", mib, timeout=120)
    except GuestError:  # memhog killed by the guest's OOM killer: the kill is counted below
        pass
    return g.oom_kills() - before


def test_autodeflate_guest_settled_by_target_takes_a_burst_beyond_its_headroom(guest_factory, e2e_report):
    g = guest_factory.create("adefl", current_mib=512, max_mib=1024, autodeflate=True)
    total_before = g.meminfo()["MemTotal"]
    settled = settled_by_target(guest_factory, g)
    assert settled["actual"] < 512 * MIB, f"target did not shrink the idle guest: {settled}"
    jump_mib = settled["usable"] // MIB + BEYOND_MIB
    # the control: same size, same burst, no autodeflate
    control = guest_factory.create("nodefl", current_mib=512, max_mib=1024)
    control.setmem_kib(settled["actual"])
    control.wait_actual(settled["actual"], timeout=60)
    control_usable = control.wait_fresh_stats()["usable"]

    t0 = time.monotonic()
    kills = burst(g, jump_mib)
    took = time.monotonic() - t0
    after = g.wait_fresh_stats()
    control_kills = burst(control, jump_mib)
    deflated_mib = (after["actual"] - settled["actual"]) // MIB
    figures = (f"settled at {settled['actual'] // MIB} MiB ({settled['usable'] // MIB} usable, MemTotal "
               f"{total_before // MIB} -> {g.meminfo()['MemTotal'] // MIB} MiB); burst {jump_mib} MiB in {took:.1f} s: "
               f"{kills} OOM kill(s), balloon {settled['actual'] // MIB} -> {after['actual'] // MIB} MiB; "
               f"without autodeflate ({control_usable // MIB} usable): {control_kills} OOM kill(s); "
               f"{boots(g, control)}")
    e2e_report(figures)
    assert kills == 0 and g.hog_status("burst") == (True, jump_mib), figures
    assert BEYOND_MIB * 0.9 <= deflated_mib and after["actual"] <= 1024 * MIB, figures
    assert control_kills >= 1, figures


def test_a_shrink_returns_to_the_host_what_the_balloon_took_of_touched_memory(guest_factory, e2e_report):
    g = guest_factory.create("rss", current_mib=512, max_mib=512)
    untouched = shrink_rss_drop(g)  # a fresh guest: its free memory was never touched
    g.setmem_kib(512 * MIB)
    g.wait_actual(512 * MIB, timeout=60)
    idle, held = touched_rss(g)
    g.free("touch")
    freed = g.steady_rss_kib()
    touched_drop = shrink_rss_drop(g)
    expected = min(SHRINK_MIB * MIB, held - idle)
    figures = (f"RSS idle {idle // MIB} MiB, holding {TOUCHED_MIB} MiB {held // MIB}, freed {freed // MIB}; "
               f"shrink by {SHRINK_MIB} MiB: RSS -{touched_drop // MIB} MiB (expected -{expected // MIB}); "
               f"the same shrink of the fresh guest: -{untouched // MIB} MiB; {boots(g)}")
    e2e_report(figures)
    assert freed >= held - 0.05 * (held - idle), figures  # without free page reporting, freed stays resident
    assert abs(touched_drop - expected) <= 0.1 * expected, figures
    # what a fresh guest has touched and freed is its boot's leftovers (the compressed kernel, init memory):
    # 18-35 MiB seen
    assert untouched <= touched_drop / 3, figures


def shrink_rss_drop(g: Guest) -> int:
    """Shrink `g` by SHRINK_MIB; the KiB its QEMU RSS lost."""
    before = g.steady_rss_kib()
    target = g.dommemstat()["actual"] - SHRINK_MIB * MIB
    g.setmem_kib(target)
    g.wait_actual(target, timeout=60)
    return before - g.steady_rss_kib()


def test_free_page_reporting_returns_freed_memory_without_a_balloon_change(guest_factory, e2e_report):
    fpr = guest_factory.create("fpr", current_mib=512, max_mib=512, free_page_reporting=True)
    control = guest_factory.create("nofpr", current_mib=512, max_mib=512)
    held = {g.name: touched_rss(g) for g in (control, fpr)}  # (idle, holding) RSS
    control.free("touch")
    fpr.free("touch")
    t0 = time.monotonic()
    idle, holding = held[fpr.name]
    took = rss_falls_to(fpr, holding - 0.9 * (holding - idle), FREE_PAGE_TIMEOUT)
    # Linux reports freed pages in passes 2 s apart, each returning part of them (~80 % in the first):
    # a steady RSS is no sign it is over, a window is.
    time.sleep(max(0.0, FREE_PAGE_WINDOW - (time.monotonic() - t0)))
    after = {g.name: g.rss_kib() for g in (control, fpr)}
    actuals = {g.name: g.dommemstat()["actual"] // MIB for g in (control, fpr)}
    c_idle, c_holding = held[control.name]
    figures = (f"touched {TOUCHED_MIB} MiB then freed: with free page reporting RSS {idle // MIB} -> "
               f"{holding // MIB} -> {after[fpr.name] // MIB} MiB (90 % of it back after {took:.1f} s); without: "
               f"RSS {c_idle // MIB} -> {c_holding // MIB} -> {after[control.name] // MIB} MiB after "
               f"{time.monotonic() - t0:.0f} s; balloon actual {actuals} MiB; {boots(fpr, control)}")
    e2e_report(figures)
    assert holding - after[fpr.name] >= 0.9 * (holding - idle), figures
    assert c_holding - after[control.name] <= 0.05 * (c_holding - c_idle), figures
    assert set(actuals.values()) == {512}, figures


def touched_rss(g: Guest) -> Tuple[int, int]:
    """Touch TOUCHED_MIB in `g` (the hog "touch", still held): its RSS before and after, KiB."""
    idle = g.steady_rss_kib()
    g.hog("touch", TOUCHED_MIB)
    return idle, g.steady_rss_kib()


def rss_falls_to(g: Guest, kib: float, timeout: float) -> float:
    """Seconds until `g`'s RSS is at most `kib` (or `timeout`, the caller's assertion then failing)."""
    t0 = time.monotonic()
    while g.rss_kib() > kib and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    return time.monotonic() - t0
