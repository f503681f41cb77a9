"""The one place of shared test helpers (test modules import from here, never from each other):
a fake host (state file + fake virsh on PATH), an in-process virsh, balloon-2395 run in process,
waiting for an event, and the hypothesis profiles."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Callable, Iterator, List, Mapping, Optional, Sequence

import pytest
from hypothesis import settings

from balloon2395 import PROG, cli
from balloon2395.sim.fake_virsh import FakeHost
from balloon2395.sim.inprocess import InProcessVirsh

# Hypothesis budgets: "dev" (the default) keeps every property test together to a few seconds; "ci"
# (.ci/run sets HYPOTHESIS_PROFILE=ci) is the thorough run. No deadline: a shared 2-core machine is no
# place to time single examples.
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
E2E = Path(__file__).resolve().parent / "e2e"
GIB = 1024 * 1024
MIB = 1024
# The fake virsh as a command: it needs nothing from site-packages, so -S (no site) for a cheaper start.
FAKE_VIRSH = f"{sys.executable} -S -m balloon2395.sim.fake_virsh"


def bench_module(name: str):
    """bench/NAME.py, loaded as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    """Whether `predicate` came true within `timeout` seconds: a wait for an event (a file, a log
    line, a call in the fake virsh's log), never a fixed pause."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


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
        virsh.write_text(f"#!/bin/sh\nexec {FAKE_VIRSH} \"$@\"\n")
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

    def lock_files(self) -> List[Path]:
        """The pid files of the daemons holding a lock in this host's lock dir."""
        return list(self.lock_dir.glob("*.pid")) if self.lock_dir.exists() else []

    def state_files(self) -> List[Path]:
        """The files a running daemon leaves its last cycle in (what `status --watch` reads)."""
        return list(self.lock_dir.glob("*.state.json")) if self.lock_dir.exists() else []

    def daemon_state(self) -> Optional[dict]:
        files = self.state_files()
        return json.loads(files[0].read_text()) if files else None

    def busy(self) -> bool:
        """Whether a fake virsh is inside a command now: it holds the state file's lock while it answers."""
        with open(self.state_file) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False

    def signal_inside(self, proc: subprocess.Popen, signum: int, command: str) -> None:
        """Send `signum` to `proc` while the fake virsh answers `command` (slowed down by a "sleep" fault),
        and check that it was still answering when the signal went."""
        assert wait_for(lambda: any(command in " ".join(call) for call in self.calls()) and self.busy()), \
            f"no {command} started"
        proc.send_signal(signum)
        assert self.busy(), f"{command} was over before the signal: its fault's sleep is too short"

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
        """balloon-2395 as its own process, through the launcher."""
        return subprocess.run(self.daemon_argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """balloon-2395 run in this process, for tests not about the process itself."""
        return run_cli(self.daemon_argv(*args)[1:], self.env)


@contextlib.contextmanager
def daemon_logger_kept() -> Iterator[None]:
    """logs.setup() (the CLI, a reload) replaces the daemon logger's handlers, sets its level and
    stops propagation: caplog, on the root logger, would see nothing after it."""
    logger = logging.getLogger(PROG)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        yield
    finally:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ is exactly `env` inside, as it was after."""
    saved, wanted = dict(os.environ), dict(env)
    os.environ.clear()
    os.environ.update(wanted)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def signal_handlers_kept() -> Iterator[None]:
    """The daemon takes SIGTERM, SIGINT and SIGHUP for itself; pytest gets them back after."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)


def run_cli(argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """`balloon-2395 ARGV` run in this process, in `env` (default: this one's): what the launcher's
    process would give, its exit status and output, without the cost of starting one."""
    out, err = io.StringIO(), io.StringIO()
    with daemon_logger_kept(), signal_handlers_kept(), environment(os.environ if env is None else env), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = 0 if exc.code is None else exc.code
    return subprocess.CompletedProcess([PROG, *argv], code, out.getvalue(), err.getvalue())


def pytest_xdist_auto_num_workers(config) -> int:
    """pyproject's `-n auto`: a run of a directory (the unit suite) on one worker more than there are
    CPUs, as much of its time goes in waiting for processes. In one process: a run of chosen files
    (starting workers would cost more than it saves) and one that takes in the real-guest tests (they
    share one hypervisor, time real guests and report at the end of the session)."""
    here = config.invocation_params.dir
    paths = [(here / arg.split("::")[0]).resolve() for arg in config.args]
    if _takes_in_e2e(config, paths) or not any(path.is_dir() for path in paths):
        return 0
    return len(os.sched_getaffinity(0)) + 1


def _takes_in_e2e(config, paths: List[Path]) -> bool:
    if os.environ.get("BALLOON_E2E_SKIP") == "1" or "not e2e" in (config.getoption("markexpr") or ""):
        return False
    here = config.invocation_params.dir
    if any((here / ignored).resolve() == E2E for ignored in config.getoption("ignore") or ()):
        return False
    return any(path == E2E or E2E in path.parents or path in E2E.parents for path in paths)


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
    """Every test starts with the daemon logger as pytest set it (see daemon_logger_kept)."""
    with daemon_logger_kept():
        yield


# A host whose own use grows by 2 GiB from t=60 s to t=120 s, beside a guest that holds all it has and a file
# server whose page cache fills it: without a daemon the host's OOM killer takes a whole QEMU.
HOST_GROWS = """
duration: 4m
host:
  total: 6GiB
  own: 1GiB
  workload:
    - {at: 60, anon: +2GiB, over: 60}
guests:
  - {name: idle, current: 2GiB, maximum: 2GiB}
  - name: files
    current: 2GiB
    maximum: 2GiB
    workload:
      - {at: 0, cache: +1TiB, rate: 100MiB/s}
"""
