"""balloon-2395 on a Debian 12 guest (issue 16, point 4): a real userland (systemd, journald, Redis),
a page cache of files from its disk, and swap, where the busybox guest has none of them.

The short CI run, on one guest booted once for the module: it boots to its agent with nothing failed,
the daemon (target policy) settles it, a burst beyond the headroom it left is met without an OOM
kill, and a page-cache fill is reclaimed (the guest's size comes down once the files are cached).
Skipped when the image (`.ci/debian-image`) or the hypervisor (tests/e2e/prepare.sh) is not there;
a failure instead under BALLOON_E2E_REQUIRE=1, unless BALLOON_DEBIAN_SKIP is set (.ci/run sets it
when .ci/debian-image exits 77: this machine cannot build the image). Each phase's time and figures
are in the e2e report.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from balloon2395_testkit.daemon_process import DaemonProcess
from balloon2395_testkit.debian_guest import DebianGuest, DebianGuestFactory, not_ready
from balloon2395_testkit.waiting import wait_for

MIB = 1024  # KiB
MAX_MIB = 1024
BEYOND_MIB = 200  # how far past what the daemon left usable the burst goes
CACHE_FILL_MIB = 512  # all of the image's files
QUIET_S = 8.0  # s without a change: the daemon holds the guest (16 cycles, 8 stats reports)


@pytest.fixture(scope="module")
def factory(e2e_ready) -> Iterator[DebianGuestFactory]:
    reason = not_ready()
    if reason:
        if os.environ.get("BALLOON_E2E_REQUIRE") and not os.environ.get("BALLOON_DEBIAN_SKIP"):
            pytest.fail(f"Debian guest prerequisites missing: {reason}", pytrace=False)
        pytest.skip(reason)
    f = DebianGuestFactory()
    yield f
    f.cleanup()


@pytest.fixture(scope="module")
def guest(factory) -> DebianGuest:
    return factory.create("ci", current_mib=MAX_MIB, max_mib=MAX_MIB, swap_mib=256)


@pytest.fixture(autouse=True)
def console_on_failure(request, factory) -> Iterator[None]:
    yield
    if getattr(request.node, "e2e_failed", False):
        for g in factory.guests:
            print(f"\n----- console tail of {g.name} ({g.console_path}) -----\n{g.console_tail(60)}")


def daemon(factory: DebianGuestFactory, g: DebianGuest, label: str) -> DaemonProcess:
    return DaemonProcess(factory.workdir / f"daemon-{label}", g.name, "--policy", "target")


def changes(d: DaemonProcess, g: DebianGuest, kinds: Tuple[str, ...] = ("grow", "shrink")) -> int:
    """How many of the daemon's change lines of those kinds name the guest."""
    marks = [f"INFO {kind} {g.name} " for kind in kinds]
    return sum(any(mark in line for mark in marks) for line in d.log().splitlines())


def settled(d: DaemonProcess, g: DebianGuest, at_least: int = 0) -> Dict[str, int]:
    """The guest's figures once the daemon, having made `at_least` changes to it, made none for QUIET_S
    (a hold is logged only when notable: the log's silence is the settled state)."""
    last = {"n": -1, "since": time.monotonic()}

    def quiet() -> bool:
        n, now = changes(d, g), time.monotonic()
        if n != last["n"]:
            last.update(n=n, since=now)
        return n >= at_least and now - last["since"] >= QUIET_S
    wait_for(quiet, timeout=180, interval=0.5, what=f"{g.name} settled after {at_least} change(s)")
    return g.wait_fresh_stats()


def booted(g: DebianGuest) -> Optional[Tuple[str, List[str]]]:
    """systemd's state and failed units once it is done starting."""
    state = g.system_state()
    return state if state[0] not in ("initializing", "starting") else None


