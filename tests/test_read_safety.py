"""What the daemon acts on (issue 13, points 1, 2, 3, 7, 8, 9): the domain it read, addressed by
uuid; a read that contradicts itself or sizes that cannot be are never acted on; excluded domains,
dry runs and the views change nothing; what became of each change is reported as it happened."""

from __future__ import annotations

import logging
import re
import shutil

import pytest

from balloon2395 import config as cfg
from balloon2395.daemon import APPLIED, DRY_RUN, FAILED, FENCED, Daemon
from balloon2395.lifetime import READ_LINE, parse_running
from balloon2395.sim.fake_virsh import FakeHost
from balloon2395.views.statefile import snapshot
from balloon2395.virsh.session import VirshSession
from balloon2395_testkit.faults import CheckedVirsh
from conftest import MIB, T0, Clock, domain, still_host, uuid_of

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def make(*domains, **config):
    """The daemon over a still fake host, every setmem checked by CheckedVirsh."""
    virsh, clock = still_host(*domains), Clock()
    config.setdefault("host_memory", "off")
    built = cfg.build(config)
    checked = CheckedVirsh(virsh, built, clock)
    return Daemon(built, checked, clock), virsh, checked, virsh.state


def named(state, name):
    return next(d for d in state["domains"] if d["name"] == name)


def doctored_read(virsh, change):
    """The cycle's read (READ_LINE) passed through `change`, everything else as the fake host answers."""
    answer = virsh.answer

    def doctored(command, args):
        stdout, stderr, code = answer(command, args)
        return (change(stdout) if command == READ_LINE else stdout), stderr, code

    virsh.answer = doctored


# ------------------------------------------------------------------ 1: by uuid, never by name

def test_virsh_takes_a_number_for_an_id_before_a_name():
    # the fact behind point 1, as virshLookupDomainInternal has it
    host = FakeHost({"domains": [domain("big", id=1), domain("1", id=7)]})
    assert host.domain("1")["name"] == "big"
    assert host.domain(uuid_of("1"))["name"] == "1"
    assert host.domain("7")["name"] == "1"


@pytest.mark.parametrize("policy", ["target", "step"])
def test_a_domain_named_like_another_domains_id_gets_its_own_shrink(policy):
    # big (id 1) is starved, the domain named "1" (id 7) idle: the shrink is for "1" only (it has swapped,
    # so target need not first see it go without bursts; idle_shrink always: shrunk on a host not watched)
    idle = domain("1", id=7, usable_mib=1800)
    idle["stats"].update(swap_in=0, swap_out=4 * MIB)
    daemon, virsh, checked, state = make(domain("big", id=1, usable_mib=300), idle, policy=policy,
                                         idle_shrink="always")
    daemon.cycle()
    assert named(state, "1")["actual_kib"] < 2048 * MIB
    assert named(state, "big")["actual_kib"] > 2048 * MIB
    assert checked.violations == []


def test_every_call_after_the_read_names_the_domain_by_uuid():
    daemon, virsh, checked, state = make(domain("1", id=7, usable_mib=300), domain("quiet", period=0),
                                         domain("-x", usable_mib=1800))
    daemon.cycle()
    after_read = [argv for argv in virsh.argv_log if "--domain" in argv]
    assert {argv[0] for argv in after_read} == {"dumpxml", "dommemstat", "setmem"}
    assert all(UUID.match(argv[argv.index("--domain") + 1]) for argv in after_read)
    assert checked.violations == []


def test_logs_and_metrics_keep_the_names(caplog):
    daemon, virsh, checked, state = make(domain("1", id=7, usable_mib=300), policy="step")
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        daemon.cycle()
    assert "grow 1 2048 -> 2148 MiB: usable 14% < 25%" in [r.getMessage() for r in caplog.records]
    assert [d["domain"] for d in snapshot("qemu:///system", daemon.last)["domains"]] == ["1"]


def test_a_domain_the_read_lists_without_a_uuid_is_not_called():
    daemon, virsh, checked, state = make(domain("late", usable_mib=300), domain("web1", usable_mib=300))
    doctored_read(virsh, lambda out: "\n".join(line for line in out.split("\n") if not line.endswith(" late")))
    decisions = {d.name: d for d in daemon.cycle()}
    assert decisions["late"].code == "no-uuid"
    assert [argv[2] for argv in virsh.setmems()] == [uuid_of("web1")]
    assert not any(uuid_of("late") in argv or "late" in argv for argv in virsh.argv_log[1:])


# ------------------------------------------------------------------ 2: one domain, one block, one figure each

def _twice_in_domstats(out):
    block = re.search(r"Domain: 'web1'\n(?:  .*\n)*", out).group(0)
    return out.replace(block, block + "\n" + block.replace("balloon.current=2097152", "balloon.current=1048576"), 1)


def _uuid_twice(out):
    return out.replace(uuid_of("db"), uuid_of("web1"))


