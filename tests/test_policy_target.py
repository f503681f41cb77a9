"""The target policy: fixture tables, a simulate-until-stable loop, and fitting to the host (its
safety invariants, with the host in play, are checked with the step policy's in test_policy.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from balloon2395.decide.cycle import decide, decide_all, untouched_kib
from balloon2395.decide.figures import Figures
from balloon2395.decide.history import History, Signals
from balloon2395.decide.records import GROW, HOLD, SHRINK, Limits
from balloon2395.decide.rules import target, target_size_kib
from balloon2395.observation import HostMemory, Observation
from balloon2395.settings import DomainSettings as NeededSettings
from balloon2395.virsh.domain_xml import DomainFacts
from balloon2395.virsh.output import BalloonStats

MIB = 1024
GIB = 1024 * MIB
NOW = 1_800_000_000.0
LINUX = DomainFacts(uuid="u", domain_id="1", windows=None, balloon_model="virtio", stats_period_s=1)

# These tables are the band itself (idle_shrink: always, the default); `needed` has its own tests.
def DomainSettings(**knobs):  # noqa: N802
    return NeededSettings(**{"idle_shrink": "always", **knobs})


DEFAULTS = DomainSettings()


def stats(actual, usable, maximum=4096, name="vm", **extra):
    return BalloonStats(name=name, actual_kib=actual * MIB, usable_kib=usable * MIB, maximum_kib=maximum * MIB,
                        last_update=int(NOW), **extra)


# (actual, usable, maximum MiB, settings, signals) -> (action, target MiB, code)
TABLE = [
    # far below the band: one move to the middle of it (used 1800 / 0.7)
    ((2048, 248, 4096, {}, Signals()), (GROW, 2572, "below-band")),
    # ... capped at the maximum
    ((2048, 248, 2300, {}, Signals()), (GROW, 2300, "below-band")),
    ((2300, 100, 2300, {}, Signals()), (HOLD, None, "at-maximum")),
    # inside the band by percent but under the absolute headroom: used 312 + 256 + 64 pad
    ((512, 200, 4096, {}, Signals()), (GROW, 632, "headroom")),
    # a burst remembered raises the headroom
    ((1024, 400, 4096, {}, Signals(burst_kib=500 * MIB)), (GROW, 1188, "headroom")),
    # far above: shrink toward the target, at most max_shrink at a time
    ((4096, 3800, 4096, {}, Signals()), (SHRINK, 3840, "above-band")),
    ((4096, 3800, 4096, {"max_shrink_kib": 8 * GIB}, Signals()), (SHRINK, 616, "above-band")),
    ((700, 450, 4096, {}, Signals()), (SHRINK, 570, "above-band")),
    # the deadband: 20 MiB above the target is no reason to move
    ((590, 340, 4096, {}, Signals()), (HOLD, None, "at-floor")),
    # never below the floor, whatever the arithmetic
    ((600, 550, 4096, {"headroom_kib": 0}, Signals()), (SHRINK, 344, "above-band")),
    ((344, 294, 4096, {"headroom_kib": 0, "floor_kib": 344 * MIB}, Signals()), (HOLD, None, "at-floor")),
    # in the band with headroom: nothing
    ((2048, 600, 4096, {}, Signals()), (HOLD, None, "in-band")),
    # swapping in although usable looks fine: grow, at least by addram, with room for the swapped pages
    ((2048, 700, 4096, {}, Signals(paging=True, swapped_kib=200 * MIB)), (GROW, 2212, "paging")),
    ((2048, 700, 4096, {}, Signals(paging=True)), (GROW, 2148, "paging")),
    # it paged its working set back in a few minutes ago: a shrink would only bring that back
    ((4096, 3800, 4096, {}, Signals(paged_lately=True)), (HOLD, None, "paged-lately")),
]


@pytest.mark.parametrize("inputs,expected", TABLE)
def test_target_table(inputs, expected):
    actual, usable, maximum, overrides, signals = inputs
    s = DomainSettings(**overrides)
    cap = min(maximum * MIB, s.maximum_kib or maximum * MIB)
    action, size, code, _ = target(stats(actual, usable, maximum), s, cap, signals)
    assert (action, None if size is None else size // MIB, code) == expected


def guest_step(actual_kib: int, target_kib: int, used_kib: int, maximum_kib: int) -> int:
    """A guest's balloon: moves to the target, but cannot take memory in use nor grow past its maximum."""
    return min(max(target_kib, used_kib + 16 * MIB), maximum_kib)


