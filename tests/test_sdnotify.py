"""systemd's notify protocol (issue 24, class 9): lib/balloon2395/sdnotify.py against real AF_UNIX datagram
sockets, and the real launcher under Type=notify with a watchdog: READY=1, WATCHDOG=1 while its loops turn
(none while one is stuck), RELOADING=1 and READY=1 around SIGHUP, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Iterator, List, Tuple

import pytest

from balloon2395.sdnotify import Notifier
from conftest import domain, wait_for


@pytest.fixture
def listener() -> Iterator[Tuple[socket.socket, str]]:
    """A datagram socket as systemd's: a path short enough for sun_path, whatever pytest's tmp_path is."""
    with tempfile.TemporaryDirectory(prefix="b2395-") as directory:
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(10)
        try:
            yield sock, path
        finally:
            sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[Tuple[socket.socket, str]]:
    name = f"b2395-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def received(sock: socket.socket) -> List[str]:
    return sock.recv(4096).decode().split("\n")


# --------------------------------------------------------------------- the protocol
def test_ready_stopping_and_reloading_reach_a_socket_at_a_path(listener):
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled and notifier.ready()
    assert received(sock) == ["READY=1"]
    assert notifier.reloading()
    reloading, monotonic = received(sock)
    assert reloading == "RELOADING=1"
    usec = int(monotonic.split("=", 1)[1])
    assert monotonic.startswith("MONOTONIC_USEC=") and abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5
    assert notifier.stopping() and received(sock) == ["STOPPING=1"]


def test_an_at_sign_is_the_abstract_namespace(abstract_listener):
    sock, name = abstract_listener
    assert Notifier({"NOTIFY_SOCKET": name}).ready()
    assert received(sock) == ["READY=1"]


def test_without_notify_socket_every_call_does_nothing():
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_s is None
    assert not any((notifier.ready(), notifier.reloading(), notifier.stopping(), notifier.watchdog()))


def test_the_variables_leave_the_environment_children_get():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1", "PATH": "/bin"}
    Notifier(env)
    assert env == {"PATH": "/bin"}  # virsh and ssh never see them
    kept = dict(env, NOTIFY_SOCKET="/x")
    Notifier(kept, unset=False)
    assert kept["NOTIFY_SOCKET"] == "/x"


@pytest.mark.parametrize("value", ["", "relative/path", "/a\0b", "/" + "x" * 200, "@" + "y" * 200])
def test_no_usable_address_is_no_socket(value):
    notifier = Notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()


@pytest.mark.parametrize("usec, pid, expected", [
    ("2000000", None, 2.0), ("2000000", "OWN", 2.0), (" 500000 ", "", 0.5),
    ("2000000", "1", None), ("2000000", "OTHER", None), ("2000000", "x", None),  # a parent's watchdog
    ("0", None, None), ("-5", None, None), ("1e6", None, None), ("junk", None, None), ("", None, None),
    ("9" * 5000, None, None), (str(10 ** 16), None, None)])
def test_the_watchdog_is_ours_only_when_systemd_says_so(listener, usec, pid, expected):
    env = {"NOTIFY_SOCKET": listener[1], "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = {"OWN": str(os.getpid()), "OTHER": str(os.getpid() + 1)}.get(pid, pid)
    assert Notifier(env).watchdog_s == expected


def test_watchdog_pings_at_half_the_interval_however_often_it_is_called(listener):
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    sent = [now for now in (100.0, 100.2, 100.9, 101.0, 101.5, 101.99, 102.0, 102.1) if notifier.watchdog(now)]
    assert sent == [100.0, 101.0, 102.0]
    assert [received(sock) for _ in sent] == [["WATCHDOG=1"]] * 3


def test_a_socket_gone_full_or_not_a_socket_costs_the_message_never_an_exception(listener, tmp_path):
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    sock.setblocking(False)
    sent = 0
    while notifier.send("STATUS=" + "x" * 4000) and sent < 100_000:  # nobody reads: the queue fills
        sent += 1
    assert sent < 100_000 and not notifier.send("WATCHDOG=1")  # a full queue: no wait, no raise
    sock.close()
    os.unlink(path)
    assert not notifier.ready()  # gone
    plain = tmp_path / "file"
    plain.write_text("")
    assert not Notifier({"NOTIFY_SOCKET": str(plain)}).ready()
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"}).ready()
    assert not Notifier({"NOTIFY_SOCKET": "@" + "\udcff" * 3}).ready()  # undecodable: surrogateescape'd bytes


def test_a_name_with_a_newline_cannot_forge_a_second_assignment(listener):
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).send("STATUS=web1\nREADY=1")
    assert received(sock) == ["STATUS=web1 READY=1"]


# --------------------------------------------------------------------- the real launcher under Type=notify
class Messages:
    """What the daemon sent, each with the monotonic time it arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.got = sock, []
        sock.setblocking(False)

    def drain(self) -> List[Tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.got
            self.got.extend((time.monotonic(), line) for line in data.decode().split("\n"))

    def watch(self, seconds: float) -> None:
        """Take in what arrives for `seconds`, each message stamped within 20 ms of its arrival."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.drain()
            time.sleep(0.02)
        self.drain()

    def lines(self) -> List[str]:
        return [line for _, line in self.drain()]

    def count(self, line: str) -> int:
        return self.lines().count(line)


def notified_daemon(host, notify: str, *args: str, watchdog_usec: str = "1000000") -> subprocess.Popen:
    env = dict(host.env, NOTIFY_SOCKET=notify, WATCHDOG_USEC=watchdog_usec)
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(host.daemon_argv("--secs", "0.05", *args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_the_launcher_says_ready_pings_reloads_and_stops(fake_host, abstract_listener):
    sock, name = abstract_listener
    host = fake_host(domain("web1", usable_mib=600))
    virsh = host.bin / "virsh"
    virsh.write_text(virsh.read_text().replace("exec ", f"env > {host.path}/virsh-env.$$\nexec ", 1))
    messages = Messages(sock)
    proc = notified_daemon(host, name)
    try:
        assert wait_for(lambda: "READY=1" in messages.lines()), proc.stderr.read() if proc.poll() is not None else ""
        assert host.lock_files(), "READY=1 before the lock was held"
        assert messages.lines()[0] == "READY=1"  # no ping before it
        assert wait_for(lambda: messages.count("WATCHDOG=1") >= 4, timeout=20)  # every 0.5 s of a 1 s watchdog
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: messages.count("READY=1") == 2)
        lines = messages.lines()
        at = lines.index("RELOADING=1")
        assert lines[at + 1].startswith("MONOTONIC_USEC=") and "READY=1" in lines[at + 2:]
        pings = messages.count("WATCHDOG=1")
        assert wait_for(lambda: messages.count("WATCHDOG=1") > pings)  # after the reload too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:  # only what this test started, by its pid
            proc.kill()
            proc.wait(timeout=10)
    assert messages.lines()[-1] == "STOPPING=1"
    assert "Traceback" not in proc.stderr.read()
    environments = list(host.path.glob("virsh-env.*"))
    assert environments and not any("NOTIFY_SOCKET" in p.read_text() or "WATCHDOG_" in p.read_text()
                                    for p in environments)  # virsh (and ssh under it) never see them


def test_no_ping_while_a_loop_is_stuck_and_pings_again_once_it_turns(fake_host, listener):
    sock, path = listener
    host = fake_host(domain("web1", usable_mib=600))
    messages = Messages(sock)
    proc = notified_daemon(host, path)
    try:
        assert wait_for(lambda: messages.count("WATCHDOG=1") >= 2, timeout=20)
        # the next domstats hangs for 5 s (under the 10 s virsh timeout): the cycle cannot end
        host.write({**host.read(), "faults": {"domstats": {"sleep": 5, "times": 1}}})
        assert wait_for(lambda: host.busy() and (time.sleep(0.3) or host.busy())), "the slow domstats never started"
        stuck = time.monotonic() - 0.3
        messages.watch(stuck + 1.8 - time.monotonic())  # the cycle began before: a 1 s watchdog + 0.05 s secs
        quiet_from = time.monotonic()
        messages.watch(1.5)
        assert host.busy(), "the slow domstats was over too soon for this test"
        late = [at for at, line in messages.drain() if line == "WATCHDOG=1" and at >= quiet_from]
        assert late == [], "pinged while the connection's loop was stuck"
        assert wait_for(lambda: not host.busy(), timeout=10)
        assert wait_for(lambda: any(line == "WATCHDOG=1" and at > quiet_from + 1.5
                                    for at, line in messages.drain()), timeout=10)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_watchdog_meant_for_another_pid_gets_no_ping(fake_host, listener):
    sock, path = listener
    host = fake_host(domain("web1", usable_mib=600))
    messages = Messages(sock)
    env = dict(host.env, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    proc = subprocess.Popen(host.daemon_argv("--secs", "0.05"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: "READY=1" in messages.lines())
        assert wait_for(host.state_files)
        time.sleep(1)
        assert "WATCHDOG=1" not in messages.lines()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert messages.lines() == ["READY=1", "STOPPING=1"]

