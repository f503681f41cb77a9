"""The cycle in process: observe -> decide -> act, with the fake host behind the real Virsh class."""

from __future__ import annotations

import logging
import shlex

import pytest

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from conftest import MIB, T0, Clock, domain, still_host, uuid_of


def make(*domains, **config):
    virsh, clock = still_host(*domains), Clock()
    config.setdefault("policy", "step")  # these tests check the original's arithmetic
    config.setdefault("host_memory", "off")
    return Daemon(cfg.build(config), virsh, clock), virsh, clock, virsh.state


def test_one_setmem_then_none_until_stats_newer_than_the_change():
    daemon, virsh, clock, state = make(domain("web1", usable_mib=300))
    daemon.cycle()
    assert virsh.setmems() == [["setmem", "--domain", uuid_of("web1"), "--size", str(2148 * MIB), "--live"]]
    for _ in range(4):  # same stats, half a second apart: nothing
        clock.now += 0.5
        daemon.cycle()
    assert len(virsh.setmems()) == 1
    state["domains"][0]["last_update"] = int(clock.now) + 1  # guest reports after the change
    clock.now += 1.0
    daemon.cycle()
    assert len(virsh.setmems()) == 2 and virsh.setmems()[1][4] == str(2248 * MIB)


def test_setmem_without_effect_is_noticed_once_and_the_domain_left_alone(caplog):
    daemon, virsh, clock, state = make(domain("nodriver", usable_mib=300, stuck=True))
    daemon.cycle()
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        for _ in range(30):
            clock.now += 0.5
            state["domains"][0]["last_update"] = int(clock.now)
            daemon.cycle()
    assert len(virsh.setmems()) == 1
    notes = [r.message for r in caplog.records if "nodriver" in r.message]
    assert len(notes) == 1 and "had no effect" in notes[0]


def test_skips_are_explained_once(caplog):
    daemon, virsh, clock, state = make(domain("win", usable_mib=1500, os="http://microsoft.com/win/10"),
                                       domain("hyperv", usable_mib=1500, hyperv=True),
                                       domain("fw", usable_mib=1500),
                                       domains={"fw": {"exclude": True}})
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        for _ in range(5):
            daemon.cycle()
            clock.now += 0.5
    assert virsh.setmems() == []
    skips = [r.message for r in caplog.records if r.message.startswith("skip ")]
    assert sorted(skips) == [
        "skip fw: excluded by config",
        "skip hyperv: Windows guest (hyperv enlightenments in <features>)",
        "skip win: Windows guest (libosinfo os http://microsoft.com/win/10)",
    ]
    # excluded and Windows domains get no stats period either
    assert [a for a in virsh.argv_log if "--period" in a] == []


def test_manage_windows_when_configured():
    daemon, virsh, _, _ = make(domain("win", usable_mib=100, os="http://microsoft.com/win/10"), manage_windows=True)
    daemon.cycle()
    assert len(virsh.setmems()) == 1


def test_facts_read_once_per_domain_lifetime_and_stats_period_set_once():
    daemon, virsh, clock, state = make(domain("quiet", period=0), domain("web1", usable_mib=700))
    for _ in range(6):
        daemon.cycle()
        clock.now += 0.5
    commands = [a[0] for a in virsh.argv_log]
    assert commands.count("domstats") == 6
    assert commands.count("dumpxml") == 2
    period_calls = [a for a in virsh.argv_log if "--period" in a]
    assert period_calls == [["dommemstat", "--domain", uuid_of("quiet"), "--period", "1", "--live"]]
    assert virsh.setmems() == []
    # the domain leaves and comes back (a restart): it is seen anew
    quiet = state["domains"].pop(0)
    daemon.cycle()
    quiet["period"] = 0
    state["domains"].append(quiet)
    daemon.cycle()
    commands = [a[0] for a in virsh.argv_log]
    assert commands.count("dumpxml") == 3 and len([a for a in virsh.argv_log if "--period" in a]) == 2