@given(used=st.integers(64, 6000), start=st.integers(300, 8192), maximum=st.integers(1024, 8192),
       headroom=st.integers(0, 512))
def test_simulate_until_stable(used, start, maximum, headroom):
    """Replaying decisions on a guest of steady use that can page (it has swapped) settles in a few moves,
    inside the rules."""
    s = DomainSettings(headroom_kib=headroom * MIB)
    actual, history, now, moves = min(start, maximum) * MIB, History(), NOW, 0
    used_kib = min(used * MIB, actual - MIB)
    for _ in range(200):
        obs = Observation(BalloonStats(name="vm", actual_kib=actual, usable_kib=actual - used_kib,
                                       maximum_kib=maximum * MIB, last_update=int(now), swap_in_kib=0,
                                       swap_out_kib=4), LINUX, uuid="u")
        d = decide(obs, s, history, now, Limits(), "target")
        history = d.history
        if d.action in (GROW, SHRINK):
            moves += 1
            actual = guest_step(actual, d.target_kib, used_kib, maximum * MIB)
            history = history.after_change(now, d.actual_kib, d.target_kib)
        elif d.action == HOLD:
            break
        now += 1.0
    else:
        pytest.fail("never settled")
    assert d.code in ("in-band", "at-floor", "at-maximum")
    assert moves <= 2 + (start * MIB) // s.max_shrink_kib
    usable = actual - used_kib
    if d.code != "at-maximum":  # settled with at least the headroom, and not far above target
        assert usable >= min(s.headroom_kib, actual - used_kib)
        assert actual <= max(target_size_kib(obs.stats, s), s.floor_kib) + 32 * MIB or usable * 100 // actual <= 35


# A Debian guest whose idle daemons wake swaps in a few pages at a time (up to 500 KiB in a second seen):
# that is no shortage. One short of memory swaps in MiBs a second.
@pytest.mark.parametrize("swapped_in_kib, action", [(4, HOLD), (500, HOLD), (3 * 1024, GROW)])
def test_only_swap_in_at_a_paging_rate_grows_a_guest_in_its_band(swapped_in_kib, action):
    seen = History(seen_update=int(NOW) - 2, seen_swap_in_kib=10_000, seen_major_fault=0)
    o = Observation(stats(1024, 300, swap_in_kib=10_000 + swapped_in_kib, major_fault=0), LINUX, uuid="u")
    d = decide(o, DEFAULTS, seen, NOW, Limits(), "target")
    assert (d.action, d.code == "paging") == (action, action == GROW)


# ------------------------------------------------------------------ the host

def obs(name, actual, usable, maximum=8192, **extra):
    return Observation(stats(actual, usable, maximum, name=name, **extra), LINUX, uuid=f"uuid-{name}")


def run_all(observations, host, per_domain=None):
    per_domain = per_domain or {}
    settings_map = {o.name: per_domain.get(o.name, DEFAULTS) for o in observations}
    return {d.name: d for d in decide_all(observations, settings_map, {}, host, NOW, Limits(), "target")}


ROOMY_BAND = DomainSettings(minimal=3, headroom_kib=1 * GIB)  # usable above 3 %: a grow only keeps headroom


def test_growth_only_from_what_the_host_can_spare_neediest_first():
    host = HostMemory(total_kib=16 * GIB, available_kib=2 * GIB + 300 * MIB, reserve_kib=2 * GIB)
    out = run_all([obs("a", 2048, 300), obs("b", 2048, 100)], host, {"a": ROOMY_BAND, "b": ROOMY_BAND})
    assert out["b"].action == GROW and out["b"].target_kib - 2048 * MIB == 300 * MIB  # b is the neediest
    assert out["b"].code == "host-limited"
    assert out["a"].action == HOLD and out["a"].code == "host-reserve"


def test_a_guest_below_its_band_may_grow_into_half_the_reserve_of_a_host_that_can_swap():
    host = HostMemory(total_kib=16 * GIB, available_kib=2 * GIB + 300 * MIB, reserve_kib=2 * GIB,
                      swap_free_kib=4 * GIB)
    wide = DomainSettings(minimal=3, headroom_kib=2 * GIB)
    out = run_all([obs("a", 2048, 300), obs("b", 2048, 40)], host, {"a": wide, "b": wide})
    assert out["b"].action == GROW and out["b"].target_kib - 2048 * MIB == 300 * MIB + 1 * GIB
    assert out["a"].action == HOLD and out["a"].code == "host-reserve"  # it only lacks headroom


