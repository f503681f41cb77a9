"""Records to the journal by its native protocol (issue 25, point 4): a real AF_UNIX datagram socket in
tmp_path stands in for journald's, and what arrives is parsed as journald parses it. The daemon's stderr
is a socket whose device:inode $JOURNAL_STREAM names, as under systemd. Field values are data (hostile
names arrive whole, as one field); a record the socket cannot take is the journal's line on the stream."""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import threading
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.decide.records import CHANGES
from balloon2395.logs import journald, lines as logs
from balloon2395.quoted import Lines
from conftest import LIB, ROOT, T0, domain, still_host

Fields = List[Tuple[str, bytes]]
IDS = journald.MESSAGE_IDS
HOSTILE = ["evil\nMESSAGE_ID=00000000000000000000000000000000\nPRIORITY=0", "cr\rname", "esc\x1b[2Jname",
           "nul\x00name", "bidi\u202ename", "tab\tname", "ü-é-名"]


def parse(datagram: bytes) -> Fields:
    """The fields of one datagram, as journald reads them: `NAME=value\\n`, or `NAME\\n`, a 64-bit
    little-endian length, that many bytes, `\\n`. Anything else is a broken entry."""
    fields, at = [], 0
    while at < len(datagram):
        end = datagram.index(b"\n", at)
        line = datagram[at:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            at = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", datagram[end + 1:end + 9])
            value = datagram[end + 9:end + 9 + size]
            assert datagram[end + 9 + size:end + 10 + size] == b"\n", "a binary field not ended by a newline"
            at = end + 10 + size
        assert re.fullmatch(rb"[A-Z][A-Z0-9_]*", name), name
        fields.append((name.decode(), value))
    return fields


def one(fields: Fields, name: str) -> str:
    values = [value for key, value in fields if key == name]
    assert len(values) == 1, (name, fields)
    return values[0].decode("utf-8", "surrogateescape")


class Journal:
    """journald's socket: datagrams bound at a path in tmp_path."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        assert len(self.path.encode()) < 108, "tmp_path too long for an AF_UNIX address"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def entries(self) -> List[Fields]:
        """Every datagram that arrived so far (a send is in the queue once sendto returned)."""
        out = []
        while True:
            try:
                out.append(parse(self.sock.recv(1 << 20)))
            except BlockingIOError:
                return out


class Stream:
    """The daemon's stderr: one end of a stream socket (as systemd's is), the other read by a thread."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.file = self.ours.makefile("w", encoding="utf-8")
        self._read: List[bytes] = []
        self._reader = threading.Thread(target=self._drain)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            chunk = self.theirs.recv(1 << 16)
            if not chunk:
                return
            self._read.append(chunk)

    @property
    def journal_stream(self) -> str:
        info = os.fstat(self.file.fileno())
        return f"{info.st_dev}:{info.st_ino}"

    def lines(self) -> List[str]:
        """Everything written to it, once the daemon's end is closed."""
        self.file.close()
        self.ours.close()
        self._reader.join(10)
        self.theirs.close()
        return b"".join(self._read).decode("utf-8").splitlines()


@pytest.fixture
def journal(tmp_path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.socket")
    try:
        yield j
    finally:
        j.sock.close()


@pytest.fixture
def stream(monkeypatch) -> Iterator[Stream]:
    s = Stream()
    monkeypatch.setenv("JOURNAL_STREAM", s.journal_stream)
    try:
        yield s
    finally:
        if not s.file.closed:
            s.lines()


def _setup(stream: Stream, socket_path: str, fmt: str = "text", debug: bool = False) -> None:
    logs.setup(None, debug, stream=stream.file, fmt=fmt, journal_socket=socket_path)


# ---------------------------------------------------------------- the protocol

def test_a_record_arrives_as_one_datagram_with_its_fields(journal, stream):
    _setup(stream, journal.path)
    logs.log.info("grow web1 2048 -> 2148 MiB: usable 18% < 25%", extra=logs.about("grow", "web1", "below-band"))
    [entry] = journal.entries()
    assert {name: one(entry, name) for name, _ in entry} == {
        "MESSAGE": "grow web1 2048 -> 2148 MiB: usable 18% < 25%", "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "balloon-2395", "MESSAGE_ID": IDS["grow"], "DOMAIN": "web1", "CODE": "below-band"}
    assert stream.lines() == []  # sent, so not written a second time


@pytest.mark.parametrize("level, priority", [(logging.DEBUG, "7"), (logging.INFO, "6"), (logging.WARNING, "4"),
                                             (logging.ERROR, "3"), (logging.CRITICAL, "2")])
def test_the_priority_is_the_records_level(journal, stream, level, priority):
    _setup(stream, journal.path, debug=True)
    logs.log.log(level, "said")
    [entry] = journal.entries()
    assert one(entry, "PRIORITY") == priority


def test_a_record_without_an_event_has_no_message_id_domain_or_code(journal, stream):
    _setup(stream, journal.path)
    logs.log.info("ksm: not running")
    [entry] = journal.entries()
    assert [name for name, _ in entry] == ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_domain_name_arrives_whole_as_one_field_and_forges_none(journal, stream, name):
    _setup(stream, journal.path)
    logs.log.info("skip %s: Windows guest", name, extra=logs.about("skip", name, "windows"))
    [entry] = journal.entries()
    assert one(entry, "DOMAIN") == name
    assert one(entry, "MESSAGE_ID") == IDS["skip"] and one(entry, "PRIORITY") == "6"
    assert len(entry) == 6  # MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, MESSAGE_ID, DOMAIN, CODE: no other
    assert "\n" not in one(entry, "MESSAGE") and "\x1b" not in one(entry, "MESSAGE")  # escaped, as in every line


def test_a_name_of_bytes_that_are_not_utf8_arrives_as_those_bytes(journal, stream):
    _setup(stream, journal.path)
    name = b"vm-\xff\xfe".decode("utf-8", "surrogateescape")
    logs.log.info("grow", extra=logs.about("grow", name))
    [entry] = journal.entries()
    assert dict(entry)["DOMAIN"] == b"vm-\xff\xfe"


def test_a_lone_surrogate_no_bytes_decode_to_arrives_escaped_not_as_broken_utf8(journal, stream):
    _setup(stream, journal.path)
    logs.log.info("grow", extra=logs.about("grow", "vm-\ud800"))
    [entry] = journal.entries()
    assert dict(entry)["DOMAIN"] == b"vm-\\ud800"


def test_a_multi_line_record_is_one_message_with_its_line_breaks(journal, stream):
    _setup(stream, journal.path, debug=True)
    block = Lines.of(["----- web1 -----", "  actual   2048 MiB", "  decision hold: in band"])
    logs.log.debug("%s", block, extra=logs.about("debug", "web1", "in-band"))
    [entry] = journal.entries()
    assert one(entry, "MESSAGE") == "----- web1 -----\n  actual   2048 MiB\n  decision hold: in band"


def test_a_connections_records_name_its_uri(journal, stream):
    _setup(stream, journal.path)
    uri = "qemu+ssh://host2/system"
    thread = threading.Thread(target=lambda: logs.log.info("grow db1", extra=logs.about("grow", "db1")), name=uri)
    thread.start()
    thread.join()
    logs.log.info("stopped", extra=logs.about("stop"))
    connection, service = journal.entries()
    assert one(connection, "URI") == uri and "URI" not in dict(service)


# ---------------------------------------------------------------- never a record lost

def test_without_the_journals_socket_the_line_goes_to_the_stream(tmp_path, stream):
    _setup(stream, str(tmp_path / "missing.socket"))
    logs.log.warning("grow web1 2048 -> 2148 MiB: usable 18% < 25% (timed out)",
                     extra=logs.about("setmem-timed-out", "web1"))
    assert stream.lines() == ["<4>grow web1 2048 -> 2148 MiB: usable 18% < 25% (timed out)"]


def test_a_socket_that_refuses_costs_the_datagram_not_the_record(tmp_path, stream):
    dead = tmp_path / "dead.socket"
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(dead))
    gone.close()  # the path stays, nobody reads: ECONNREFUSED
    _setup(stream, str(dead))
    logs.log.error("grow web1: setmem failed", extra=logs.about("setmem-failed", "web1"))
    assert stream.lines() == ["<3>grow web1: setmem failed"]


def test_a_record_too_big_for_a_datagram_goes_to_the_stream(journal, stream):
    _setup(stream, journal.path)
    huge = "x" * (1 << 21)  # 2 MiB: above any datagram the kernel takes (EMSGSIZE)
    logs.log.info("%s", huge, extra=logs.about("debug"))
    logs.log.info("after")
    assert [one(entry, "MESSAGE") for entry in journal.entries()] == ["after"]
    assert stream.lines() == ["<6>" + huge]


def test_a_journal_that_is_behind_loses_no_record_and_holds_up_no_cycle(journal, stream):
    _setup(stream, journal.path)
    count = 3000  # beyond the socket's queue (net.unix.max_dgram_qlen) and its receive buffer
    for i in range(count):
        logs.log.info("record %d", i)
    sent = [one(entry, "MESSAGE") for entry in journal.entries()]
    written = [line[len("<6>"):] for line in stream.lines()]
    assert sent and written, "the queue never filled: the test proves nothing"
    assert sorted(sent + written, key=lambda m: int(m.split()[1])) == [f"record {i}" for i in range(count)]


# ---------------------------------------------------------------- only under systemd's journal

def test_a_file_journal_stream_names_keeps_the_journals_lines(journal, tmp_path, monkeypatch):
    # a redirection, or a test: systemd's own stream is always a socket
    with open(tmp_path / "err", "w") as out:
        info = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        logs.setup(None, False, stream=out, journal_socket=journal.path)
        logs.log.info("grow web1", extra=logs.about("grow", "web1"))
    assert (tmp_path / "err").read_text() == "<6>grow web1\n" and journal.entries() == []


def test_a_stream_journal_stream_does_not_name_gets_plain_lines(journal, stream, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    _setup(stream, journal.path)
    logs.log.info("grow web1", extra=logs.about("grow", "web1"))
    [line] = stream.lines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO grow web1", line) and journal.entries() == []


def test_json_lines_stay_json_under_the_journal(journal, stream):
    _setup(stream, journal.path, fmt="json")
    logs.log.info("grow web1", extra=logs.about("grow", "web1"))
    [line] = stream.lines()
    assert '"message": "grow web1"' in line and journal.entries() == []


# ---------------------------------------------------------------- the daemon's records

def _cycle(virsh) -> None:
    Daemon(cfg.build({"host_memory": "off", "policy": "step"}), virsh, clock=lambda: T0).cycle()


def test_the_daemons_grow_and_skip_records_carry_domain_code_and_message_id(journal, stream):
    _setup(stream, journal.path)
    hostile = "evil\rMESSAGE_ID=00000000000000000000000000000000 \u202e"  # no read carries a newline
    _cycle(still_host(domain(hostile, usable_mib=370), domain("win", os="http://microsoft.com/win/10")))
    by_id = {one(entry, "MESSAGE_ID"): entry for entry in journal.entries() if "MESSAGE_ID" in dict(entry)}
    grow, skip = by_id[IDS["grow"]], by_id[IDS["skip"]]
    assert (one(grow, "DOMAIN"), one(grow, "CODE"), one(grow, "PRIORITY")) == (hostile, "below-band", "6")
    assert one(grow, "MESSAGE").startswith("grow evil\\rMESSAGE_ID=")  # the line as the text log has it
    assert (one(skip, "DOMAIN"), one(skip, "CODE")) == ("win", "windows")


def test_the_reads_per_domain_records_carry_the_domain_too(journal, stream):
    _setup(stream, journal.path)
    virsh = still_host(domain("web1", usable_mib=370, period=0))  # no stats period: the daemon sets one
    _cycle(virsh)
    [period] = [entry for entry in journal.entries() if dict(entry).get("MESSAGE_ID") == IDS["stats-period"].encode()]
    assert one(period, "DOMAIN") == "web1" and one(period, "MESSAGE").startswith("web1: no fresh usable figure")


def test_a_failed_setmem_is_its_own_event(journal, stream):
    _setup(stream, journal.path)
    virsh = still_host(domain("web1", usable_mib=370))
    virsh.state["faults"] = {"setmem": {"exit": 1, "stderr": "error: internal error: oops\n", "times": 1}}
    _cycle(virsh)
    [failed] = [entry for entry in journal.entries() if dict(entry).get("MESSAGE_ID") == IDS["setmem-failed"].encode()]
    assert (one(failed, "DOMAIN"), one(failed, "CODE"), one(failed, "PRIORITY")) == ("web1", "below-band", "3")


# ---------------------------------------------------------------- the ids

def test_each_event_kind_has_its_own_128_bit_id():
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in IDS.values())
    assert len(set(IDS.values())) == len(IDS)


def test_every_event_the_code_logs_has_an_id():
    source = "".join(path.read_text() for path in (LIB / "balloon2395").rglob("*.py"))
    named = set(re.findall(r'about\("([a-z-]+)"', source))
    assert named and named | set(CHANGES) <= set(IDS), sorted(named | set(CHANGES) - set(IDS))


def test_every_id_is_in_the_operations_guide():
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert [kind for kind, value in IDS.items() if f"`{value}`" not in guide] == []
