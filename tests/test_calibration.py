"""Calibration's parts that need no real guest (calibration.plan*): the plan a scenario makes,
the daemon's change lines, the simulated side, the comparison's figures and the text report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pytest

from balloon2395.config import Config
from balloon2395.sim.run import Sample
from balloon2395.sim.scenario import ScenarioError, load
from calibration.compare import (
    Comparison,
    balloon_speed,
    detail,
    mean_abs_diff,
    phase,
    relief_s,
    settled_at,
    side_by_side,
    summary,
)
from calibration.plan import (
    MIB,
    Change,
    Plan,
    Point,
    Run,
    logged_changes,
    model_facts,
    parse_change,
    simulate,
    stamp_changes,
)
from calibration.replay import ChangeLog, log_notes, ramp_steps
from calibration.report import diff, fmt, probe_lines, render, rows_table

# the calibrate scenario's plan: 512 / 1024 MiB, +50 MiB/s from 30 s up to 300 MiB (full at 36 s), freed at 120 s
PLAN = Plan("calibrate", "calib", 512, 1024, 1, 30.0, 300, 50.0, 120.0, 240.0, 25.0, 35.0)
CALIBRATE_YAML = """duration: 4m
host: {total: 4GiB, own: 1GiB}
guests:
  - name: calib
    current: 512MiB
    maximum: 1GiB
    base: 16MiB
    cache: 16MiB
    hot: false
    workload:
