"""The real-guest harness (balloon2395_testkit) in the parts that need no libvirt: the virsh output it reads,
waiting, the guest control channel's framing and socket, the domain XML, the factory's names and dirs, the
daemon's config, and prepare.sh's daemon records."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from balloon2395.config import build, read_file
from balloon2395_testkit.daemon_process import DaemonProcess
from balloon2395_testkit.guest_channel import GuestChannel, GuestError, GuestTimeout, Reply, ReplyReader
from balloon2395_testkit.guests import PREFIX, Guest, GuestFactory, GuestSpec
from balloon2395_testkit.prepared import (
    cache_dir,
    check_prerequisites,
    command_name,
    forget_daemon,
    record_daemon,
    recorded_daemon,
    start_time,
)
from balloon2395_testkit.virsh_cli import parse_domstats, parse_kv
from balloon2395_testkit.waiting import HarnessError, wait_for

NAME = f"{PREFIX}-t-web"


# --------------------------------------------------------------------- virsh output
def test_dommemstat_lines_become_integers_and_other_lines_are_skipped():
    assert parse_kv("actual 524288\nlast_update -1\nrss 1 2\n\nfoo bar\n") == {"actual": 524288, "last_update": -1}


def test_domstats_are_grouped_by_domain_with_integers_and_text():
    text = ("Domain: 'web'\n  balloon.current=524288\n  state.reason=x\n\n"
            "Domain: 'o'brien = 1'\n  balloon.current=1\nnot.indented=2\n")
    assert parse_domstats(text) == {"web": {"balloon.current": 524288, "state.reason": "x"},
                                    "o'brien = 1": {"balloon.current": 1}}


# --------------------------------------------------------------------- waiting
def test_wait_for_returns_the_first_truthy_value():
    values = iter([None, 0, {"actual": 1}])
    assert wait_for(lambda: next(values), timeout=5, interval=0) == {"actual": 1}


def test_wait_for_counts_a_harness_error_as_not_yet_and_names_the_last_one():
    def failing() -> None:
        raise HarnessError("libvirtd restarting")
    with pytest.raises(HarnessError, match=r"waiting for the guest \(last error: libvirtd restarting\)"):
        wait_for(failing, timeout=0, interval=0, what="the guest")


def test_wait_for_lets_a_bug_through():
    with pytest.raises(KeyError):
        wait_for(lambda: {}["usable"], timeout=5, interval=0)


# --------------------------------------------------------------------- the channel's framing
def test_a_reply_is_whole_once_its_end_line_arrived():
    reader = ReplyReader()
    reader.feed(b"@@BEGIN 3@@\nMemTotal: 1 kB\nMemFr")
    assert reader.reply(3) is None
    reader.feed(b"ee: 2 kB\n@@END 3 0@@\n")
    assert reader.reply(3) == Reply(3, 0, ["MemTotal: 1 kB", "MemFree: 2 kB"])


def test_a_late_reply_to_an_earlier_command_is_dropped():
    reader = ReplyReader()
    reader.feed(b"1 pong\n@@BEGIN 1@@\npong\n@@END 1 0@@\n@@BEGIN 2@@\nhog died\n@@END 2 1@@\n")
    assert reader.reply(2) == Reply(2, 1, ["hog died"])


def test_a_reply_cut_off_by_a_timeout_does_not_leak_into_the_next():
    reader = ReplyReader()
    reader.feed(b"@@BEGIN 1@@\nhalf\n")
    assert reader.reply(1) is None  # the caller gives up on 1
    reader.feed(b"more of 1\n@@END 2 0@@\n")
    assert reader.reply(2) is None  # an end without its begin: not a reply to 2
    reader.feed(b"@@BEGIN 2@@\nfresh\n@@END 2 0@@\n")
    assert reader.reply(2) == Reply(2, 0, ["fresh"])


def test_bytes_that_are_not_utf8_are_replaced_not_fatal():
    reader = ReplyReader()
    reader.feed(b"@@BEGIN 1@@\n\xff\n@@END 1 0@@\n")
    assert reader.reply(1).lines == ["\ufffd"]


# --------------------------------------------------------------------- the channel's socket
Answer = Callable[[int, List[str]], Optional[bytes]]  # None: hang up


class GuestInit:
    """The guest's end of the control socket: answers each command line with answer(seq, words)."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.answer = answer
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    seq, *words = line.decode().split(" ")
                    out = self.answer(int(seq), words)
                    if out is None:
                        return
                    conn.sendall(out)

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture
def sock_path() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="b2395t-"))  # short: a unix socket path has at most 107 bytes
    yield d / "ctl.sock"
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def reply(seq: int, rc: int, *lines: str) -> bytes:
    return "".join([f"@@BEGIN {seq}@@\n"] + [line + "\n" for line in lines] + [f"@@END {seq} {rc}@@\n"]).encode()