@pytest.mark.parametrize("swap_free_kib", [None, 0, 1 * GIB])  # not known, none, less than the reserve
def test_a_host_that_cannot_swap_keeps_all_of_its_reserve(swap_free_kib):
    # out of RAM such a host kills a whole QEMU: the guest's OOM kill is the lesser harm
    host = HostMemory(total_kib=16 * GIB, available_kib=2 * GIB + 300 * MIB, reserve_kib=2 * GIB,
                      swap_free_kib=swap_free_kib)
    wide = DomainSettings(minimal=3, headroom_kib=2 * GIB)
    out = run_all([obs("a", 2048, 300), obs("b", 2048, 40)], host, {"a": wide, "b": wide})
    assert out["b"].action == GROW and out["b"].target_kib - 2048 * MIB == 300 * MIB


def test_below_the_reserve_reclaim_from_surplus_first():
    host = HostMemory(total_kib=16 * GIB, available_kib=1 * GIB, reserve_kib=2 * GIB)
    out = run_all([obs("fat", 6144, 5000), obs("tight", 2048, 600)], host)
    assert out["fat"].action == SHRINK and out["fat"].code == "host-reserve"
    assert 6144 * MIB - out["fat"].target_kib >= 1 * GIB  # the deficit, taken from the surplus in one move
    assert out["tight"].action == HOLD


SWAP = 4 * GIB  # a host with this much free swap swaps when out of RAM: its OOM killer waits


def test_then_from_the_guests_above_their_fair_share_weighted_by_shares():
    # the guests can have 6 GiB: gold's share is 4.8 GiB, bronze's 1.2 GiB; both can page (swapped out)
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=2 * GIB, swap_free_kib=SWAP)
    per = {"gold": DomainSettings(shares=4000), "bronze": DomainSettings(shares=1000)}
    paging = {"swap_in_kib": 0, "swap_out_kib": 4 * MIB}
    out = run_all([obs("gold", 4096, 1200, **paging), obs("bronze", 4096, 1200, **paging)], host, per)
    assert out["gold"].action == HOLD
    assert out["bronze"].action == SHRINK and 4096 * MIB - out["bronze"].target_kib == 2 * GIB


def test_a_guest_at_its_fair_share_keeps_what_it_uses():
    # 1 GiB short: the guests can have 5 GiB, 1.7 GiB each; only c is above that
    host = HostMemory(total_kib=16 * GIB, available_kib=1 * GIB, reserve_kib=2 * GIB)
    out = run_all([obs("a", 1024, 300), obs("b", 1024, 300), obs("c", 4096, 1200)], host)
    assert out["a"].action == HOLD and out["b"].action == HOLD
    assert out["c"].action == SHRINK and 4096 * MIB - out["c"].target_kib == 1 * GIB


def test_fair_shares_never_go_below_a_floor():
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=8 * GIB)
    floor = DomainSettings(floor_kib=2 * GIB)
    out = run_all([obs("a", 4096, 1200), obs("b", 2200, 100)], host, {"a": floor, "b": floor})
    assert out["a"].action == SHRINK and out["a"].target_kib == 2 * GIB


# three guests in need that cannot page (no swap): each wants more, none has a surplus
IN_NEED = [("a", 4096, 200), ("b", 4096, 200), ("c", 6144, 200)]


def test_a_host_about_to_kill_a_qemu_takes_even_what_one_guest_uses():
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=2 * GIB, swap_free_kib=0)
    out = run_all([obs(*g) for g in IN_NEED], host)
    assert [n for n, d in out.items() if d.action == SHRINK] == ["c"]  # one guest pays, the one with most
    assert out["c"].target_kib == DEFAULTS.floor_kib  # all it has above its floor, at once
    assert "cannot swap" in out["c"].reason


