"""One instance per hypervisor connection: a filelock under /run, named for the URI.

The kernel drops a flock when its holder dies, so a SIGKILLed instance never
blocks the next start. The holder's pid lives in a side file because opening
the lock file (as a second instance does) may truncate it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from typing import Mapping, Optional

import filelock


class LockError(Exception):
    """The lock cannot be taken for a reason other than another instance."""


class AlreadyRunning(Exception):
    def __init__(self, uri: str, pid: Optional[int], path: str) -> None:
        self.uri, self.pid, self.path = uri, pid, path
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"already running for {uri} ({who} holds {path})")


def default_dir(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return "/run/balloon-2395"
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise LockError("XDG_RUNTIME_DIR is not set: pass --lock-dir DIR (a directory only you can write)")
    return os.path.join(runtime, "balloon-2395")


def _safe_dir(path: str) -> None:
    """Create the directory or make sure nobody else could plant files in it."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LockError(f"cannot create lock directory {path}: {exc.strerror}") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise LockError(f"lock directory {path} is not a directory (or is a symlink)")
    if info.st_uid != os.geteuid():
        raise LockError(f"lock directory {path} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LockError(f"lock directory {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise LockError(f"lock directory {path} is not writable")


class InstanceLock:
    def __init__(self, uri: str, directory: str) -> None:
        self.uri, self.directory = uri, directory
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", uri).strip("_")[:60]
        stem += "-" + hashlib.sha256(uri.encode()).hexdigest()[:8]
        self.path = os.path.join(directory, stem + ".lock")
        self.pid_path = os.path.join(directory, stem + ".pid")
        self._lock: Optional[filelock.BaseFileLock] = None

    def acquire(self) -> None:
        _safe_dir(self.directory)
        lock = filelock.FileLock(self.path, timeout=0, mode=0o600)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise AlreadyRunning(self.uri, self.holder(), self.path) from None
        except OSError as exc:
            raise LockError(f"cannot take lock {self.path}: {exc.strerror}") from None
        self._lock = lock
        self._write_pid()

    def holder(self) -> Optional[int]:
        try:
            fd = os.open(self.pid_path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd) as handle:
            text = handle.read(32).strip()
        return int(text) if text.isdigit() else None

    def _write_pid(self) -> None:
        tmp = f"{self.pid_path}.{os.getpid()}"
        try:
            os.unlink(tmp)  # left by a killed instance whose pid we now have
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_path)

    def release(self) -> None:
        if self._lock is None:
            return
        if self.holder() == os.getpid():
            os.unlink(self.pid_path)
        self._lock.release()
        self._lock = None
