"""The virsh session against the fake virsh's interactive mode (real processes, real pipes, real sh):
same answers as one process per call, errors matched to their command, awkward names, and every way
a session ends."""

from __future__ import annotations

import logging
import os
import re
import signal
import time

import pytest
from hypothesis import given, strategies as st

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.lifetime import READ_LINE
from balloon2395.sim.fake_virsh import split_commands
from balloon2395.virsh.commands import Virsh, VirshError, VirshTimeout
from balloon2395.virsh.session import SessionBroken, SessionEnded, VirshSession, quote
from conftest import FIXTURES, MIB, domain

URI = "qemu:///system"
T0 = int(time.time())
DOWN = ("error: failed to connect to the hypervisor\n"
        "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory\n")


@pytest.fixture
def host(fake_host, monkeypatch):
    """A fake host whose `virsh` both the session and one-shot calls run (environment set before they start)."""
    def make(*domains, faults=None):
        made = fake_host(*[dict(d, last_update=T0) for d in domains])
        if faults:
            made.write({**made.read(), "faults": faults})
        for key in ("FAKE_VIRSH_STATE", "FAKE_VIRSH_LOG", "PYTHONPATH"):
            monkeypatch.setenv(key, made.env[key])
        made.virsh = str(made.bin / "virsh")
        return made
    return make


def test_a_session_answers_exactly_as_one_process_per_call(host):
    fake = host(domain("web1"), domain("o'brien é", usable_mib=300), domain("-dash", period=0, boot_update=T0 - 600))
    calls = [lambda v: v.run("domstats", "--balloon", "--list-running"), lambda v: v.run_line(READ_LINE),
             lambda v: v.run("dommemstat", "--domain", "o'brien é"), lambda v: v.dumpxml("-dash"),
             lambda v: v.run("version")]
    session = VirshSession(fake.virsh, URI)
    assert [call(session) for call in calls] == [call(Virsh(fake.virsh, URI)) for call in calls]
    assert session.calls == 1 and session.commands == len(calls)
    assert fake.processes()[0] == ["-c", URI]  # the session: virsh without a command


def test_errors_belong_to_their_command_and_the_session_goes_on(host):
    fake = host(domain("web1"))
    session = VirshSession(fake.virsh, URI)
    with pytest.raises(VirshError) as gone:
        session.dommemstat("nosuch")
    assert gone.value.message == "error: failed to get domain 'nosuch'" and gone.value.domain_gone
    with pytest.raises(VirshError) as unknown:
        session.run("frobnicate")
    assert unknown.value.unsupported
    with pytest.raises(VirshError) as above:
        session.setmem("web1", 8192 * MIB)
    assert above.value.message == "error: invalid argument: cannot set memory higher than max memory"
    session.setmem("web1", 1024 * MIB)
    assert fake.read()["domains"][0]["actual_kib"] == 1024 * MIB
    assert len(fake.processes()) == 1


AWKWARD = ["web 1", "o'brien", "-dash", "café é1", 'say "hi"', "semi;colon", "#hash", "back\\slash", "$HOME ~ *",
           "a  b"]


def test_awkward_names_reach_virsh_intact(host):
    fake = host(*[domain(name) for name in AWKWARD])
    session = VirshSession(fake.virsh, URI)
    for number, name in enumerate(AWKWARD):
        session.setmem(name, (1000 + number) * MIB)
    assert [d["actual_kib"] for d in fake.read()["domains"]] == [(1000 + n) * MIB for n in range(len(AWKWARD))]
    assert [c[4] for c in fake.calls()] == AWKWARD and len(fake.processes()) == 1


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1))
def test_quoting_survives_virshs_parser(word):
    # split_commands is virsh's parser as the fixtures interactive-quiet.quoting and interactive.session show it
    assert split_commands("setmem --domain " + quote(word)) == [["setmem", "--domain", word]]


def test_a_hung_virsh_is_killed_and_replaced(host):
    fake = host(domain("web1"), faults={"domstats": {"sleep": 30}})
    session = VirshSession(fake.virsh, URI, timeout=1)
    started = time.monotonic()
    with pytest.raises(VirshTimeout):
        session.domstats_balloon()
    assert time.monotonic() - started < 5
    fake.write({**fake.read(), "faults": {}})  # readable again: the hung fake was killed, its lock with it
    assert [s.name for s in session.domstats_balloon()] == ["web1"]
    assert len(fake.processes()) == 2


def test_a_virsh_that_dies_is_replaced(host):
    fake = host(domain("web1"), faults={"dommemstat": {"die": True, "times": 1}})
    session = VirshSession(fake.virsh, URI)
    with pytest.raises(SessionBroken):
        session.dommemstat("web1")
    assert session.dommemstat("web1").actual_kib == 2048 * MIB
    pid = session._proc.pid
    os.kill(pid, signal.SIGKILL)  # between two cycles: the next call does not even notice
    time.sleep(0.2)
    assert session.dommemstat("web1").actual_kib == 2048 * MIB
    assert len(fake.processes()) == 3


def test_a_virsh_killed_while_idle_costs_no_call_and_runs_nothing_twice(host):
    fake = host(domain("web1"))
    session = VirshSession(fake.virsh, URI)
    session.run("version")
    sizes = [(1000 + n) * MIB for n in range(20)]
    for size in sizes:
        os.kill(session._proc.pid, signal.SIGKILL)  # between two calls, as soon as it can: sh has not seen it yet
        session.setmem("web1", size)
    assert [int(c[c.index("--size") + 1]) for c in fake.setmems()] == sizes
    assert fake.read()["domains"][0]["actual_kib"] == sizes[-1]
    assert len(fake.processes()) == 1 + len(sizes)  # a new session each time, never a process per call


