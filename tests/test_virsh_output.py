"""Parsers against virsh output captured from a real libvirt 9.0 / QEMU 7.2 host (tests/fixtures/virsh)."""

from __future__ import annotations

import pytest

from balloon2395.lifetime import parse_running
from balloon2395.virsh.commands import error_message
from balloon2395.virsh.domain_xml import parse_domain_xml
from balloon2395.virsh.output import (
    BalloonStats,
    VirshOutputError,
    parse_dominfo_max_kib,
    parse_dommemstat,
    parse_domstats,
)
from conftest import FIXTURES

VIRSH = FIXTURES / "virsh"


def out(name: str) -> str:
    return (VIRSH / f"{name}.stdout").read_bytes().decode("utf-8")


def err(name: str) -> str:
    return (VIRSH / f"{name}.stderr").read_bytes().decode("utf-8")


def test_domstats_two_guests_by_key_with_a_non_ascii_name():
    web, nostats = parse_domstats(out("domstats-balloon-list-running.two-guests"))
    assert web == BalloonStats(
        name="b2395e2e web é1", actual_kib=524288, maximum_kib=1048576, usable_kib=435968, available_kib=472336,
        unused_kib=441164, disk_caches_kib=3072, swap_in_kib=0, swap_out_kib=0, major_fault=0, minor_fault=1390,
        rss_kib=223868, last_update=1795737323)
    assert nostats.name == "b2395e2e-nostats" and nostats.usable_kib == 449636


def test_domstats_many_guests_and_empty_host():
    many = parse_domstats(out("domstats-balloon-list-running.many-guests"))
    assert len(many) >= 3 and len({s.name for s in many}) == len(many)
    assert all(s.actual_kib and s.maximum_kib for s in many)
    assert parse_domstats(out("domstats-balloon-list-running.empty-host")) == []
    assert parse_domstats(out("domstats-balloon-list-running.zero-running")) == []


def test_domstats_guest_without_driver_and_without_device():
    (nodriver,) = parse_domstats(out("domstats-balloon-domain.no-driver"))
    assert nodriver.usable_kib is None and nodriver.last_update == 0
    assert nodriver.actual_kib == nodriver.maximum_kib == 524288  # stuck at <memory>
    (nodevice,) = parse_domstats(out("domstats-balloon-domain.no-balloon-device"))
    assert nodevice.usable_kib is None and nodevice.last_update is None and nodevice.actual_kib == 262144


def test_domstats_name_with_a_quote():
    names = [s.name for s in parse_domstats(out("domstats-balloon-list-running.many-guests"))]
    quoted = [n for n in names if "'" in n]
    assert quoted == ["b2395e2e o'brien"]  # the raw name, up to the line's last quote
    assert "b2395e2e o'brien" in parse_running("\n" + out("list-uuid-name.many-guests"), with_ids=False).lifetimes


def test_test_driver_domstats_has_no_balloon_fields():
    (test,) = parse_domstats(out("test-default.domstats-balloon-list-running"))
    assert test == BalloonStats(name="test")


def test_dommemstat_with_and_without_stats():
    full = parse_dommemstat("web", out("dommemstat.stats-period-1"))
    assert (full.actual_kib, full.usable_kib, full.last_update, full.rss_kib) == (524288, 435968, 1795737323, 223868)
    frozen, later = (parse_dommemstat("q", out(n)) for n in ("dommemstat.no-stats-period",
                                                               "dommemstat.no-stats-period.2s-later"))
    assert frozen.usable_kib is not None and frozen.last_update == later.last_update  # present but frozen
    nodriver = parse_dommemstat("n", out("dommemstat.no-driver"))
    assert (nodriver.actual_kib, nodriver.usable_kib, nodriver.last_update, nodriver.rss_kib) == \
        (524288, None, 0, 233928)
    nodevice = parse_dommemstat("n", out("dommemstat.no-balloon-device"))
    assert nodevice.actual_kib is None and nodevice.rss_kib is not None


