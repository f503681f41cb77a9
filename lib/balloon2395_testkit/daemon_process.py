"""The real balloon-2395 executable run against real guests, as the e2e tests and the calibration run it."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import IO, List, Optional

from .virsh_cli import URI

DAEMON = Path(__file__).resolve().parents[2] / "balloon-2395"


class DaemonProcess:
    """The real balloon-2395 managing only `managed` (a domain name or glob): every other
    domain on the host is excluded by its config. Its own lock dir, stdout and stderr to a
    log file, stopped by its pid (SIGTERM, then SIGKILL). A context manager."""

    def __init__(self, workdir: Path, managed: str, *args: str, config: str = "", uri: str = URI) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "daemon.log"
        conf = self.dir / "config.yaml"
        # The first matching glob wins (an exact name wins anyway): ours managed, the rest excluded. The
        # tests watch guests settle within a minute: without the default 10 minutes target waits to see a
        # guest that cannot page go without bursts (tests/test_policy_target.py checks that wait).
        pinned = "" if "burst_wait:" in config else "burst_wait: 0\n"
        # They also watch idle guests shrink into the band on a host with room: the band alone (idle_shrink
        # always); the default `needed` keeps them at their found size there (tests/test_policy_target.py).
        pinned += "" if "idle_shrink:" in config else "idle_shrink: always\n"
        conf.write_text(pinned + config + f"domains:\n  {json.dumps(managed)}: {{}}\n  '*': {{exclude: true}}\n")
        self.argv: List[str] = [str(DAEMON), "--config", str(conf), "--connect", uri,
                                "--lock-dir", str(self.dir / "lock"), *args]
        self.proc: Optional[subprocess.Popen] = None
        self._log: Optional[IO[str]] = None

    def start(self) -> "DaemonProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def run_once(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv + list(args), capture_output=True, text=True, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> Optional[int]:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