"""


def point(t: float, actual_mib: float, usable_pct: float, **kw) -> Point:
    actual_kib = round(actual_mib * MIB)
    return Point(t, actual_kib, round(actual_kib * usable_pct / 100), **kw)


def run_of(points: List[Point], changes: Optional[List[Change]] = None, **kw) -> Run:
    return Run("real", points, changes or [], kw.pop("oom_kills", 0), kw.pop("setmem_calls", 0), **kw)


def scenario_file(tmp_path: Path, workload: str) -> Path:
    path = tmp_path / "cal.yaml"
    path.write_text(CALIBRATE_YAML + workload)
    return path


# --------------------------------------------------------------------- the plan
def test_the_calibrate_scenario_makes_the_plan_a_replay_needs():
    assert Plan.of(load("calibrate"), None, Config()) == PLAN
    assert PLAN.ramp_full_s == 36.0


def test_a_given_duration_replaces_the_scenarios():
    assert Plan.of(load("calibrate"), 130.0, Config()).duration_s == 130.0


def test_a_scenario_of_several_guests_is_refused():
    with pytest.raises(ScenarioError, match="exactly one guest"):
        Plan.of(load("idle"), None, Config())


def test_a_workload_that_does_not_drop_to_nothing_is_refused(tmp_path):
    path = scenario_file(tmp_path, "      - {at: 30, anon: +300MiB, rate: 50MiB/s}\n      - {at: 2m, anon: 100MiB}\n")
    with pytest.raises(ScenarioError, match="one rise at a rate, then a drop"):
        Plan.of(load(str(path)), None, Config())


def test_a_workload_that_jumps_instead_of_rising_at_a_rate_is_refused(tmp_path):
    path = scenario_file(tmp_path, "      - {at: 30, anon: 300MiB}\n      - {at: 2m, anon: 0}\n")
    with pytest.raises(ScenarioError, match="one rise at a rate"):
        Plan.of(load(str(path)), None, Config())


# --------------------------------------------------------------------- points and runs
def test_a_point_is_below_the_band_by_the_daemons_integer_percent():
    assert not Point(0, 1000, 250).below(25)
    assert Point(0, 1000, 249).below(25)  # 24.9 % is 24 to the daemon
    assert Point(0, 1000, 249).pct == pytest.approx(24.9)


def test_a_run_gives_the_point_nearest_a_time_within_one_sampling_period():
    run = run_of([point(1.0, 400, 30), point(1.5, 410, 30), point(5.0, 420, 30)])
    assert run.at(1.6).actual_kib == 410 * MIB
    assert run.at(3.0) is None  # 1.5 s from any sample


def test_a_run_gives_the_last_point_before_a_time_and_the_points_in_a_window():
    run = run_of([point(t, 400, 30) for t in (1.0, 2.0, 3.0)])
    assert run.before(2.0).t == 1.0 and run.before(1.0) is None
    assert [p.t for p in run.between(1.0, 3.0)] == [1.0, 2.0]


# --------------------------------------------------------------------- change lines
def test_a_change_line_is_read_from_the_text_log_and_from_a_log_message():
    assert parse_change("2024-05-01 10:00:00,000 INFO grow calib 312 -> 412 MiB: usable 18% < 25%", "calib") \
        == ("grow", 312, 412)
    assert parse_change("shrink calib 512 -> 462 MiB: usable 74% > 35%", "calib") == ("shrink", 512, 462)


def test_lines_that_are_not_this_guests_changes_are_not_changes():
    assert parse_change("INFO grow calib2 312 -> 412 MiB: x", "calib") is None  # a name it is a prefix of
    assert parse_change("INFO dry-run: shrink calib 512 -> 462 MiB: x", "calib") is None  # nothing was changed
    assert parse_change("INFO hold calib: usable 30% in 25-35%", "calib") is None


def test_every_change_line_of_a_log_is_counted():
    log = "INFO grow calib 312 -> 412 MiB: a\nINFO hold calib: b\nINFO shrink other 512 -> 462 MiB: c\n" \
          "INFO shrink calib 412 -> 362 MiB: d\n"
    assert logged_changes(log, "calib") == [("grow", 312, 412), ("shrink", 412, 362)]


def sample(t: int, target_mib: int) -> Sample:
    return Sample(t, target_mib * MIB, target_mib * MIB, 0, 0, 0, 0, 0, 0)


def test_a_simulated_change_is_stamped_at_the_first_second_its_target_is_set():
    series = [sample(0, 512), sample(1, 462), sample(2, 462), sample(3, 412), sample(4, 462)]
    lines = ["shrink calib 512 -> 462 MiB: a", "shrink calib 462 -> 412 MiB: b", "grow calib 412 -> 462 MiB: c"]
    assert [c.t for c in stamp_changes(lines, "calib", series)] == [1.0, 3.0, 4.0]  # not back at 1 s


def test_a_simulated_change_whose_target_never_shows_has_no_time():
    changes = stamp_changes(["grow calib 512 -> 612 MiB: a"], "calib", [sample(0, 512), sample(1, 512)])
    assert changes == [Change(None, "grow", 512, 612)]


# --------------------------------------------------------------------- the simulated side
def test_the_simulated_run_has_every_setmem_call_stamped_and_the_workload_full_when_planned():
    plan = Plan.of(load("calibrate"), 130.0, Config())
    sim = simulate(load("calibrate"), plan, "step", 0, Config())
    assert sim.source == "sim" and [p.t for p in sim.points] == [float(t) for t in range(1, 131)]
    assert len(sim.changes) == sim.setmem_calls > 0
    assert all(c.t is not None for c in sim.changes)
    assert sim.work_full_t == plan.ramp_full_s


def test_the_model_facts_are_the_ones_the_probe_measures():
    facts = model_facts(load("calibrate"), PLAN, 312)
    assert set(facts) == {"size_mib", "balloon_mib_s", "outside_memtotal_mib", "capacity_mib"}
    assert facts["size_mib"] == 312 and 0 < facts["capacity_mib"] < 312


# --------------------------------------------------------------------- the comparison
def test_relief_is_zero_when_usable_never_fell_below_the_band():
    assert relief_s(run_of([point(t, 400, 30) for t in range(30, 120)]), PLAN) == 0.0


def test_relief_is_the_time_from_the_ramp_until_usable_is_back_for_good():
    pcts = {31: 20, 32: 30, 33: 10}  # dips twice: the second dip counts
    run = run_of([point(t, 400, pcts.get(t, 30)) for t in range(30, 120)])
    assert relief_s(run, PLAN) == 4.0


def test_relief_is_none_when_usable_is_still_below_at_the_free():
    run = run_of([point(t, 400, 30 if t < 100 else 10) for t in range(30, 120)])
    assert relief_s(run, PLAN) is None


def test_the_idle_size_is_settled_at_the_last_change_before_the_ramp():
    changes = [Change(2.0, "shrink", 512, 462), Change(None, "shrink", 462, 412), Change(6.0, "shrink", 462, 412),
               Change(34.0, "grow", 412, 512)]
    assert settled_at(run_of([], changes), PLAN) == 6.0
    assert settled_at(run_of([], changes[-1:]), PLAN) is None


def test_the_summary_reads_the_idle_the_held_and_the_end_sizes():
    points = [point(29, 312, 60), point(35, 312, 20), point(40, 412, 30), point(119, 400, 30), point(240, 330, 70)]
    changes = [Change(5.0, "shrink", 512, 312), Change(36.0, "grow", 312, 412), Change(100.0, "shrink", 412, 400)]
    s = summary(run_of(points, changes, oom_kills=1, setmem_calls=3, oom_at=[37.0], work_full_t=38.0), PLAN)
    assert (s["idle_actual_mib"], s["idle_usable_pct"], s["idle_settled_at_s"]) == (312.0, 60.0, 5.0)
    assert (s["lowest_usable_pct_ramp"], s["lowest_usable_at_s"], s["work_full_after_s"]) == (20.0, 35.0, 8.0)
    assert (s["peak_actual_mib"], s["held_actual_mib"], s["end_actual_mib"]) == (412.0, 400.0, 330.0)
    assert (s["grows"], s["shrinks"], s["oom_kills"], s["oom_at_s"]) == (1, 2, 1, [37.0])


def test_the_summary_of_a_run_without_samples_has_no_figures():
    s = summary(run_of([]), PLAN)
    assert s["idle_actual_mib"] is s["lowest_usable_pct_ramp"] is s["peak_actual_mib"] is s["end_actual_mib"] is None
    assert (s["returned_gib"], s["starved_s"]) == (None, 0)


def test_returned_and_starved_are_the_control_benchmarks_weighted_by_how_long_each_sample_stood():
    # 512 MiB of 1024 held back for 1.5 s, 768 MiB for the last sample's 0.5 s; under 5 % usable for 1.5 s
    points = [point(0, 512, 4), point(1.5, 256, 50)]
    s = summary(run_of(points), PLAN)
    assert s["returned_gib"] == round((512 * 1.5 + 768 * 0.5) / 2 / 1024, 2)
    assert s["starved_s"] == 1.5


def test_the_real_balloon_speed_is_read_from_the_samples_after_each_change():
    points = [point(10.0, 300, 30, stats_age_s=0.5), point(10.5, 350, 30, stats_age_s=1.5),
              point(11.0, 400, 30, stats_age_s=1.0)]
    speed = balloon_speed(run_of(points, [Change(10.0, "grow", 300, 400), Change(None, "grow", 400, 500)]))
    assert speed["target_reached_median_s"] == 1.0 and speed["target_reached_max_s"] == 1.0
    assert speed["fastest_move_mib_s"] == 100  # 50 MiB in half a second
    assert speed["stats_age_median_s"] == 1.0 and speed["stats_age_max_s"] == 1.5


def test_a_change_the_samples_never_show_gives_no_speed():
    speed = balloon_speed(run_of([point(10.0, 300, 30)], [Change(10.0, "grow", 300, 400)]))
    assert speed["target_reached_median_s"] is speed["fastest_move_mib_s"] is speed["stats_age_max_s"] is None


def test_the_mean_difference_is_over_the_seconds_both_runs_have():
    sim = run_of([point(0, 400, 30), point(1, 400, 30), point(2, 400, 30)])
    real = run_of([point(0.2, 410, 20), point(1.1, 430, 30)])
    assert mean_abs_diff(sim, real) == {"actual_mib": 20.0, "usable_pct": 5.0, "seconds": 2}


def test_runs_without_a_common_second_have_no_mean_difference():
    assert mean_abs_diff(run_of([point(0, 400, 30)]), run_of([point(5, 400, 30)])) \
        == {"actual_mib": None, "usable_pct": None, "seconds": 0}


def test_the_phases_of_the_plan():
    assert [phase(PLAN, t) for t in (29.9, 30, 35.9, 36, 119.9, 120)] \
        == ["idle", "ramp", "ramp", "hold", "hold", "freed"]


def test_side_by_side_rows_leave_a_side_without_a_sample_empty():
    plan = Plan("c", "calib", 512, 1024, 1, 30.0, 300, 50.0, 120.0, 10.0, 25.0, 35.0)
    sim = run_of([point(t, 400, 30, work_mib=0.0) for t in range(11)])
    real = run_of([point(5.2, 410, 25)])
    rows = side_by_side(sim, real, plan, 5.0)
    assert [r["t"] for r in rows] == [0.0, 5.0, 10.0]
    assert rows[0]["real_actual_mib"] is None and rows[0]["sim_actual_mib"] == 400.0
    assert (rows[1]["real_actual_mib"], rows[1]["real_usable_pct"], rows[1]["real_work_mib"]) == (410.0, 25.0, None)


def test_the_detail_is_per_second_through_the_ramp_and_the_free_with_a_gap_between():
    sim = run_of([point(t, 400, 30) for t in range(241)])
    rows = detail(sim, run_of([]), PLAN)
    gap = rows.index({})
    assert [r["t"] for r in rows[:gap]] == list(range(29, 49))
    assert [r["t"] for r in rows[gap + 1:]] == list(range(119, 133))


# --------------------------------------------------------------------- the text report
def test_a_difference_is_signed_and_missing_when_a_side_is():
    assert diff(100, 110, pct=True) == "+10.0 (+10%)"
    assert diff(0, 5, pct=True) == "+5.0"  # no percent of nothing
    assert diff(None, 5) == diff(5, "x") == "-"
    assert fmt(None) == "-" and fmt(2.25, 1) == "2.2" and fmt(3) == "3"


def test_the_rows_table_is_aligned_and_shows_a_gap():
    plan = Plan("c", "calib", 512, 1024, 1, 30.0, 300, 50.0, 120.0, 5.0, 25.0, 35.0)
    rows = side_by_side(run_of([point(0, 400, 30), point(5, 400, 30)]), run_of([point(5, 412, 28)]), plan, 5.0)
    lines = rows_table(rows[:1] + [{}] + rows[1:])
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split()[0] == "..."
    assert lines[3].split() == ["5", "idle", "400", "30", "-", "412", "28", "-", "+12", "-2"]


def test_a_probe_that_failed_is_said_so():
    assert probe_lines({}, "failed") == ["real guest probe: failed"]


def test_a_probe_whose_workload_was_not_oom_killed_is_flagged():
    probe = {"size_mib": 312, "deflate": {"mib": 400, "s": 0.1, "mib_s": 4000},
             "inflate": {"mib": 400, "s": 0.2, "mib_s": 2000}, "outside_memtotal_mib": 112.0, "capacity_mib": 200,
             "capacity_oom_killed": False, "usable_mib": 150.0, "meminfo_kib": {"MemTotal": 204800}}
    model = {"balloon_mib_s": 1000, "outside_memtotal_mib": 100.0, "capacity_mib": 190.0}
    lines = probe_lines(model, probe)
    assert lines[3] == "  a workload's most before the OOM killer (no swap): 190 -> 200 MiB (not OOM-killed!)"
    assert lines[4].endswith("meminfo kB: MemTotal 204800")


def test_the_report_of_a_comparison():
    plan = Plan("c", "calib", 512, 1024, 1, 2.0, 100, 50.0, 6.0, 8.0, 25.0, 35.0)
    sim = run_of([point(t, 400, 30) for t in range(9)], [Change(3.0, "grow", 400, 500)], setmem_calls=1)
    real = run_of([point(t + 0.2, 420, 20) for t in range(9)], notes={"boot_s": 3.1, "probe": "failed"})
    text = render(Comparison("step", plan, sim, real, 4.0, model_facts(load("calibrate"), PLAN, 400)).as_dict())
    lines = text.split("\n")
    assert lines[0] == ("== c / policy step: 512 MiB current / 1024 MiB max, band 25-35%, workload +50 MiB/s "
                        "from t=2s up to 100 MiB, freed at t=6s, 8s ==")
    assert "per second through the ramp and the free:" in lines
    assert any(line.startswith("ramp start -> usable >= 25% for good (s; 0: never below)") for line in lines)
    assert "mean |sim - real| over 9 s: actual 20.0 MiB, usable 10.0 percentage points" in lines
    assert "sim changes: 3.0s grow 400->500" in lines and "real changes: none" in lines
    assert lines[-2:] == ["real run: boot_s 3.1", "real guest probe: failed"]


# --------------------------------------------------------------------- the real side's pure parts
def test_the_real_hog_grows_at_the_plans_rate_in_steps_of_about_200_ms():
    assert ramp_steps(PLAN) == (10, 200)
    assert ramp_steps(Plan("c", "g", 512, 1024, 1, 30.0, 300, 3.0, 120.0, 240.0, 25.0, 35.0)) == (1, 333)


def test_the_change_log_reads_only_whole_new_lines(tmp_path):
    path = tmp_path / "daemon.log"
    log = ChangeLog(path, "calib")
    assert log.read(0.5) == []  # not written yet
    path.write_text("INFO grow calib 312 -> 412 MiB: a\nINFO shrink other 1 -> 0 MiB: b\nINFO shrink calib 41")
    assert log.read(1.0) == [Change(1.0, "grow", 312, 412)]
    with open(path, "a") as f:
        f.write("2 -> 362 MiB: c\n")
    assert log.read(1.5) == [Change(1.5, "shrink", 412, 362)]
    assert log.read(2.0) == []


def test_the_daemons_log_notes_a_traceback_and_changes_never_stamped():
    assert log_notes("INFO grow calib 1 -> 2 MiB: a\n", 1, 1) == {}
    assert log_notes("Traceback (most recent call last):\n", 3, 2) == {"daemon_traceback": True,
                                                                       "changes_unstamped": 1}