def test_a_host_about_to_kill_a_qemu_takes_what_a_calm_guest_does_not_use_before_what_one_uses():
    # files holds 9 GiB of cache: dropping it covers the host's 4 GiB, where files at its floor is an OOM kill;
    # it keeps the bottom of its band (what it uses and the headroom), not just what it uses: a guest left no
    # free memory is OOM-killed by its next allocation
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=2 * GIB, swap_free_kib=0)
    out = run_all([obs("c", 6144, 200), obs("files", 10240, 9500, maximum=12288)], host)
    assert out["c"].action != SHRINK
    assert out["files"].action == SHRINK
    assert (10240 - 9500 + 256) * MIB <= out["files"].target_kib <= (10240 - 4096) * MIB
    assert "a process killed" not in out["files"].reason


def test_a_host_about_to_kill_a_qemu_leaves_a_calm_guest_its_headroom_before_one_guest_pays():
    # b is calm (usable 25 %) but only just: taking its headroom would kill in it as surely as in c
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=2 * GIB, swap_free_kib=0)
    out = run_all([obs("b", 2048, 520), obs("c", 6144, 200)], host)
    b_used = (2048 - 520) * MIB
    assert out["b"].action != SHRINK or out["b"].target_kib - b_used >= 0.25 * out["b"].target_kib
    assert out["c"].action == SHRINK and out["c"].target_kib == DEFAULTS.floor_kib


def test_a_host_that_can_swap_takes_nothing_a_guest_uses():
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=2 * GIB, swap_free_kib=SWAP)
    out = run_all([obs(*g) for g in IN_NEED], host)
    assert all(d.action != SHRINK for d in out.values())  # it swaps: slower guests, no process killed


def test_a_host_only_a_little_below_its_reserve_takes_nothing_a_guest_uses():
    host = HostMemory(total_kib=16 * GIB, available_kib=1536 * MIB, reserve_kib=2 * GIB, swap_free_kib=0)
    out = run_all([obs(*g) for g in IN_NEED], host)
    assert all(d.action != SHRINK for d in out.values())


def test_shrinks_under_way_count_before_a_guest_pays():
    # c's shrink 8 GiB -> 4 GiB is under way (no report since): the host gets those 4 GiB back
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=2 * GIB, swap_free_kib=0)
    shrinking = History(changed_at=NOW, from_kib=8 * GIB, target_kib=4 * GIB, changed_on=int(NOW))
    observations = [obs("a", 4096, 200), obs("b", 4096, 200), obs("c", 8192, 200)]
    decisions = decide_all(observations, {o.name: DEFAULTS for o in observations}, {"c": shrinking}, host, NOW,
                           Limits(), "target")
    assert [d.action for d in decisions] == [HOLD, HOLD, "wait"]


def test_step_knows_nothing_of_the_host():
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=2 * GIB)
    observations = [obs("a", 2048, 100)]
    decisions = decide_all(observations, {"a": DEFAULTS}, {}, host, NOW, Limits(), "step")
    assert decisions[0].action == GROW


# ------------------------------------------------------------------ guests that cannot page, and the host's promises

QUIET_S = int(DEFAULTS.burst_wait_s)
AUTODEFLATE = DomainFacts(uuid="u", domain_id="1", windows=None, balloon_model="virtio", stats_period_s=1,
                          autodeflate=True)


@pytest.mark.parametrize("history, extra, facts, action", [
    (History(first_seen=int(NOW) - 60), {}, LINUX, HOLD),  # new: it may burst yet
    (History(first_seen=int(NOW) - QUIET_S - 60), {}, LINUX, SHRINK),  # quiet long enough
    (History(first_seen=int(NOW) - 3 * QUIET_S, burst_at=int(NOW) - 60), {}, LINUX, HOLD),  # burst lately
    (History(first_seen=int(NOW) - 60), {"swap_in_kib": 0, "swap_out_kib": 4096}, LINUX, SHRINK),  # it swaps
    (History(first_seen=int(NOW) - 60), {}, AUTODEFLATE, SHRINK),  # its balloon deflates on OOM
])
def test_a_guest_that_cannot_page_is_shrunk_only_once_it_shows_no_bursts(history, extra, facts, action):
    d = decide(Observation(stats(4096, 3500, **extra), facts, uuid="u"), DEFAULTS, history, NOW, Limits(), "target")
    assert d.action == action
    assert (d.code == "kept-whole") == (action == HOLD)


