"""Restarting the libvirtd that tests/e2e/prepare.sh started, and no other.

prepare.sh records "NAME PID STARTTIME" in /run/balloon-2395-e2e/daemons; a
process is ours only while its pid, name and start time all match a line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from .harness import STATE_DIR, URI, virsh, wait_for

DAEMONS = Path(STATE_DIR) / "daemons"
PIDFILE = "/run/libvirtd.pid"


def _starttime(pid: int) -> Optional[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(") ", 1)[1].split()[19]


def _comm(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _recorded_libvirtd() -> Optional[int]:
    if not DAEMONS.exists():
        return None
    for line in DAEMONS.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "libvirtd" and parts[1].isdigit():
            pid = int(parts[1])
            if _comm(pid) == "libvirtd" and _starttime(pid) == parts[2]:
                return pid
    return None


def restart_recorded_libvirtd(down_s: float = 3.0) -> float:
    """Stop our libvirtd, keep it down `down_s`, start it again; returns the downtime."""
    pid = _recorded_libvirtd()
    if pid is None:
        pytest.skip("libvirtd was not started by tests/e2e/prepare.sh: not ours to restart")
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: _comm(pid) != "libvirtd", timeout=30, what=f"libvirtd {pid} to stop")
    time.sleep(down_s)
    lines = [line for line in DAEMONS.read_text().splitlines() if not line.startswith(f"libvirtd {pid} ")]
    subprocess.run(["libvirtd", "-d", "--pid-file", PIDFILE], check=True, timeout=60)
    new_pid = int(wait_for(lambda: Path(PIDFILE).read_text().strip() if Path(PIDFILE).exists() else None,
                           timeout=30, what="libvirtd pid file"))
    lines.append(f"libvirtd {new_pid} {_starttime(new_pid)}")
    DAEMONS.write_text("\n".join(lines) + "\n")  # teardown.sh stops the new one
    wait_for(lambda: virsh("version", uri=URI, timeout=10).ok, timeout=60, what="libvirtd answering again")
    return time.monotonic() - started