def test_a_command_goes_out_as_one_numbered_line_and_its_reply_comes_back(sock_path):
    init = GuestInit(sock_path, lambda seq, words: reply(seq, 0, "got " + " ".join(words)))
    channel = GuestChannel(NAME, sock_path)
    assert channel.command(["hog", "h1", "100"], timeout=5) == Reply(1, 0, ["got hog h1 100"])
    assert channel.command(["ping"], timeout=5) == Reply(2, 0, ["got ping"])
    channel.close()
    init.close()


def test_a_command_without_reply_times_out_and_its_late_reply_is_not_taken_for_the_next(sock_path):
    def answer(seq: int, words: List[str]) -> bytes:
        return b"" if seq == 1 else reply(1, 0, "late") + reply(seq, 0, "pong")
    init = GuestInit(sock_path, answer)
    channel = GuestChannel(NAME, sock_path)
    with pytest.raises(GuestTimeout, match="no reply to command #1"):
        channel.command(["hog", "big", "900"], timeout=0.2)
    assert channel.command(["ping"], timeout=5) == Reply(2, 0, ["pong"])
    channel.close()
    init.close()


def test_a_guest_that_hangs_up_is_a_guest_error(sock_path):
    init = GuestInit(sock_path, lambda seq, words: None)
    channel = GuestChannel(NAME, sock_path)
    with pytest.raises(GuestError, match="closed"):
        channel.command(["poweroff"], timeout=5)
    init.close()


def test_a_guest_not_listening_yet_is_a_guest_error(sock_path):
    with pytest.raises(GuestError, match=f"control channel of {NAME}"):
        GuestChannel(NAME, sock_path).command(["ping"], timeout=1)


def test_a_newline_never_reaches_the_guest(sock_path):
    with pytest.raises(ValueError):
        GuestChannel(NAME, sock_path).command(["sh", "true\nreboot"], timeout=1)


# --------------------------------------------------------------------- the domain
def test_only_a_name_with_the_prefix_can_be_a_guest(tmp_path):
    with pytest.raises(ValueError, match=PREFIX):
        Guest("web", tmp_path)


def test_a_guest_cannot_start_above_its_maximum(tmp_path):
    with pytest.raises(ValueError):
        Guest(NAME, tmp_path, GuestSpec(current_mib=1024, max_mib=512))


def test_the_domain_xml_has_the_sizes_the_balloon_and_a_stats_period(tmp_path):
    dom = ET.fromstring(Guest(NAME, tmp_path, GuestSpec(current_mib=384, max_mib=512, stats_period=2)).xml())
    assert (dom.findtext("memory"), dom.findtext("currentMemory")) == (str(512 * 1024), str(384 * 1024))
    assert dom.find("devices/memballoon").get("model") == "virtio"
    assert dom.find("devices/memballoon/stats").get("period") == "2"
    assert "noballoon" not in dom.findtext("os/cmdline") and "transparent_hugepage=never" in dom.findtext("os/cmdline")


def test_a_guest_without_driver_or_device_says_so_in_its_xml(tmp_path):
    nodriver = ET.fromstring(Guest(NAME, tmp_path, GuestSpec(balloon_driver=False, stats_period=None)).xml())
    assert "noballoon" in nodriver.findtext("os/cmdline") and nodriver.find("devices/memballoon/stats") is None
    nodevice = ET.fromstring(Guest(NAME, tmp_path, GuestSpec(balloon_device=False)).xml())
    assert nodevice.find("devices/memballoon").get("model") == "none"


def test_a_name_and_paths_with_xml_characters_are_escaped(tmp_path):
    name = f"{PREFIX} o'brien <&> \"q\""
    workdir = tmp_path / "a'b&c"
    dom = ET.fromstring(Guest(name, workdir).xml())
    assert dom.findtext("name") == name
    assert dom.find("devices/channel/source").get("path") == str(workdir / "ctl.sock")