def test_a_burst_wait_of_0_shrinks_a_guest_that_cannot_page_at_once():
    history = History(first_seen=int(NOW) - 60)
    d = decide(Observation(stats(4096, 3500), LINUX, uuid="u"), DomainSettings(burst_wait_s=0), history, NOW,
               Limits(), "target")
    assert d.action == SHRINK


def test_a_rise_of_used_is_remembered_as_a_burst():
    seen = History(seen_update=int(NOW) - 1, seen_used_kib=300 * MIB, first_seen=int(NOW) - 3 * QUIET_S)
    d = decide(Observation(stats(4096, 3500), LINUX, uuid="u"), DEFAULTS, seen, NOW, Limits(), "target")
    assert d.history.burst_at == int(NOW) and d.code == "kept-whole"  # used rose 300 -> 596 MiB


def test_growth_leaves_out_what_guests_were_given_and_have_not_touched():
    host = HostMemory(total_kib=16 * GIB, available_kib=2 * GIB + 300 * MIB, reserve_kib=2 * GIB)
    touched = run_all([obs("a", 2048, 300, rss_kib=2048 * MIB), obs("b", 2048, 100, rss_kib=2048 * MIB)], host,
                      {"a": ROOMY_BAND, "b": ROOMY_BAND})
    assert touched["b"].action == GROW
    # a holds 300 MiB it may touch at any time: the host has nothing left to promise b
    promised = run_all([obs("a", 2048, 300, rss_kib=1748 * MIB), obs("b", 2048, 100, rss_kib=2048 * MIB)], host,
                       {"a": ROOMY_BAND, "b": ROOMY_BAND})
    assert promised["b"].action == HOLD and promised["b"].code == "host-reserve"


def test_a_guest_that_cannot_page_grows_before_a_needier_one_that_can():
    host = HostMemory(total_kib=16 * GIB, available_kib=2 * GIB + 300 * MIB, reserve_kib=2 * GIB)
    out = run_all([obs("noswap", 2048, 300), obs("swaps", 2048, 100, swap_in_kib=0, swap_out_kib=4096)], host,
                  {"noswap": ROOMY_BAND, "swaps": ROOMY_BAND})
    assert out["noswap"].action == GROW and out["swaps"].action == HOLD


def test_a_guest_that_can_page_gives_to_one_that_cannot_even_in_need():
    # both below their band, the host at its reserve; swaps is far above its fair share of 3 GiB
    host = HostMemory(total_kib=16 * GIB, available_kib=1 * GIB, reserve_kib=2 * GIB)
    out = run_all([obs("noswap", 1024, 50), obs("swaps", 6144, 300, swap_in_kib=0, swap_out_kib=4096)], host)
    assert out["swaps"].action == SHRINK and out["swaps"].code == "host-reserve"
    assert out["noswap"].action == GROW


def test_one_that_cannot_page_keeps_what_it_uses_for_another_in_need():
    host = HostMemory(total_kib=16 * GIB, available_kib=2 * GIB, reserve_kib=2 * GIB)
    out = run_all([obs("needy", 1024, 50), obs("busy", 6144, 300)], host)
    assert out["busy"].action != SHRINK  # it would be OOM-killed instead: no fewer kills, only others


def test_one_in_its_band_gives_what_it_holds_above_the_bottom_of_its_band_to_one_in_need():
    # rich (no swap) uses 4301 MiB at 30 % usable: its band would not grow it down to 5735 MiB (25 % usable).
    # needy lacks 368 MiB of its target (974 / 0.7): rich gives that from the 409 MiB above its band's bottom.
    # The host, at its reserve and without swap, gives needy none of the reserve.
    host = HostMemory(total_kib=16 * GIB, available_kib=2 * GIB, reserve_kib=2 * GIB, swap_free_kib=0)
    out = run_all([obs("needy", 1024, 50), obs("rich", 6144, 1843)], host)
    assert out["rich"].action == SHRINK and out["rich"].target_kib == (6144 - 368) * MIB
    assert out["needy"].action == GROW and out["needy"].target_kib == 1392 * MIB


def test_a_host_that_can_swap_takes_no_memory_a_guest_that_cannot_page_uses_for_its_reserve():
    # 4 GiB short of its reserve, both in their band; big's fair share (2.5 GiB) is below what it uses (5592 MiB):
    # taken there, it would be OOM-killed, where the host swaps a little
    host = HostMemory(total_kib=16 * GIB, available_kib=0, reserve_kib=4 * GIB, swap_free_kib=SWAP)
    out = run_all([obs("small", 1024, 300), obs("big", 8192, 2600)], host)
    assert out["big"].action == SHRINK and out["big"].target_kib == 5592 * MIB


