"""The control channel of an e2e guest: its init loop (tests/e2e/guest-init.sh) on a virtio-serial port.

Wire format: the host writes ``SEQ CMD ARGS`` lines on the channel's unix socket; the guest answers
``@@BEGIN SEQ@@``, the command's output lines, ``@@END SEQ RC@@``. ReplyReader is that framing as a
pure parser of bytes; GuestChannel is the socket around it.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from .waiting import HarnessError


class GuestError(HarnessError):
    pass


class GuestTimeout(GuestError):
    pass


@dataclass
class Reply:
    seq: int
    rc: int
    lines: List[str]

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class ReplyReader:
    """Bytes from the guest in, whole replies out. Output outside the awaited command's BEGIN/END (an
    earlier command that timed out answering late) is dropped."""

    def __init__(self) -> None:
        self._buf = b""
        self._seq: Optional[int] = None
        self._lines: Optional[List[str]] = None  # None: not inside the awaited reply yet

    def feed(self, data: bytes) -> None:
        self._buf += data

    def reply(self, seq: int) -> Optional[Reply]:
        """The reply to command `seq` once all of it has been fed, else None (feed more)."""
        if seq != self._seq:
            self._seq, self._lines = seq, None
        begin, end_prefix = f"@@BEGIN {seq}@@", f"@@END {seq} "
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace")
            if line == begin:
                self._lines = []
            elif self._lines is not None and line.startswith(end_prefix) and line.endswith("@@"):
                lines, self._lines = self._lines, None
                return Reply(seq, int(line[len(end_prefix):-2]), lines)
            elif self._lines is not None:
                self._lines.append(line)
        return None


class GuestChannel:
    """One connection to a guest's control socket, opened on first use, one command at a time."""

    def __init__(self, name: str, socket_path: Path) -> None:
        self.name = name
        self.socket_path = socket_path
        self._sock: Optional[socket.socket] = None
        self._reader = ReplyReader()
        self._seq = 0
        self._lock = threading.RLock()

    def command(self, words: Sequence[str], timeout: float) -> Reply:
        """Send one command line and wait for its reply (GuestTimeout when none came in time)."""
        for w in words:
            if "\n" in w or "\r" in w:
                raise ValueError("newline in guest command")
        with self._lock:
            self._seq += 1
            try:
                sock = self._connect()
                sock.sendall(f"{self._seq} {' '.join(words)}\n".encode("utf-8"))
                return self._await(sock, self._seq, timeout)
            except OSError as exc:
                self.close()
                raise GuestError(f"control channel of {self.name}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.close()
                finally:
                    self._sock = None
                    self._reader = ReplyReader()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.socket_path))
            except OSError:
                s.close()
                raise
            self._sock = s
        return self._sock

    def _await(self, sock: socket.socket, seq: int, timeout: float) -> Reply:
        deadline = time.monotonic() + timeout
        while True:
            reply = self._reader.reply(seq)
            if reply is not None:
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestTimeout(f"no reply to command #{seq} from {self.name} in {timeout}s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                self.close()
                raise GuestError(f"control channel of {self.name} closed")
            self._reader.feed(chunk)
