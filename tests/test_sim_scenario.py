"""Scenario files: the shipped ones load, the trace format means what the README says, mistakes are one line."""

from __future__ import annotations

from dataclasses import replace

import pytest

from balloon2395.sim.model import MIB
from balloon2395.sim.scenario import SCENARIO_DIR, Scenario, ScenarioError, load, names
from conftest import HOST_GROWS

REQUIRED = {"idle", "steady", "ramp", "burst", "sawtooth", "cache-heavy", "mix", "demo", "calibrate", "overcommit",
            "fleet", "burster", "burster-autodeflate", "burster-fpr", "nightly", "host-grows"}


def write(tmp_path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


def test_every_shipped_scenario_loads():
    assert REQUIRED <= set(names())
    for name in names():
        scenario = load(name)
        assert scenario.guests and scenario.duration_s > 0
    assert len(load("mix").guests) == 8


def test_the_hosts_own_use_follows_its_workload(tmp_path):
    scenario = load(write(tmp_path, HOST_GROWS))
    assert [scenario.host_own_kib(t) // MIB for t in (0, 60, 90, 120, 3600)] == [1024, 1024, 2048, 3072, 3072]


def test_a_host_workload_of_page_cache_is_a_one_line_error(tmp_path):
    text = HOST_GROWS.replace("anon: +2GiB", "cache: +2GiB")
    with pytest.raises(ScenarioError, match=r"host.workload: takes 'anon' steps only"):
        load(write(tmp_path, text))


def test_the_nightly_guests_idle_for_three_hours_then_burst():
    scenario = load("nightly")
    report, cron, _ = scenario.guests
    assert report.spec.swap_kib == 0 and cron.spec.swap_kib > 0
    assert {g.workload_kib(t, 0) for g in (report, cron) for t in range(0, 3 * 3600, 60)} == {0}
    assert report.workload_kib(3 * 3600 + 30, 0) == 1536 * MIB and cron.workload_kib(3 * 3600, 0) == 1024 * MIB


def need_kib(scenario: Scenario, t: float) -> int:
    """What the guests must hold at `t` to run their workloads without swapping (page cache at its floor)."""
    return sum(g.spec.fixed_kib + g.spec.cache_floor_kib + g.spec.min_free_kib + g.spec.base_anon_kib
               + g.workload_kib(t, 0) for g in scenario.guests)


def test_the_overcommit_scenario_wants_1_4x_what_the_host_can_give_for_part_of_the_run():
    scenario = load("overcommit")
    assert [g.spec.maximum_kib for g in scenario.guests] == [4096 * MIB] * 8
    assert (scenario.host.total_kib, scenario.host.own_kib, scenario.host.swap_kib) == (16384 * MIB, 2048 * MIB,
                                                                                        2048 * MIB)
    room = scenario.host.total_kib - scenario.host.own_kib
    shares = [need_kib(scenario, t) / room for t in range(0, int(scenario.duration_s), 10)]
    assert 1.4 <= max(shares) <= 1.5
    assert sum(s > 1 for s in shares) < len(shares) / 2  # most of the time, the host can give them what they want
    assert {g.spec.swap_kib > 0 for g in scenario.guests} == {True, False}


def test_the_fleet_fits_its_host_at_its_daily_peaks_not_at_the_guests_maximum():
    scenario = load("fleet")
    assert len(scenario.guests) >= 20 and scenario.duration_s == 24 * 3600
    room = scenario.host.total_kib - scenario.host.own_kib
    peak = max(need_kib(scenario, t) for t in range(0, 24 * 3600, 60))
    assert peak < room < sum(g.spec.maximum_kib for g in scenario.guests)
    assert len({g.trace for g in scenario.guests}) > 15  # staggered: hardly two guests share a day


@pytest.mark.parametrize("name, features", [("burster-autodeflate", {"bursty": (True, False)}),
                                            ("burster-fpr", {"bursty": (False, True), "files": (False, True)})])
def test_the_burster_variants_are_burster_with_balloon_features_on(name, features):
    plain, variant = load("burster"), load(name)
    assert (variant.host, variant.duration_s) == (plain.host, plain.duration_s)
    for a, b in zip(plain.guests, variant.guests):
        assert (b.spec.deflate_on_oom, b.spec.free_page_reporting) == features.get(b.name, (False, False))
        assert replace(b, spec=replace(b.spec, deflate_on_oom=False, free_page_reporting=False)) == a


def test_the_burster_takes_1_5_gib_at_once_every_10_minutes_beside_a_cache_without_bound():
    bursty, files = load("burster").guests
    assert (bursty.spec.maximum_kib, bursty.spec.swap_kib) == (2048 * MIB, 0)
    assert [bursty.trace.anon_kib(t) // MIB for t in (299, 300, 359, 360, 899, 900)] == [0, 1536, 1536, 0, 0, 1536]
    assert files.trace.cache_kib(7200) > files.spec.maximum_kib  # it would read more than any size holds


def test_the_calibration_scenario_is_what_the_e2e_harness_replays():
    (guest,) = load("calibrate").guests
    assert (guest.current_kib, guest.spec.maximum_kib, guest.hot) == (512 * MIB, 1024 * MIB, False)
    trace = guest.trace
    assert [trace.anon_kib(t) // MIB for t in (29, 30, 31, 33, 36, 60, 120)] == [0, 0, 50, 150, 300, 300, 0]
    assert trace.bursts(240) == [(30.0, 36.0)]


def test_steps_relative_levels_rates_and_repeats(tmp_path):
    scenario = load(write(tmp_path, """
duration: 10m
host: {total: 8GiB}
guests:
  - name: g
    current: 1GiB
    maximum: 2GiB
    repeat: 100
    workload:
      - {at: 10, anon: +200MiB, over: 10s}
      - {at: 20, anon: +100MiB, cache: 1GiB}
      - {at: 50, anon: -300MiB, rate: 100MiB/s}
      - {at: 60, cache: 0}
"""))
    trace = scenario.guests[0].trace
    assert [trace.anon_kib(t) // MIB for t in (0, 10, 15, 20, 49, 51, 53, 99, 115)] == [0, 0, 100, 300, 300, 200, 0, 0,
                                                                                          100]
    assert [trace.cache_kib(t) // MIB for t in (19, 20, 59, 60, 120)] == [0, 1024, 1024, 0, 1024]
    assert trace.bursts(250) == [(10.0, 20.0), (20.0, 20.0), (110.0, 120.0), (120.0, 120.0), (210.0, 220.0),
                                 (220.0, 220.0)]


def test_balloon_features_rss_and_host_swap_are_read(tmp_path):
    scenario = load(write(tmp_path, """
host: {total: 8GiB, swap: 2GiB}
guests:
  - {name: a, current: 1GiB, maximum: 2GiB, touched: 600MiB, deflate_on_oom: true, free_page_reporting: true}
  - {name: b, current: 1GiB, maximum: 2GiB}
"""))
    a, b = scenario.guests
    assert scenario.host.swap_kib == 2048 * MIB
    assert (a.touched_kib, a.spec.deflate_on_oom, a.spec.free_page_reporting) == (600 * MIB, True, True)
    assert (b.touched_kib, b.spec.deflate_on_oom, b.spec.free_page_reporting) == (None, False, False)  # the defaults


def test_noise_is_the_same_for_the_same_seed_and_never_below_the_trace(tmp_path):
    guest = load(write(tmp_path, "host: {total: 8GiB}\nguests:\n"
                                 "  - {name: g, current: 1GiB, maximum: 2GiB, noise: 50MiB}\n")).guests[0]
    draws = [guest.workload_kib(t, seed=3) for t in range(100)]
    assert draws == [guest.workload_kib(t, seed=3) for t in range(100)]
    assert draws != [guest.workload_kib(t, seed=4) for t in range(100)]
    assert all(0 <= d < 50 * MIB for d in draws)


@pytest.mark.parametrize("text, where, problem", [
    ("guests: []", "scenario", "needs 'host'"),
    ("host: {total: 1GiB, own: 2GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB}]", "host.own",
     "must be below host.total"),
    ("host: {total: 8GiB}\nguests: []", "guests", "expected a non-empty list"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 3GiB, maximum: 2GiB}]", "guests[0].current", "above maximum"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 100MiB, maximum: 2GiB}]", "guests[0].current",
     "cannot hold the guest's kernel"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, swapp: 1GiB}]", "guests[0].swapp",
     "unknown key"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB}, {name: a, current: 1GiB, maximum: 2GiB}]",
     "guests[1].name", "used twice"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, workload: [{at: 5, anon: 1GiB, "
     "rate: 50MiB}]}]", "guests[0].workload[0].rate", "expected a size per second such as 50MiB/s, got '50MiB'"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, workload: [{at: 5, anon: 1GiB, "
     "over: 20}, {at: 10, anon: 0}]}]", "guests[0].workload[1].at", "before the anon change before it ends (25s)"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, workload: [{at: 5, anon: -1GiB}]}]",
     "guests[0].workload[0].anon", "takes anon below zero"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, workload: [{at: 9, anon: 1GiB}, "
     "{at: 5, anon: 0}]}]", "guests[0].workload[1].at", "time order"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, repeat: 60, workload: [{at: 50, "
     "anon: 1GiB, over: 20}]}]", "guests[0].workload", "past the repeat period"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, workload: [{at: soon, anon: 1GiB}]}]",
     "guests[0].workload[0].at", "expected seconds such as 90"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: lots, maximum: 2GiB}]", "guests[0].current",
     "expected a size"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, deflate_on_oom: 1}]",
     "guests[0].deflate_on_oom", "expected true or false, got 1"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, free_page_reporting: 'on'}]",
     "guests[0].free_page_reporting", "expected true or false, got 'on'"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, touched: 1100MiB}]", "guests[0].touched",
     "RSS above the guest's size (1100 > 1024 MiB)"),
    ("host: {total: 8GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB, touched: 100MiB}]", "guests[0].touched",
     "RSS below what the guest's kernel, services and cache use"),
    ("host: {total: 8GiB, swap: -1GiB}\nguests: [{name: a, current: 1GiB, maximum: 2GiB}]", "host.swap",
     "must not be negative"),
    ("host: {total: 8GiB, accel: hvf}\nguests: [{name: a, current: 1GiB, maximum: 2GiB}]", "host.accel",
     "expected one of kvm, tcg, got 'hvf'"),
    ("host: {total: 8GiB, accel: [tcg]}\nguests: [{name: a, current: 1GiB, maximum: 2GiB}]", "host.accel",
     "expected one of kvm, tcg, got ['tcg']"),
])
def test_mistakes_are_one_line_naming_the_file_and_the_key(tmp_path, text, where, problem):
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {where}: ") and problem in message and "\n" not in message


