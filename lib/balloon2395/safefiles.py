"""Files a root daemon reads or writes: none through a planted symlink, none that others could rewrite.

A config file decides how far guests are shrunk, so as root it must be as
trusted as the daemon itself: owned by root and writable by nobody else, and
so must every directory on its real path, or someone could swap it. Files the
daemon writes (state, journal, pid, metrics) are replaced atomically through a
temp file nobody can predict; log files are created 0640 and opened without
following a symlink, so nobody can point the daemon's writes at /etc/shadow.
"""

from __future__ import annotations

import logging.handlers
import os
import secrets
import stat
from typing import Collection, Optional

LOG_MODE = 0o640
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink"))


class Refused(Exception):
    """A file the daemon must not use; the message says why in one line."""


def kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "an unusual file")


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Replace `path` by a file holding `data`, with exactly `mode`: a reader sees the old file or the new
    one, never half of one. The temp file's name cannot be predicted and it is created O_EXCL|O_NOFOLLOW,
    so no symlink planted beforehand is written through; os.replace replaces a symlink at `path` itself,
    never what it points to. Errors name `path`: the temp name is new every time."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")  # no .prom: node_exporter skips it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            _fill(fd, data, mode)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None


def _fill(fd: int, data: bytes, mode: int) -> None:
    try:
        os.fchmod(fd, mode)  # whatever the umask: node_exporter and `status` read these as other users
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_config(path: str, euid: Optional[int] = None) -> bytes:
    """A config file's bytes, read at its real path (symlinks resolved, then checked, then opened without
    following one). Refused: anything but a regular file (opening a FIFO blocks forever, opening a device
    can act on it) and, as root, a file someone else could rewrite or swap (unsafe_config)."""
    real = os.path.realpath(path)
    info = os.stat(real)
    if os.path.abspath(path) == os.devnull and stat.S_ISCHR(info.st_mode):
        # /dev/null named as such, no other device and no link to it: the usual way to say "no settings"
        # (tests/test_sim_virsh.py, cron lines). Anyone may write to it, yet it always reads empty, so it is
        # not read at all. A config that became a link to it was swapped: refused below, as any device.
        return b""
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"is {kind(info.st_mode)}, not a regular file")
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise Refused("was replaced while being opened")
        problem = unsafe_config(path, opened, euid, real)
        if problem:
            raise Refused(problem)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def unsafe_config(path: str, info: os.stat_result, euid: Optional[int] = None,
                  real: Optional[str] = None) -> Optional[str]:
    """Why a daemon running as root must not take settings from this regular file (`info`: its fstat;
    `real`: the path it was opened at, symlinks resolved), or None."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None  # an unprivileged daemon can only hurt what its user may touch anyway
    real = real or os.path.realpath(path)
    what = "the file" if real == os.path.abspath(path) else f"the file {real}"
    problem = _untrusted(what, info, (0,), directory=False) or untrusted_path(real, (0,))
    return f"refused as root: {problem}" if problem else None


def untrusted_path(path: str, owners: Collection[int]) -> Optional[str]:
    """Why someone other than `owners` (uids) could swap an entry on the way to `path` (symlinks already
    resolved), or None: every directory from its parent up to / must be a real directory of an owner's,
    writable by nobody else unless sticky (/tmp: there others cannot rename or remove an owner's entry,
    and every entry on the path is an owner's: this checks the directories, the caller the last entry)."""
    here = os.path.dirname(os.path.abspath(path))
    while True:
        problem = _untrusted(f"directory {here}", os.lstat(here), owners, directory=True)
        parent = os.path.dirname(here)
        if problem or parent == here:
            return problem
        here = parent


def _untrusted(what: str, info: os.stat_result, owners: Collection[int], directory: bool) -> Optional[str]:
    if directory and not stat.S_ISDIR(info.st_mode):
        return f"{what} is {kind(info.st_mode)}, not a directory"
    if info.st_uid not in owners:
        return f"{what} belongs to uid {info.st_uid}, not {' or '.join(_who(uid) for uid in sorted(owners))}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (directory and info.st_mode & stat.S_ISVTX):
        return f"{what} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}; chmod go-w)"
    return None


def unsafe_dir(path: str, euid: Optional[int] = None) -> Optional[str]:
    """Why a daemon running as root must not create or replace files in this directory (it need not exist
    yet: then the nearest existing one above it counts), or None: a symlink on the way that someone else
    owns, an entry on the way in a directory someone else could rename it in, or a directory on its real
    path someone else could rename, swap or fill with links."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        here = os.path.dirname(here)
    walked = "/"
    for part in here.strip("/").split("/") if here != "/" else []:
        walked = os.path.join(walked, part)
        info = os.lstat(walked)
        if stat.S_ISLNK(info.st_mode) and info.st_uid != 0:
            return f"refused as root: {walked} is a symlink of uid {info.st_uid}"
        # whoever may rename entries in the directory holding this one can swap it, a root-owned symlink too
        problem = untrusted_path(os.path.join(os.path.realpath(os.path.dirname(walked)), part), (0,))
        if problem:
            return f"refused as root: {walked} can be swapped: {problem}"
    real = os.path.realpath(here)
    # a sticky directory such as /tmp passes: nobody else can rename or remove the daemon's files in it
    problem = _untrusted(f"directory {real}", os.lstat(real), (0,), directory=True) or untrusted_path(real, (0,))
    return f"refused as root: {problem}" if problem else None


def _who(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


class RotatingLogFile(logging.handlers.RotatingFileHandler):
    """A size-rotated log whose file is never reached through a symlink and never group/other-writable."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     LOG_MODE)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & (stat.S_IWGRP | stat.S_IWOTH):  # an older file: tighten, never loosen
                os.fchmod(fd, mode & ~(stat.S_IWGRP | stat.S_IWOTH))
            return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise
