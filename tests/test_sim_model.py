"""The simulator's memory model: accounting that conserves memory, MemAvailable as Linux computes it, OOM exactly
when anonymous demand exceeds memory + swap (or the maximum, with deflate-on-oom), and the RSS a guest costs
its host."""

from __future__ import annotations

from dataclasses import replace
from typing import Tuple

import pytest
from hypothesis import given, strategies as st

from balloon2395.sim.model import (
    BALLOON_KIB_S,
    FPR_DELAY_S,
    MIB,
    TCG_FAULT_KIB_S,
    TCG_QEMU_OWN_KIB,
    GuestSpec,
    GuestState,
    HostSpec,
    advance,
    boot,
    capacity_kib,
    host_mem,
    report,
    rss_kib,
    set_target,
    usable_kib,
)

GIB = 1024 * MIB
DT = 0.1


def settle(spec, state, workload_kib=0, cache_kib=0, seconds=30.0, hot=True):
    for _ in range(int(seconds / DT)):
        state = advance(spec, state, DT, workload_kib, cache_kib, hot)
    return state


def check_accounting(spec: GuestSpec, before: GuestState, after: GuestState) -> None:
    assert spec.fixed_kib + after.anon_kib + after.cache_kib + after.free_kib == after.actual_kib
    assert min(after.anon_kib, after.cache_kib, after.free_kib, after.swapped_kib, after.killed_kib) >= 0
    assert after.swapped_kib <= spec.swap_kib
    assert after.actual_kib <= spec.maximum_kib
    assert 0 <= usable_kib(spec, after) <= after.actual_kib
    assert after.actual_kib - after.free_kib <= after.touched_kib <= after.actual_kib  # untouched pages are free
    for counter in ("swap_in_kib", "swap_out_kib", "major_fault", "minor_fault", "oom_kills"):
        assert getattr(after, counter) >= getattr(before, counter)


specs = st.builds(
    lambda maximum_mib, swap_mib, base_mib, cache_mib: GuestSpec(
        "g", maximum_mib * MIB, swap_kib=swap_mib * MIB, base_anon_kib=base_mib * MIB, boot_cache_kib=cache_mib * MIB),
    st.integers(512, 8192), st.sampled_from([0, 256, 1024]), st.integers(8, 128), st.integers(8, 256))
# the same with deflate-on-oom and free page reporting, each on or off
featured_specs = st.builds(lambda spec, autodeflate, fpr: replace(spec, deflate_on_oom=autodeflate,
                                                                  free_page_reporting=fpr),
                           specs, st.booleans(), st.booleans())