def test_frozen_stats_of_a_guest_without_period_are_never_acted_on():
    # The guest's one report from boot looks fresh for a few seconds, then goes stale.
    frozen = domain("frozen", usable_mib=1500, period=0, boot_update=int(T0))
    daemon, virsh, clock, state = make(frozen)
    daemon.cycle()
    assert [a for a in virsh.argv_log if "--period" in a] == [
        ["dommemstat", "--domain", uuid_of("frozen"), "--period", "1", "--live"]]
    clock.now += 0.5
    daemon.cycle()
    assert virsh.setmems() == []  # period on now, but the report is still the one from boot
    state["domains"][0]["last_update"] = int(clock.now) + 1
    clock.now += 1
    daemon.cycle()
    assert len(virsh.setmems()) == 1


def test_shut_off_and_paused_domains_untouched():
    daemon, virsh, _, _ = make(domain("off", usable_mib=100, state="shut off"),
                               domain("paused", usable_mib=100, state="paused"))
    daemon.cycle()
    assert virsh.setmems() == [] and [a[0] for a in virsh.argv_log] == ["domstats", "list"] and virsh.calls == 1


def test_outage_is_logged_once_and_recovery_once(caplog):
    daemon, virsh, clock, state = make(domain("web1", usable_mib=700))
    state["faults"] = {"domstats": {"exit": 1, "stderr": "error: failed to connect to the hypervisor\n"}}
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        for _ in range(5):
            assert daemon.cycle() is None
            clock.now += 0.5
        del state["faults"]
        state["domains"][0]["last_update"] = int(clock.now)
        assert daemon.cycle() is not None
    messages = [r.message for r in caplog.records]
    assert sum("cannot read running domains" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1


def test_domain_vanishing_before_setmem_costs_nothing_else(caplog):
    daemon, virsh, clock, state = make(domain("gone", usable_mib=100), domain("web1", usable_mib=100))
    original = virsh.run

    def vanish(*args):
        if args[0] == "setmem" and uuid_of("gone") in args:
            state["domains"] = [d for d in state["domains"] if d["name"] != "gone"]
        return original(*args)

    virsh.run = vanish
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        decisions = daemon.cycle()
    assert len(decisions) == 2
    assert [a[2] for a in virsh.setmems()] == [uuid_of("gone"), uuid_of("web1")]
    assert any("gone before setmem" in r.message for r in caplog.records)


def test_dry_run_never_setmem_and_says_what_it_would_do(caplog):
    daemon, virsh, _, _ = make(domain("web1", usable_mib=370), dry_run=True)
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        daemon.cycle()
    assert virsh.setmems() == []
    assert "dry-run: grow web1 2048 -> 2148 MiB: usable 18% < 25%" in [r.message for r in caplog.records]


def test_setmem_error_is_logged_once_not_every_cycle(caplog):
    daemon, virsh, clock, state = make(domain("web1", usable_mib=100))
    state["faults"] = {"setmem": {"exit": 1, "stderr": "error: internal error: unable to execute QEMU command\n"}}
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        for _ in range(4):
            daemon.cycle()
            clock.now += 0.5
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "setmem failed" in errors[0].message


@pytest.mark.parametrize("name", ["web 1", "-dash", "café-é1", "quote'd"])
def test_awkward_names_are_data(name):
    daemon, virsh, _, _ = make(domain(name, usable_mib=100))
    daemon.cycle()
    assert virsh.setmems() == [["setmem", "--domain", uuid_of(name), "--size", str(2148 * MIB), "--live"]]


def test_fallback_to_dommemstat_when_domstats_is_missing():
    daemon, virsh, _, state = make(domain("web1", usable_mib=100), domain("web2", usable_mib=1000))
    state["faults"] = {"domstats": {"exit": 1, "stderr": "error: unknown command: 'domstats'\n"}}
    daemon.cycle()
    daemon.cycle()
    commands = [a[0] for a in virsh.argv_log]
    assert commands.count("domstats") == 1  # tried once, then never again
    assert commands.count("dominfo") == 2  # the maximum, once per domain
    assert [a[2] for a in virsh.setmems()] == [uuid_of("web1"), uuid_of("web2")]


def test_per_domain_settings_from_the_domains_own_metadata(caplog):
    daemon, virsh, clock, state = make(domain("own", usable_mib=500, settings={"minimal": 30, "maximal": 40}),
                                       domain("bad", usable_mib=100, settings={"minimal": 50, "maximal": 40}),
                                       domain("typo", usable_mib=100, settings={"minimall": 50}))
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        daemon.cycle()
        clock.now += 0.5
        daemon.cycle()
    # own: 24% is below its own band of 30-40% (the config's 25% would hold)
    assert [a[2] for a in virsh.setmems()] == [uuid_of("own")]
    skips = sorted(r.message for r in caplog.records if r.message.startswith("skip "))
    unusable = "its settings metadata is not usable: metadata"
    assert skips == [f"skip bad: {unusable} minimal: must be below maximal (50 >= 40)",
                     f"skip typo: {unusable} minimall: unknown key (did you mean 'minimal'?)"]


def notes_of(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("note ")]


def cycles(daemon, clock, count: int) -> None:
    for _ in range(count):
        daemon.cycle()
        clock.now += 0.5


def test_a_guest_without_autodeflate_is_told_once_with_the_command_to_turn_it_on(caplog):
    daemon, _, clock, _ = make(domain("web", usable_mib=1500), domain("safe", usable_mib=1500, autodeflate=True))
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        cycles(daemon, clock, 4)
    assert notes_of(caplog) == [
        "note web: no autodeflate: out of memory after a shrink, the guest kills a process instead of taking "
        "memory back from its balloon; turn it on (from the guest's next start) with: "
        "virt-xml --edit --memballoon autodeflate=on -- web"]


def test_the_autodeflate_note_is_said_again_when_the_domain_starts_again(caplog):
    daemon, _, clock, state = make(domain("web", usable_mib=1500))
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        cycles(daemon, clock, 2)
        state["domains"][0]["id"] += 1  # destroyed and started between two cycles: a new lifetime
        cycles(daemon, clock, 2)
    assert len(notes_of(caplog)) == 2


def test_the_autodeflate_note_is_not_said_again_after_a_reload(caplog):
    daemon, _, clock, _ = make(domain("web", usable_mib=1500))
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        cycles(daemon, clock, 2)
        daemon.reconfigure(cfg.build({"policy": "step", "host_memory": "off", "minimal": 20}))  # SIGHUP
        cycles(daemon, clock, 2)
    assert len(notes_of(caplog)) == 1


@pytest.mark.parametrize("dom,config", [
    (domain("fw", usable_mib=1500), {"domains": {"fw": {"exclude": True}}}),
    (domain("fw", usable_mib=1500, settings={"exclude": "true"}), {}),
    (domain("fw", usable_mib=1500, settings={"minimal": 50, "maximal": 40}), {}),
    (domain("fw", usable_mib=1500, os="http://microsoft.com/win/10"), {}),
    (domain("fw", usable_mib=1500, hyperv=True), {}),
    (domain("fw", usable_mib=1500, balloon="none"), {}),
], ids=["excluded", "excluded-by-metadata", "bad-metadata", "windows", "hyperv", "no-balloon"])
def test_no_autodeflate_note_for_a_guest_the_daemon_never_shrinks(caplog, dom, config):
    daemon, _, clock, _ = make(dom, **config)
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        cycles(daemon, clock, 2)
    assert notes_of(caplog) == []


@pytest.mark.parametrize("dom,config", [
    (domain("win", usable_mib=1500, os="http://microsoft.com/win/10"), {"manage_windows": True}),
    (domain("win", usable_mib=1500), {"dry_run": True}),
], ids=["windows-managed", "dry-run"])
def test_the_autodeflate_note_is_said_for_a_managed_windows_guest_and_in_a_dry_run(caplog, dom, config):
    daemon, _, clock, _ = make(dom, **config)
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        cycles(daemon, clock, 2)
    assert [note.split(":")[0] for note in notes_of(caplog)] == ["note win"]


@pytest.mark.parametrize("name", ["web", "web 1", "quote'd", 'dq"x', "$(touch pwned)", "`id`;x", "-dash", "--edit",
                                  "1", "café-é1", "with: virt-xml"])
def test_the_autodeflate_command_is_one_line_and_names_exactly_the_domain(caplog, name):
    daemon, _, clock, _ = make(domain(name, usable_mib=1500))
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        cycles(daemon, clock, 1)
    [note] = notes_of(caplog)
    assert "\n" not in note and note.startswith(f"note {name}: no autodeflate: ")
    command = shlex.split(note.rsplit(" with: ", 1)[1])
    assert command == ["virt-xml", "--edit", "--memballoon", "autodeflate=on", "--", name]


def test_the_autodeflate_command_names_the_connection_the_daemon_serves(caplog):
    daemon, _, clock, _ = make(domain("web", usable_mib=1500), connect="qemu+ssh://root@host 2/system")
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        cycles(daemon, clock, 1)
    command = shlex.split(notes_of(caplog)[0].rsplit(" with: ", 1)[1])
    assert command[:3] == ["virt-xml", "--connect", "qemu+ssh://root@host 2/system"]


ROOMY_HOST = {"total_kib": 64 * 1024 * MIB, "free_kib": 40 * 1024 * MIB}


def needed_host(tmp_path):
    """A guest found at 4 GiB on a host with room, and a journal: what a restart reads back."""
    from balloon2395.journal import ChangeJournal
    virsh, clock = still_host(domain("web", actual_mib=4096, usable_mib=3800, maximum_mib=8192)), Clock()
    virsh.state["host"] = ROOMY_HOST
    config = cfg.build({"policy": "target", "host_memory": "virsh"})
    journal = str(tmp_path / "x.changes.json")
    Daemon(config, virsh, clock, journal=ChangeJournal(journal)).cycle()
    return virsh, clock, lambda: Daemon(config, virsh, clock, journal=ChangeJournal(journal))


def shrunk_meanwhile(virsh, clock, **dom):
    """The guest at 1 GiB, as a host that needed the memory left it, and a fresh report of it."""
    state = virsh.state["domains"][0]
    state.update(actual_kib=1024 * MIB, stats={"usable": 700 * MIB, "available": 1024 * MIB}, **dom)
    clock.now += 10
    state["last_update"] = int(clock.now)


def test_a_restarted_daemon_gives_a_guest_back_the_size_it_found_it_at(tmp_path):
    # idle_shrink needed: taken for what doing nothing leaves it, the shrunk size would be kept for good
    virsh, clock, restarted = needed_host(tmp_path)
    shrunk_meanwhile(virsh, clock)
    [decision] = restarted().cycle()
    assert (decision.action, decision.code, decision.target_kib) == ("grow", "restore", 4096 * MIB)
    assert "found at" in decision.reason


def test_a_domain_started_again_while_the_daemon_was_down_is_found_anew(tmp_path):
    virsh, clock, restarted = needed_host(tmp_path)
    shrunk_meanwhile(virsh, clock, id=virsh.state["domains"][0]["id"] + 1)  # another run: it booted at 1 GiB
    [decision] = restarted().cycle()
    assert decision.code != "restore" and decision.action != "grow"


def test_a_guest_missing_from_one_read_comes_back_to_its_found_size(tmp_path):
    virsh, clock, restarted = needed_host(tmp_path)
    daemon = restarted()
    guest = virsh.state["domains"].pop()
    clock.now += 1
    daemon.cycle()  # a read without it: its history is forgotten
    virsh.state["domains"].append(guest)
    shrunk_meanwhile(virsh, clock)
    [decision] = daemon.cycle()
    assert (decision.code, decision.target_kib) == ("restore", 4096 * MIB)
