"""Single instance per connection: the first instance a real process, a second one in process
(test_processes.py starts several real ones at once)."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import subprocess
import threading

import filelock
import pytest

from balloon2395 import config as cfg, lock as lock_module
from balloon2395.lock import AlreadyRunning, InstanceLock, LockError, canonical_uri, default_dir
from conftest import domain, run_cli, wait_for


def test_second_instance_says_who_holds_the_lock_and_exits_3(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    first = daemons(host, "--secs", "0.2")
    assert wait_for(host.lock_files), "first instance never took the lock"
    second = host.cli("--once")
    assert second.returncode == 3
    assert f"pid {first.pid}" in second.stderr and "already running for qemu:///" in second.stderr
    # the second one made no virsh call at all (the first one's calls are all domstats/dumpxml)
    assert host.setmems() == []
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    assert host.lock_files() == []  # the pid file goes with a clean stop


def test_sigkill_never_blocks_the_next_start(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    first = daemons(host, "--secs", "0.2")
    assert wait_for(host.lock_files)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    again = host.cli("--once")
    assert again.returncode == 0, again.stderr


def test_one_lock_per_connection(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    daemons(host, "--secs", "0.2", "--connect", "qemu:///system")
    assert wait_for(host.lock_files)
    other = host.cli("--once", "--connect", "qemu+ssh://host2/system")
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
    result = run_cli(host.daemon_argv("--once")[1:-2] + ["--lock-dir", str(tmp_path / "no" / "such")], host.env)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("balloon-2395: cannot create lock directory")


# ---------------------------------------------------------------- one hypervisor, one lock (issue 13, point 4)

LOCAL_SYSTEM = ["qemu:///system", "qemu+unix:///system", "qemu:///system?", "qemu:///system/", "qemu:////system",
                "QEMU:///system#x", "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
                "qemu+ssh://root@localhost:22/system", "qemu+tcp://127.0.0.1/system", "qemu+tls://[::1]/system",
                f"qemu+ssh://{socket.gethostname().upper()}/system"]


@pytest.mark.parametrize("spelling", LOCAL_SYSTEM)
def test_every_spelling_of_the_local_system_hypervisor_is_one(spelling):
    assert canonical_uri(spelling) == "qemu:///system"


@pytest.mark.parametrize("one,other", [
    ("qemu:///system", "qemu:///session"),
    ("qemu:///system", "qemu+ssh://host2/system"),
    ("qemu+ssh://host2/system", "qemu+ssh://host3/system"),
    ("qemu:///system", "xen:///system"),
])
def test_other_hypervisors_stay_apart(one, other):
    assert canonical_uri(one) != canonical_uri(other)


def test_a_remote_host_is_one_whatever_its_transport_user_or_port():
    assert canonical_uri("qemu+ssh://admin@Host2:2222/system/") == canonical_uri("qemu+tls://host2/system") \
        == "qemu://host2/system"


@pytest.mark.parametrize("spelling", LOCAL_SYSTEM[1:])
def test_a_second_spelling_finds_the_first_instance_in_process(tmp_path, spelling):
    first = InstanceLock("qemu:///system", str(tmp_path / "locks"))
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning) as err:
            InstanceLock(spelling, str(tmp_path / "locks")).acquire()
        assert err.value.pid == os.getpid() and str(err.value).startswith(f"already running for {spelling} (")
    finally:
        first.release()


@pytest.mark.parametrize("second", [["-c", "qemu+unix:///system/"], ["-c", "qemu:////system?"],
                                    ["LIBVIRT_DEFAULT_URI=qemu:///system/"]])
def test_the_second_start_with_another_spelling_exits_3_naming_the_first_pid(fake_host, daemons, second):
    host = fake_host(domain("web1", usable_mib=600))
    first = daemons(host, "--secs", "0.2", "-c", "qemu:///system")
    assert wait_for(host.lock_files), "first instance never took the lock"
    env, args = dict(host.env), []
    for arg in second:
        key, _, value = arg.partition("=")
        env.update({key: value}) if key == "LIBVIRT_DEFAULT_URI" else args.append(arg)
    result = run_cli(host.daemon_argv("--once", *args)[1:], env)
    assert result.returncode == 3, result.stderr
    assert f"pid {first.pid}" in result.stderr and "already running for" in result.stderr
    assert host.setmems() == []
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0


def test_one_hypervisor_listed_twice_in_connect_is_a_config_error():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.build({"connect": ["qemu:///system", "qemu+ssh://host2/system", "qemu+unix:///system/"]})
    assert str(err.value) == "connect: a URI is listed twice (qemu:///system and qemu+unix:///system/: one hypervisor)"
    assert cfg.build({"connect": ["qemu:///system", "qemu:///session"]}).connection.uris == ("qemu:///system", "qemu:///session")


# ---------------------------------------------------------------- the lock dir, however spelled (point 5d)

@pytest.mark.parametrize("suffix", ["/", "//", "/."])
def test_a_symlinked_lock_dir_is_refused_with_a_trailing_slash_too(tmp_path, suffix):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(LockError, match="symlink"):
        InstanceLock("qemu:///system", str(tmp_path / "link") + suffix).acquire()
    assert list(target.iterdir()) == []


def test_a_trailing_slash_names_the_same_lock(tmp_path):
    plain = InstanceLock("qemu:///system", str(tmp_path / "locks"))
    assert InstanceLock("qemu:///system", str(tmp_path / "locks") + "//").path == plain.path


@pytest.mark.parametrize("mode,uid,words", [(0o777, 0, "writable by group or others"),
                                           (0o755, 65534, "belongs to uid 65534")])
def test_a_lock_dir_under_a_directory_others_control_is_refused(tmp_path, mode, uid, words):
    hostile = tmp_path / "hostile"
    (hostile / "locks").mkdir(parents=True)
    os.chown(hostile, uid, -1)
    hostile.chmod(mode)
    with pytest.raises(LockError, match=f"lock directory .*/hostile/locks could be swapped: directory .*{words}"):
        InstanceLock("qemu:///system", str(hostile / "locks")).acquire()


def test_a_lock_dir_under_a_sticky_directory_is_fine(tmp_path):
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    lock = InstanceLock("qemu:///system", str(sticky / "locks"))
    lock.acquire()
    lock.release()


# ---------------------------------------------------------------- the lock file (point 5e)

class _FileLock319:
    """filelock 3.19's UnixFileLock (pip's pick on Python 3.9): it opens the path following a symlink,
    truncates it and chmods what it finds."""

    def __init__(self, path, timeout, mode):
        self.path, self.mode, self.fd = path, mode, None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, self.mode)
        os.fchmod(fd, self.mode)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.fd = fd

    def release(self):
        os.close(self.fd)


def _planted(tmp_path, make):
    """A lock dir whose lock file is `make(path, victim)`; the victim a 0644 file with content."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    lock = InstanceLock("qemu:///system", str(tmp_path / "locks"))
    (tmp_path / "locks").mkdir(mode=0o755)
    make(lock.path, victim)
    return lock, victim


