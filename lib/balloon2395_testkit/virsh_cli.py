"""`virsh` on the command line, as the real-guest harness runs it, and the two outputs it reads.

Independent of the daemon's own virsh runner and parsers on purpose: the e2e tests check the daemon
against what this plain reading sees. Argv lists only (never a shell), LC_ALL=C, ``-c URI`` always
explicit.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from .waiting import HarnessError

URI = os.environ.get("BALLOON_E2E_URI", "qemu:///system")


class VirshError(HarnessError):
    def __init__(self, result: "VirshResult"):
        self.result = result
        super().__init__(
            f"virsh failed (exit {result.returncode}): {' '.join(result.argv)}\n"
            f"{result.err.strip()}"
        )


@dataclass
class VirshResult:
    argv: List[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "surrogateescape")

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> "VirshResult":
        if self.returncode != 0:
            raise VirshError(self)
        return self


def virsh_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    env.pop("LIBVIRT_DEFAULT_URI", None)  # -c is always explicit
    return env


def virsh(
    *args: Union[str, int],
    uri: Optional[str] = URI,
    timeout: float = 60.0,
    input: Optional[bytes] = None,
    check: bool = False,
) -> VirshResult:
    """Run ``virsh -c URI ARGS...`` (argv list, LC_ALL=C); never a shell.

    ``uri=None`` leaves out ``-c``. Raises subprocess.TimeoutExpired after
    ``timeout`` seconds (the virsh process is killed), VirshError when
    ``check`` and the exit status is not 0.
    """
    argv = ["virsh"]
    if uri is not None:
        argv += ["-c", uri]
    argv += [str(a) for a in args]
    t0 = time.monotonic()
    proc = subprocess.run(
        argv,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=virsh_env(),
        timeout=timeout,
    )
    res = VirshResult(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
    if check:
        res.check()
    return res


def parse_kv(text: str) -> Dict[str, int]:
    """``key value`` lines (dommemstat) -> {key: int}; other lines ignored."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


DOMAIN_LINE = re.compile(r"^Domain: '(.*)'$")


def parse_domstats(text: str) -> Dict[str, Dict[str, Union[int, str]]]:
    """``virsh domstats`` output -> {domain name: {field: value}}.

    Integer values become int; the ``balloon.`` prefix is kept.
    """
    out: Dict[str, Dict[str, Union[int, str]]] = {}
    cur: Optional[Dict[str, Union[int, str]]] = None
    for line in text.splitlines():
        m = DOMAIN_LINE.match(line)
        if m:
            cur = out.setdefault(m.group(1), {})
            continue
        if cur is not None and "=" in line and line.startswith("  "):
            k, v = line.strip().split("=", 1)
            cur[k] = int(v) if v.lstrip("-").isdigit() else v
    return out
