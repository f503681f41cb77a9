"""A short soak (issue 8, point 4; the full one is bench/soak.py): faults sprinkled over a busy
simulated host, every setmem checked, nothing unsafe, no traceback."""

from __future__ import annotations

from conftest import bench_module


def test_short_soak_with_faults_is_safe():
    result = bench_module("soak").soak(hours=0.2, guests=10, seed=3, rate=0.05, outage_every_s=300)
    assert result["unsafe_actions"] == 0, result["violations"]
    assert result["tracebacks"] == 0
    assert result["cycles"] == 0.2 * 3600 * 2
    kinds = result["faults_by_kind"]
    assert kinds["outage"] >= 2 and {"hang", "garbage", "truncated", "vanished", "future"} <= set(kinds)
    assert result["setmem_calls"] > 20  # the daemon kept working through them
