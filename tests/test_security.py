"""Security (issue 8, point 5): no shell, names are data, files written as root follow no symlink and
get safe modes, and as root a config file others could rewrite is refused."""

from __future__ import annotations

import inspect
import os
import re
import socket
import stat
import subprocess

import pytest

from balloon2395 import config as cfg
from balloon2395.logs import lines as logs
from balloon2395.safefiles import unsafe_config
from balloon2395.virsh.commands import Virsh
from conftest import LIB, ROOT, domain, run_cli, wait_for

SOURCES = sorted((LIB / "balloon2395").rglob("*.py"))
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="the config ownership rule applies to root only")


@pytest.mark.parametrize("pattern", [r"shell\s*=\s*True", r"\bos\.system\b", r"\bos\.popen\b", r"\bpopen\(",
                                     r"\bimport subprocess\b", r"['\"]/bin/(ba)?sh['\"]", r"\bos\.exec"])
def test_no_shell_anywhere(pattern):
    hits = [f"{path.relative_to(LIB)}:{n}" for path in SOURCES
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if re.search(pattern, line)]
    assert hits == []


def test_only_the_virsh_runners_start_processes():
    users = sorted(str(path.relative_to(LIB)) for path in SOURCES
                   if re.search(r"^import sh$|^from sh ", path.read_text(), re.M))
    assert users == ["balloon2395/virsh/commands.py", "balloon2395/virsh/session.py"]


class _Recorder(Virsh):
    def __init__(self):
        super().__init__()
        self.argv = []

    def run(self, *args):
        self.argv.append(list(args))
        raise _Stop  # what virsh would answer does not matter here

    def run_line(self, line):
        raise AssertionError(f"a domain name must never go through a command line: {line!r}")


class _Stop(Exception):
    pass


NAMED = [name for name, fn in inspect.getmembers(Virsh, inspect.isfunction)
         if "domain" in inspect.signature(fn).parameters]


def test_every_method_taking_a_domain_is_covered():
    assert {"dommemstat", "max_memory_kib", "enable_stats", "dumpxml", "setmem"} <= set(NAMED)


@pytest.mark.parametrize("method", NAMED)
@pytest.mark.parametrize("name", ["-c", "--domain", "-h x", "--live", "a;reboot"])
def test_domain_names_go_after_domain_as_data(method, name):
    def argv_for(domain_name):
        virsh = _Recorder()
        params = [p for p in inspect.signature(getattr(Virsh, method)).parameters if p not in ("self", "domain")]
        with pytest.raises(_Stop):
            getattr(virsh, method)(domain_name, *[1] * len(params))
        (argv,) = virsh.argv
        return argv

    argv, plain = argv_for(name), argv_for("plain")
    at = plain.index("--domain")
    # the name fills the one slot after --domain, whatever it looks like; nothing else changes
    assert plain[at + 1] == "plain" and argv == plain[:at + 1] + [name] + plain[at + 2:]


def test_log_file_is_created_0640_and_never_through_a_symlink(tmp_path):
    logdir = tmp_path / "log"
    logdir.mkdir()
    victim = tmp_path / "shadow"
    victim.write_text("root:x:0:0\n")
    (logdir / logs.LOG_FILE).symlink_to(victim)
    with pytest.raises(OSError):
        logs.setup(str(logdir), debug=False)
    assert victim.read_text() == "root:x:0:0\n"
    (logdir / logs.LOG_FILE).unlink()
    try:
        logs.setup(str(logdir), debug=False)
        logs.log.info("hello")
        info = os.lstat(logdir / logs.LOG_FILE)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640
        assert "hello" in (logdir / logs.LOG_FILE).read_text()
    finally:
        logs.setup(None, debug=False)


