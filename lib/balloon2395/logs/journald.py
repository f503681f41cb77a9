"""The journal's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL): each record one datagram of fields
to journald's socket, so that `journalctl DOMAIN=web1` or `journalctl MESSAGE_ID=...` finds it.

Used only when the daemon's stderr is the journal's own stream (logs.setup). Nothing here loses a record:
one the socket cannot take (missing, refusing, full, or the record too big for a datagram) is written to
the stream as before, the journal's line with its priority prefix. Field values are data: a value that is
not plain text (a newline, any control character, bytes that are not UTF-8) goes in the protocol's
binary-safe form, a length and the bytes, so a domain name cannot end its field or forge another one.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import IO, Iterable, Iterator, Optional, Tuple

from .. import PROG
from .style import JournalFormatter, priority

SOCKET = "/run/systemd/journal/socket"

# One MESSAGE_ID per kind of event, made once with uuid4 and never changed: what an operator filters on
# (`journalctl MESSAGE_ID=5dc9e37440f64641bebcce401b860559` is every grow). docs/operations.md lists them.
MESSAGE_IDS = {
    "grow": "5dc9e37440f64641bebcce401b860559",
    "shrink": "8a22c9fde49f4c0494ab4382f81aff3d",
    "dry-run": "26e70025c1cf46a78c6273a4ab500f92",
    "setmem-failed": "32f11f9f54df408a9cc4309e6c5a4710",
    "setmem-timed-out": "649e0b2e931d4017a9268fcd1d5d126a",
    "gone": "76e8605ba6a148ecbe94350851793c62",
    "fenced": "81866a9c67a348c8baaeb351ba1a4a83",
    "skip": "2f563b5b3ebc48c3a6fe9a445e89c986",
    "hold": "601fc42c31604968bb410544fc6daed6",
    "no-autodeflate": "0c0e9940caa44b4f951189675246469a",
    "read-failed": "f2c7492da12d4f7289a0aa8bc2d6468f",
    "read-back": "4deaf0323b7b4b33a1754c6bbf08fac7",
    "cycle-failed": "1b01ff196e9e402e96c3237280174946",
    "debug": "27814028341749a5a5b5f6077b221dd2",
    "start": "089a320a1521413ba6b403e79d58e26e",
    "stop": "dfe3e759ec164c61b0219b349a9f2ce7",
    "reload": "79b1b8db90de4baeb06cab70a9686832",
    "reload-failed": "3bddf24509484a89bf35525be1a1ca2c",
    "read-fallback": "dfa205eecb5b4a05bab8472c56c5efc3",
    "domain-read-failed": "0b4ab098d76b40c4a084182229a4fd4f",
    "stats-period": "e0b6408b1fe6459380e5a4328c5e01a8",
    "stats-period-failed": "279f6a220d23430397c2c4a0946c7c20",
    "host-read-failed": "38bc1ae52bd14bcb8a37fe901d1dda8c",
    "host-read-back": "dde0a39285b844a4828cabaf2a1938f5",
}


def _data(value: str) -> bytes:
    try:
        return value.encode("utf-8", "surrogateescape")  # text that was bytes (an argument, a path): those bytes
    except UnicodeEncodeError:  # a lone surrogate no bytes decode to: shown escaped, never as broken UTF-8
        return value.encode("utf-8", "backslashreplace")


def _plain(data: bytes) -> bool:
    """Whether the `NAME=value` form may carry it: UTF-8 without control characters (TAB aside)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char >= " " or char == "\t" for char in text)


def field(name: str, value: str) -> bytes:
    """One field as the protocol carries it: `NAME=value\\n`, or, for anything but plain text, the
    binary-safe `NAME\\n`, the value's length as 64-bit little-endian, the value, `\\n`."""
    data = _data(value)
    if _plain(data):
        return name.encode("ascii") + b"=" + data + b"\n"
    return name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


def entry(fields: Iterable[Tuple[str, str]]) -> bytes:
    return b"".join(field(name, value) for name, value in fields)


class JournalHandler(logging.Handler):
    """Records to journald as datagrams of fields; one that cannot be sent goes to `stream` (the
    journal's stream) as the formatter's line. MESSAGE is that line without its priority prefix; the
    record's `event`, `domain` and `code` (logs.about) become MESSAGE_ID, DOMAIN and CODE, and the
    connection's thread name (service.py names each for its URI) URI."""

    def __init__(self, stream: IO, formatter: JournalFormatter, path: str = SOCKET) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines, self.path = formatter, path
        self.fallback = logging.StreamHandler(stream)
        self.fallback.setFormatter(formatter)
        self._socket: Optional[socket.socket] = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = entry(self.fields(record))
        except Exception:  # a record that cannot be formatted: logging's own report, as any handler's
            self.handleError(record)
            return
        if not self._send(data):
            self.fallback.handle(record)

    def fields(self, record: logging.LogRecord) -> Iterator[Tuple[str, str]]:
        yield "MESSAGE", self.lines.message(record)
        yield "PRIORITY", str(priority(record))
        yield "SYSLOG_IDENTIFIER", PROG
        message_id = MESSAGE_IDS.get(getattr(record, "event", ""))
        if message_id:
            yield "MESSAGE_ID", message_id
        for name, attribute in (("DOMAIN", "domain"), ("CODE", "code")):
            value = getattr(record, attribute, None)
            if value is not None:
                yield name, str(value)
        if record.threadName and record.threadName != "MainThread":
            yield "URI", record.threadName

    def _send(self, data: bytes) -> bool:
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)  # a journal that is behind costs the datagram, never a cycle
            self._socket.sendto(data, self.path)
        except OSError:  # missing, refused, full (EAGAIN), too big (EMSGSIZE): the stream takes it
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.fallback.close()
        super().close()
