"""The simulator's memory model: accounting that conserves memory, MemAvailable as Linux computes it, OOM exactly
when anonymous demand exceeds memory + swap."""

from __future__ import annotations

from hypothesis import given, strategies as st

from balloon2395.sim.model import (
    BALLOON_KIB_S,
    MIB,
    GuestSpec,
    GuestState,
    HostSpec,
    advance,
    boot,
    capacity_kib,
    host_mem,
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
    assert after.touched_kib <= after.actual_kib
    for counter in ("swap_in_kib", "swap_out_kib", "major_fault", "minor_fault", "oom_kills"):
        assert getattr(after, counter) >= getattr(before, counter)


specs = st.builds(
    lambda maximum_mib, swap_mib, base_mib, cache_mib: GuestSpec(
        "g", maximum_mib * MIB, swap_kib=swap_mib * MIB, base_anon_kib=base_mib * MIB, boot_cache_kib=cache_mib * MIB),
    st.integers(512, 8192), st.sampled_from([0, 256, 1024]), st.integers(8, 128), st.integers(8, 256))
steps = st.lists(st.tuples(st.sampled_from([0.1, 0.5, 1.0]), st.integers(0, 6 * GIB), st.integers(0, 2 * GIB),
                           st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=40)


def booted(spec: GuestSpec) -> GuestState:
    return boot(spec, spec.maximum_kib)


@given(specs, steps)
def test_memory_is_conserved_whatever_the_workload_and_the_balloon_do(spec, moves):
    state = booted(spec)
    for dt, workload, cache, target_share, hot in moves:
        target = int(spec.fixed_kib + target_share * (spec.maximum_kib - spec.fixed_kib))
        before, state = state, advance(spec, set_target(state, target), dt, workload, cache, hot)
        check_accounting(spec, before, state)
        assert abs(state.actual_kib - before.actual_kib) <= BALLOON_KIB_S * dt  # a balloon has a speed


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
    guests = [boot(spec, 2 * GIB), boot(spec, 3 * GIB)]
    mem = host_mem(HostSpec(16 * GIB, 2 * GIB, 4 * GIB), guests)
    assert mem.guests_kib == 5 * GIB and mem.rss_kib == 5 * GIB
    assert mem.own_kib + mem.rss_kib + mem.cache_kib + mem.free_kib == mem.total_kib
    assert mem.available_kib == mem.free_kib + mem.cache_kib and mem.overcommit_kib == 0
    crowded = host_mem(HostSpec(4 * GIB, 1 * GIB, 1 * GIB), guests)
    assert crowded.free_kib == crowded.cache_kib == 0 and crowded.overcommit_kib == 2 * GIB