def test_an_old_log_writable_by_others_is_tightened(tmp_path):
    (tmp_path / logs.LOG_FILE).write_text("")
    (tmp_path / logs.LOG_FILE).chmod(0o666)
    try:
        logs.setup(str(tmp_path), debug=False)
    finally:
        logs.setup(None, debug=False)
    assert stat.S_IMODE(os.stat(tmp_path / logs.LOG_FILE).st_mode) == 0o644


def _config(tmp_path, mode=0o644, dir_mode=0o755, uid=0):
    directory = tmp_path / "etc"
    directory.mkdir()
    path = directory / "config.yaml"
    path.write_text("minimal: 20\n")
    path.chmod(mode)
    os.chown(path, uid, -1)
    directory.chmod(dir_mode)
    return path


@AS_ROOT
@pytest.mark.parametrize("mode,dir_mode,uid,words", [
    (0o666, 0o755, 0, "the file is writable by group or others (mode 666"),
    (0o620, 0o755, 0, "the file is writable by group or others (mode 620"),
    (0o644, 0o755, 1000, "the file belongs to uid 1000, not root"),
    (0o644, 0o777, 0, "is writable by group or others (mode 777"),
])
def test_as_root_a_config_others_could_rewrite_is_refused(tmp_path, mode, dir_mode, uid, words):
    path = _config(tmp_path, mode, dir_mode, uid)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), {})
    assert words in str(err.value) and str(err.value).startswith(f"{path}: file: refused as root")


@AS_ROOT
def test_as_root_a_safe_config_and_one_in_a_sticky_directory_are_fine(tmp_path):
    assert cfg.load(str(_config(tmp_path)), {}).defaults.minimal == 20
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "c.yaml").write_text("minimal: 21\n")
    assert cfg.load(str(sticky / "c.yaml"), {}).defaults.minimal == 21