def test_fair_shares_count_the_guests_that_do_not_decide_this_cycle():
    # big's grow to 12 GiB is under way (no report since): it is no candidate, but it holds most of the host.
    # Shares over a and b alone would be 1.5 GiB each, below what they use; over all three, 5 GiB each.
    host = HostMemory(total_kib=16 * GIB, available_kib=1 * GIB, reserve_kib=2 * GIB, swap_free_kib=SWAP)
    growing = History(changed_at=NOW, from_kib=8 * GIB, target_kib=12 * GIB, changed_on=int(NOW))
    observations = [obs("a", 2048, 600, maximum=16384), obs("b", 2048, 600, maximum=16384),
                    obs("big", 12288, 200, maximum=16384)]
    decisions = decide_all(observations, {o.name: DEFAULTS for o in observations}, {"big": growing}, host, NOW,
                           Limits(), "target")
    assert [d.action for d in decisions] == [HOLD, HOLD, "wait"]


@pytest.mark.parametrize("extra, untouched", [
    ({"rss_kib": 1024 * MIB}, 1024 * MIB),  # half of its 2 GiB never touched
    ({"rss_kib": 3 * GIB}, 0),  # QEMU's own memory on top: nothing untouched, never less than nothing
    ({}, 0),  # no rss reported: nothing known
])
def test_what_a_domain_has_not_touched_is_its_size_less_its_qemu_rss(extra, untouched):
    assert untouched_kib([obs("a", 2048, 300, **extra)]) == untouched


# ------------------------------------------------------------------ idle_shrink: needed

NEEDED = NeededSettings(idle_shrink="needed")
ROOMY = HostMemory(total_kib=64 * GIB, available_kib=40 * GIB, reserve_kib=4 * GIB, swap_free_kib=8 * GIB)


def pageable(name, actual, usable, **extra):
    """A guest that has swapped out: target need not first see it go without bursts."""
    return obs(name, actual, usable, swap_in_kib=0, swap_out_kib=4 * MIB, **extra)


def needed_run(observations, host, found_mib=None, settings=NEEDED):
    histories = {o.name: History(found_kib=found_mib * MIB) for o in observations} if found_mib else {}
    return {d.name: d for d in decide_all(observations, {o.name: settings for o in observations}, histories, host,
                                          NOW, Limits(), "target")}


def test_needed_is_the_default():
    # always starves guests where doing nothing starves none (the nightly scenario: docs/simulator.md)
    assert NeededSettings().idle_shrink == "needed"


@pytest.mark.parametrize("host", [ROOMY, None], ids=["roomy host", "host not watched"])
def test_on_a_host_that_does_not_need_it_an_idle_guest_keeps_the_size_it_was_found_at(host):
    # doing nothing leaves it 4 GiB: shrunk, a burst up to that would find it short
    out = needed_run([pageable("idle", 4096, 3800)], host)
    assert (out["idle"].action, out["idle"].code) == (HOLD, "not-needed")
    assert "no lower than the 4096 MiB it was found at" in out["idle"].reason
    always = needed_run([pageable("idle", 4096, 3800)], host, settings=NeededSettings(idle_shrink="always"))
    assert (always["idle"].action, always["idle"].code) == (SHRINK, "above-band")


def test_on_a_host_that_does_not_need_it_a_guest_grown_for_a_burst_keeps_that_size_for_the_next():
    # found at 4 GiB, grown to 6 GiB for a burst that has ended: shrunk back, the next one would find it short
    whole = NeededSettings(max_shrink_kib=8 * GIB, idle_shrink="needed")
    histories = {"grown": History(found_kib=4096 * MIB, peak_kib=6144 * MIB)}
    out = {d.name: d for d in decide_all([pageable("grown", 6144, 5800)], {"grown": whole}, histories, ROOMY, NOW,
                                          Limits(), "target")}
    assert (out["grown"].action, out["grown"].code) == (HOLD, "not-needed")
    assert "no lower than the 6144 MiB it grew to (found at 4096 MiB)" in out["grown"].reason
    # the host that needs the memory takes the growth, and more, back
    tight = HostMemory(total_kib=16 * GIB, available_kib=4 * GIB, reserve_kib=2 * GIB, swap_free_kib=8 * GIB)
    out = {d.name: d for d in decide_all([pageable("grown", 6144, 5800, rss_kib=1024 * MIB)], {"grown": whole},
                                          histories, tight, NOW, Limits(), "target")}
    assert out["grown"].action == SHRINK and out["grown"].target_kib < 4096 * MIB


