"""The sentinel protocol of a virsh session (session.py), as a pure parser of bytes.

After each command line the session sends `echo --err T ; echo T`, T a token new for each exchange:
a sentinel on both streams. Without -q the stdout transcript of one command is

    virsh # CMDLINE                  the prompt and the line, echoed by virsh (readline)
    OUTPUT                           exactly what a one-shot `virsh CMD` prints on stdout
    virsh # echo --err T ; echo T
                                     echo --err prints nothing but virsh's newline
    T

and its stderr transcript its error lines, then `error: T` (fixture interactive.session). virsh does
not keep the two streams in step, so each is cut at its own sentinel, and what follows a sentinel
(the next prompt, errors that came early) belongs to the next answer. A session starts with the
sentinel alone, after virsh's banner: that tells the prompt.

Framing holds what was read from the two streams and cuts it into answers: no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

STDOUT, STDERR = 0, 1

# virsh's own notes about the connection, printed whatever command runs: not the command's errors
_CONNECTION_NOTE = re.compile(r"^error: (Disconnected from .* due to |Reconnected to the hypervisor)")


def sentinel_line(token: str) -> str:
    """The line sent after each command line."""
    return f"echo --err {token} ; echo {token}\n"


class OutOfStep(ValueError):
    """The transcript is not the one the protocol gives: the session cannot go on."""


class NoEcho(OutOfStep):
    """virsh does not echo the lines it reads (one built without readline): no answer can be framed."""


@dataclass(frozen=True)
class Answer:
    output: str  # the command's stdout, exactly as a one-shot virsh prints it
    errors: Tuple[str, ...] = ()  # its stderr lines, each ending in "\n"
    notes: Tuple[str, ...] = ()  # virsh's notes about the connection that came among them

    @property
    def failed(self) -> bool:
        """Inside a session a command's exit status is not available: it failed when it printed errors."""
        return any(line.startswith("error:") for line in self.errors)


class Framing:
    """What was read from one virsh session's stdout and stderr (`feed`), cut into answers. `missing`
    says which streams still lack the current exchange's sentinel; once none does, `greeting` (the
    first exchange) or `answer` cuts it."""

    def __init__(self) -> None:
        self.prompt: Optional[str] = None  # known from the greeting
        self._unread = (bytearray(), bytearray())  # stdout, stderr: not yet part of an answer

    def feed(self, stream: int, data: bytes) -> None:
        self._unread[stream].extend(data)

    def missing(self, token: str) -> List[int]:
        """The streams (STDOUT, STDERR) whose sentinel for `token` has not come as a whole line yet."""
        return [stream for stream, want in enumerate(_sentinels(token)) if _line_end(self._unread[stream], want) < 0]

    def greeting(self, token: str) -> str:
        """The start of the session cut (banner, then the sentinel line echoed after the prompt) and its
        prompt, now known. Raises NoEcho when the sentinel's line was not echoed."""
        lines, _ = self._cut(token)
        sent = sentinel_line(token)
        if len(lines) < 3 or not lines[-3].endswith(sent):
            raise NoEcho("virsh does not echo commands read from a pipe")
        self.prompt = lines[-3][:-len(sent)]
        return self.prompt

    def answer(self, token: str) -> Answer:
        """One command's answer cut, after the greeting. Raises OutOfStep when it is not framed as the
        protocol frames it: a line like the sentinel inside the output makes it out of step, never a
        shorter answer."""
        lines, errors = self._cut(token)
        if self.prompt is None or not _framed(lines, self.prompt, token):
            raise OutOfStep("virsh session out of step: answer not framed by its sentinel")
        notes = tuple(line for line in errors if _CONNECTION_NOTE.match(line))
        return Answer("".join(lines[1:-3]), tuple(line for line in errors if line not in notes), notes)

    def began(self) -> bool:
        """Whether any byte of an answer came: between two answers stdout holds at most the prompt that
        followed the last one, and stderr nothing."""
        idle = (self.prompt or "").encode()
        return bool(self._unread[STDERR]) or not idle.startswith(bytes(self._unread[STDOUT]))

    def said(self) -> str:
        """stderr not yet part of an answer: why a virsh that ended did."""
        return self._unread[STDERR].decode("utf-8", "replace")

    def _cut(self, token: str) -> Tuple[List[str], List[str]]:
        """The stdout lines up to its sentinel and the stderr lines before its sentinel, taken out."""
        taken = []
        for stream, want in enumerate(_sentinels(token)):
            end = _line_end(self._unread[stream], want)
            if end < 0:
                raise ValueError("cut before both sentinels came (see missing)")
            taken.append(bytes(self._unread[stream][:end]))
            del self._unread[stream][:end]
        return _lines(taken[STDOUT]), _lines(taken[STDERR])[:-1]


def _framed(lines: List[str], prompt: str, token: str) -> bool:
    """Whether stdout lines are one answer: [prompt + the command, *its output, prompt + the sentinel
    line, "\n", the sentinel]."""
    return len(lines) >= 4 and lines[0].startswith(prompt) and lines[-3] == prompt + sentinel_line(token)


def _sentinels(token: str) -> Tuple[bytes, bytes]:
    """The sentinel's line on stdout and on stderr."""
    return f"{token}\n".encode(), f"error: {token}\n".encode()


def _line_end(data: bytearray, line: bytes) -> int:
    """Where the first whole line `line` in `data` ends, -1 while it has not come."""
    if data.startswith(line):
        return len(line)
    at = data.find(b"\n" + line)
    return -1 if at < 0 else at + 1 + len(line)


def _lines(data: bytes) -> List[str]:
    """Lines split at "\n" only, as virsh ends them (a readline echo may hold a "\r")."""
    return [line + "\n" for line in data.decode("utf-8", "replace").split("\n")[:-1]]
