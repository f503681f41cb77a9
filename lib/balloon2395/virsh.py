"""The only place that runs virsh: argv lists through `sh`, LC_ALL=C, a timeout on every call.

A domain always follows `--domain`, so one starting with '-' is data, never an
option. The daemon passes uuids there (lifetime.py says why), names only in tests.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, List, Optional

import sh

from .virsh_output import BalloonStats, parse_dominfo_max_kib, parse_domstats, parse_dommemstat


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


def default_uri(env: Optional[Dict[str, str]] = None, euid: Optional[int] = None) -> str:
    """The connection virsh uses when none is named (libvirt's own rule)."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    return env.get("LIBVIRT_DEFAULT_URI") or ("qemu:///system" if euid == 0 else "qemu:///session")


def _message(stderr: str, exit_code: Optional[int]) -> str:
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


class Virsh:
    def __init__(self, binary: str = "virsh", uri: Optional[str] = None, timeout: float = 10.0) -> None:
        self.binary, self.uri, self.timeout = binary, uri, timeout
        self.calls = 0  # processes spawned: the daemon's main cost
        env = dict(os.environ)
        env.pop("LANGUAGE", None)
        env["LC_ALL"] = "C"
        self._env = env

    def close(self) -> None:
        """Nothing to release: every call was its own process (VirshSession keeps one)."""

    def run_line(self, line: str) -> str:
        """Commands in virsh's own syntax ('a ; b'), all in one virsh; the first error ends the line."""
        return self.run(line)  # one argument: virsh parses it as a command line

    def run(self, *args: str) -> str:
        argv = (["-c", self.uri] if self.uri else []) + list(args)
        self.calls += 1
        try:
            # In a session of its own, so that a kill also takes what it started (ssh, for a remote URI).
            result = sh.Command(self.binary)(*argv, _env=self._env, _bg=True, _bg_exc=False, _ok_code=range(256),
                                             _tty_out=False, _in="", _new_session=True)
        except sh.CommandNotFound:
            raise VirshError(argv, None, f"virsh not found: {self.binary!r} (install libvirt-clients or set --virsh)") from None
        except OSError as exc:
            raise VirshError(argv, None, f"cannot run {self.binary!r}: {exc.strerror}") from None
        except ValueError:
            # sh reads the child's exec report from a pipe; a virsh killed while starting leaves it cut short
            raise VirshError(argv, None, f"{self.binary!r} ended while starting") from None
        if _waited(result, self.timeout):
            raise VirshTimeout(argv, None, f"virsh {' '.join(args[:2])} timed out after {self.timeout:g}s")
        stdout = result.stdout.decode("utf-8", "replace")
        if result.exit_code != 0:
            raise VirshError(argv, result.exit_code, _message(result.stderr.decode("utf-8", "replace"), result.exit_code))
        return stdout

    # Each command the daemon uses, named for what it gives.

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
