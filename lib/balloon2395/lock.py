"""One instance per hypervisor: a filelock under /run, named for the hypervisor the URI reaches.

The kernel drops a flock when its holder dies, so a SIGKILLed instance never
blocks the next start. The holder's pid lives in a side file because opening
the lock file (as a second instance does) may truncate it.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import ipaddress
import os
import re
import socket
import stat
import time
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit

import filelock

from .safefiles import kind, untrusted_path, write_atomic

_LOCAL_NAMES = ("", "localhost", "localhost.localdomain")
HOLDER_WAIT_S = 2.0  # how long a refused start waits for the holder's pid file
# filelock >= 3.10 chmods the lock file to `mode` (0o644 unless told); 3.9, Debian 12's, has no `mode` and
# leaves the 0o600 _own_lock_file created it with
_PRIVATE: Dict[str, Any] = {"mode": 0o600} if "mode" in inspect.signature(filelock.FileLock.__init__).parameters else {}


class LockError(Exception):
    """The lock cannot be taken for a reason other than another instance."""


class AlreadyRunning(Exception):
    def __init__(self, uri: str, pid: Optional[int], path: str) -> None:
        self.uri, self.pid, self.path = uri, pid, path
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"already running for {uri} ({who} holds {path})")


def canonical_uri(uri: str) -> str:
    """One spelling per hypervisor: qemu:///system, qemu+unix:///system, qemu:////system/? and
    qemu+ssh://root@localhost/system all reach the local system libvirtd. Transport, user, port, query
    and fragment are dropped, the host and driver lowercased, a loopback host or this machine's name is
    local, repeated and trailing slashes go. Where unsure this merges: two spellings wrongly taken as one
    only refuse a second instance, two taken as different would shrink the same guests twice."""
    try:
        parts = urlsplit(uri)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        return uri  # virsh refuses it anyway
    if not parts.scheme:
        return uri  # an alias of libvirt.conf's uri_aliases: only libvirt knows what it names
    driver = parts.scheme.split("+", 1)[0]
    path = "/" + "/".join(part for part in parts.path.split("/") if part)
    return f"{driver}://{'' if _is_local(host) else host}{path}"


def _is_local(host: str) -> bool:
    if host in _LOCAL_NAMES or host == socket.gethostname().lower():
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def default_dir(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return "/run/balloon-2395"
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise LockError("XDG_RUNTIME_DIR is not set: pass --lock-dir DIR (a directory only you can write)")
    return os.path.join(runtime, "balloon-2395")


def _normal_dir(path: str) -> str:
    """DIR, DIR/, DIR// and DIR/. as one absolute path whose last part is DIR itself, so a symlink there is
    seen (lstat("link/") follows it), and whose parents are real directories, so a swap there is seen."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _safe_dir(path: str) -> None:
    """Create the directory or make sure nobody else could plant files in it, or swap it."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LockError(f"cannot create lock directory {path}: {exc.strerror}") from None
    problem = dir_problem(path)
    if problem:
        raise LockError(problem)


def dir_problem(path: str) -> Optional[str]:
    """Why the existing directory `path` is no place for a lock (anyone else could plant files in it,
    or swap it), or None; changes nothing (`doctor` asks too)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"lock directory {path}: {exc.strerror}"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return f"lock directory {path} is not a directory (or is a symlink)"
    if info.st_uid != os.geteuid():
        return f"lock directory {path} belongs to uid {info.st_uid}, not to us"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"lock directory {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    problem = untrusted_path(path, {0, os.geteuid()})
    if problem:
        return f"lock directory {path} could be swapped: {problem}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"lock directory {path} is not writable"
    return None


def _own_lock_file(path: str) -> None:
    """Create or check the lock file ourselves, never through a symlink: filelock before 3.20.1 follows
    one, and truncates and chmods what it finds there."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "it is a symlink") from None
        raise LockError(f"cannot take lock {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise _refused(path, f"it is {kind(info.st_mode)}")
    if info.st_uid != os.geteuid():
        raise _refused(path, f"it belongs to uid {info.st_uid}, not to us")
    if info.st_nlink != 1:  # a hard link to another file, which filelock could truncate
        raise _refused(path, f"it has {info.st_nlink} names (hard links)")


def alive(pid: int) -> bool:
    """Whether a process runs under `pid` (its own or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return True


def _refused(path: str, why: str) -> LockError:
    return LockError(f"refusing lock file {path}: {why} (a lock file is a regular file of ours; remove it)")


class InstanceLock:
    def __init__(self, uri: str, directory: str) -> None:
        self.uri, self.directory = uri, _normal_dir(directory)
        identity = canonical_uri(uri)  # messages keep the URI as given
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", identity).strip("_")[:60]
        stem += "-" + hashlib.sha256(identity.encode()).hexdigest()[:8]
        self.path = os.path.join(self.directory, stem + ".lock")
        self.pid_path = os.path.join(self.directory, stem + ".pid")
        self._lock: Optional[filelock.BaseFileLock] = None

    def acquire(self) -> None:
        _safe_dir(self.directory)
        _own_lock_file(self.path)
        lock = filelock.FileLock(self.path, timeout=0, **_PRIVATE)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise AlreadyRunning(self.uri, self._live_holder(), self.path) from None
        except OSError as exc:
            raise LockError(f"cannot take lock {self.path}: {exc.strerror}") from None
        self._lock = lock
        try:
            write_atomic(self.pid_path, f"{os.getpid()}\n".encode(), 0o644)
        except OSError as exc:
            self.release()
            raise LockError(f"cannot write {exc.filename}: {exc.strerror}") from None

    def holder(self) -> Optional[int]:
        try:
            fd = os.open(self.pid_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd) as handle:
            text = handle.read(32).strip()
        return int(text) if text.isdigit() else None

    def _live_holder(self) -> Optional[int]:
        """The holder's pid, given a moment to write it: an instance started at the same instant holds
        the lock a little before its pid file says so, and the file may still name a killed one."""
        deadline = time.monotonic() + HOLDER_WAIT_S
        while True:
            pid = self.holder()
            if pid is not None and alive(pid) or time.monotonic() >= deadline:
                return pid if pid is not None and alive(pid) else None
            time.sleep(0.02)

    def release(self) -> None:
        if self._lock is None:
            return
        if self.holder() == os.getpid():
            os.unlink(self.pid_path)
        self._lock.release()
        self._lock = None
