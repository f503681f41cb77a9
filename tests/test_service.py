"""The daemon as a host service, with real processes: signals, reload, logs for the journal,
several connections from one process, the state file behind `status --watch` and `explain`
(the views and one-shot runs beside a running daemon are run in process)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from balloon2395 import ksm
from conftest import FAKE_VIRSH, MIB, domain, wait_for


def test_sigterm_mid_setmem_finishes_the_change_then_stops_cleanly(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=370))
    state = host.read()
    state["faults"] = {"setmem": {"sleep": 0.5}}  # a slow setmem: the signal lands inside it
    host.write(state)
    proc = daemons(host, "--secs", "0.2")
    host.signal_inside(proc, signal.SIGTERM, "setmem")
    assert proc.wait(timeout=20) == 0
    err = proc.stderr.read()
    # the change that was under way was completed and logged, then nothing more
    assert "INFO grow web1 2048 -> 2148 MiB" in err
    assert err.rstrip().endswith("INFO stopped")
    assert len(host.setmems()) == 1
    assert host.lock_files() == [] and host.state_files() == []


def test_sigint_stops_with_exit_0(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    proc = daemons(host, "--secs", "0.2")
    assert wait_for(host.state_files)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert host.lock_files() == []


def _children(pid):
    """The processes whose parent is `pid`."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue  # ended meanwhile
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