def test_the_rule_is_for_root_only(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    path.chmod(0o666)
    assert unsafe_config(str(path), os.stat(path), euid=1000) is None
    assert "writable" in unsafe_config(str(path), os.stat(path), euid=0)


@AS_ROOT
def test_cli_refuses_it_in_one_line_exit_2_before_any_virsh_call(fake_host):
    host = fake_host(domain("web1", usable_mib=100))
    host.config.chmod(0o666)
    for argv in (["--once"], ["status"], ["check-config", str(host.config)]):
        args = argv if argv[0] == "check-config" else host.daemon_argv(*argv)[1:]
        result = run_cli(args, host.env)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused as root" in lines[0] and str(host.config) in lines[0]
    assert host.calls() == []


def test_a_symlink_planted_as_the_lock_or_pid_file_is_never_followed(tmp_path):
    from balloon2395.lock import InstanceLock, LockError
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lock = InstanceLock("qemu:///system", str(locks))
    os.symlink(victim, lock.path)
    with pytest.raises(LockError, match="refusing lock file .*: it is a symlink"):
        lock.acquire()
    os.unlink(lock.path)
    os.symlink(victim, lock.pid_path)
    lock.acquire()  # the pid file is replaced by a rename, never written through the link
    try:
        assert victim.read_text() == "precious\n" and not os.path.islink(lock.pid_path)
        assert stat.S_IMODE(os.stat(lock.path).st_mode) == 0o600
    finally:
        lock.release()


# ---------------------------------------------------------------- issue 13, point 5: written files

def _planted_writer(tmp_path, kind):
    """(target, write, the temp names the old code used) of one of the daemon's own files."""
    from balloon2395 import journal
    from balloon2395.daemon import Cycle
    from balloon2395.lock import InstanceLock
    from balloon2395.views import statefile
    pid = os.getpid()
    lock = InstanceLock("qemu:///system", str(tmp_path / "locks"))
    if kind == "state":
        path = statefile.path_for(lock)
        return path, lambda: statefile.write(path, "qemu:///system", Cycle(1.0, [], {}, [], None, 0.0)), \
            [f"{path}.{pid}.tmp"]
    if kind == "journal":
        path = journal.path_for(lock.path)
        return path, lambda: journal.ChangeJournal(path).save({"web1": 1.0}), [f"{path}.{pid}.tmp"]
    return lock.pid_path, lock.acquire, [f"{lock.pid_path}.{pid}"]


@pytest.mark.parametrize("kind", ["state", "journal", "pid"])
def test_symlinks_planted_at_every_name_a_written_file_passes_through_are_never_followed(tmp_path, kind):
    (tmp_path / "locks").mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target, write, old_temp_names = _planted_writer(tmp_path, kind)
    for name in [target, *old_temp_names]:
        os.symlink(victim, name)
    write()
    assert victim.read_text() == "precious\n"
    assert stat.S_ISREG(os.lstat(target).st_mode)  # the link at the target was replaced, not written through
    assert all(os.readlink(name) == str(victim) for name in old_temp_names)
    left = {p.name for p in (tmp_path / "locks").iterdir()} - {os.path.basename(n) for n in old_temp_names}
    assert not [name for name in left if name.endswith(".tmp")]  # no temp file left behind


def test_write_atomic_names_the_target_and_sets_the_mode_whatever_the_umask(tmp_path):
    from balloon2395.safefiles import write_atomic
    old = os.umask(0o077)
    try:
        write_atomic(str(tmp_path / "f"), b"x\n", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o644 and (tmp_path / "f").read_bytes() == b"x\n"
    with pytest.raises(OSError) as err:
        write_atomic(str(tmp_path / "missing" / "f"), b"x\n", 0o644)
    assert err.value.filename == str(tmp_path / "missing" / "f")  # said once, not once per random temp name


def test_write_atomic_leaves_nothing_behind_when_the_rename_fails(tmp_path):
    from balloon2395.safefiles import write_atomic
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(str(tmp_path / "dir"), b"x\n", 0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


# ---------------------------------------------------------------- issue 13, point 5: the config's real path

def _linked_config(tmp_path, layout):
    """etc/config.yaml, a symlink to real/.../config.yaml; `layout`: (dir, mode, uid) of each directory
    between tmp_path and the real file, outermost first."""
    directory = tmp_path
    for name, _, _ in layout:
        directory = directory / name
        directory.mkdir()
    real = directory / "config.yaml"
    real.write_text("minimal: 20\n")
    real.chmod(0o644)
    for _, mode, uid in reversed(layout):
        os.chown(directory, uid, -1)
        directory.chmod(mode)
        directory = directory.parent
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.yaml").symlink_to(real)
    return tmp_path / "etc" / "config.yaml"


@AS_ROOT
@pytest.mark.parametrize("layout,words", [
    ([("evil", 0o777, 0), ("dir", 0o777, 0)], "evil/dir is writable by group or others (mode 777"),
    ([("evil", 0o777, 0), ("dir", 0o755, 0)], "evil is writable by group or others (mode 777"),
    ([("evil", 0o755, 65534), ("dir", 0o755, 0)], "evil belongs to uid 65534, not root"),
    ([("sticky", 0o1777, 0), ("dir", 0o755, 65534)], "sticky/dir belongs to uid 65534, not root"),
])
def test_as_root_a_config_reached_through_a_symlink_is_checked_at_its_real_path(tmp_path, layout, words):
    path = _linked_config(tmp_path, layout)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), {})
    assert str(err.value).startswith(f"{path}: file: refused as root: directory ") and words in str(err.value)


@AS_ROOT
def test_as_root_a_symlink_to_a_file_others_could_rewrite_names_the_real_file(tmp_path):
    path = _linked_config(tmp_path, [("real", 0o755, 0)])
    os.chown(os.path.realpath(path), 65534, -1)
    with pytest.raises(cfg.ConfigError, match=f"refused as root: the file {tmp_path}/real/config.yaml belongs to"):
        cfg.load(str(path), {})


@AS_ROOT
def test_as_root_a_symlink_to_a_safe_file_is_fine(tmp_path):
    path = _linked_config(tmp_path, [("sticky", 0o1777, 0), ("dir", 0o755, 0)])
    assert cfg.load(str(path), {}).defaults.minimal == 20


def test_the_config_is_opened_at_its_real_path_never_through_a_symlink(tmp_path, monkeypatch):
    from balloon2395 import safefiles
    path = _linked_config(tmp_path, [("real", 0o755, 0)])
    opened = []
    real_open = os.open
    monkeypatch.setattr(safefiles.os, "open", lambda p, flags, *a: opened.append((p, flags)) or real_open(p, flags, *a))
    assert safefiles.read_config(str(path)) == b"minimal: 20\n"
    (where, flags), = opened
    assert where == os.path.realpath(path) and flags & os.O_NOFOLLOW and flags & os.O_NONBLOCK


# ---------------------------------------------------------------- issue 13, point 5: not a regular file

def _special(tmp_path, kind):
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        return "/dev/zero"  # read whole, it would never end
    return str(path)


@pytest.mark.parametrize("kind,words", [("fifo", "is a FIFO"), ("directory", "is a directory"),
                                        ("socket", "is a socket"), ("device", "is a character device")])
def test_a_config_that_is_not_a_regular_file_is_one_error_naming_it(tmp_path, kind, words):
    path = _special(tmp_path, kind)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, {})
    assert str(err.value) == f"{path}: file: {words}, not a regular file"


