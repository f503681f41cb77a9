"""The real daemon against the simulated host: in process, as `--simulate`, and as the benchmark."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from balloon2395.config import Config
from balloon2395.decide.cycle import POLICIES
from balloon2395.decide.records import HOLD, Proposal
from balloon2395.decide.rules import each
from balloon2395.settings import DomainSettings
from balloon2395.sim.live import _rows as live_rows
from balloon2395.sim.model import MIB, TCG_QEMU_OWN_KIB
from balloon2395.sim.run import BASELINES, Simulation, run_scenario
from balloon2395.sim.scenario import load
from conftest import HOST_GROWS, ROOT, bench_module, run_cli

TINY = """
duration: 2m
host: {total: 8GiB, own: 1GiB}
guests:
  - {name: idle, current: 1GiB, maximum: 2GiB, deflate_on_oom: true}  # shrunk from the start
  - name: busy
    current: 1GiB
    maximum: 4GiB
    swap: 512MiB
    noise: 20MiB
    workload:
      - {at: 40, anon: +800MiB, over: 4s}
"""
BENCH_KEYS = ["scenario", "policy", "seed", "kills", "oom_kills", "guests_lost", "oom_beyond_max", "starved_s",
              "swap_in_mib", "reclaimed_gib_avg", "host_saved_gib", "headroom_bound_gib", "host_swap_s", "setmem_calls",
              "relief_p50_s", "relief_p95_s"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_the_daemon_shrinks_the_idle_guest_in_steps_and_grows_the_busy_one(tiny):
    result = run_scenario(load(str(tiny)))
    idle, busy = result.guests
    sizes = sorted({s.actual_kib for s in idle.series}, reverse=True)
    assert all((1024 * MIB - size) % (50 * MIB) == 0 for size in sizes)  # the step policy's rmram
    last = idle.series[-1]
    assert last.usable_kib * 100 // last.actual_kib <= 35 or last.actual_kib - 50 * MIB < 300 * MIB  # band or floor
    peak = max(s.actual_kib for s in busy.series)
    assert peak > 800 * MIB and busy.setmem_calls > idle.setmem_calls
    assert len(busy.relief_s) == 1 and busy.relief_s[0] > 0  # the step policy lets the burst bite first
    assert result.duration_s == 120 and len(idle.series) == 120


@pytest.mark.parametrize("headroom_mib, floor_mib", [(256, 300), (64, 900)])
def test_the_headroom_bound_is_the_guests_own_use_plus_headroom_or_the_floor(tiny, headroom_mib, floor_mib):
    config = Config(defaults=DomainSettings(headroom_kib=headroom_mib * MIB, floor_kib=floor_mib * MIB))
    idle = run_scenario(load(str(tiny)), policy="target", config=config).guests[0]
    used = {s.used_kib for s in idle.series}
    assert len(used) == 1  # the idle guest's use never moves, so its bound is one figure
    assert idle.avg_least_rss_kib == max(used.pop() + headroom_mib * MIB, floor_mib * MIB)
    assert idle.avg_actual_kib >= idle.avg_least_rss_kib  # target keeps the headroom from the start


def test_an_emulated_guest_costs_its_host_qemus_own_memory_in_its_rss_and_its_bound(tmp_path):
    kvm, tcg = tmp_path / "kvm.yaml", tmp_path / "tcg.yaml"
    kvm.write_text(TINY)
    tcg.write_text(TINY.replace("own: 1GiB}", "own: 1GiB, accel: tcg}"))
    (idle_kvm, _), (idle_tcg, _) = (run_scenario(load(str(p)), policy="none").guests for p in (kvm, tcg))
    assert idle_tcg.avg_rss_kib - idle_kvm.avg_rss_kib == TCG_QEMU_OWN_KIB
    assert idle_tcg.avg_least_rss_kib - idle_kvm.avg_least_rss_kib == TCG_QEMU_OWN_KIB


# `big` takes 1700 MiB at t=1 s (at once, or over `over`): its RSS grows from 1 GiB to about 1956 MiB, and the
# host needs about 4004 MiB of its 3584 MiB RAM.
CROWDED = """
duration: 10s
host: {{total: {total}, own: 1GiB, swap: {swap}}}
guests:
  - {{name: big, current: 2GiB, maximum: 3GiB, touched: 1GiB, workload: [{{at: 1, anon: +1700MiB, over: {over}}}]}}
  - {{name: small, current: 1GiB, maximum: 2GiB}}