def _alive(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_once_finishes_the_setmem_then_cleans_up(fake_host, daemons, signum):
    host = fake_host(domain("web1", usable_mib=370))
    host.write({**host.read(), "faults": {"setmem": {"sleep": 0.5}}})  # a slow setmem: the signal lands inside it
    proc = daemons(host, "--once")
    assert wait_for(host.setmems), "no setmem started"
    session = _children(proc.pid)  # the session virsh answering that setmem
    assert session
    host.signal_inside(proc, signum, "setmem")
    assert proc.wait(timeout=20) == 0
    err = proc.stderr.read()
    assert "INFO grow web1 2048 -> 2148 MiB" in err and "Traceback" not in err
    assert len(host.setmems()) == 1
    assert host.lock_files() == [] and host.state_files() == []
    assert not any(_alive(pid) for pid in session)


def _signalled_while_starting(host, signum, *args):
    """balloon-2395 with `args`, the signal sent to itself from inside the start (the lock taken, the KSM check)."""
    script = f"""
import os, sys
from balloon2395 import cli, ksm
checked = ksm.check
def check(*args, **kwargs):
    os.kill(os.getpid(), {int(signum)})
    return checked(*args, **kwargs)
ksm.check = check
sys.exit(cli.main({host.daemon_argv(*args)[1:]!r}))
"""
    return subprocess.run([sys.executable, "-c", script], env=host.env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("mode", [["--once"], ["--secs", "0.2"]])
def test_a_signal_while_starting_ends_cleanly_before_any_cycle(fake_host, signum, mode):
    host = fake_host(domain("web1", usable_mib=370))
    result = _signalled_while_starting(host, signum, *mode)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "INFO stopped before the first cycle" in result.stderr
    assert host.calls() == [] and host.lock_files() == []


def test_sighup_reloads_a_good_file_and_keeps_the_old_config_on_a_bad_one(fake_host, daemons, tmp_path):
    host = fake_host(domain("web1", usable_mib=600))
    log_file = tmp_path / "logs" / "balloon-2395.log"

    def logged(text):
        return wait_for(lambda: log_file.exists() and text in log_file.read_text())

    proc = daemons(host, "--secs", "0.05", "--dry-run", "--logdir", str(log_file.parent))
    assert wait_for(host.daemon_state)
    assert host.daemon_state()["domains"][0]["band_pct"] == [25, 35]
    host.config.write_text("policy: step\nminimal: 10\nmaximal: 90\n")
    proc.send_signal(signal.SIGHUP)
    assert logged(f"reloaded {host.config}")
    assert wait_for(lambda: (host.daemon_state() or {"domains": [{}]})["domains"][0].get("band_pct") == [10, 90])
    host.config.write_text("policy: step\nminimal: 95\n")  # minimal above maximal: refused
    proc.send_signal(signal.SIGHUP)
    assert logged("reload failed")
    host.config.write_text("policy: step\nminimal: 10\nmaximal: 80\nconnect: qemu+ssh://elsewhere/system\n")
    proc.send_signal(signal.SIGHUP)
    assert logged("reload: connect cannot change without a restart")
    assert wait_for(lambda: host.daemon_state()["domains"][0]["band_pct"] == [10, 80])
    assert proc.poll() is None, "a bad reload must not stop the daemon"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    errors = [line for line in log_file.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert "reload failed, keeping the running config" in errors[0]
    assert "minimal 95: must be below maximal (35, the default)" in errors[0]
    assert all("qemu+ssh://elsewhere" not in str(c) for c in host.calls())  # the connection never moved
    assert host.setmems() == []  # --dry-run, a flag, survived every reload


def test_journal_gets_bare_lines_with_priorities(fake_host, tmp_path):
    host = fake_host(domain("web1", usable_mib=370), domain("win", os="http://microsoft.com/win/10"))
    out = tmp_path / "journal"
    with open(out, "w") as stream:
        info = os.fstat(stream.fileno())
        env = dict(host.env, JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")
        result = subprocess.run(host.daemon_argv("--once"), env=env, stderr=stream, timeout=60)
    assert result.returncode == 0
    lines = out.read_text().splitlines()
    assert "<6>grow web1 2048 -> 2148 MiB: usable 18% < 25%" in lines
    assert all(line[:3] in ("<6>", "<4>", "<3>") for line in lines)  # no timestamps: the journal adds them


def test_log_format_json(fake_host):
    host = fake_host(domain("web1", usable_mib=370))
    result = host.cli("--once", "--log-format", "json")
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"level": "INFO", "message": "grow web1 2048 -> 2148 MiB: usable 18% < 25%"}.items() <= \
        next(e for e in entries if "grow" in e["message"]).items()


def _two_hosts(host, tmp_path):
    """A virsh that serves each -c URI from its own state file, as two hypervisors would."""
    second = tmp_path / "state-host2.json"
    second.write_text(json.dumps({"domains": [domain("db1", usable_mib=1500)],
                                  "host": {"total_kib": 64 * 1024 * MIB, "free_kib": 20 * 1024 * MIB}}))
    wrapper = host.bin / "virsh"
    wrapper.write_text(f"""#!/bin/sh
if [ "$1" = -c ] && [ "$2" = qemu+ssh://host2/system ]; then export FAKE_VIRSH_STATE={second}; fi
exec {FAKE_VIRSH} "$@"
""")
    return second


def test_several_uris_one_process_each_with_its_own_lock(fake_host, tmp_path, daemons):
    host = fake_host(domain("web1", usable_mib=370))
    second = _two_hosts(host, tmp_path)
    uris = ("-c", "qemu:///system", "-c", "qemu+ssh://host2/system")
    result = host.cli("--once", *uris)
    assert result.returncode == 0, result.stderr
    assert host.read()["domains"][0]["actual_kib"] == 2148 * MIB  # grown on the first
    assert json.loads(second.read_text())["domains"][0]["actual_kib"] == 1998 * MIB  # shrunk on the second
    assert any(c[-1:] == ["nodememstats"] for c in host.calls())  # the remote host's memory, through virsh
    assert "INFO [qemu+ssh://host2/system] shrink db1 2048 -> 1998 MiB" in result.stderr
    assert "INFO [qemu:///system] grow web1 2048 -> 2148 MiB" in result.stderr
    proc = daemons(host, "--secs", "0.2", *uris)
    assert wait_for(lambda: len(host.state_files()) == 2)  # both connections started and ran a cycle
    # each connection's lock is its own: a second daemon for host2 alone is refused
    other = host.cli("--once", "-c", "qemu+ssh://host2/system")
    assert other.returncode == 3 and f"pid {proc.pid}" in other.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "INFO started for qemu:///system, qemu+ssh://host2/system" in proc.stderr.read()


def test_status_watch_and_explain_with_and_without_a_daemon(fake_host, daemons):
    host = fake_host(domain("ok", usable_mib=600), domain("pressed", usable_mib=100), domain("idle", usable_mib=1500))
    alone = host.cli("status", "--watch", "--count", "1")
    assert alone.returncode == 0, alone.stderr
    lines = alone.stdout.splitlines()
    assert "no daemon running: showing what a cycle would do now" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["pressed", "ok", "idle"]  # most pressed first
    explained = host.cli("explain", "pressed")
    assert explained.returncode == 0, explained.stderr
    assert "last decision: no daemon running" in explained.stdout
    assert "next decision (a cycle now): grow -> 2148 MiB [rule below-band]" in explained.stdout
    assert "usable 100 MiB (4%)" in explained.stdout and "band 25-35%" in explained.stdout
    proc = daemons(host, "--secs", "0.2", "--dry-run")
    assert wait_for(host.state_files)
    watched = host.cli("status", "--watch", "--count", "2", "--refresh", "0.1")
    assert watched.stdout.count(f"daemon pid {proc.pid}") == 2
    explained = host.cli("explain", "pressed")
    assert "last decision (" in explained.stdout and f"daemon pid {proc.pid}): grow -> 2148 MiB" in explained.stdout
    assert host.cli("explain", "nosuch").returncode == 1
    assert host.setmems() == []


def test_ksm_one_line_per_state(tmp_path):
    run = tmp_path / "run"
    run.write_text("1\n")
    said = ksm.check("warn", remote=False, path=str(run))
    assert said.running and said.line.startswith("ksm: running: ")
    try:
        ksm.check("refuse", remote=False, path=str(run))
        raise AssertionError("refuse must refuse")
    except ksm.KsmRefused as exc:
        assert "ksm: refuse" in str(exc)
    assert ksm.check("ignore", remote=False, path=str(run)).line == ""
    run.write_text("0\n")
    assert not ksm.check("refuse", remote=False, path=str(run)).running
    assert ksm.check("warn", remote=False, path=str(tmp_path / "none")).line.startswith("ksm: not available")
    assert "another host" in ksm.check("warn", remote=True, path=str(run)).line


# ------------------------------------------------------------------ signals and exits tell the truth

def _patched(host, patch, *args):
    """balloon-2395 with `args` in a process of its own, `patch` (Python source) run first."""
    script = f"""
import sys
from balloon2395 import cli, config as cfg, daemon
{patch}
sys.exit(cli.main({host.daemon_argv(*args)[1:]!r}))
"""
    return subprocess.Popen([sys.executable, "-c", script], env=host.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_once_whose_cycle_raised_exits_non_zero(fake_host):
    host = fake_host(domain("web1", usable_mib=370))
    patch = "def broken(self): raise RuntimeError('a bug')\ndaemon.Daemon.cycle = broken"
    proc = _patched(host, patch, "--once")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "cycle of qemu:///system failed" in err and "RuntimeError: a bug" in err
    assert host.lock_files() == []


def test_a_reload_that_raises_keeps_the_daemon_its_lock_and_sigterm(fake_host, tmp_path):
    host = fake_host(domain("web1", usable_mib=600))
    patch = """
loaded = cfg.load
calls = []
def load(*args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
        raise RuntimeError('a bug in the reload')
    return loaded(*args, **kwargs)
cfg.load = load
"""
    proc = _patched(host, patch, "--secs", "0.05", "--dry-run")
    try:
        assert wait_for(host.state_files)
        proc.send_signal(signal.SIGHUP)
        calls = len(host.calls())
        assert wait_for(lambda: len(host.calls()) > calls + 10)  # cycles go on after the SIGHUP
        second = host.run("--once")
        assert second.returncode == 3, second.stderr  # the lock still holds
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "reload failed, keeping the running config" in err and "a bug in the reload" in err
    assert err.rstrip().endswith("INFO stopped")


@pytest.mark.parametrize("swap", ["truncated", "dev-null-link"])
def test_a_config_emptied_after_the_start_is_refused_and_its_exclusions_hold(fake_host, daemons, swap):
    host = fake_host(domain("fw", usable_mib=370))
    host.config.write_text("policy: step\ndomains:\n  fw:\n    exclude: true\n")
    proc = daemons(host, "--secs", "0.05")
    assert wait_for(host.state_files)
    if swap == "truncated":
        host.config.write_text("")
    else:
        host.config.unlink()
        host.config.symlink_to(os.devnull)
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: proc.poll() is None and len(host.calls()) > 20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    err = proc.stderr.read()
    assert "reload failed, keeping the running config" in err
    assert host.setmems() == []  # fw stayed excluded


@pytest.mark.parametrize("swap", ["truncated", "dev-null-link"])
def test_a_config_empty_at_the_start_exits_2(fake_host, swap):
    host = fake_host(domain("fw", usable_mib=370))
    if swap == "truncated":
        host.config.write_text("")
    else:
        host.config.unlink()
        host.config.symlink_to(os.devnull)
    result = host.run("--once")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert host.setmems() == []


def test_a_config_of_comments_only_means_no_settings(fake_host):
    host = fake_host(domain("web1", usable_mib=600))
    host.config.write_text("# nothing set: the defaults\n")
    assert host.run("--once", "--dry-run").returncode == 0