def test_debian_guest_boots_with_its_service_and_swap(guest, e2e_report):
    state, failed = wait_for(lambda: booted(guest), timeout=120, interval=1, what="systemd done starting")
    meminfo = guest.meminfo()
    assert (state, failed) == ("running", []), f"systemd {state}, failed units {failed}"
    assert meminfo["SwapTotal"] >= 255 * MIB, meminfo
    assert guest.redis_info()["used_memory_kib"] > 0
    m = guest.image.manifest()
    e2e_report(f"Debian guest up in {guest.boot_seconds:.1f} s (virsh start to agent; guest uptime "
               f"{guest.ready_uptime()} s), kernel {m['release']}, image {m['sizes']['rootfs.ext4'] >> 20} MiB "
               f"({m['sizes']['rootfs.ext4:allocated'] >> 20} MiB allocated), "
               f"used {(meminfo['MemTotal'] - meminfo['MemAvailable']) // MIB} MiB")


def test_daemon_settles_the_idle_debian_guest(factory, guest, e2e_report):
    t0 = time.monotonic()
    with daemon(factory, guest, "settle") as d:
        final = settled(d, guest, at_least=1)
    assert final["actual"] < MAX_MIB * MIB, f"not shrunk: {final}"
    assert final["usable"] >= 256 * MIB, f"planned below the headroom: {final}"
    e2e_report(f"settled {MAX_MIB} -> {final['actual'] // MIB} MiB in {time.monotonic() - t0:.0f} s, "
               f"usable {final['usable'] // MIB} MiB")


def test_burst_beyond_the_headroom_is_met_without_oom_kill(factory, guest, e2e_report):
    with daemon(factory, guest, "burst") as d:
        before = settled(d, guest)
        jump_mib = before["usable"] // MIB + BEYOND_MIB
        oom, swap, done = guest.oom_kills(), guest.swap(), changes(d, guest)
        t0 = time.monotonic()
        guest.hog("burst", jump_mib, timeout=300)
        took = time.monotonic() - t0
        after = settled(d, guest, at_least=done + 1)
        grown = changes(d, guest, ("grow",))
        assert guest.oom_kills() == oom, guest.console_tail(40)
        assert guest.hog_status("burst") == (True, jump_mib)
        assert grown >= 1, d.log()
    swapped = guest.swap()["pswpout"] - swap["pswpout"]
    guest.free("burst")
    assert after["actual"] > before["actual"]
    e2e_report(f"burst of {jump_mib} MiB with {before['usable'] // MIB} MiB usable at {before['actual'] // MIB} MiB: "
               f"held in {took:.0f} s, no OOM kill, {grown} grow(s) to {after['actual'] // MIB} MiB, "
               f"{swapped * 4 // 1024} MiB swapped out meanwhile")


def test_page_cache_fill_is_reclaimed_by_the_daemon(factory, guest, e2e_report):
    guest.setmem_kib(MAX_MIB * MIB)  # room for the files, as a guest the daemon grew for a burst has
    guest.wait_actual(MAX_MIB * MIB, timeout=60)
    guest.cache_drop()
    oom = guest.oom_kills()
    took = guest.cache_fill(CACHE_FILL_MIB)
    cached = guest.meminfo()["Cached"]
    assert cached >= CACHE_FILL_MIB * MIB, f"only {cached // MIB} MiB cached"
    rss = guest.steady_rss_kib()
    t0 = time.monotonic()
    with daemon(factory, guest, "cache") as d:
        final = settled(d, guest, at_least=1)
    reclaimed, rss_after = cached - guest.meminfo()["Cached"], guest.steady_rss_kib()
    assert final["actual"] <= (MAX_MIB - CACHE_FILL_MIB // 2) * MIB, f"the cached guest was not shrunk: {final}"
    assert reclaimed >= CACHE_FILL_MIB // 4 * MIB, f"only {reclaimed // MIB} MiB of page cache reclaimed"
    assert rss - rss_after >= CACHE_FILL_MIB // 4 * MIB, f"QEMU RSS {rss // MIB} -> {rss_after // MIB} MiB"
    assert guest.oom_kills() == oom
    e2e_report(f"{CACHE_FILL_MIB} MiB of files read in {took:.0f} s ({cached // MIB} MiB cached, QEMU RSS "
               f"{rss // MIB} MiB); the daemon shrank {MAX_MIB} -> {final['actual'] // MIB} MiB in "
               f"{time.monotonic() - t0:.0f} s, {reclaimed // MIB} MiB of cache reclaimed, QEMU RSS "
               f"{rss_after // MIB} MiB")
