"""Processes (issue 8, point 3): killed at any point of a cycle and started again, nothing is changed
twice; started together, exactly one runs. (The lock basics are in test_lock.py.)"""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import domain, wait_for


def test_started_at_the_same_instant_exactly_one_runs(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    procs = [daemons(host, "--secs", "0.2") for _ in range(4)]
    assert wait_for(lambda: sum(p.poll() is not None for p in procs) == 3)
    (runner,) = [p for p in procs if p.poll() is None]
    for proc in procs:
        if proc is not runner:
            assert proc.returncode == 3
            assert f"pid {runner.pid}" in proc.communicate()[1]
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=20) == 0


@pytest.mark.parametrize("moment", ["inside setmem", "after setmem"])
def test_sigkill_mid_cycle_then_restart_changes_nothing_twice(fake_host, daemons, moment):
    now = int(time.time())
    host = fake_host(domain("web1", usable_mib=300, last_update=now))  # figures that stay those of `now`
    if moment == "inside setmem":
        host.write({**host.read(), "faults": {"setmem": {"sleep": 0.5, "times": 1}}})
        first = daemons(host, "--secs", "0.2")
        host.signal_inside(first, signal.SIGKILL, "setmem")
    else:
        first = daemons(host, "--secs", "0.2")
        assert wait_for(lambda: host.read()["domains"][0]["actual_kib"] != 2048 * 1024)
        first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    again = host.cli("--once")
    assert again.returncode == 0, again.stderr  # the lock was free
    assert len(host.setmems()) == 1, again.stderr  # the figures are still those acted on: no second change
    if "stale" not in again.stderr:
        assert "wait web1: changed before a restart" in again.stderr
    state = host.read()
    state["domains"][0]["last_update"] = int(time.time()) + 1  # the guest reports
    host.write(state)
    assert host.cli("--once").returncode == 0
    assert len(host.setmems()) == 2


def test_journal_survives_only_what_matters(tmp_path):
    from balloon2395.journal import ChangeJournal
    path = tmp_path / "x.changes.json"
    journal = ChangeJournal(str(path))
    journal.save({"web1": 1000.0, "old": 900.0})
    assert stat_mode(path) == 0o600
    assert journal.load(now=1003.0, keep_s=5.0) == {"web1": 1000.0}  # older entries cannot matter
    path.write_text("{not json")
    assert journal.load(now=1003.0, keep_s=5.0) == {}
    path.unlink()
    (tmp_path / "elsewhere").write_text('{"web1": 1000}')
    path.symlink_to(tmp_path / "elsewhere")
    assert journal.load(now=1003.0, keep_s=5.0) == {}  # never read through a symlink
    journal.save({"web1": 1001.0})  # replaces the link itself, never writes through it
    assert (tmp_path / "elsewhere").read_text() == '{"web1": 1000}' and not path.is_symlink()


def test_journal_keeps_the_sizes_and_reads_the_format_before_them(tmp_path):
    from balloon2395.journal import ChangeJournal, Sizes
    path = tmp_path / "x.changes.json"
    journal = ChangeJournal(str(path))
    journal.save({"web1": 1000.0}, {"web1": Sizes(3, 2048, 4096)})
    assert journal.load(now=1003.0, keep_s=5.0) == {"web1": 1000.0}
    assert journal.load_sizes() == {"web1": Sizes(3, 2048, 4096)}
    path.write_text('{"web1": 1000}')  # an earlier version's file: the stamps alone
    assert journal.load(now=1003.0, keep_s=5.0) == {"web1": 1000.0} and journal.load_sizes() == {}


def stat_mode(path):
    return os.stat(path).st_mode & 0o777
