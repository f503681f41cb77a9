"""Single instance per connection, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from balloon2395.lock import AlreadyRunning, InstanceLock, LockError, default_dir
from conftest import domain


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _lock_files(host):
    return list(host.lock_dir.glob("*.pid")) if host.lock_dir.exists() else []


def test_second_instance_says_who_holds_the_lock_and_exits_3(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    first = daemons(host, "--secs", "0.2")
    assert _wait_for(lambda: _lock_files(host)), "first instance never took the lock"
    second = subprocess.run(host.daemon_argv("--once"), env=host.env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 3
    assert f"pid {first.pid}" in second.stderr and "already running for qemu:///" in second.stderr
    # the second one made no virsh call at all (the first one's calls are all domstats/dumpxml)
    assert host.setmems() == []
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    assert _lock_files(host) == []  # the pid file goes with a clean stop


def test_sigkill_never_blocks_the_next_start(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    first = daemons(host, "--secs", "0.2")
    assert _wait_for(lambda: _lock_files(host))
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    again = subprocess.run(host.daemon_argv("--once"), env=host.env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr


def test_one_lock_per_connection(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    daemons(host, "--secs", "0.2", "--connect", "qemu:///system")
    assert _wait_for(lambda: _lock_files(host))
    other = subprocess.run(host.daemon_argv("--once", "--connect", "qemu+ssh://host2/system"), env=host.env,
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr


def test_in_process_lock_and_holder(tmp_path):
    first = InstanceLock("qemu:///system", str(tmp_path / "locks"))
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning) as err:
            InstanceLock("qemu:///system", str(tmp_path / "locks")).acquire()
        assert err.value.pid == os.getpid()
        InstanceLock("qemu:///session", str(tmp_path / "locks")).acquire()  # another URI, another lock
    finally:
        first.release()


def test_unsafe_or_unusable_lock_dirs_are_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(LockError, match="writable by others"):
        InstanceLock("qemu:///system", str(open_dir)).acquire()
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(LockError, match="symlink"):
        InstanceLock("qemu:///system", str(tmp_path / "link")).acquire()
    with pytest.raises(LockError, match="cannot create"):
        InstanceLock("qemu:///system", str(tmp_path / "missing" / "deeper")).acquire()


def test_default_dir_root_and_user():
    assert default_dir({}, euid=0) == "/run/balloon-2395"
    assert default_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}, euid=1000) == "/run/user/1000/balloon-2395"
    with pytest.raises(LockError, match="XDG_RUNTIME_DIR"):
        default_dir({}, euid=1000)


def test_lock_error_is_one_line_exit_1(fake_host, tmp_path):
    host = fake_host(domain("web1"))
    result = subprocess.run(host.daemon_argv("--once")[:-2] + ["--lock-dir", str(tmp_path / "no" / "such")],
                            env=host.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("balloon-2395: cannot create lock directory")