"""


def crowded(tmp_path, total="3584MiB", swap="1GiB", over="0s"):
    path = tmp_path / "crowded.yaml"
    path.write_text(CROWDED.format(total=total, swap=swap, over=over))
    return load(str(path))


@pytest.mark.parametrize("baseline", BASELINES)
def test_a_baseline_runs_the_guests_with_no_daemon(tiny, baseline):
    result = run_scenario(load(str(tiny)), policy=baseline)
    assert result.policy == baseline and [g.setmem_calls for g in result.guests] == [0, 0]
    assert {s.actual_kib for g in result.guests for s in g.series} == {1024 * MIB}


def test_the_fpr_baseline_turns_free_page_reporting_on_in_every_guest(tiny):
    without, reporting = (run_scenario(load(str(tiny)), policy=baseline) for baseline in ("none", "fpr"))
    assert [g.avg_rss_kib for g in without.guests] == [1024 * MIB] * 2  # all touched, none given back
    idle, busy = reporting.guests
    assert idle.avg_rss_kib < 250 * MIB  # about what it uses: its free pages went back 2 s in
    assert busy.avg_rss_kib < 800 * MIB  # its free pages went back until its burst took them


def test_host_swap_seconds_count_the_time_the_host_ram_falls_short(tmp_path):
    result = run_scenario(crowded(tmp_path), policy="none")
    assert result.host_swap_s == 9.1 and result.guests_lost == 0  # from t=1 s to the end, tick 10 included
    assert result.host_total_kib == 3584 * MIB
    assert run_scenario(crowded(tmp_path, total="8GiB"), policy="none").host_swap_s == 0


@pytest.mark.parametrize("total, starved", [("3584MiB", True), ("8GiB", False)])
def test_a_guest_faulting_pages_in_on_a_swapping_host_is_starved(tmp_path, total, starved):
    big, small = run_scenario(crowded(tmp_path, total=total, over="2s"), policy="none").guests
    # the host swaps once big's RSS passes 1536 MiB, and big's RSS grows until its ramp ends at t=3 s
    assert (big.starved_s > 0) == starved and big.starved_s < 1
    assert small.starved_s == 0  # its RSS never grows: the host's swapping costs it nothing here


def test_a_guest_lost_to_the_host_oom_killer_counts_as_its_maximum_from_then_on(tmp_path):
    result = run_scenario(crowded(tmp_path, swap="0"), policy="none")
    big, small = result.guests
    assert (result.guests_lost, big.lost_at_s, small.lost_at_s) == (1, 1.0, None)
    # ticks 1-9 at its 1 GiB RSS, ticks 10-100 at its 3 GiB maximum
    assert big.avg_rss_kib == (9 * 1024 + 91 * 3072) * MIB // 100
    assert big.avg_actual_kib == (9 * 2048 + 91 * 3072) * MIB // 100
    assert [s.rss_kib for s in big.series] == [0] * 10  # sampled each second from t=1 s: lost in that tick
    assert small.avg_rss_kib == 1024 * MIB and result.host_swap_s == 0.1  # the tick the killer acted in


def test_simulate_shows_a_guest_lost_to_the_host_as_lost(tmp_path):
    sim = Simulation(crowded(tmp_path, swap="0"), Config(policy="none"))
    while sim.host.tick < 20:
        sim.step()
    assert [row.last for row in live_rows(sim)] == ["lost to the host's OOM killer at 1s", "-"]


def test_simulate_shows_each_guests_next_step_and_why(tmp_path):
    sim = Simulation(crowded(tmp_path), Config(policy="target", secs=1))
    while sim.host.tick < 30:
        sim.step()
    decided = {d.name: d for d in sim.daemon.last.decisions}
    rows = live_rows(sim)
    assert [row.why for row in rows] == [decided[row.guest].reason for row in rows]
    assert all(row.why and row.next.startswith(decided[row.guest].action) for row in rows)


def test_simulate_without_a_daemon_says_so_in_why(tmp_path):
    sim = Simulation(crowded(tmp_path), Config(policy="none"))
    sim.step()
    assert {(row.next, row.why) for row in live_rows(sim)} == {("-", "no daemon: policy none")}


def test_a_run_is_the_same_for_the_same_seed(tiny):
    scenario = load(str(tiny))
    assert run_scenario(scenario, seed=1) == run_scenario(scenario, seed=1)
    assert run_scenario(scenario, seed=1).guests[1].series != run_scenario(scenario, seed=2).guests[1].series


# --simulate runs as its own process below: simulate() writes to the sys.stdout of when it was imported.
def test_simulate_runs_the_daemon_without_virsh_or_a_lock(tiny):
    result = subprocess.run([str(ROOT / "balloon-2395"), "--simulate", str(tiny), "--duration", "30", "--speed", "1000",
                             "--virsh", "/nonexistent/virsh", "--lock-dir", "/proc/no-lock-here",
                             "--idle-shrink", "always"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("simulated 30s of 'tiny' (policy target, seed 0) in ")
    assert lines[1].split() == ["GUEST", "OOM_KILLS", "STARVED_S", "SETMEM", "AVG_MiB"]
    assert [line.split()[0] for line in lines[2:]] == ["idle", "busy"]
    assert "INFO shrink idle 1024 -> 768 MiB: usable 82% > 35%: toward" in result.stderr  # target: 256 MiB at most


def test_simulate_without_a_terminal_prints_a_line_per_guest_now_and_then():
    result = subprocess.run([str(ROOT / "balloon-2395"), "--simulate", "--duration", "10", "--speed", "20"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    periodic = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [line.split()[:3] for line in periodic] == [["[", "10s]", name] for name in ("idle", "burst", "files")]
    # the demo's host does not need the idle guest's memory: it keeps the size it was found at (the default)
    assert "band 25-35%" in periodic[0] and "next: hold" in periodic[0] and "(idle_shrink: needed)" in periodic[0]


def test_simulate_stops_on_sigterm_and_still_prints_the_summary(tiny):
    proc = subprocess.Popen([str(ROOT / "balloon-2395"), "--simulate", str(tiny), "--speed", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("[   500s] idle")  # it runs: now stop it
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "simulated " in out and "OOM_KILLS" in out


@pytest.mark.parametrize("args, message", [
    (["--simulate", "nosuch"], "balloon-2395: nosuch: no such scenario (known: "),
    # --speed and --duration out of range: argparse's usage errors (test_cli)
])
def test_simulate_usage_errors_exit_2_with_one_line(args, message):
    result = run_cli(args)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_the_benchmark_prints_its_keys_for_every_policy(tiny, tmp_path, capsys):
    assert bench_module("control").main(["--json", "--scenario", str(tiny), "--duration", "60", "--jobs", "1",
                                         "--out", str(tmp_path / "out")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [list(r) for r in rows] == [BENCH_KEYS] * (len(POLICIES) + len(BASELINES))
    assert [r["policy"] for r in rows] == list(POLICIES) + list(BASELINES) and rows[0]["scenario"] == "tiny"
    assert rows[0]["setmem_calls"] > 0 and rows[0]["reclaimed_gib_avg"] > 0


def test_the_benchmark_runs_every_policy_there_is(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(POLICIES, "never", each(lambda figures, settings, cap, signals: Proposal(HOLD, None, "never",
                                                                                                 "never acts")))
    assert bench_module("control").main(["--json", "--scenario", str(tiny), "--duration", "60", "--jobs", "1",
                         "--out", str(tmp_path)]) == 0
    rows = {r["policy"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(POLICIES) | set(BASELINES) and rows["never"]["setmem_calls"] == 0
    assert rows["never"]["reclaimed_gib_avg"] < rows["step"]["reclaimed_gib_avg"]


# ------------------------------------------------------------------ the benchmark's verdict

def bench_row(policy, lost=0, kills=0, starved=0.0, saved=5.0, bound=5.0):
    return {"scenario": "s", "seed": 0, "policy": policy, "guests_lost": lost, "oom_kills": kills,
            "starved_s": starved, "host_saved_gib": saved, "headroom_bound_gib": bound}


@pytest.mark.parametrize("mine, theirs, verdict", [
    # a lost guest outweighs any number of OOM kills
    (bench_row("target", lost=1), bench_row("none", kills=9), "none has fewer guests lost (0 < 1)"),
    (bench_row("target", kills=9), bench_row("none", lost=1), None),
    # OOM kills outweigh any number of starved seconds
    (bench_row("target", kills=1), bench_row("mom", starved=9999.0), "mom has fewer OOM kills (0 < 1)"),
    (bench_row("target", starved=9999.0), bench_row("mom", kills=1), None),
    # starved seconds outweigh memory saved
    (bench_row("target", starved=5.0, saved=9.0), bench_row("proxmox", saved=1.0), "proxmox has fewer starved s"),
    # memory saved decides between runs of equal harm
    (bench_row("target", saved=4.0, bound=4.0), bench_row("fpr", saved=4.5), "fpr does as little harm and saves more"),
    (bench_row("target", saved=4.5), bench_row("fpr", saved=4.0), None),
])
def test_the_verdict_orders_harm_lost_then_kills_then_starved_then_saved(mine, theirs, verdict):
    how = bench_module("control").beaten([mine, theirs])
    assert (how[0].startswith(verdict) if verdict else how == []), how


@pytest.mark.parametrize("kills, beaten", [(0, True), (1, False)])
def test_the_headroom_bound_counts_only_where_no_policy_kills(kills, beaten):
    rows = [bench_row("target", saved=4.0, bound=5.0), bench_row("step", kills=kills, saved=1.0)]
    how = bench_module("control").beaten(rows)
    assert bool(how) == beaten and all("of the bound" in line for line in how)


def test_the_markdown_table_shows_lost_guests_and_oom_kills_apart(tiny, tmp_path, capsys):
    assert bench_module("control").main(["--markdown", "--scenario", str(tiny), "--duration", "30", "--jobs", "1",
                                         "--policy", "none", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| scenario | seed | policy | lost | OOM kills | starved s |")
    assert lines[2].startswith("| tiny | 0 | none | 0 | 0 | ")


@pytest.mark.parametrize("policy, lost", [("none", 1), ("target", 0)])
def test_a_host_whose_own_use_grows_loses_a_guest_unless_the_guests_give_memory_back(tmp_path, policy, lost):
    path = tmp_path / "grows.yaml"
    path.write_text(HOST_GROWS)
    result = run_scenario(load(str(path)), policy=policy)
    assert (result.guests_lost, sum(g.oom_kills for g in result.guests)) == (lost, 0)


@pytest.mark.parametrize("scenario, policy, lost", [
    ("pressure-staggered", "none", 1), ("pressure-staggered", "target", 0),
    ("pressure-together", "none", 1), ("pressure-together", "target", 0),
])
def test_a_host_that_cannot_swap_loses_no_guest_to_target(scenario, policy, lost):
    # target pays with OOM kills inside guests on pressure-together instead: someone has to
    assert run_scenario(load(scenario), policy=policy).guests_lost == lost


def test_the_simulated_host_shows_its_swap_as_a_local_hosts_meminfo():
    sim = Simulation(load("overcommit"), Config(policy="target"))
    host = sim.daemon.host.read()
    assert host is not None and host.swap_free_kib == 2 * 1024 * MIB and host.can_swap
    assert load("pressure-together").host.swap_kib == 0


IDLE_THEN_BURST = """
duration: 40m
host: {total: 16GiB, own: 1GiB, swap: 1GiB}
guests:
  - name: cron
    current: 2GiB
    maximum: 4GiB
    swap: 1GiB
    workload:
      - {at: 30m, anon: +1GiB}
"""


def test_on_a_roomy_host_a_guest_idle_then_bursting_starves_no_more_than_with_no_daemon(tmp_path):
    # the class the nightly scenario is one case of: idle long enough to be shrunk, then a burst at once
    path = tmp_path / "idle-then-burst.yaml"
    path.write_text(IDLE_THEN_BURST)
    scenario = load(str(path))
    none = run_scenario(scenario, policy="none").guests[0]
    needed = run_scenario(scenario, policy="target").guests[0]  # the default
    always = run_scenario(scenario, "target", 0, None, Config(defaults=DomainSettings(idle_shrink="always"))).guests[0]
    assert none.starved_s == 0 and none.oom_kills == 0
    assert (needed.oom_kills, needed.starved_s) == (0, 0)
    assert always.starved_s > 0  # the band alone shrank it, and the burst swapped: what `needed` avoids
