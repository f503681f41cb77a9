"""A domain's lifetime: its (uuid, id), read in the cycle's one virsh call, tells a domain restarted
between two cycles from the one the daemon knew."""

from __future__ import annotations

import logging

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.lifetime import parse_running
from conftest import FIXTURES, T0, domain, still_host, uuid_of

NO_ID = "error: command 'list' doesn't support option --id\n"


def test_the_read_of_a_cycle_gives_figures_and_lifetimes():
    read = parse_running((FIXTURES / "virsh" / "domstats-balloon-list-running-and-ids.stdout").read_text())
    assert [s.name for s in read.stats] == ["b2395e2e o'brien", "b2395e2e web é1"]
    assert read.conflicts == {}
    assert read.lifetimes == {"b2395e2e web é1": ("311a3ff7-dbe9-41de-aa13-e0758dcf498b", 37),
                         "b2395e2e o'brien": ("df44e3f0-808f-40fb-9ad3-fc905322d160", 38)}
    # the list part of the read, after an empty domstats ("\n"), around a restart
    before, after = ("\n" + (FIXTURES / "virsh" / f"list-uuid-id-name-state-running.{when}-restart.stdout").read_text()
                     for when in ("before", "after"))
    assert parse_running(before).lifetimes["b2395e2e o'brien"] != parse_running(after).lifetimes["b2395e2e o'brien"]


def make(*domains):
    virsh = still_host(*domains)
    return Daemon(cfg.build({"policy": "step"}), virsh, lambda: T0), virsh, virsh.state


def commands(virsh):
    return [argv[0] for argv in virsh.argv_log]


def test_a_domain_restarted_between_two_cycles_starts_afresh():
    daemon, virsh, state = make(domain("short", usable_mib=300), domain("other"))
    daemon.cycle()
    daemon.cycle()  # the grow waits for stats newer than it
    assert len(virsh.setmems()) == 1 and commands(virsh).count("dumpxml") == 2
    old = dict(daemon.states)
    state["domains"][0]["id"] += 1  # destroyed and started again: same name, a new id
    daemon.cycle()
    assert daemon.collector.restarted == {"short"}
    assert commands(virsh).count("dumpxml") == 3  # its facts read again, the other's not
    assert daemon.states["short"] is not old["short"] and daemon.states["other"] is old["other"]
    daemon.cycle()
    assert daemon.collector.restarted == set() and commands(virsh).count("dumpxml") == 3


def test_a_cycle_without_ids_keeps_what_is_known():
    daemon, virsh, state = make(domain("web1"))
    daemon.cycle()
    state["faults"] = {"list": {"stdout": "\n", "times": 1}}  # started in between the two commands: not listed
    daemon.cycle()
    daemon.cycle()
    assert commands(virsh).count("dumpxml") == 1 and daemon.collector.restarted == set()


def test_a_virsh_whose_list_has_no_ids_still_reads_the_figures_and_uuids_once_a_cycle(caplog):
    daemon, virsh, state = make(domain("web1", usable_mib=300))
    answer = virsh.answer

    def without_ids(command, args):
        if "--id" in command:
            return "", NO_ID, 1
        return answer(command, args)

    virsh.answer = without_ids
    with caplog.at_level(logging.WARNING, logger="balloon-2395"):
        for _ in range(3):
            assert daemon.cycle() is not None
    assert sum("cannot list domain ids" in r.message for r in caplog.records) == 1
    assert virsh.setmems() == [["setmem", "--domain", uuid_of("web1"), "--size", str(2148 * 1024), "--live"]]
    assert virsh.calls == 2 + 1 + 1 + 1 + 1  # tried with ids once
    assert virsh.argv_log[-2:] == [["domstats", "--balloon", "--list-running"],
                                   ["list", "--uuid", "--name", "--state-running"]]
