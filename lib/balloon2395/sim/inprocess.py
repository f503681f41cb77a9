"""The daemon's virsh commands answered in process, for tests and the simulator.

Apart from fake_virsh so that the fake, run as an executable, starts without
loading `sh` (a third of its start-up time).
"""

from __future__ import annotations

from typing import Callable, List, Tuple

from ..virsh.commands import VirshCommands, VirshError, error_message
from .fake_virsh import split_commands


class InProcessVirsh(VirshCommands):
    """The daemon's own virsh commands (VirshCommands: same argv, same parsing) with each call
    answered in process, no spawn (tests, the simulator). `answer(command, args)` gives
    (stdout, stderr, exit status). `argv_log` has one argv per command, also for the
    commands of one line ('a ; b'); `calls` counts the processes a real virsh would take."""

    def __init__(self, answer: Callable[[str, List[str]], Tuple[str, str, int]]) -> None:
        self.answer = answer
        self.argv_log: List[List[str]] = []
        self.calls = 0

    def run(self, *args: str) -> str:
        self.argv_log.append(list(args))
        return self._answered(args[0], list(args[1:]))

    def run_line(self, line: str) -> str:
        self.argv_log.extend(split_commands(line))
        return self._answered(line, [])

    def _answered(self, command: str, args: List[str]) -> str:
        self.calls += 1
        stdout, stderr, code = self.answer(command, args)
        if code:
            raise VirshError([command] + args, code, error_message(stderr, code))
        return stdout