def test_a_guest_shrunk_below_the_size_it_grew_to_gets_that_size_back_on_a_host_that_can_back_it():
    histories = {"shrunk": History(found_kib=1024 * MIB, peak_kib=3072 * MIB)}
    out = {d.name: d for d in decide_all([pageable("shrunk", 1024, 700)], {"shrunk": NEEDED}, histories, ROOMY,
                                          NOW, Limits(), "target")}
    assert (out["shrunk"].action, out["shrunk"].code, out["shrunk"].target_kib) == (GROW, "restore", 3072 * MIB)
    # always: the band alone, which the size it grew to does not hold up
    always = NeededSettings(max_shrink_kib=8 * GIB, idle_shrink="always")
    out = {d.name: d for d in decide_all([pageable("grown", 6144, 5800)], {"grown": always},
                                          {"grown": History(found_kib=4096 * MIB, peak_kib=6144 * MIB)}, ROOMY, NOW,
                                          Limits(), "target")}
    assert out["grown"].action == SHRINK


def test_a_host_that_cannot_back_what_its_guests_were_given_lets_the_band_shrink():
    # 6 GiB spare above the reserve, 7.5 GiB given and untouched: the host needs the memory
    host = HostMemory(total_kib=16 * GIB, available_kib=8 * GIB, reserve_kib=2 * GIB, swap_free_kib=8 * GIB)
    given = pageable("idle", 8192, 7900, rss_kib=512 * MIB)
    out = needed_run([given], host)
    assert out["idle"].action == SHRINK and out["idle"].target_kib < 8192 * MIB
    # PSI pressure: the same, whatever MemAvailable says
    out = needed_run([pageable("idle", 4096, 3800)], HostMemory(total_kib=64 * GIB, available_kib=40 * GIB,
                                                            reserve_kib=4 * GIB, pressure=True))
    assert out["idle"].action == SHRINK


def test_a_guest_shrunk_while_the_host_needed_it_gets_its_found_size_back_beyond_a_margin():
    out = needed_run([pageable("shrunk", 1024, 700)], ROOMY, found_mib=4096)
    assert (out["shrunk"].action, out["shrunk"].code, out["shrunk"].target_kib) == (GROW, "restore", 4096 * MIB)
    # the host can back only 1 GiB beyond half its reserve: that much, no more
    tight = HostMemory(total_kib=64 * GIB, available_kib=7 * GIB, reserve_kib=4 * GIB, swap_free_kib=8 * GIB)
    out = needed_run([pageable("shrunk", 1024, 700)], tight, found_mib=4096)
    assert out["shrunk"].action == GROW and out["shrunk"].target_kib == 2048 * MIB
    # within the margin: neither the band nor a restore moves it
    at_margin = HostMemory(total_kib=64 * GIB, available_kib=6 * GIB, reserve_kib=4 * GIB, swap_free_kib=8 * GIB)
    assert needed_run([pageable("shrunk", 1024, 700)], at_margin, found_mib=4096)["shrunk"].action == HOLD
    # a host not watched restores nothing: it cannot say what it can back
    assert needed_run([pageable("shrunk", 1024, 700)], None, found_mib=4096)["shrunk"].action == HOLD


def test_the_found_size_is_the_first_fresh_report():
    first = Figures(4096 * MIB, 3000 * MIB, 8192 * MIB, 100)
    later = Figures(1024 * MIB, 700 * MIB, 8192 * MIB, 200)
    assert History().saw(first).saw(later).found_kib == 4096 * MIB


def test_the_size_it_grew_to_is_the_largest_in_a_report():
    sizes = [2048, 6144, 1024, 3072]
    history = History()
    for i, size in enumerate(sizes):
        history = history.saw(Figures(size * MIB, 700 * MIB, 8192 * MIB, 100 * (i + 1)))
    assert history.peak_kib == 6144 * MIB
