"""The real daemon against the simulated host: in process, as `--simulate`, and as the benchmark."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from balloon2395.config import Config, DomainSettings
from balloon2395.policy import HOLD, POLICIES
from balloon2395.sim.model import MIB
from balloon2395.sim.run import run_scenario
from balloon2395.sim.scenario import load
from conftest import ROOT, bench_module, run_cli

TINY = """
duration: 2m
host: {total: 8GiB, own: 1GiB}
guests:
  - {name: idle, current: 1GiB, maximum: 2GiB}
  - name: busy
    current: 1GiB
    maximum: 4GiB
    swap: 512MiB
    noise: 20MiB
    workload:
      - {at: 40, anon: +800MiB, over: 4s}
"""
BENCH_KEYS = ["scenario", "policy", "oom_kills", "oom_beyond_max", "starved_s", "swap_in_mib", "reclaimed_gib_avg",
              "headroom_bound_gib", "setmem_calls", "relief_p50_s", "relief_p95_s"]


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
    config = Config(defaults=DomainSettings(headroom_kib=headroom_mib * MIB, critical_kib=floor_mib * MIB))
    idle = run_scenario(load(str(tiny)), policy="target", config=config).guests[0]
    used = {s.used_kib for s in idle.series}
    assert len(used) == 1  # the idle guest's use never moves, so its bound is one figure
    assert idle.avg_least_actual_kib == max(used.pop() + headroom_mib * MIB, floor_mib * MIB)
    assert idle.avg_actual_kib >= idle.avg_least_actual_kib  # target keeps the headroom from the start


def test_a_run_is_the_same_for_the_same_seed(tiny):
    scenario = load(str(tiny))
    assert run_scenario(scenario, seed=1) == run_scenario(scenario, seed=1)
    assert run_scenario(scenario, seed=1).guests[1].series != run_scenario(scenario, seed=2).guests[1].series


# --simulate runs as its own process below: simulate() writes to the sys.stdout of when it was imported.
def test_simulate_runs_the_daemon_without_virsh_or_a_lock(tiny):
    result = subprocess.run([str(ROOT / "balloon-2395"), "--simulate", str(tiny), "--duration", "30", "--speed", "1000",
                             "--virsh", "/nonexistent/virsh", "--lock-dir", "/proc/no-lock-here"],
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
    assert "band 25-35%" in periodic[0] and "last: shrink" in periodic[0]


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
    assert [list(r) for r in rows] == [BENCH_KEYS] * len(POLICIES)
    assert [r["policy"] for r in rows] == list(POLICIES) and rows[0]["scenario"] == "tiny"
    assert rows[0]["setmem_calls"] > 0 and rows[0]["reclaimed_gib_avg"] > 0


def test_the_benchmark_runs_every_policy_there_is(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(POLICIES, "never", lambda stats, settings, cap, signals: (HOLD, None, "never", "never acts"))
    assert bench_module("control").main(["--json", "--scenario", str(tiny), "--duration", "60", "--jobs", "1",
                         "--out", str(tmp_path)]) == 0
    rows = {r["policy"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(POLICIES) and rows["never"]["setmem_calls"] == 0
    assert rows["never"]["reclaimed_gib_avg"] < rows["step"]["reclaimed_gib_avg"]
