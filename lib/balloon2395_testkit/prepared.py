"""What tests/e2e/prepare.sh set up on this host, and whether real guests can run here.

prepare.sh builds the guest kernel and initramfs into a cache, records that cache in STATE_DIR, and
records each daemon it started as "NAME PID STARTTIME" in STATE_DIR/daemons: a process is the one it
started only while its pid, name and start time all still match such a line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional

from .virsh_cli import URI, virsh

ROOT = Path(__file__).resolve().parents[2]
PREPARE = ROOT / "tests" / "e2e" / "prepare.sh"
DEFAULT_CACHE = "/var/cache/balloon-2395-e2e"
STATE_DIR = "/run/balloon-2395-e2e"
DAEMONS = Path(STATE_DIR) / "daemons"


# --------------------------------------------------------------------- guest assets
def cache_dir() -> Path:
    """Where prepare.sh put vmlinuz and initramfs.gz."""
    env = os.environ.get("BALLOON_E2E_CACHE")
    if env:
        return Path(env)
    try:
        recorded = Path(STATE_DIR, "cache-dir").read_text().strip()
        if recorded and Path(recorded, "initramfs.gz").exists():
            return Path(recorded)
    except OSError:
        pass
    return Path(DEFAULT_CACHE)


def assets() -> Dict[str, Path]:
    c = cache_dir()
    return {"kernel": c / "vmlinuz", "initrd": c / "initramfs.gz"}


def qemu_binary() -> str:
    return shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


# --------------------------------------------------------------------- readiness
def check_prerequisites(uri: str = URI) -> Optional[str]:
    """None when real guests can run here, else a one-line skip reason."""
    return host_not_ready() or libvirt_not_ready(uri)


def host_not_ready() -> Optional[str]:
    """Why this host, before asking libvirt, cannot boot the e2e guests (None: it can)."""
    hint = f"run `sudo {PREPARE}` first"
    if os.environ.get("BALLOON_E2E_SKIP"):
        return "BALLOON_E2E_SKIP is set"
    if not os.uname().sysname == "Linux":
        return "e2e guests need a Linux host"
    if os.geteuid() != 0:
        return "e2e guests need root (qemu:///system, QEMU runs as root)"
    for tool in ("virsh", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} not installed; {hint}"
    for what, path in assets().items():
        if not path.is_file():
            return f"guest {what} {path} missing; {hint}"
    return None


def libvirt_not_ready(uri: str) -> Optional[str]:
    """Why libvirt at `uri` cannot run the e2e guests (None: it can)."""
    hint = f"run `sudo {PREPARE}` first"
    try:
        res = virsh("version", uri=uri, timeout=20)
    except subprocess.TimeoutExpired:
        return f"`virsh -c {uri} version` timed out; {hint}"
    if not res.ok:
        first = (res.err.strip().splitlines() or ["?"])[0]
        return f"libvirt at {uri} does not answer ({first}); {hint}"
    if "QEMU" not in res.out:
        return f"no QEMU hypervisor behind {uri}"
    return None


# --------------------------------------------------------------------- the daemons prepare.sh started
def start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat (clock ticks since boot): tells a reused pid from the process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def command_name(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def recorded_daemon(name: str, daemons: Path = DAEMONS) -> Optional[int]:
    """The pid of the `name` daemon prepare.sh started, while that very process still runs."""
    try:
        lines = daemons.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == name and parts[1].isdigit():
            pid = int(parts[1])
            if command_name(pid) == name and start_time(pid) == parts[2]:
                return pid
    return None


def forget_daemon(pid: int, daemons: Path = DAEMONS) -> None:
    """Drop the record of a daemon that was stopped: teardown.sh must not stop whatever reuses its pid."""
    kept = [line for line in daemons.read_text().splitlines() if line.split()[1:2] != [str(pid)]]
    daemons.write_text("".join(line + "\n" for line in kept))


def record_daemon(name: str, pid: int, daemons: Path = DAEMONS) -> None:
    """Record a daemon started in place of a recorded one: teardown.sh stops it."""
    with open(daemons, "a") as f:
        f.write(f"{name} {pid} {start_time(pid)}\n")
