"""The fake virsh prints what real virsh 9.0 prints: byte for byte against the captured fixtures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from balloon2395.lifetime import READ_LINE, parse_running
from balloon2395.sim.fake_virsh import PROMPT, FakeHost
from balloon2395.virsh.output import BalloonStats, parse_dommemstat
from conftest import FIXTURES, LIB

VIRSH = FIXTURES / "virsh"


def fixture(name: str, ext: str = "stdout") -> str:
    path = VIRSH / f"{name}.{ext}"
    return path.read_bytes().decode("utf-8") if path.exists() else ""


def dom_from(capture: str, name: str, maximum_kib: int, **extra) -> dict:
    """A fake domain holding exactly the figures a real dommemstat capture shows."""
    return dom_of(parse_dommemstat(name, fixture(capture)), maximum_kib, **extra)


def dom_of(s: BalloonStats, maximum_kib: int, **extra) -> dict:
    """A fake domain holding exactly the figures virsh showed for it."""
    stats = {k: getattr(s, f) for k, f in (("swap_in", "swap_in_kib"), ("swap_out", "swap_out_kib"),
                                           ("major_fault", "major_fault"), ("minor_fault", "minor_fault"),
                                           ("unused", "unused_kib"), ("available", "available_kib"),
                                           ("usable", "usable_kib"), ("disk_caches", "disk_caches_kib"))
             if getattr(s, f) is not None}
    stats.update(hugetlb_pgalloc=0, hugetlb_pgfail=0)
    dom = {"name": s.name, "uuid": "u-" + s.name, "id": 6, "actual_kib": s.actual_kib or maximum_kib,
           "maximum_kib": maximum_kib, "period": 1, "stats": stats, "last_update": s.last_update, "rss_kib": s.rss_kib}
    dom.update(extra)
    return dom


WEB = dom_from("dommemstat.stats-period-1", "b2395e2e web é1", 1048576)
NOSTATS = dom_from("dommemstat.no-stats-period", "b2395e2e-nostats", 524288, period=0, boot_update=1795737322)
NODRIVER = {"name": "b2395e2e-nodriver", "uuid": "u", "id": 7, "actual_kib": 262144, "maximum_kib": 524288,
            "driver": False, "rss_kib": 233928}
NODEVICE = {"name": "b2395e2e-noballoon", "uuid": "u", "id": 8, "actual_kib": 262144, "maximum_kib": 262144,
            "balloon": "none", "rss_kib": 231796}
OFF = dict(WEB, name="b2395e2e-off", state="shut off")


def call(domains, *argv):
    return FakeHost({"domains": domains}).call(argv[0], list(argv[1:]))[:3]


def expect(capture: str):
    return fixture(capture), fixture(capture, "stderr"), int(fixture(capture, "exit"))


@pytest.mark.parametrize("argv,domains,capture", [
    (["domstats", "--balloon", "--list-running"], [WEB, NOSTATS], "domstats-balloon-list-running.two-guests"),
    (["domstats", "--balloon", "--list-running"], [], "domstats-balloon-list-running.empty-host"),
    (["domstats", "--balloon", "--list-running"], [OFF], "domstats-balloon-list-running.zero-running"),
    (["domstats", "--balloon", "--domain", "b2395e2e-nodriver"], [NODRIVER], "domstats-balloon-domain.no-driver"),
    (["domstats", "--balloon", "--domain", "b2395e2e-noballoon"], [NODEVICE],
     "domstats-balloon-domain.no-balloon-device"),
    (["dommemstat", "--domain", "b2395e2e web é1"], [WEB], "dommemstat.stats-period-1"),
    (["dommemstat", "b2395e2e-nostats"], [NOSTATS], "dommemstat.no-stats-period"),
    (["dommemstat", "b2395e2e-nodriver"], [NODRIVER], "dommemstat.no-driver"),
    (["dommemstat", "b2395e2e-noballoon"], [NODEVICE], "dommemstat.no-balloon-device"),
    (["dommemstat", "b2395e2e-off"], [OFF], "dommemstat.shut-off"),
    (["list", "--name", "--state-running"], [WEB, NOSTATS], "list-name-state-running.two-guests"),
    (["list", "--name", "--state-running"], [], "list-name-state-running.empty-host"),
    (["setmem", "--domain", "b2395e2e web é1", "--size", "2000000", "--live"], [WEB], "setmem-live.above-max"),
    (["setmem", "--domain", "b2395e2e-does-not-exist", "--size", "400000", "--live"], [WEB], "setmem-live.missing"),
    (["setmem", "--domain", "b2395e2e-noballoon", "--size", "200000", "--live"], [NODEVICE],
     "setmem-live.no-balloon-device"),
    (["frobnicate"], [], "frobnicate"),
])
def test_same_bytes_as_real_virsh(argv, domains, capture):
    assert call([dict(d) for d in domains], *argv) == expect(capture)


def test_setmem_and_period_succeed_like_real_virsh():
    assert call([dict(WEB)], "setmem", "--domain", WEB["name"], "--size", "400000", "--live") == \
        expect("setmem-live.ok")
    assert call([dict(WEB)], "dommemstat", "--domain", WEB["name"], "--period", "1", "--live") == \
        expect("dommemstat-period-1-live")
    assert call([dict(OFF)], "dommemstat", "--domain", OFF["name"], "--period", "1", "--live")[1:] == \
        expect("dommemstat-period-1-live.shut-off")[1:]


def test_metadata_dominfo_nodememstats():
    web = dict(WEB, uuid="c3690175-ed70-453e-bd82-ef511336c438", cpu_time="3.3s",
               messages="tainted: running with undesirable elevated privileges")
    assert call([web], "dominfo", web["name"]) == expect("dominfo")
    win = dict(WEB, os="http://microsoft.com/win/10")
    assert call([win], "metadata", win["name"], "--uri", "http://libosinfo.org/xmlns/libvirt/domain/1.0") == \
        expect("metadata-libosinfo.present")
    assert call([dict(WEB)], "metadata", WEB["name"], "--uri", "http://libosinfo.org/xmlns/libvirt/domain/1.0") == \
        expect("metadata-libosinfo.absent")
    host = {"total_kib": 24684084, "free_kib": 23714532, "buffers_kib": 12296, "cached_kib": 711020}
    assert FakeHost({"domains": [], "host": host}).call("nodememstats", [])[:3] == expect("nodememstats")


def test_the_executable_records_calls_and_applies_setmem(tmp_path):
    import json
    state, log = tmp_path / "state.json", tmp_path / "calls.log"
    state.write_text(json.dumps({"domains": [dict(WEB)]}))
    env = {"FAKE_VIRSH_STATE": str(state), "FAKE_VIRSH_LOG": str(log), "PYTHONPATH": str(LIB), "LC_ALL": "C"}
    argv = [sys.executable, "-m", "balloon2395.sim.fake_virsh", "-c", "qemu:///system",
            "setmem", "--domain", WEB["name"], "--size", "400000", "--live"]
    result = subprocess.run(argv, env=env, capture_output=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"\n", b"")
    assert json.loads(state.read_text())["domains"][0]["actual_kib"] == 400000
    assert json.loads(log.read_text()) == argv[3:]


def balloon_element(xml: str) -> str:
    return next(line for line in xml.splitlines() if "<memballoon" in line)


def test_dumpxml_writes_the_balloons_features_as_real_virsh():
    dom = dict(WEB, autodeflate=True, free_page_reporting=True)
    assert balloon_element(call([dom], "dumpxml", WEB["name"])[0]) == \
        balloon_element(fixture("dumpxml-autodeflate-fpr", "xml"))


@pytest.mark.parametrize("features,element", [
    ({}, "<memballoon model='virtio'>"),
    ({"autodeflate": False, "free_page_reporting": False}, "<memballoon model='virtio'>"),
    ({"autodeflate": True}, "<memballoon model='virtio' autodeflate='on'>"),
    ({"free_page_reporting": True}, "<memballoon model='virtio' freePageReporting='on'>"),
])
def test_dumpxml_writes_only_the_balloon_features_that_are_on(features, element):
    assert balloon_element(call([dict(WEB, **features)], "dumpxml", WEB["name"])[0]).strip() == element


MANY = [dict(WEB, id=6), dict(NOSTATS, id=7), dict(NODRIVER, id=8), dict(WEB, name="b2395e2e o'brien", id=9),
        dict(WEB, name="b2395e2e-win10", id=10), dict(OFF, name="b2395e2e-off")]


@pytest.mark.parametrize("argv,domains,capture", [
    (["list", "--all"], MANY, "list-all.many-guests"),
    (["list", "--state-running"], MANY, "list-state-running-table.many-guests"),
    (["list", "--all"], [], "list-all.empty-host"),
    (["echo", "@@END@@"], [], "echo"),
])
def test_tables_and_echo_as_real_virsh(argv, domains, capture):
    assert call([dict(d) for d in domains], *argv) == expect(capture)


def run_fake(tmp_path, domains, argv, stdin: bytes = b"", **env):
    import json
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"domains": domains}))
    env.update(FAKE_VIRSH_STATE=str(state), PYTHONPATH=str(LIB), LC_ALL="C")
    result = subprocess.run([sys.executable, "-m", "balloon2395.sim.fake_virsh", *argv], input=stdin, env=env,
                            capture_output=True)
    return result.stdout.decode("utf-8"), result.stderr.decode("utf-8"), result.returncode


def transcript(capture: str) -> dict:
    """Command line -> what virsh printed after it, from an interactive capture."""
    return dict(piece.split("\n", 1) for piece in fixture(capture).split(PROMPT)[1:] if "\n" in piece)


def test_a_cycles_read_as_real_virsh(tmp_path):
    read = parse_running(fixture("domstats-balloon-list-running-and-ids"))
    domains = [dom_of(s, s.maximum_kib, uuid=read.lifetimes[s.name][0], id=read.lifetimes[s.name][1])
               for s in read.stats]
    assert run_fake(tmp_path, domains, ["-c", "qemu:///system", READ_LINE]) == \
        expect("domstats-balloon-list-running-and-ids")


@pytest.mark.parametrize("capture,quiet,doms", [
    ("interactive-quiet.error-inside", True, [("b2395e2e web é1", "dommemstat --domain 'b2395e2e web é1'", 1048576)]),
    ("interactive.error-inside", False, [("b2395e2e web é1", "dommemstat --domain 'b2395e2e web é1'", 1048576)]),
    ("interactive-quiet.quoting", True, [("b2395e2e web é1", 'dommemstat "b2395e2e web é1"', 1048576),
                                         ("b2395e2e o'brien", 'dommemstat "b2395e2e o\'brien"', 524288)]),
])
def test_interactive_sessions_as_real_virsh(tmp_path, capture, quiet, doms):
    said = transcript(capture)
    domains = [dom_of(parse_dommemstat(name, said[line]), maximum) for name, line, maximum in doms]
    argv = ["-q"] * quiet + ["-c", "qemu:///system"]
    assert run_fake(tmp_path, domains, argv, (VIRSH / f"{capture}.stdin").read_bytes()) == expect(capture)


@pytest.mark.parametrize("capture", ["interactive.session", "interactive.long-line"])
def test_the_daemons_session_as_real_virsh(tmp_path, capture):
    domains = []
    if capture == "interactive.session":
        read = parse_running(fixture("domstats-balloon-list-running-and-ids"))
        domains = [dom_of(s, s.maximum_kib, uuid=read.lifetimes[s.name][0], id=read.lifetimes[s.name][1])
                   for s in read.stats]
    stdin = (VIRSH / f"{capture}.stdin").read_bytes()
    assert run_fake(tmp_path, domains, ["-c", "qemu:///system"], stdin, TERM="dumb") == expect(capture)