def _name_twice(out):
    line = re.search(r"\n([0-9a-f-]{36} \d+ web1)\n", out).group(1)
    return out.replace(line, line + "\n" + "0b0e6f2c-1111-4222-8333-944445555666 99 web1")


def _actual_beside_current(out):
    return out.replace("  balloon.current=2097152\n  balloon.maximum=4194304\n",
                       "  balloon.current=2097152\n  balloon.actual=1048576\n  balloon.maximum=4194304\n", 1)


def _update_twice(out):
    return re.sub(r"(  balloon\.last-update=(\d+)\n)", r"\1  balloon.last_update=\2\n", out, count=1)


@pytest.mark.parametrize("doctor,refused", [
    (_twice_in_domstats, {"web1"}),
    (_uuid_twice, {"web1", "db"}),
    (_name_twice, {"web1"}),
    (_actual_beside_current, {"web1"}),
    (_update_twice, {"web1"}),
])
@pytest.mark.parametrize("policy", ["target", "step"])
def test_a_domain_the_read_gives_twice_is_refused_for_the_cycle(doctor, refused, policy):
    daemon, virsh, checked, state = make(domain("web1", usable_mib=300), domain("db", usable_mib=1800),
                                         domain("other", usable_mib=300), policy=policy)
    doctored_read(virsh, doctor)
    decisions = daemon.cycle()
    assert [d.name for d in decisions].count("web1") == 1  # one decision, never a grow and a shrink
    codes = {d.name: d.code for d in decisions}
    assert {name for name, code in codes.items() if code == "inconsistent-read"} == refused
    changed = {argv[2] for argv in virsh.setmems()}
    assert not changed & {uuid_of(name) for name in refused}
    assert uuid_of("other") in changed  # the rest of the read is used
    assert checked.violations == []


# ------------------------------------------------------------------ 3: sizes that cannot be

@pytest.mark.parametrize("figures,code", [
    ({"actual_kib": 5120 * MIB}, "inconsistent"),  # above its maximum of 4096 MiB
    ({"maximum_kib": 0}, "no-maximum"),
    ({"stats": {"usable": 2100 * MIB, "available": 2048 * MIB}}, "inconsistent"),  # usable above current
])
@pytest.mark.parametrize("usable_mib", [300, 1800])
@pytest.mark.parametrize("policy", ["target", "step"])
def test_inconsistent_sizes_are_never_acted_on(figures, code, usable_mib, policy):
    daemon, virsh, checked, state = make(domain("web1", usable_mib=usable_mib), policy=policy)
    named(state, "web1").update(figures)
    for _ in range(3):
        (decision,) = daemon.cycle()
        assert decision.code == code and not decision.changes
    assert virsh.setmems() == [] and checked.violations == []


def test_a_guest_above_its_configured_maximum_is_left_to_the_operator():
    daemon, virsh, checked, state = make(domain("web1", usable_mib=1800), domains={"web1": {"maximum": "1GiB"}})
    (decision,) = daemon.cycle()
    assert decision.code == "above-cap" and virsh.setmems() == []


def test_a_missing_maximum_is_never_guessed():
    daemon, virsh, checked, state = make(domain("web1", usable_mib=300))
    doctored_read(virsh, lambda out: re.sub(r"  balloon\.maximum=\d+\n", "", out))
    (decision,) = daemon.cycle()
    assert decision.code == "no-maximum" and virsh.setmems() == []


# ------------------------------------------------------------------ 7: excluded and dry runs change nothing

def _changing_calls(virsh):
    return [argv for argv in virsh.argv_log if argv[0] == "setmem" or "--period" in argv]


@pytest.mark.parametrize("how", [
    {"domains": {"quiet": {"exclude": True}}},  # by config
    {},  # by its own metadata (below)
])
def test_an_excluded_domain_gets_no_changing_call(how):
    quiet = domain("quiet", usable_mib=300, period=0, settings={"exclude": "true"} if not how else {})
    daemon, virsh, checked, state = make(quiet, **how)
    for _ in range(3):
        daemon.cycle()
    assert _changing_calls(virsh) == []
    assert daemon.last.decisions[0].code == "excluded"


def test_dry_run_never_switches_a_stats_period_on(caplog):
    daemon, virsh, checked, state = make(domain("quiet", usable_mib=300, period=0), domain("web1", usable_mib=300),
                                         dry_run=True)
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        for _ in range(3):
            daemon.cycle()
    assert _changing_calls(virsh) == []
    assert any(m.startswith("dry-run: grow web1") for m in (r.getMessage() for r in caplog.records))


def test_a_reload_into_dry_run_stops_switching_periods_on():
    daemon, virsh, checked, state = make(domain("quiet", usable_mib=300, period=0))
    daemon.reconfigure(cfg.build({"host_memory": "off", "dry_run": True}))
    daemon.cycle()
    assert _changing_calls(virsh) == []


