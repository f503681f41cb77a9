"""Shared test helpers: a fake host (state file + fake virsh on PATH) and an in-process virsh."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import List

import pytest

from balloon2395 import PROG
from balloon2395.fake_virsh import FakeHost
from balloon2395.inprocess import InProcessVirsh

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GIB = 1024 * 1024
MIB = 1024


def uuid_of(name: str) -> str:
    """The uuid domain() gives a name: what the daemon's calls after the read name it by."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def domain(name: str, actual_mib: int = 2048, usable_mib: int = 600, maximum_mib: int = 4096, **extra) -> dict:
    """A running domain for fake hosts; figures in MiB for readability, stored in KiB."""
    dom = {"name": name, "uuid": uuid_of(name), "id": zlib.crc32(name.encode()) % 1000 + 1,
           "state": "running", "actual_kib": actual_mib * MIB, "maximum_kib": maximum_mib * MIB, "period": 1,
           "stats": {"usable": usable_mib * MIB, "available": actual_mib * MIB}, "age": 0}
    dom.update(extra)
    return dom


T0 = 1_800_000_000.0  # the fixed "now" of in-process tests


class Clock:
    """A clock the test moves: `clock.now += 0.5` is half a second later for the daemon."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def still_host(*domains: dict) -> "StateVirsh":
    """A fake host whose guests last reported at T0 (and report again only when a test says so)."""
    state = {"domains": list(domains)}
    for dom in state["domains"]:
        dom.pop("age", None)
        dom.setdefault("last_update", int(T0))
    return StateVirsh(state)


class StateVirsh(InProcessVirsh):
    """The real Virsh class answered in process by a fake host over `state`."""

    def __init__(self, state: dict) -> None:
        super().__init__(lambda command, args: FakeHost(state).call(command, args)[:3])
        self.state = state

    def setmems(self) -> List[List[str]]:
        return [argv for argv in self.argv_log if argv[0] == "setmem"]


class FakeHostDir:
    """A temp dir with a state file, a fake `virsh` on PATH, a call log, a config and a lock dir."""

    def __init__(self, path: Path, domains: List[dict]) -> None:
        self.path = path
        self.bin = path / "bin"
        self.bin.mkdir()
        self.state_file = path / "state.json"
        self.log_file = path / "calls.log"
        self.lock_dir = path / "lock"
        self.config = path / "config.yaml"
        # The original's fixed steps: these tests check its arithmetic exactly.
        self.config.write_text("policy: step\n")
        self.write({"domains": domains})
        virsh = self.bin / "virsh"
        virsh.write_text(f"#!/bin/sh\nexec {sys.executable} -m balloon2395.fake_virsh \"$@\"\n")
        virsh.chmod(0o755)

    def write(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))

    def read(self) -> dict:
        return json.loads(self.state_file.read_text())

    def log(self) -> list:
        """The fake's log as written: each process start as its argv, each line read in a session as
        {"in_session": argv} (a line of several commands as one argument, as virsh 'a ; b')."""
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def processes(self) -> List[List[str]]:
        return [entry for entry in self.log() if isinstance(entry, list)]

    def calls(self) -> List[List[str]]:
        """Every virsh call as one process per call would have run it (`-c URI` first when given), also
        those answered inside a session; the session's start and its sentinel echoes left out."""
        calls, session = [], []
        for entry in self.log():
            if isinstance(entry, dict):
                if entry["in_session"][0].split()[0] != "echo":
                    calls.append(session + entry["in_session"])
            elif entry[2:] if entry[:1] == ["-c"] else entry:
                calls.append(entry)
            else:
                session = entry  # virsh without a command: a session, `-c URI` or nothing
        return calls

    def setmems(self) -> List[List[str]]:
        return [argv for argv in self.calls() if "setmem" in argv]

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(PATH=f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}", PYTHONPATH=str(LIB),
                   FAKE_VIRSH_STATE=str(self.state_file), FAKE_VIRSH_LOG=str(self.log_file))
        env.pop("LIBVIRT_DEFAULT_URI", None)
        return env

    def daemon_argv(self, *args: str) -> List[str]:
        return [str(ROOT / "balloon-2395"), *args, "--config", str(self.config), "--lock-dir", str(self.lock_dir)]

    def run(self, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.daemon_argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)


@pytest.fixture
def fake_host(tmp_path):
    def make(*domains: dict) -> FakeHostDir:
        return FakeHostDir(tmp_path, list(domains))
    return make


@pytest.fixture
def daemons():
    """Start balloon-2395 processes against a fake host; ends them by PID after the test."""
    started = []

    def start(host, *args):
        proc = subprocess.Popen(host.daemon_argv(*args), env=host.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:  # only what this test started, by PID
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture(autouse=True)
def daemon_logger_restored():
    """logs.setup() (the CLI, a reload) replaces the daemon logger's handlers, sets its level and
    stops propagation: caplog, on the root logger, would see nothing in every test after it."""
    logger = logging.getLogger(PROG)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