def test_a_virsh_that_dies_inside_an_answer_fails_that_call_without_a_retry(host):
    fake = host(domain("web1"), faults={"setmem": {"die": True, "times": 1}})
    session = VirshSession(fake.virsh, URI)
    with pytest.raises(SessionBroken) as broken:
        session.setmem("web1", 1024 * MIB)
    assert not isinstance(broken.value, SessionEnded)
    assert len(fake.setmems()) == 1
    session.setmem("web1", 1024 * MIB)  # the next call: a new session
    assert fake.read()["domains"][0]["actual_kib"] == 1024 * MIB and len(fake.processes()) == 2


def test_a_virsh_killed_between_cycles_costs_no_cycle_and_logs_no_error(host, caplog, monkeypatch):
    fake = host(domain("web1", usable_mib=370))  # 18%: a grow of 100 MiB every cycle
    monkeypatch.setattr(logging.getLogger("balloon-2395"), "propagate", True)  # caplog sees it whatever ran before
    now = [float(T0)]
    daemon = Daemon(cfg.build({"policy": "step", "host_memory": "off", "secs": 0.05}), VirshSession(fake.virsh, URI),
                    clock=lambda: now[0])
    cycles = []
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        for tick in range(15):
            if tick and daemon.virsh._proc is not None:  # (None: the last cycle lost its session)
                os.kill(daemon.virsh._proc.pid, signal.SIGKILL)  # idle between two cycles
                state = fake.read()
                state["domains"][0]["last_update"] = T0 + tick  # the guest reported since the last change
                fake.write(state)
                now[0] = T0 + tick + 0.5
            cycles.append(daemon.cycle())
    assert None not in cycles
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [int(c[c.index("--size") + 1]) for c in fake.setmems()] == [(2048 + 100 * n) * MIB for n in range(1, 16)]


def test_without_libvirtd_calls_run_one_process_each_until_a_session_starts_again(host, caplog):
    fake = host(domain("web1"), faults={"connect": {"exit": 1, "stderr": DOWN}})
    session = VirshSession(fake.virsh, URI)
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        for _ in range(3):
            with pytest.raises(VirshError) as down:
                session.domstats_balloon()
            assert "failed to connect to the hypervisor" in down.value.message
        # one try at a session, then one process per call while the pause lasts
        assert [len(p) for p in fake.processes()] == [2, 5, 5, 5]
        fake.write({**fake.read(), "faults": {}})
        time.sleep(1.1)
        for _ in range(3):
            assert [s.name for s in session.domstats_balloon()] == ["web1"]
    assert [len(p) for p in fake.processes()] == [2, 5, 5, 5, 2]
    assert sum("cannot start a virsh session" in r.message for r in caplog.records) == 1


def test_a_connection_that_dropped_costs_no_call_but_renews_the_session(host, caplog):
    notes = "error: Disconnected from qemu:///system due to end of file\nerror: Reconnected to the hypervisor\n"
    fake = host(domain("web1"), faults={"version": {"stdout": "v\n\n", "stderr": notes, "times": 1}})
    session = VirshSession(fake.virsh, URI)
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        assert session.run("version") == "v\n\n"
    assert "Reconnected to the hypervisor; starting a new session" in caplog.text
    assert [s.name for s in session.domstats_balloon()] == ["web1"]
    assert len(fake.processes()) == 2


def test_control_characters_take_a_process_of_their_own(host):
    fake = host(domain("web1"))
    session = VirshSession(fake.virsh, URI)
    with pytest.raises(VirshError):
        session.dommemstat("tab\there")
    assert fake.log() == [["-c", URI, "dommemstat", "--domain", "tab\there"]]


def test_close_ends_the_session(host):
    fake = host(domain("web1"))
    session = VirshSession(fake.virsh, URI)
    session.domstats_balloon()
    pid = session._proc.pid
    session.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_virsh_that_does_not_echo_its_input_is_used_one_process_per_call(host, tmp_path, caplog):
    fake = host(domain("web1"))
    mute = tmp_path / "mute-virsh"
    mute.write_text(f"""#!/bin/bash
# a virsh built without readline: a prompt, but what it reads is not echoed
[ "$#" -gt 2 ] && exec {fake.virsh} "$@"
while IFS= read -r line; do
    printf 'virsh # '
    case "$line" in "echo --err "*) token=${{line##* }}; echo "error: $token" >&2; printf '\\n%s\\n' "$token";; esac
done
""")
    mute.chmod(0o755)
    session = VirshSession(str(mute), URI)
    with caplog.at_level(logging.WARNING, logger="balloon-2395"):
        for _ in range(3):
            assert [s.name for s in session.domstats_balloon()] == ["web1"]
    assert session.calls == 4 and "does not echo commands" in caplog.text


def test_the_captured_session_is_what_the_session_sends():
    # tests/fixtures/virsh/interactive.session: what real virsh answered to this protocol
    lines = (FIXTURES / "virsh" / "interactive.session.stdin").read_text().splitlines()
    web, obrien = "b2395e2e web é1", "b2395e2e o'brien"
    calls = [["setmem", "--domain", obrien, "--size", "262144", "--live"],
             ["dommemstat", "--domain", "b2395e2e-does-not-exist"],
             ["setmem", "--domain", web, "--size", "2097152", "--live"], ["frobnicate"]]
    assert lines[1::2] == [READ_LINE] + [" ".join(quote(a) for a in call) for call in calls]
    assert all(re.fullmatch(r"echo --err (b2395-\w+-\d+) ; echo \1", line) for line in lines[::2])