steps = st.lists(st.tuples(st.sampled_from([0.1, 0.5, 1.0]), st.integers(0, 6 * GIB), st.integers(0, 2 * GIB),
                           st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=40)


def booted(spec: GuestSpec) -> GuestState:
    return boot(spec, spec.maximum_kib)


@given(featured_specs, steps)
def test_memory_is_conserved_whatever_the_workload_and_the_balloon_do(spec, moves):
    state = booted(spec)
    for dt, workload, cache, target_share, hot in moves:
        target = int(spec.fixed_kib + target_share * (spec.maximum_kib - spec.fixed_kib))
        before, state = state, advance(spec, set_target(state, target), dt, workload, cache, hot)
        check_accounting(spec, before, state)
        if not state.oom_deflating:  # a balloon has a speed, but deflates on OOM at once
            assert abs(state.actual_kib - before.actual_kib) <= BALLOON_KIB_S * dt


@given(specs, steps)
def test_oom_kill_exactly_when_demand_exceeds_memory_plus_swap(spec, moves):
    state = booted(spec)  # the balloon stays put, so memory is a constant
    for dt, workload, cache, _, hot in moves:
        demand = spec.base_anon_kib + workload - min(state.killed_kib, workload)
        has_workload = workload > min(state.killed_kib, workload)
        before, state = state, advance(spec, state, dt, workload, cache, hot)
        killed = state.oom_kills - before.oom_kills
        assert killed == int(demand > capacity_kib(spec, state.actual_kib) and has_workload)
        beyond = state.oom_kills_beyond_max - before.oom_kills_beyond_max
        assert beyond == int(killed and demand > capacity_kib(spec, spec.maximum_kib))  # even at its maximum
        if killed:  # everything the workload held is freed
            assert state.anon_kib + state.swapped_kib <= spec.base_anon_kib


def test_an_idle_512_mib_guest_reports_about_70_percent_usable():
    spec = GuestSpec("g", 1 * GIB)
    state = boot(spec, 512 * MIB)
    assert 65 <= usable_kib(spec, state) * 100 // state.actual_kib <= 75
    assert settle(spec, state) == state  # nothing moves in an idle guest


def test_demand_within_memory_plus_swap_swaps_instead_of_oom():
    spec = GuestSpec("g", 1 * GIB, swap_kib=512 * MIB)
    state = boot(spec, 512 * MIB)
    workload = capacity_kib(spec, state.actual_kib) - spec.base_anon_kib  # exactly all memory + swap
    state = settle(spec, state, workload, hot=False)
    assert state.oom_kills == 0 and state.swapped_kib > 0
    assert state.anon_kib + state.swapped_kib == spec.base_anon_kib + workload
    assert state.cache_kib == spec.cache_floor_kib  # the cache was dropped before anything swapped
    state = settle(spec, state, workload + MIB, hot=False)
    assert state.oom_kills == 1 and state.anon_kib + state.swapped_kib == spec.base_anon_kib


def test_a_hot_workload_thrashes_until_the_guest_grows_then_swaps_back_in():
    spec = GuestSpec("g", 2 * GIB, swap_kib=1 * GIB)
    state = boot(spec, 512 * MIB)
    state = settle(spec, state, 600 * MIB, seconds=10)
    thrashing = settle(spec, state, 600 * MIB, seconds=1)
    assert thrashing.swap_in_kib > state.swap_in_kib and thrashing.swap_out_kib > state.swap_out_kib
    assert thrashing.swapped_kib > 0
    grown = settle(spec, set_target(thrashing, 2 * GIB), 600 * MIB, seconds=20)
    assert grown.swapped_kib == 0 and grown.anon_kib == spec.base_anon_kib + 600 * MIB
    assert settle(spec, grown, 600 * MIB, seconds=5).swap_in_kib == grown.swap_in_kib  # no more swap traffic


def test_inflation_drops_cache_first_and_never_takes_memory_in_use():
    spec = GuestSpec("g", 4 * GIB)
    state = settle(spec, boot(spec, 4 * GIB), 1 * GIB, 2 * GIB)
    assert state.cache_kib == spec.boot_cache_kib + 2 * GIB
    state = settle(spec, set_target(state, 0), 1 * GIB, 2 * GIB)
    assert state.actual_kib > state.target_kib  # it stopped where the guest had nothing left to give
    assert state.cache_kib == spec.cache_floor_kib and state.free_kib <= spec.min_free_kib
    assert state.anon_kib == spec.base_anon_kib + 1 * GIB and state.swapped_kib == 0 and state.oom_kills == 0


def test_a_kill_is_beyond_the_maximum_only_when_not_even_the_whole_domain_would_hold_the_demand():
    spec = GuestSpec("g", 1 * GIB, swap_kib=256 * MIB)
    small = boot(spec, 512 * MIB)
    fits_at_max = capacity_kib(spec, spec.maximum_kib) - spec.base_anon_kib
    state = settle(spec, small, fits_at_max, seconds=1, hot=False)
    assert (state.oom_kills, state.oom_kills_beyond_max) == (1, 0)  # a bigger balloon would have saved it
    state = settle(spec, small, fits_at_max + MIB, seconds=1, hot=False)
    assert (state.oom_kills, state.oom_kills_beyond_max) == (1, 1)


def test_the_workload_restarts_from_nothing_after_an_oom_kill():
    spec = GuestSpec("g", 1 * GIB)
    state = settle(spec, boot(spec, 512 * MIB), 1 * GIB, seconds=1)
    assert state.oom_kills == 1
    state = settle(spec, state, 1 * GIB + 100 * MIB, seconds=1)  # the restarted job allocates what it adds
    assert state.anon_kib == spec.base_anon_kib + 100 * MIB and state.oom_kills == 1


def test_host_accounting():
    spec = GuestSpec("g", 4 * GIB)
    guests = [(spec, boot(spec, 2 * GIB)), (spec, boot(spec, 3 * GIB))]
    mem = host_mem(HostSpec(16 * GIB, 2 * GIB, 4 * GIB), guests)
    assert mem.guests_kib == 5 * GIB and mem.rss_kib == 5 * GIB
    assert mem.own_kib + mem.rss_kib + mem.cache_kib + mem.free_kib == mem.total_kib
    assert mem.available_kib == mem.free_kib + mem.cache_kib and mem.swapped_kib == 0
    crowded = host_mem(HostSpec(4 * GIB, 1 * GIB, 1 * GIB), guests)
    assert crowded.free_kib == crowded.cache_kib == 0 and crowded.swapped_kib == 2 * GIB


def test_the_host_holds_the_guests_rss_not_their_size():
    spec = GuestSpec("g", 4 * GIB)
    fresh = boot(spec, 2 * GIB, touched_kib=1 * GIB)
    mem = host_mem(HostSpec(16 * GIB, 2 * GIB), [(spec, fresh)])
    assert (mem.guests_kib, mem.rss_kib, mem.free_kib) == (2 * GIB, 1 * GIB, 13 * GIB)


def test_an_emulated_guest_costs_its_host_qemus_own_memory_too():
    spec, emulated = GuestSpec("g", 4 * GIB), GuestSpec("g", 4 * GIB, emulated=True)
    state = boot(spec, 2 * GIB, touched_kib=1 * GIB)
    assert (rss_kib(spec, state), rss_kib(emulated, state)) == (1 * GIB, 1 * GIB + TCG_QEMU_OWN_KIB)
    mem = host_mem(HostSpec(16 * GIB, 2 * GIB), [(spec, state), (emulated, state)])
    assert mem.rss_kib == 2 * GIB + TCG_QEMU_OWN_KIB and mem.free_kib == 12 * GIB - TCG_QEMU_OWN_KIB


def test_an_emulated_guest_faults_new_memory_in_no_faster_than_tcg_does():
    spec, emulated = GuestSpec("g", 4 * GIB), GuestSpec("g", 4 * GIB, emulated=True)
    fast, slow = (settle(s, boot(s, 4 * GIB), 1 * GIB, seconds=2) for s in (spec, emulated))
    assert fast.anon_kib == spec.base_anon_kib + 1 * GIB
    assert slow.anon_kib == emulated.base_anon_kib + 2 * TCG_FAULT_KIB_S
    later = settle(emulated, slow, 1 * GIB, seconds=GIB / TCG_FAULT_KIB_S)
    assert later.anon_kib == emulated.base_anon_kib + 1 * GIB  # it gets there, later


# The real guests the RSS and deflate-on-oom figures follow (QEMU 7.2, Linux 6.1, 512 MiB maximum, busybox:
# little base use and cache). The model's RSS leaves out QEMU's own memory.
def real_guest(**features) -> GuestSpec:
    return GuestSpec("g", 512 * MIB, base_anon_kib=16 * MIB, boot_cache_kib=16 * MIB, **features)


def touched_and_freed(spec: GuestSpec, mib: int = 300) -> GuestState:
    """Booted at its maximum, `mib` MiB allocated, then freed, a few seconds ago."""
    state = settle(spec, boot(spec, spec.maximum_kib), mib * MIB, seconds=10, hot=False)
    return settle(spec, state, 0, seconds=0.5)


def test_without_free_page_reporting_freed_memory_stays_in_the_rss():
    # real: RSS 514 MiB (QEMU's own memory included) after 300 MiB were touched and freed
    spec = real_guest()
    state = settle(spec, touched_and_freed(spec), seconds=30)
    assert state.touched_kib == 512 * MIB and state.free_kib > 300 * MIB


def test_a_shrink_takes_the_touched_free_pages_out_of_the_rss():
    # real: a shrink to 300 MiB took that guest's RSS from 514 to 214 MiB
    spec = real_guest()
    shrunk = settle(spec, set_target(touched_and_freed(spec), 300 * MIB), seconds=2)
    assert shrunk.actual_kib == shrunk.touched_kib == 300 * MIB  # the 212 MiB the balloon took were all touched


def test_with_free_page_reporting_freed_memory_leaves_the_rss_about_2_s_later_with_no_setmem():
    # real: freeing 300 MiB took the RSS from 496 to 260 MiB
    spec = real_guest(free_page_reporting=True)
    holding = settle(spec, boot(spec, 512 * MIB), 300 * MIB, seconds=10, hot=False)
    used = holding.actual_kib - holding.free_kib
    assert holding.touched_kib == used  # its free pages were reported long ago
    freed = settle(spec, holding, 0, seconds=FPR_DELAY_S - 0.5)
    assert freed.touched_kib == used  # the reporting pass has not run yet
    reported = settle(spec, freed, 0, seconds=1)
    assert reported.touched_kib == used - 300 * MIB and reported.actual_kib == 512 * MIB


def test_free_page_reporting_leaves_page_cache_in_the_rss_until_the_files_go():
    spec = real_guest(free_page_reporting=True)
    reading = settle(spec, boot(spec, 512 * MIB), 0, 200 * MIB, seconds=10)
    assert reading.cache_kib == 216 * MIB and reading.touched_kib == reading.actual_kib - reading.free_kib
    deleted = settle(spec, reading, 0, 0, seconds=FPR_DELAY_S + 0.5)
    assert deleted.touched_kib == reading.touched_kib - 200 * MIB


def test_pages_reused_after_a_report_cost_rss_again():
    spec = real_guest(free_page_reporting=True)
    reported = settle(spec, touched_and_freed(spec), seconds=FPR_DELAY_S)
    again = settle(spec, reported, 100 * MIB, seconds=5, hot=False)
    assert again.touched_kib == reported.touched_kib + 100 * MIB


def test_nothing_moves_once_a_reporting_guest_has_no_touched_free_page():
    spec = real_guest(free_page_reporting=True)
    fresh = boot(spec, 512 * MIB)
    assert advance(spec, fresh, DT, 0, 0) is not fresh  # its touched free pages wait for the reporting pass
    reported = settle(spec, fresh, seconds=FPR_DELAY_S + 0.5)
    assert reported.fpr_wait_s == 0 and advance(spec, reported, DT, 0, 0) is reported


def test_a_grown_guest_costs_the_host_nothing_more_until_it_uses_the_new_pages():
    spec = real_guest()
    small = settle(spec, set_target(boot(spec, 512 * MIB), 300 * MIB), seconds=2)
    grown = settle(spec, set_target(small, 512 * MIB), seconds=2)
    assert grown.actual_kib == 512 * MIB and grown.touched_kib == small.touched_kib == 300 * MIB
    # 250 MiB: the 200 touched free pages first, then 50 MiB of the new ones
    used = settle(spec, grown, 250 * MIB, seconds=5, hot=False)
    assert used.touched_kib == 350 * MIB


def test_shrinking_a_guest_that_never_touched_its_free_memory_saves_the_host_nothing():
    spec = real_guest()
    idle = boot(spec, 512 * MIB, touched_kib=100 * MIB)  # all it ever used
    shrunk = settle(spec, set_target(idle, 300 * MIB), seconds=1)
    assert shrunk.actual_kib == 300 * MIB and shrunk.touched_kib == 100 * MIB


def test_the_balloon_takes_touched_free_pages_before_untouched_ones():
    spec = real_guest()
    state = boot(spec, 512 * MIB, touched_kib=200 * MIB)  # 100 MiB in use, 100 MiB touched free, 312 MiB never
    first = settle(spec, set_target(state, 412 * MIB), seconds=1)
    assert first.touched_kib == 100 * MIB
    second = settle(spec, set_target(first, 312 * MIB), seconds=1)
    assert second.touched_kib == 100 * MIB


def test_a_shrink_after_a_grow_takes_the_touched_free_pages_not_the_new_ones():
    spec = real_guest()
    small = settle(spec, set_target(boot(spec, 512 * MIB), 300 * MIB), seconds=2)  # 200 MiB of it touched free
    grown = settle(spec, set_target(small, 512 * MIB), seconds=2)  # and 212 MiB never touched
    shrunk = settle(spec, set_target(grown, 400 * MIB), seconds=2)
    assert shrunk.touched_kib == (300 - 112) * MIB


def test_cache_the_balloon_drops_leaves_the_rss():
    spec = real_guest()
    reading = settle(spec, boot(spec, 512 * MIB, touched_kib=100 * MIB), 0, 300 * MIB, seconds=5)
    shrunk = settle(spec, set_target(reading, 200 * MIB), 0, 300 * MIB, seconds=1)
    dropped = reading.cache_kib - shrunk.cache_kib
    assert dropped > 0 and reading.touched_kib - shrunk.touched_kib == dropped  # its free pages were never touched


def test_rss_at_boot_must_lie_between_the_guests_use_and_its_size():
    spec = real_guest()
    used = boot(spec, 512 * MIB, touched_kib=100 * MIB).touched_kib
    for touched in (used - MIB, 513 * MIB):
        with pytest.raises(ValueError, match="RSS"):
            boot(spec, 512 * MIB, touched_kib=touched)


def small_guest(**features) -> Tuple[GuestSpec, GuestState]:
    """A real guest ballooned to 300 MiB."""
    spec = real_guest(**features)
    return spec, settle(spec, set_target(boot(spec, 512 * MIB), 300 * MIB), seconds=2)


def test_deflate_on_oom_grows_the_guest_instead_of_an_oom_kill():
    # real: a 300 MiB allocation in a guest ballooned to 300 MiB succeeded, the balloon deflating to 482 MiB
    spec, small = small_guest(deflate_on_oom=True)
    state = settle(spec, small, 300 * MIB, seconds=5, hot=False)
    assert state.oom_kills == 0 and state.anon_kib == spec.base_anon_kib + 300 * MIB
    demand = spec.base_anon_kib + 300 * MIB
    assert capacity_kib(spec, state.actual_kib - MIB) < demand <= capacity_kib(spec, state.actual_kib)  # just enough
    assert state.target_kib == state.actual_kib  # the driver does not inflate again by itself
    assert state.oom_deflations == 1


def test_without_deflate_on_oom_the_same_allocation_is_an_oom_kill():
    spec, small = small_guest()
    state = settle(spec, small, 300 * MIB, seconds=5, hot=False)
    assert (state.oom_kills, state.oom_deflations, state.actual_kib) == (1, 0, 300 * MIB)


def test_deflate_on_oom_kills_only_when_even_the_maximum_cannot_hold_the_demand():
    spec, small = small_guest(deflate_on_oom=True)
    fits = capacity_kib(spec, spec.maximum_kib) - spec.base_anon_kib
    assert settle(spec, small, fits, seconds=1, hot=False).oom_kills == 0
    beyond = settle(spec, small, fits + MIB, seconds=1, hot=False)
    assert (beyond.oom_kills, beyond.oom_kills_beyond_max, beyond.actual_kib) == (1, 1, spec.maximum_kib)


def test_deflations_on_oom_in_a_row_count_once():
    spec, state = small_guest(deflate_on_oom=True)
    for mib in range(10, 301, 10):  # 100 MiB/s: the guest runs out in each tick from about 200 MiB on
        state = advance(spec, state, DT, mib * MIB, 0, hot=False)
    assert state.oom_deflations == 1 and state.oom_deflating
    state = settle(spec, state, 300 * MIB, seconds=1, hot=False)
    assert not state.oom_deflating
    assert settle(spec, state, 400 * MIB, seconds=1, hot=False).oom_deflations == 2


@pytest.mark.parametrize("autodeflate", [True, False])
def test_memtotal_stays_that_of_the_maximum_only_with_deflate_on_oom(autodeflate):
    spec = real_guest(deflate_on_oom=autodeflate)
    shrunk = settle(spec, set_target(boot(spec, 512 * MIB), 300 * MIB), seconds=2)
    size = 512 * MIB if autodeflate else 300 * MIB
    assert report(spec, shrunk, 0).total_kib == size - spec.reserved_kib


@given(specs, steps)
def test_with_deflate_on_oom_an_oom_kill_exactly_when_demand_exceeds_the_maximum(spec, moves):
    spec = replace(spec, deflate_on_oom=True)
    state = booted(spec)
    for dt, workload, cache, target_share, hot in moves:
        target = int(spec.fixed_kib + target_share * (spec.maximum_kib - spec.fixed_kib))
        demand = spec.base_anon_kib + workload - min(state.killed_kib, workload)
        has_workload = workload > min(state.killed_kib, workload)
        before, state = state, advance(spec, set_target(state, target), dt, workload, cache, hot)
        killed = state.oom_kills - before.oom_kills
        assert killed == int(demand > capacity_kib(spec, spec.maximum_kib) and has_workload)