def test_unknown_names_list_the_known_ones_and_bad_yaml_says_where(tmp_path):
    with pytest.raises(ScenarioError, match=r"nosuch: no such scenario \(known: burst, burster, burster-autodeflate"):
        load("nosuch")
    with pytest.raises(ScenarioError, match="s.yaml: file: not valid YAML at line 3"):
        load(write(tmp_path, "host: {total: 8GiB}\nguests: [\n"))
    assert (SCENARIO_DIR / "README.md").is_file()


@pytest.mark.parametrize("accel, emulated", [(None, False), ("kvm", False), ("tcg", True)])
def test_the_host_says_whether_its_guests_are_emulated(tmp_path, accel, emulated):
    line = "host: {total: 8GiB}" if accel is None else f"host: {{total: 8GiB, accel: {accel}}}"
    scenario = load(write(tmp_path, line + "\nguests: [{name: a, current: 1GiB, maximum: 2GiB}]"))
    assert scenario.guests[0].spec.emulated is emulated


def test_a_scenario_may_set_the_reserve_the_daemon_keeps(tmp_path):
    assert load(write(tmp_path, HOST_GROWS.replace("host:\n", "host:\n  reserve: 10%\n"))).reserve == ("pct", 10.0)
    assert load(write(tmp_path, HOST_GROWS)).reserve is None


def test_a_bad_reserve_is_a_one_line_error_naming_the_key(tmp_path):
    with pytest.raises(ScenarioError, match=r"host.reserve: expected a size or a percentage"):
        load(write(tmp_path, HOST_GROWS.replace("host:\n", "host:\n  reserve: lots%\n")))