def test_dev_null_still_means_no_settings():
    assert cfg.load("/dev/null", {}) == cfg.build({})


@pytest.mark.parametrize("command", [["check-config", "{}"], ["--once", "--config", "{}"],
                                     ["status", "--config", "{}"]])
def test_cli_on_a_fifo_config_exits_2_at_once(fake_host, tmp_path, command):
    host = fake_host(domain("web1"))
    fifo = _special(tmp_path, "fifo")
    argv = [str(ROOT / "balloon-2395"), *[arg.format(fifo) for arg in command]]
    if command[0] != "check-config":
        argv += ["--lock-dir", str(host.lock_dir)]
    # a process, not run_cli: a start that blocked on the FIFO fails on the timeout instead of hanging the suite
    result = subprocess.run(argv, env=host.env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"balloon-2395: {fifo}: file: is a FIFO, not a regular file"]
    assert host.calls() == []


def test_under_the_units_umask_what_status_and_node_exporter_read_stays_readable(fake_host, tmp_path):
    """The unit's UMask=0077 (issue 24, class 9): files the daemon shares get their modes explicitly."""
    host = fake_host(domain("web1", usable_mib=600))
    host.lock_dir.mkdir(mode=0o755)  # as RuntimeDirectoryMode=0755 makes /run/balloon-2395
    os.chmod(host.lock_dir, 0o755)
    (tmp_path / "logs").mkdir(mode=0o750)  # ReadWritePaths=-/var/log/balloon-2395: made beforehand
    config = host.config.read_text() + f"metrics:\n  textfile: {tmp_path / 'b2395.prom'}\n"
    host.config.write_text(config)
    proc = subprocess.Popen(host.daemon_argv("--secs", "0.05", "--logdir", str(tmp_path / "logs")), env=host.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, umask=0o077)
    try:
        metrics = tmp_path / "b2395.prom"
        assert wait_for(lambda: host.state_files() and host.lock_files() and metrics.exists()), \
            proc.stderr.read() if proc.poll() is not None else "no state file"
        modes = {path.name.split(".", 1)[1]: stat.S_IMODE(path.stat().st_mode)
                 for path in host.state_files() + host.lock_files() + [metrics]}
        assert modes == {"state.json": 0o644, "pid": 0o644, "prom": 0o644}, modes
        log_file = tmp_path / "logs" / "balloon-2395.log"
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o600  # at most LOG_MODE (0640): the umask narrows it
    finally:
        if proc.poll() is None:  # only what this test started, by its pid
            proc.terminate()
            proc.wait(timeout=20)
