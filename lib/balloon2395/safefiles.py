"""Files a root daemon reads or writes: none through a planted symlink, none that others could rewrite.

A config file decides how far guests are shrunk, so as root it must be as
trusted as the daemon itself: owned by root and writable by nobody else, in a
directory nobody else can swap it in. Log files are created 0640 and opened
without following a symlink, so nobody can point the daemon's appends at
/etc/shadow.
"""

from __future__ import annotations

import logging.handlers
import os
import stat
from typing import Optional

LOG_MODE = 0o640


def unsafe_config(path: str, info: os.stat_result, euid: Optional[int] = None) -> Optional[str]:
    """Why a daemon running as root must not take settings from this file (`info`: its fstat), or None."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None  # an unprivileged daemon can only hurt what its user may touch anyway
    directory = os.path.dirname(os.path.abspath(path))
    checked = [(f"its directory {directory}", os.stat(directory))]
    if stat.S_ISREG(info.st_mode):  # not /dev/null, the usual "no settings", which anyone may write
        checked.insert(0, ("the file", info))
    for what, st in checked:
        if st.st_uid != 0:
            return f"refused as root: {what} belongs to uid {st.st_uid}, not root"
        # a sticky directory (/tmp) lets nobody else replace a root-owned file in it
        sticky = what != "the file" and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
            return (f"refused as root: {what} is writable by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):o}; chmod go-w)")
    return None


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
