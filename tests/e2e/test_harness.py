"""Smoke tests of the e2e harness against real QEMU guests.

They also pin the libvirt/QEMU behaviour the daemon relies on (SPEC section 3):
usable tracks guest MemAvailable, setmem takes KiB and moves `actual`, a guest
without stats period / without balloon driver reports no `usable`.
"""

from __future__ import annotations

import time

import pytest

from balloon2395_testkit.guest_channel import GuestError
from balloon2395_testkit.virsh_cli import parse_domstats, virsh
from balloon2395_testkit.waiting import wait_for

MIB = 1024  # KiB


def _settle_usable(guest, samples: int = 3) -> int:
    """Median of a few fresh `usable` samples (stats refresh every second)."""
    vals = []
    last = None
    while len(vals) < samples:
        s = guest.dommemstat()
        if s.get("last_update") != last:
            last = s.get("last_update")
            vals.append(s["usable"])
        time.sleep(0.5)
    return sorted(vals)[len(vals) // 2]


def test_boot_stats_hog_setmem(guest_factory, e2e_report):
    g = guest_factory.create("smoke", current_mib=512, max_mib=1024, stats_period=1)
    e2e_report(f"{g.name} booted in {g.boot_seconds:.2f} s "
               f"(virsh start -> guest answers ping)")

    stats = g.dommemstat()
    assert stats["actual"] == 512 * MIB
    for key in ("usable", "available", "unused", "last_update", "rss"):
        assert key in stats, stats
    # usable is the guest's MemAvailable, available its MemTotal
    mem = g.meminfo()
    assert abs(stats["usable"] - mem["MemAvailable"]) < 32 * MIB
    assert stats["available"] == mem["MemTotal"]
    assert stats["available"] < 512 * MIB

    # the whole running set in one call
    ds = parse_domstats(virsh("domstats", "--balloon", "--list-running", check=True).out)
    assert ds[g.name]["balloon.current"] == 512 * MIB
    assert ds[g.name]["balloon.maximum"] == 1024 * MIB
    assert "balloon.usable" in ds[g.name]

    # a 100 MiB hog lowers usable by roughly 100 MiB within a few seconds
    before = _settle_usable(g)
    t0 = time.monotonic()
    g.hog("h1", 100)
    after = wait_for(
        lambda: (lambda u: u if u <= before - 80 * MIB else None)(g.dommemstat()["usable"]),
        timeout=10, what="usable to drop after hog 100")
    lag = time.monotonic() - t0
    after = _settle_usable(g)
    drop = (before - after) / MIB
    e2e_report(f"hog 100 MiB: usable {before // MIB} -> {after // MIB} MiB "
               f"(drop {drop:.0f} MiB, seen after {lag:.1f} s)")
    assert 80 <= drop <= 130
    assert g.hog_status("h1") == (True, 100)

    g.free("h1")
    wait_for(lambda: g.dommemstat()["usable"] >= before - 20 * MIB, 10,
             what="usable back after free")

    # setmem takes KiB; actual and the guest's MemTotal follow
    total_before = g.meminfo()["MemTotal"]
    t0 = time.monotonic()
    g.setmem_kib(400 * MIB)
    g.wait_actual(400 * MIB, timeout=10)
    e2e_report(f"setmem 409600 KiB: actual reached in {time.monotonic() - t0:.2f} s")
    assert total_before - g.meminfo()["MemTotal"] == 112 * MIB
    g.setmem_kib(700 * MIB)
    g.wait_actual(700 * MIB, timeout=10)

    # above <memory>: refused, nothing changes
    res = g.setmem_kib(2048 * MIB, check=False)
    assert res.returncode == 1
    assert "cannot set memory higher than max memory" in res.err
    assert g.dommemstat()["actual"] == 700 * MIB
    assert g.oom_kills() == 0


def test_no_stats_period_then_live_period(guest_factory, e2e_report):
    g = guest_factory.create("nostats", current_mib=384, max_mib=512, stats_period=None)
    e2e_report(f"{g.name} booted in {g.boot_seconds:.2f} s")
    # Without a stats period the driver's one report from boot (taken before
    # the balloon inflated) stays frozen: last_update never moves and
    # `available` is the MemTotal the guest had at 512 MiB.
    first = g.dommemstat()
    assert first["actual"] == 384 * MIB
    time.sleep(2.5)
    again = g.dommemstat()
    assert again.get("last_update") == first.get("last_update")
    assert again.get("usable") == first.get("usable")
    total = g.meminfo()["MemTotal"]
    if "available" in again:
        assert again["available"] != total
    # switching the period on live brings fresh numbers
    g.set_stats_period(1)
    fresh = g.wait_fresh_stats(10)
    assert fresh["available"] == g.meminfo()["MemTotal"]


def test_balloon_device_without_driver(guest_factory, e2e_report):
    g = guest_factory.create("nodriver", current_mib=384, max_mib=512,
                             balloon_driver=False, stats_period=1)
    e2e_report(f"{g.name} booted in {g.boot_seconds:.2f} s")
    # no driver: the balloon never inflated; the guest sees all of <memory>
    stats = g.dommemstat()
    assert "usable" not in stats
    assert stats["actual"] == 512 * MIB
    res = g.setmem_kib(300 * MIB)
    assert res.ok  # accepted ...
    time.sleep(2)
    assert g.dommemstat()["actual"] == 512 * MIB  # ... and nothing happens


def test_ramp_and_control_errors(guest_factory):
    g = guest_factory.create("ramp", current_mib=512, max_mib=512, stats_period=1)
    g.ramp("r", 20, 60, interval_ms=300)
    wait_for(lambda: g.hog_status("r") == (True, 60), 10, what="ramp to 60 MiB")
    with pytest.raises(GuestError):
        g.command("frobnicate")
    assert g.shell("echo $((6 * 7))").strip() == "42"
    g.free("r")
    assert g.hog_status("r")[0] is False


def test_oom_kill_is_visible(guest_factory):
    g = guest_factory.create("oom", current_mib=256, max_mib=512, stats_period=1)
    assert g.oom_kills() == 0
    with pytest.raises(GuestError, match="died before holding"):
        g.hog("big", 400)
    assert g.oom_kills() == 1
    g.wait_console(r"Out of memory: Killed process \d+ \(memhog\)", timeout=10)
    assert g.is_running()
    assert g.ping()