def test_the_factory_names_guests_with_its_token_in_its_own_dir(tmp_path):
    factory = GuestFactory(token="abc", base_dir=str(tmp_path), keep_logs=False)
    g = factory.guest("../o'brien é")
    assert g.name == f"{PREFIX}-abc-../o'brien é"
    assert g.workdir.parent == factory.workdir and g.workdir.name == "1-..-o-brien"  # one path component
    factory.cleanup()  # nothing defined: nothing asked of libvirt
    assert not factory.workdir.exists()


def test_the_factory_makes_each_guest_from_a_spec_of_the_options_given(tmp_path):
    factory = GuestFactory(token="abc", base_dir=str(tmp_path), keep_logs=False, uri="qemu:///session")
    g = factory.guest("web", current_mib=256, autodeflate=True)
    assert g.spec == GuestSpec(current_mib=256, autodeflate=True, uri="qemu:///session")
    with pytest.raises(TypeError):  # an option no guest has is refused, not ignored
        factory.guest("db", colour="red")
    factory.cleanup()


def test_the_factory_keeps_its_dir_when_asked_to_keep_logs(tmp_path):
    factory = GuestFactory(token="abc", base_dir=str(tmp_path), keep_logs=True)
    factory.cleanup()
    assert factory.workdir.is_dir()


# --------------------------------------------------------------------- the daemon
def test_the_daemons_config_manages_only_the_given_domains(tmp_path):
    daemon = DaemonProcess(tmp_path, f"{PREFIX}-abc-*", "--policy", "step", config="minimal: 20\n")
    config = build(read_file(str(tmp_path / "config.yaml")))
    assert not config.for_domain(f"{PREFIX}-abc-web").exclude and config.for_domain(f"{PREFIX}-abc-web").minimal == 20
    assert config.for_domain("production-db").exclude
    assert daemon.argv[daemon.argv.index("--lock-dir") + 1] == str(tmp_path / "lock")
    assert daemon.argv[-2:] == ["--policy", "step"]


def test_a_daemon_never_started_stops_without_error(tmp_path):
    assert DaemonProcess(tmp_path, NAME).stop() is None


# --------------------------------------------------------------------- what prepare.sh set up
def test_a_recorded_daemon_is_found_while_that_very_process_runs(tmp_path):
    me = os.getpid()
    daemons = tmp_path / "daemons"
    daemons.write_text(f"virtlogd 1 1\n{command_name(me)} {me} {start_time(me)}\n")
    assert recorded_daemon(command_name(me), daemons) == me


def test_a_reused_pid_or_another_name_is_not_the_recorded_daemon(tmp_path):
    me = os.getpid()
    daemons = tmp_path / "daemons"
    daemons.write_text(f"{command_name(me)} {me} 1\nlibvirtd {me} {start_time(me)}\n")
    assert recorded_daemon(command_name(me), daemons) is None  # same pid, other start time
    assert recorded_daemon("libvirtd", daemons) is None  # this process is not libvirtd
    assert recorded_daemon("libvirtd", tmp_path / "missing") is None


def test_a_restarted_daemon_replaces_its_record(tmp_path):
    me = os.getpid()
    daemons = tmp_path / "daemons"
    daemons.write_text("virtlogd 10 5\nlibvirtd 11 6\nlibvirtd 110 7\n")
    forget_daemon(11, daemons)
    record_daemon(command_name(me), me, daemons)
    assert daemons.read_text() == f"virtlogd 10 5\nlibvirtd 110 7\n{command_name(me)} {me} {start_time(me)}\n"


def test_the_asset_cache_can_be_moved(monkeypatch, tmp_path):
    monkeypatch.setenv("BALLOON_E2E_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_the_e2e_guests_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("BALLOON_E2E_SKIP", "1")
    assert check_prerequisites() == "BALLOON_E2E_SKIP is set"


SIGTERMED = """
import atexit, sys, time
sys.path.insert(0, {lib!r})
from balloon2395_testkit.guests import exit_on_sigterm
exit_on_sigterm()
atexit.register(lambda: open({marker!r}, "w").write("cleaned up"))
print("ready", flush=True)
time.sleep(60)
"""


def test_a_benchmark_ended_by_sigterm_still_runs_its_cleanup(tmp_path):
    """bench/real.py and bench/calibrate.py: their guests and daemon go with them (atexit, `with`)."""
    marker = tmp_path / "marker"
    code = SIGTERMED.format(lib=str(Path(__file__).resolve().parent.parent / "lib"), marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == "cleaned up"
