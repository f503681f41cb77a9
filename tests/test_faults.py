"""Faults around the daemon (issue 8, point 1): each one survived, no safety invariant broken
(CheckedVirsh watches every setmem), and the log says what happened."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from balloon2395 import config as cfg
from balloon2395.daemon import RETRY_MAX_S, Daemon
from balloon2395.lifetime import READ_LINE
from balloon2395.virsh.commands import VirshError, VirshTimeout
from balloon2395_testkit.faults import DAEMON_DOWN, CheckedVirsh, FaultyVirsh
from conftest import MIB, T0, Clock, StateVirsh, domain, still_host, uuid_of


class Host:
    """The real Daemon over a fake host, every setmem checked; `hang` makes commands time out."""

    def __init__(self, *domains, **config):
        self.fake = still_host(*domains)
        self.state = self.fake.state
        self.hang = set()
        answer = self.fake.answer

        def hanging(command, args):
            if command.split()[0] in self.hang:
                raise VirshTimeout([command] + args, None, f"virsh {command.split()[0]} timed out after 10s")
            return answer(command, args)

        self.fake.answer = hanging
        self.clock = Clock()
        config.setdefault("policy", "step")
        config.setdefault("host_memory", "off")
        self.config = cfg.build(config)
        self.checked = CheckedVirsh(self.fake, self.config, self.clock)
        self.daemon = Daemon(self.config, self.checked, self.clock)

    def dom(self, name):
        return next(d for d in self.state["domains"] if d["name"] == name)

    def cycles(self, n=1, report=False):
        """n cycles half a second apart; `report`: every guest reports just before each."""
        out = None
        for _ in range(n):
            if report:
                for dom in self.state["domains"]:
                    dom["last_update"] = int(self.clock.now)
            out = self.daemon.cycle()
            self.clock.now += 0.5
        return out

    def setmems(self, name=None):
        return [a for a in self.fake.setmems() if name is None or a[2] == uuid_of(name)]

    def assert_safe(self):
        assert self.checked.violations == []


@pytest.fixture
def logged(caplog):
    caplog.set_level(logging.INFO, logger="balloon-2395")
    return lambda: [r.getMessage() for r in caplog.records]


def test_read_hangs_no_setmem_cycle_goes_on_and_resumes(logged):
    host = Host(domain("web1", usable_mib=300))
    host.hang = {"domstats"}
    assert host.cycles(3) is None
    assert host.setmems() == []
    host.hang = set()
    assert host.cycles(report=True) is not None
    assert len(host.setmems("web1")) == 1
    host.assert_safe()
    assert sum("cannot read running domains" in m and "timed out" in m for m in logged()) == 1


def test_dumpxml_hangs_for_one_domain_others_go_on(logged):
    host = Host(domain("slow", usable_mib=300), domain("web1", usable_mib=300))
    answer = host.fake.answer
    host.fake.answer = lambda c, a: (_ for _ in ()).throw(VirshTimeout([c], None, "virsh dumpxml timed out")) \
        if c == "dumpxml" and uuid_of("slow") in a else answer(c, a)
    host.cycles(2)
    assert [a[2] for a in host.setmems()] == [uuid_of("web1")]
    host.assert_safe()
    assert any("slow: cannot read domain XML" in m for m in logged())


def test_setmem_hangs_then_waits_for_fresher_stats(logged):
    host = Host(domain("web1", usable_mib=300))
    host.hang = {"setmem"}
    host.cycles(4)  # same figures: the change may have landed, so no second try on them
    assert len(host.setmems()) == 1
    host.hang = set()
    host.cycles(report=True)
    host.assert_safe()
    assert any("timed out" in m and "grow web1" in m for m in logged())


@pytest.mark.parametrize("command,stderr,words", [
    ("dumpxml", "error: failed to get domain 'web1'\n", "cannot read domain XML"),
    ("setmem", "error: internal error: unable to execute QEMU command 'balloon'\n", "setmem failed"),
    ("dommemstat", "error: Unable to change balloon collection period.\nerror: internal error\n",
     "cannot set the stats period"),
])
def test_libvirt_errors_cost_that_domain_at_most_a_cycle(logged, command, stderr, words):
    host = Host(domain("web1", usable_mib=300, period=0, boot_update=int(T0)), domain("ok", usable_mib=300))
    answer = host.fake.answer
    host.fake.answer = lambda c, a: ("\n", stderr, 1) if c == command and uuid_of("web1") in a else answer(c, a)
    host.cycles(3, report=True)
    assert host.setmems("ok")  # the other domain is not held up
    host.assert_safe()
    assert sum(words in m for m in logged()) >= 1


def _good_read():
    host = Host(domain("web1", usable_mib=300), domain("idle", usable_mib=1500))
    return host.fake.run_line(READ_LINE)


@pytest.mark.parametrize("garbage", [
    "", "\n", "garbage\n", "\x00\xff\n", "Domain: 'web1'\n  balloon.current=abc\n\n",
    "Domain: 'web1'\n  balloon.current=1\n  balloon.current=2\n\n",
    "error: something\n", "Domain: 'web1\n  balloon.usable=5\n\n",
])
def test_garbage_read_is_never_acted_on(logged, garbage):
    host = Host(domain("web1", usable_mib=300))
    host.state["faults"] = {"domstats": {"stdout": garbage}}
    host.cycles(3)
    assert host.setmems() == []
    host.assert_safe()


def test_every_truncation_of_the_read_is_safe():
    full = _good_read()
    for cut in range(len(full)):
        host = Host(domain("web1", usable_mib=300), domain("idle", usable_mib=1500))
        host.fake.answer = lambda c, a, text=full[:cut]: (text, "", 0)
        host.cycles(2)
        host.assert_safe()
        # cut inside a number would still parse: a cut read is refused as a whole
        assert cut == 0 or full[cut - 1] == "\n" or host.setmems() == []


def test_libvirtd_restart_backoff_one_line_then_resume(logged):
    host = Host(domain("web1", usable_mib=300))
    host.state["faults"] = {"domstats": {"exit": 1, "stderr": DAEMON_DOWN}}
    waits = []
    for _ in range(12):
        assert host.cycles() is None
        waits.append(host.daemon.retry_s)
    assert waits[:7] == [0.5, 1, 2, 4, 8, 16, 30] and set(waits[6:]) == {RETRY_MAX_S}
    del host.state["faults"]
    host.cycles(report=True)
    assert host.daemon.retry_s == 0 and len(host.setmems()) == 1
    host.assert_safe()
    messages = logged()
    assert sum("cannot read running domains" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1


def test_run_waits_grow_during_an_outage():
    host = Host(domain("web1"))
    host.state["faults"] = {"domstats": {"exit": 1, "stderr": DAEMON_DOWN}}

    class Stop(threading.Event):
        def __init__(self):
            super().__init__()
            self.waits = []

        def wait(self, timeout=None):
            self.waits.append(timeout)
            if len(self.waits) == 8:
                self.set()
            return self.is_set()

    stop = Stop()
    host.daemon.run(stop)
    # each wait is the backoff less the (tiny) time the cycle took: growing, capped at 30 s
    assert all(a < b for a, b in zip(stop.waits[:6], stop.waits[1:7]))
    assert 16 < stop.waits[-1] <= RETRY_MAX_S


@pytest.mark.parametrize("change,words", [
    (lambda host: host.state["domains"].remove(host.dom("gone")), "gone before setmem"),  # undefined/migrated
    (lambda host: host.dom("gone").update(state="shut off"), "gone before setmem"),
])
def test_domain_leaves_between_read_and_setmem(logged, change, words):
    host = Host(domain("gone", usable_mib=100), domain("web1", usable_mib=100))
    run = host.fake.run

    def racing(*args):
        if args[0] == "setmem" and args[2] == uuid_of("gone"):
            change(host)
        return run(*args)

    host.fake.run = racing
    assert len(host.cycles()) == 2
    assert [a[2] for a in host.setmems()] == [uuid_of("gone"), uuid_of("web1")]
    host.cycles(2)
    host.assert_safe()
    assert any(words in m for m in logged())


def test_paused_domain_is_not_read_and_not_changed_twice_when_back():
    host = Host(domain("web1", usable_mib=300))
    host.cycles()
    assert len(host.setmems()) == 1
    host.dom("web1")["state"] = "paused"  # leaves the running list: its history is forgotten
    host.cycles(2)
    host.dom("web1")["state"] = "running"  # back, its figures still those the change was made on
    host.cycles(3)
    assert len(host.setmems()) == 1
    host.cycles(report=True)
    assert len(host.setmems()) == 2
    host.assert_safe()


def test_renamed_domain_is_a_new_domain():
    host = Host(domain("old", usable_mib=300))
    host.cycles()
    dom = host.dom("old")
    dom.update(name="new", id=dom["id"] + 1)  # virsh domrename needs it shut off: a new run
    host.clock.now += 1  # which reports after its boot, later than the change
    host.cycles(report=True)
    # the same domain (renaming keeps the uuid), seen anew under its new name
    assert [a[2] for a in host.setmems()] == [uuid_of("old")] * 2
    assert [a[2] for a in host.fake.argv_log if a[0] == "dumpxml"] == [uuid_of("old")] * 2
    host.assert_safe()


def test_reused_id_under_the_same_name_is_a_restart():
    host = Host(domain("web1", usable_mib=300))
    host.cycles()
    host.dom("web1")["uuid"] = "0b0e6f2c-1111-4222-8333-944445555666"  # another domain, same name and id
    host.cycles(report=True)
    assert len([a for a in host.fake.argv_log if a[0] == "dumpxml"]) == 2  # seen anew
    host.assert_safe()


@pytest.mark.parametrize("figures,words", [
    ({"last_update": int(T0) + 3600}, "in the future"),
    ({"stats": {"usable": 4000 * MIB}}, "inconsistent stats"),
    ({"actual_kib": 0}, "no balloon size"),
])
def test_impossible_figures_are_skipped_with_a_reason(logged, figures, words):
    host = Host(domain("web1", usable_mib=300))
    host.dom("web1").update(figures)
    host.cycles(3)
    assert host.setmems() == []
    host.assert_safe()
    assert sum(words in m for m in logged()) == 1


def test_last_update_going_backwards_never_gives_a_second_change():
    host = Host(domain("web1", usable_mib=300))
    host.cycles()
    host.dom("web1")["last_update"] = int(T0) - 3  # older than the change, still not stale
    host.cycles(4)
    assert len(host.setmems()) == 1
    host.assert_safe()


def test_setmem_that_never_takes_effect_is_left_alone(logged):
    host = Host(domain("nodriver", usable_mib=300, stuck=True))
    host.cycles(30, report=True)
    assert len(host.setmems()) == 1
    host.assert_safe()
    assert sum("had no effect" in m for m in logged()) == 1


def test_random_faults_never_break_an_invariant():
    host = Host(*(domain(f"vm{i}", usable_mib=u) for i, u in enumerate((100, 300, 600, 1500, 1900))))
    faulty = FaultyVirsh(host.fake, random.Random(7), rate=0.3)
    host.checked = CheckedVirsh(faulty, host.config, host.clock)
    host.daemon = Daemon(host.config, host.checked, host.clock)
    for i in range(400):
        if i % 50 == 10:
            faulty.outage(5)
        host.cycles(report=i % 2 == 0)
    host.assert_safe()
    assert host.checked.setmems > 10 and sum(faulty.tried.values()) > 100


def test_the_checker_sees_unsafe_setmems():
    host = Host(domain("web1", usable_mib=300), domain("win", usable_mib=300), domains={"win": {"exclude": True}})
    checked, web1 = host.checked, uuid_of("web1")
    checked.setmem(web1, 2148 * MIB)  # before any read
    checked.run_line(READ_LINE)
    checked.setmem("web1", 2148 * MIB)  # by name: virsh may take it for another domain's id
    checked.setmem(web1, 100 * MIB)  # below the floor
    with pytest.raises(VirshError):  # virsh refuses it too
        checked.setmem(web1, 8192 * MIB)  # above the maximum, and a second one this cycle
    checked.setmem(uuid_of("win"), 2148 * MIB)  # excluded
    checked.run_line(READ_LINE)
    checked.setmem(web1, 2148 * MIB)  # figures not newer than the last change
    problems = "\n".join(checked.violations)
    for words in ("not addressed by a uuid of the last good read", "below the floor", "above the maximum",
                  "second setmem", "excluded domain", "not newer than the last change"):
        assert words in problems
    assert sum("not addressed by a uuid" in v for v in checked.violations) == 2


@pytest.mark.parametrize("doctor,words", [
    (lambda dom: dom.update(actual_kib=5120 * MIB), "inconsistent figures"),  # above its maximum of 4096
    (lambda dom: dom.update(maximum_kib=0), "inconsistent figures"),
])
def test_the_checker_sees_setmems_on_impossible_sizes(doctor, words):
    host = Host(domain("web1", usable_mib=300))
    doctor(host.dom("web1"))
    host.checked.run_line(READ_LINE)
    host.checked.inner = StateVirsh({"domains": []})  # whatever virsh would say to it
    with pytest.raises(VirshError):
        host.checked.setmem(uuid_of("web1"), 4864 * MIB)
    assert any(words in v for v in host.checked.violations)
    assert any("above the maximum" in v for v in host.checked.violations)


@pytest.mark.parametrize("kind", ["block-twice", "uuid-twice"])
def test_the_checker_sees_setmems_on_a_domain_the_read_gave_twice(kind):
    host = Host(domain("web1", usable_mib=300), domain("db", usable_mib=300))
    faulty = FaultyVirsh(host.fake, random.Random(1), rate=1.0)
    faulty.FAULTS = (kind,)
    host.checked = CheckedVirsh(faulty, host.config, host.clock)
    host.checked.run_line(READ_LINE)
    faulty.rate = 0.0
    for name in ("web1", "db"):
        host.checked.setmem(uuid_of(name), 2148 * MIB)
    assert any("twice" in v or "not addressed by a uuid" in v for v in host.checked.violations)
