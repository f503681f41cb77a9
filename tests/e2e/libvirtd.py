"""Restarting the libvirtd that tests/e2e/prepare.sh started, and no other (see
balloon2395_testkit.prepared: a process is ours only while its pid, name and start time all match
prepare.sh's record)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from balloon2395_testkit.prepared import command_name, forget_daemon, record_daemon, recorded_daemon
from balloon2395_testkit.virsh_cli import URI, virsh
from balloon2395_testkit.waiting import wait_for

PIDFILE = "/run/libvirtd.pid"


def restart_recorded_libvirtd(down_s: float = 3.0) -> float:
    """Stop our libvirtd, keep it down `down_s`, start it again; returns the downtime."""
    pid = recorded_daemon("libvirtd")
    if pid is None:
        pytest.skip("libvirtd was not started by tests/e2e/prepare.sh: not ours to restart")
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: command_name(pid) != "libvirtd", timeout=30, what=f"libvirtd {pid} to stop")
    forget_daemon(pid)
    time.sleep(down_s)
    subprocess.run(["libvirtd", "-d", "--pid-file", PIDFILE], check=True, timeout=60)
    new_pid = int(wait_for(lambda: Path(PIDFILE).read_text().strip() if Path(PIDFILE).exists() else None,
                           timeout=30, what="libvirtd pid file"))
    record_daemon("libvirtd", new_pid)  # teardown.sh stops the new one
    wait_for(lambda: virsh("version", uri=URI, timeout=10).ok, timeout=60, what="libvirtd answering again")
    return time.monotonic() - started