def test_dommemstat_after_setmem_in_mb_shows_the_originals_unit_defect():
    stats = parse_dommemstat("w", out("dommemstat.after-setmem-500mb"))
    assert stats.actual_kib == 488284  # 500 * 10^6 bytes, not 500 MiB


def test_uuid_name_list_and_dominfo():
    listed = parse_running("\n" + out("list-uuid-name.many-guests"), with_ids=False)
    assert listed.lifetimes["b2395e2e web é1"] == ("c3690175-ed70-453e-bd82-ef511336c438", None)
    assert listed.stats == [] and listed.conflicts == {}
    assert parse_dominfo_max_kib(out("dominfo")) == 1048576
    with pytest.raises(VirshOutputError):
        parse_dominfo_max_kib(out("nodememstats"))


@pytest.mark.parametrize("name,expected", [
    ("setmem-live.above-max", "error: invalid argument: cannot set memory higher than max memory"),
    ("setmem-live.missing", "error: failed to get domain 'b2395e2e-does-not-exist'"),
    ("frobnicate", "error: unknown command: 'frobnicate'"),
])
def test_error_messages(name, expected):
    assert (VIRSH / f"{name}.exit").read_text().strip() == "1"
    assert error_message(err(name), 1) == expected


def test_error_classes():
    from balloon2395.virsh.commands import VirshError
    gone = VirshError([], 1, error_message(err("setmem-live.missing"), 1))
    off = VirshError([], 1, error_message(err("dommemstat.shut-off"), 1))
    unknown = VirshError([], 1, error_message(err("frobnicate"), 1))
    down = VirshError([], 1, error_message(err("daemon-down.domstats-balloon-list-running"), 1))
    assert gone.domain_gone and off.domain_gone and not down.domain_gone
    assert unknown.unsupported and not down.unsupported


def test_domain_xml_facts():
    linux = parse_domain_xml(out("dumpxml.live"))
    assert linux.uuid == "c3690175-ed70-453e-bd82-ef511336c438" and linux.domain_id == "6"
    assert linux.windows is None and linux.balloon_model == "virtio" and linux.stats_period_s == 1
    windows = parse_domain_xml(out("dumpxml.hyperv-live"))
    assert windows.windows == "libosinfo os http://microsoft.com/win/10"
    off = parse_domain_xml(out("dumpxml-inactive.shut-off"))
    assert off.domain_id is None
    # a disk path with "microsoft" in it is not Windows (the original's grep said it was)
    fake = out("dumpxml.live").replace("/var/cache/balloon-2395-e2e/vmlinuz", "/srv/microsoft-mirror/vmlinuz")
    assert parse_domain_xml(fake).windows is None


@pytest.mark.parametrize("garbage", [
    "garbage\n", "Domain: 'a'\nbalu", "  balloon.current=1\n", "Domain: 'a'\n  balloon.current=12x\n",
])
def test_garbage_is_rejected_not_guessed(garbage):
    with pytest.raises(VirshOutputError):
        parse_domstats(garbage)


@pytest.mark.parametrize("twice", [
    "  balloon.current=1\n  balloon.current=2\n",  # one key twice
    "  balloon.current=1\n  balloon.actual=2\n",  # domstats' and dommemstat's names of one figure
    "  balloon.last-update=5\n  balloon.last_update=6\n",
])
def test_a_figure_given_twice_is_a_problem_of_that_domain_not_a_last_wins(twice):
    a, b = parse_domstats(f"Domain: 'a'\n{twice}\nDomain: 'b'\n  balloon.current=3\n\n")
    assert a.problem and "both given" in a.problem
    assert b == BalloonStats(name="b", actual_kib=3)  # the other domain keeps its figures


def test_dommemstat_giving_a_figure_twice_is_a_problem():
    assert parse_dommemstat("a", "actual 1\nactual 2\n").problem
    assert parse_dommemstat("a", "actual 1\nusable 2\n").problem is None
