"""The daemon's cost as a call pattern: the real daemon against the recording fake virsh (real
processes), per cycle. Steady state: one virsh process per cycle (none in a session) plus a setmem
per domain that changes; per-domain set-up once per domain lifetime, again after a restart."""

from __future__ import annotations

import time

import pytest

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.lifetime import READ_LINE
from balloon2395.virsh.session import open_virsh
from conftest import domain, uuid_of

URI = "qemu:///system"


@pytest.fixture
def daemon_on(fake_host, monkeypatch):
    def make(session: bool, *domains):
        now = int(time.time())
        host = fake_host(*[dict(d, last_update=now) for d in domains])
        for key in ("FAKE_VIRSH_STATE", "FAKE_VIRSH_LOG", "PYTHONPATH"):
            monkeypatch.setenv(key, host.env[key])
        config = cfg.build({"policy": "step", "session": session, "virsh": str(host.bin / "virsh"), "connect": URI})
        virsh = open_virsh(config)
        yield_ = Daemon(config, virsh), host
        return yield_
    return make


def cycle_calls(daemon, host):
    """(processes started, virsh calls made, without `-c URI`) by one cycle."""
    procs, calls = len(host.processes()), len(host.calls())
    daemon.cycle()
    return host.processes()[procs:], [call[2:] for call in host.calls()[calls:]]


@pytest.mark.parametrize("session", [False, True], ids=["process-per-call", "session"])
def test_one_virsh_process_per_steady_cycle_and_setup_once_per_lifetime(daemon_on, session):
    daemon, host = daemon_on(session, domain("in-band 1"), domain("in-band 2"), domain("quiet", period=0),
                             domain("short", usable_mib=300))
    procs, calls = cycle_calls(daemon, host)
    assert sorted(" ".join(c) for c in calls) == sorted(
        [READ_LINE, f"dommemstat --domain {uuid_of('quiet')} --period 1 --live",
         f"setmem --domain {uuid_of('short')} --size {2148 * 1024} --live"]
        + [f"dumpxml --domain {uuid_of(n)}" for n in ("in-band 1", "in-band 2", "quiet", "short")])
    assert len(procs) == (1 if session else len(calls))  # the session itself, or one per call
    for _ in range(4):  # steady: the read, nothing else (the setmem waits for stats newer than it)
        procs, calls = cycle_calls(daemon, host)
        assert (len(procs), calls) == (0 if session else 1, [[READ_LINE]])
    state = host.read()
    state["domains"][0]["id"] += 100  # 'in-band 1' destroyed and started again between two cycles
    host.write(state)
    procs, calls = cycle_calls(daemon, host)
    assert calls == [[READ_LINE], ["dumpxml", "--domain", uuid_of("in-band 1")]] and len(procs) == (0 if session else 2)
    daemon.virsh.close()