@pytest.mark.parametrize("filelock_class", ["installed", "3.19"])
def test_a_planted_symlink_as_the_lock_file_is_never_followed(tmp_path, monkeypatch, filelock_class):
    if filelock_class == "3.19":
        monkeypatch.setattr(filelock, "FileLock", _FileLock319)
    lock, victim = _planted(tmp_path, lambda path, victim: os.symlink(victim, path))
    with pytest.raises(LockError, match="refusing lock file .*: it is a symlink"):
        lock.acquire()
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644


@pytest.mark.parametrize("make,words", [
    (lambda path, victim: os.link(victim, path), "it has 2 names"),
    (lambda path, victim: os.mkfifo(path), "it is a FIFO"),
    (lambda path, victim: (open(path, "w").close(), os.chown(path, 65534, -1)), "it belongs to uid 65534"),
])
def test_a_lock_file_that_is_not_a_plain_file_of_ours_is_refused(tmp_path, monkeypatch, make, words):
    monkeypatch.setattr(filelock, "FileLock", _FileLock319)  # the one that would truncate a hard link
    lock, victim = _planted(tmp_path, make)
    with pytest.raises(LockError, match=f"refusing lock file .*: {words}"):
        lock.acquire()
    assert victim.read_text() == "precious\n"


def test_a_planted_lock_symlink_stops_the_start_in_one_line_exit_1(fake_host, tmp_path):
    host = fake_host(domain("web1"))
    host.lock_dir.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, InstanceLock("qemu:///system", str(host.lock_dir)).path)
    result = host.cli("--once")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("balloon-2395: refusing lock file") and "symlink" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and victim.read_text() == "precious\n"
    assert host.calls() == []


def test_a_lock_file_left_by_an_earlier_run_is_taken_again(tmp_path):
    lock = InstanceLock("qemu:///system", str(tmp_path / "locks"))
    for _ in range(2):
        lock.acquire()
        lock.release()
    assert stat.S_IMODE(os.stat(lock.path).st_mode) == 0o600


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_refused_start_never_names_a_dead_pid_from_a_killed_holders_file(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HOLDER_WAIT_S", 0.2)  # the wait for a live holder, all of it spent here
    first = InstanceLock("qemu:///system", str(tmp_path / "lock"))
    first.acquire()
    (tmp_path / "lock" / os.path.basename(first.pid_path)).write_text(f"{_dead_pid()}\n")  # left by a killed one
    with pytest.raises(AlreadyRunning) as refused:
        InstanceLock("qemu:///system", str(tmp_path / "lock")).acquire()
    assert refused.value.pid is None and "another process holds" in str(refused.value)
    first.release()


def test_a_refused_start_waits_for_the_holders_pid_file(tmp_path):
    first = InstanceLock("qemu:///system", str(tmp_path / "lock"))
    first.acquire()
    os.unlink(first.pid_path)  # the instant between taking the lock and writing the pid
    # the pid file comes 0.3 s late: the wait for it is the behaviour under test
    writer = threading.Timer(0.3, lambda: open(first.pid_path, "w").write(f"{os.getpid()}\n"))
    writer.start()
    with pytest.raises(AlreadyRunning) as refused:
        InstanceLock("qemu:///system", str(tmp_path / "lock")).acquire()
    writer.join()
    assert refused.value.pid == os.getpid()
    first.release()