@pytest.mark.parametrize("view", [("status",), ("status", "--json"), ("explain", "quiet"),
                                  ("--once", "--dry-run")])
def test_views_and_dry_runs_say_what_would_be_done_and_switch_nothing_on(fake_host, view):
    host = fake_host(domain("quiet", usable_mib=300, period=0), domain("web1", usable_mib=300))
    result = host.cli(*view)
    assert result.returncode == 0, result.stderr
    assert not any("--period" in call or "setmem" in call for call in host.calls())
    assert "a dry run or a view never does" in result.stdout + result.stderr


# ------------------------------------------------------------------ 8: facts, not intentions

def test_each_change_reports_what_became_of_it():
    daemon, virsh, checked, state = make(domain("ok", usable_mib=300), domain("bad", usable_mib=300), policy="step")
    answer = virsh.answer
    virsh.answer = lambda c, a: ("\n", "error: internal error: oops\n", 1) \
        if c == "setmem" and uuid_of("bad") in a else answer(c, a)
    daemon.cycle()
    assert daemon.last.outcomes == {"ok": APPLIED, "bad": FAILED}
    rows = {row["domain"]: row for row in snapshot("qemu:///system", daemon.last)["domains"]}
    assert (rows["ok"]["outcome"], rows["bad"]["outcome"]) == (APPLIED, FAILED)


def test_a_fenced_change_is_reported_as_fenced_not_made():
    daemon, virsh, checked, state = make(domain("web1", usable_mib=300), policy="step")
    daemon.changed_at[uuid_of("web1")] = T0  # changed by an instance before this one, on these figures
    daemon.cycle()
    assert daemon.last.outcomes == {"web1": FENCED} and virsh.setmems() == []


def test_a_dry_run_change_is_reported_as_dry_run():
    daemon, virsh, checked, state = make(domain("web1", usable_mib=300), policy="step", dry_run=True)
    daemon.cycle()
    assert daemon.last.outcomes == {"web1": DRY_RUN}


# ------------------------------------------------------------------ 9: freshness against the read's end

def test_a_slow_read_does_not_make_fresh_figures_look_future_dated():
    daemon, virsh, checked, state = make(domain("web1", usable_mib=300), policy="step")
    answer, clock = virsh.answer, daemon.clock

    def slow(command, args):
        if command == READ_LINE:
            clock.now += 10  # the read took 10 s; the guest reported just before it ended
            named(state, "web1")["last_update"] = int(clock.now)
        return answer(command, args)

    virsh.answer = slow
    (decision,) = daemon.cycle()
    assert decision.action == "grow" and len(virsh.setmems()) == 1
    assert checked.violations == []


def test_a_failed_setmem_is_counted_as_a_failure_not_an_adjustment(fake_host, tmp_path):
    pytest.importorskip("prometheus_client", reason="prometheus-client is optional")
    from prometheus_client.parser import text_string_to_metric_families

    host = fake_host(domain("web1", usable_mib=370))
    state = host.read()
    state["faults"] = {"setmem": {"exit": 1, "stderr": "error: internal error: oops\n"}}
    host.write(state)
    prom = tmp_path / "b.prom"
    assert host.cli("--once", "--metrics-textfile", str(prom)).returncode == 0
    samples = {(s.name, s.labels.get("direction"), s.labels.get("outcome")): s.value
               for family in text_string_to_metric_families(prom.read_text()) for s in family.samples}
    assert samples[("balloon2395_adjustments_total", "grow", None)] == 0
    assert samples[("balloon2395_changes_total", "grow", "failed")] == 1
    assert samples[("balloon2395_changes_total", "grow", "applied")] == 0


@pytest.mark.skipif(shutil.which("virsh") is None, reason="needs virsh (libvirt-clients; .ci/run installs it)")
def test_real_virsh_takes_a_number_for_an_id_and_a_uuid_reaches_the_named_domain(tmp_path):
    # test:///default keeps its state for one virsh process: a session is one process
    xml = tmp_path / "one.xml"
    xml.write_text("<domain type='test'><name>1</name><memory unit='KiB'>262144</memory>"
                   "<os><type>hvm</type></os></domain>\n")
    session = VirshSession(uri="test:///default", timeout=30)
    try:
        session.run("define", "--file", str(xml))
        session.run("start", "--domain", "1")
        listed = parse_running("\n" + session.run("list", "--uuid", "--id", "--name", "--state-running")).lifetimes
        assert listed["test"][1] == 1 and listed["1"][1] != 1  # the domain named "1" is not id 1
        session.setmem(listed["1"][0], 131072)  # by uuid: the domain named "1"
        assert "Used memory:    131072 KiB" in session.run("dominfo", "--domain", listed["1"][0])
        assert "Used memory:    131072 KiB" not in session.run("dominfo", "--domain", listed["test"][0])
        assert "Name:           test" in session.run("dominfo", "--domain", "1")  # by "name": id 1 instead
    finally:
        session.close()
