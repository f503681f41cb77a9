"""systemd's notify protocol (sd_notify(3)), its few lines: Type=notify and WatchdogSec= in the unit.

A datagram of `KEY=VALUE` lines to the AF_UNIX socket $NOTIFY_SOCKET names (a leading '@' is the abstract
namespace). Without $NOTIFY_SOCKET (not under systemd, a test, cron) every call does nothing. The watchdog is
ours when $WATCHDOG_USEC is a positive number and $WATCHDOG_PID is unset or our pid (a variable inherited from
a parent is not). The variables are taken out of the environment when read, so virsh and ssh never see them.
Nothing here raises: a socket that is gone, full or refuses costs the message, never the daemon.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Dict, MutableMapping, Optional

VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
MAX_PATH = 107  # sun_path is 108 bytes; Linux takes an abstract name of that length without a terminator
MAX_USEC = 10 ** 15  # about 31 years: anything longer is no watchdog worth a ping


def _address(value: str) -> Optional[str]:
    """The socket address $NOTIFY_SOCKET gives, or None when it is no usable AF_UNIX name."""
    if not value or "\0" in value or len(value.encode("utf-8", "surrogateescape")) > MAX_PATH:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value if value.startswith("/") else None


def _watchdog_s(usec: str, pid: str, own: int) -> Optional[float]:
    if pid.strip():
        if not pid.strip().isdigit() or int(pid) != own:
            return None
    text = usec.strip()
    if not text.isdigit() or len(text) > 16:
        return None
    value = int(text)
    return value / 1e6 if 0 < value <= MAX_USEC else None


class Notifier:
    """What the daemon tells systemd. `watchdog_s` is the interval systemd expects pings within, or None."""

    def __init__(self, env: Optional[MutableMapping[str, str]] = None, unset: bool = True) -> None:
        environ = os.environ if env is None else env
        values: Dict[str, str] = {name: environ.get(name, "") for name in VARIABLES}
        if unset:
            for name in VARIABLES:
                environ.pop(name, None)
        self.address = _address(values["NOTIFY_SOCKET"])
        self.watchdog_s = _watchdog_s(values["WATCHDOG_USEC"], values["WATCHDOG_PID"], os.getpid()) \
            if self.address else None
        self._pinged: Optional[float] = None
        self._socket: Optional[socket.socket] = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of `lines`; whether it went."""
        if self.address is None:
            return False
        data = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)  # a full queue costs the message, never a wait
            self._socket.sendto(data, self.address)
        except OSError:
            self.close()
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self, now: Optional[float] = None) -> bool:
        """WATCHDOG=1 when half the interval went by since the last one (call it as often as you like);
        whether one was sent."""
        if self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        if self._pinged is not None and now - self._pinged < self.watchdog_s / 2:
            return False
        self._pinged = now
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass
            self._socket = None
