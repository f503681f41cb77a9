"""The only place that runs virsh: argv lists through `sh`, LC_ALL=C, a timeout on every call.

A domain always follows `--domain`, so one starting with '-' is data, never an
option. The daemon passes uuids there (lifetime.py says why), names only in tests.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, List, Mapping, Optional

import sh

from .output import BalloonStats, parse_dominfo_max_kib, parse_dommemstat, parse_domstats


class VirshError(Exception):
    """virsh ran and failed: exit status and its `error:` lines."""

    def __init__(self, argv: List[str], exit_code: Optional[int], message: str) -> None:
        self.argv, self.exit_code, self.message = argv, exit_code, message
        super().__init__(message)

    @property
    def domain_gone(self) -> bool:
        text = self.message.lower()
        return "domain not found" in text or "failed to get domain" in text or "domain is not running" in text

    @property
    def unsupported(self) -> bool:
        text = self.message.lower()
        return "unknown command" in text or "not supported" in text or "unsupported" in text


class VirshTimeout(VirshError):
    pass


def default_uri(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    """The connection virsh uses when none is named (libvirt's own rule)."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    return env.get("LIBVIRT_DEFAULT_URI") or ("qemu:///system" if euid == 0 else "qemu:///session")


def error_message(stderr: str, exit_code: Optional[int]) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")] or lines
    return "; ".join(errors)[:500] or f"exit status {exit_code} with no message"


def _waited(proc: sh.RunningCommand, timeout: float) -> bool:
    """Wait for the process, killing it at the timeout; True when it was killed. (sh's own _timeout
    checks every 0.1 s, which added that much to every call: a timer costs nothing until it fires.)"""
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        try:
            proc.kill_group()
        except OSError:
            pass  # it ended just now

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        proc.wait()
    except sh.ErrorReturnCode:
        pass  # killed by a signal, which _ok_code does not cover
    finally:
        timer.cancel()
    return killed.is_set()


def environment(**extra: str) -> Dict[str, str]:
    """What every virsh runs with: the daemon's environment under LC_ALL=C (the parsers read C-locale
    output), without LANGUAGE (it would override LC_ALL for messages), and `extra`."""
    env = dict(os.environ, **extra)
    env.pop("LANGUAGE", None)
    env["LC_ALL"] = "C"
    return env


def start(binary: str, argv: List[str], env: Dict[str, str], **io: Any) -> sh.RunningCommand:
    """virsh started in the background by sh, in a session of its own so that a kill also takes what it
    started (ssh, for a remote URI), every exit status its caller's to read; `io` is sh's _in, _out ...
    Raises VirshError when it cannot start."""
    try:
        return sh.Command(binary)(*argv, _env=env, _bg=True, _bg_exc=False, _ok_code=_ANY_STATUS,
                                  _new_session=True, **io)
    except sh.CommandNotFound:
        raise VirshError(argv, None, f"virsh not found: {binary!r} (install libvirt-clients or set --virsh)") from None
    except OSError as exc:
        raise VirshError(argv, None, f"cannot run {binary!r}: {exc.strerror}") from None
    except ValueError:
        # sh reads the child's exec report from a pipe; a virsh killed while starting leaves it cut short
        raise VirshError(argv, None, f"{binary!r} ended while starting") from None


_ANY_STATUS = tuple(range(256))


class VirshCommands:
    """What every virsh the daemon talks to offers (the per-call Virsh, VirshSession, the simulator's
    and the tests' look-alikes): `run` one command given as words, `run_line` commands in virsh's own
    syntax, `close`; and, over `run`, each command the daemon uses, named for what it gives."""

    def run(self, *args: str) -> str:
        """The command's stdout; raises VirshError when it failed, VirshTimeout when it hung."""
        raise NotImplementedError

    def run_line(self, line: str) -> str:
        """Commands in virsh's own syntax ('a ; b'), all in one virsh; the first error ends the line."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the virsh keeps between calls (nothing, by default)."""

    def domstats_balloon(self) -> List[BalloonStats]:
        return parse_domstats(self.run("domstats", "--balloon", "--list-running"))

    def dommemstat(self, domain: str) -> BalloonStats:
        return parse_dommemstat(domain, self.run("dommemstat", "--domain", domain))

    def max_memory_kib(self, domain: str) -> int:
        return parse_dominfo_max_kib(self.run("dominfo", "--domain", domain))

    def enable_stats(self, domain: str, period_s: int) -> None:
        self.run("dommemstat", "--domain", domain, "--period", str(period_s), "--live")

    def nodememstats(self) -> str:
        return self.run("nodememstats")

    def dumpxml(self, domain: str) -> str:
        return self.run("dumpxml", "--domain", domain)

    def setmem(self, domain: str, kib: int) -> None:
        # Plain KiB: virsh reads 'mb' as 10^6 bytes, the original's unit defect.
        self.run("setmem", "--domain", domain, "--size", str(int(kib)), "--live")


class Virsh(VirshCommands):
    """One virsh process per call (VirshSession keeps one for all)."""

    def __init__(self, binary: str = "virsh", uri: Optional[str] = None, timeout: float = 10.0) -> None:
        self.binary, self.uri, self.timeout = binary, uri, timeout
        self.calls = 0  # processes spawned: the daemon's main cost
        self._env = environment()

    def run_line(self, line: str) -> str:
        return self.run(line)  # one argument: virsh parses it as a command line

    def run(self, *args: str) -> str:
        argv = (["-c", self.uri] if self.uri else []) + list(args)
        self.calls += 1
        result = start(self.binary, argv, self._env, _tty_out=False, _in="")
        if _waited(result, self.timeout):
            raise VirshTimeout(argv, None, f"virsh {' '.join(args[:2])} timed out after {self.timeout:g}s")
        stdout = result.stdout.decode("utf-8", "replace")
        if result.exit_code != 0:
            stderr = result.stderr.decode("utf-8", "replace")
            raise VirshError(argv, result.exit_code, error_message(stderr, result.exit_code))
        return stdout
