"""One long-lived virsh process answering every call: no process spawned per steady cycle.

virsh reads commands on its stdin (interactive mode on a pipe), fed through
`sh`. Each command line is followed by the line `echo --err TOKEN ; echo TOKEN`,
a sentinel on both streams, so a command's answer is what came on each stream
before its sentinel: errors are matched to their command although virsh does not
keep stdout and stderr in step. Without -q the transcript of one command is

    virsh # CMDLINE                  the prompt and the line, echoed by virsh (readline)
    OUTPUT                           exactly what a one-shot `virsh CMD` prints on stdout
    virsh # echo --err T ; echo T
                                     echo --err prints nothing but virsh's newline
    T

so the parsers see the same text as from one process per call (fixture
interactive.session). A command failed when it printed error lines: inside a
session its exit status is not available. virsh's own notes about the connection
("Disconnected from ...", "Reconnected to the hypervisor") are not the command's.

A session is replaced when its process ends, a command outlasts the timeout
(the process is killed), the connection dropped, or the transcript is not the
one expected. While no session can start, each call runs as its own process
(Virsh.run) and a new session is tried after a growing pause.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import threading
import time
from queue import Queue
from typing import Iterator, List, Optional, Tuple

import sh

from . import PROG
from .config import Config
from .virsh import Virsh, VirshError, VirshTimeout, _message

log = logging.getLogger(PROG)

# readline would act on a control character (a tab completes), so such a call gets its own process.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BARE = re.compile(r"^[A-Za-z0-9_./:=@%+,-]+$")
_CONNECTION_NOTE = re.compile(r"^error: (Disconnected from .* due to |Reconnected to the hypervisor)")
_RETRY_S = (1.0, 60.0)  # pause before the next try after a session failed to start: first, longest
_ALIVE_CHECK_S = 0.5  # how often a wait looks whether virsh is still there


def quote(word: str) -> str:
    """A word as virsh's command parser reads it back: inside '...' nothing is special, and a
    quote itself is written '\\''."""
    return word if _BARE.match(word) else "'" + word.replace("'", "'\\''") + "'"


def _fed(lines: Queue) -> Iterator[str]:
    """What is put on the queue, until None, as sh's stdin for virsh. sh polls a Queue ten times a
    second; a generator it just reads from, so an idle session costs nothing."""
    while True:
        line = lines.get()
        if line is None:
            return
        yield line


class SessionBroken(VirshError):
    """The session cannot go on (ended, out of step): the call fails, the next starts a new one."""


class _Transcript:
    """What one virsh process printed, line by line, until taken by the command it answers.
    Its own object per process, so that the last words of a replaced one go nowhere."""

    def __init__(self) -> None:
        self.lines: Tuple[List[str], List[str]] = ([], [])  # stdout, stderr
        self.want = ("", "")  # the sentinel line awaited on each
        self.seen = [False, False]
        self.ended = False
        self.cond = threading.Condition()

    def expect(self, token: str) -> None:
        with self.cond:
            self.want, self.seen = (token + "\n", f"error: {token}\n"), [False, False]

    def take(self) -> Tuple[List[str], List[str]]:
        """The stdout lines up to the sentinel, the stderr lines before it."""
        out = []
        for stream, lines in enumerate(self.lines):
            end = lines.index(self.want[stream]) + 1
            out.append(lines[:end])
            del lines[:end]
        return out[0], out[1][:-1]

    def on_out(self, line: str) -> None:  # once per line: 1500 times a cycle at 100 guests
        self.lines[0].append(line)
        if line == self.want[0]:
            self._arrived(0)

    def on_err(self, line: str) -> None:
        self.lines[1].append(line)
        if line == self.want[1]:
            self._arrived(1)

    def _arrived(self, stream: int) -> None:
        with self.cond:
            self.seen[stream] = True
            self.cond.notify_all()

    def on_done(self, _cmd, _success: bool, _exit_code: int) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()


class VirshSession(Virsh):
    """Virsh with the same methods, answered by one virsh process for as long as it lasts."""

    def __init__(self, binary: str = "virsh", uri: Optional[str] = None, timeout: float = 10.0) -> None:
        super().__init__(binary, uri, timeout)
        self._env = dict(self._env, TERM="dumb", VIRSH_HISTSIZE="0")  # plain echo; keep no command history
        self.commands = 0  # commands answered inside a session
        self._proc = None
        self._stdin: Queue = Queue()
        self._said = _Transcript()
        self._prompt = ""
        self._token = ""
        self._tag = secrets.token_hex(4)
        self._serial = itertools.count()
        self._lock = threading.Lock()  # one command at a time
        self._retry_at = 0.0
        self._pause = _RETRY_S[0]
        self._unsupported = False  # this virsh does not echo commands: never try again

    def run(self, *args: str) -> str:
        return self._serve(list(args), " ".join(quote(a) for a in args))

    def run_line(self, line: str) -> str:
        return self._serve([line], line)

    def close(self) -> None:
        """End the session: EOF, as at the end of a script; killed if virsh does not go."""
        with self._lock:
            self._stop(kill=False)

    def _serve(self, argv: List[str], line: str) -> str:
        """`line` answered in the session; `argv` is the same call as its own process, for when
        there is no session."""
        if _CONTROL.search(line):
            return Virsh.run(self, *argv)
        with self._lock:
            if self._proc is not None and not self._proc.is_alive():
                self._stop(kill=True)  # ended while idle (killed, crashed): nothing was lost, start anew
            if self._proc is None and not self._start():
                return Virsh.run(self, *argv)
            try:
                return self._command(line, argv)
            except (SessionBroken, VirshTimeout):
                self._stop(kill=True)
                raise

    # ------------------------------------------------------------ session

    def _start(self) -> bool:
        if self._unsupported or time.monotonic() < self._retry_at:
            return False
        self._stdin, self._said = Queue(), _Transcript()
        self.calls += 1
        try:
            self._proc = sh.Command(self.binary)(
                *(["-c", self.uri] if self.uri else []), _bg=True, _bg_exc=False, _in=_fed(self._stdin),
                _out=self._said.on_out, _err=self._said.on_err, _done=self._said.on_done, _env=self._env,
                _tty_in=False, _tty_out=False, _encoding="utf-8", _decode_errors="replace", _new_session=True,
                _ok_code=range(256))
            lines, _ = self._exchange(None, [])
        except (sh.CommandNotFound, OSError, VirshError) as exc:
            self._stop(kill=True)
            self._start_failed(getattr(exc, "message", str(exc)))
            return False
        # After the banner: the sentinel's own line, echoed after the prompt.
        marker = self._marker_line()
        if len(lines) < 3 or not lines[-3].endswith(marker):
            self._unsupported = True
            self._stop(kill=True)
            log.warning("virsh does not echo commands read from a pipe: one virsh process per call")
            return False
        self._prompt = lines[-3][:-len(marker)]
        if self._pause > _RETRY_S[0]:
            log.info("virsh session started again")
        self._pause = _RETRY_S[0]
        return True

    def _start_failed(self, why: str) -> None:
        if self._pause == _RETRY_S[0]:
            log.warning("cannot start a virsh session (%s): one virsh process per call until it can", why)
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, _RETRY_S[1])

    def _stop(self, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._stdin.put(None)  # EOF; it also ends the thread that feeds virsh
        if not kill:
            try:
                proc.wait(timeout=min(self.timeout, 2.0))
                return
            except (sh.TimeoutException, sh.ErrorReturnCode):
                pass
        try:
            proc.kill_group()
        except OSError:
            pass  # already gone

    # ------------------------------------------------------------ one command

    def _command(self, line: str, argv: List[str]) -> str:
        lines, errors = self._exchange(line, argv)
        # lines: [prompt + the command, *its output, prompt + the sentinel line, "\n", sentinel]
        if len(lines) < 4 or not lines[0].startswith(self._prompt) or lines[-3] != self._prompt + self._marker_line():
            raise SessionBroken(argv, None, "virsh session out of step: answer not framed by its sentinel")
        self.commands += 1
        notes = [text for text in errors if _CONNECTION_NOTE.match(text)]
        failed = [text for text in errors if text not in notes]
        if notes:  # virsh reconnects by itself, but a new process is a known state
            log.info("virsh: %s; starting a new session", _message("".join(notes), None))
            self._stop(kill=True)
        if any(text.startswith("error:") for text in failed):
            raise VirshError(argv, 1, _message("".join(failed), 1))
        return "".join(lines[1:-3])

    def _marker_line(self) -> str:
        return f"echo --err {self._token} ; echo {self._token}\n"

    def _exchange(self, line: Optional[str], argv: List[str]) -> Tuple[List[str], List[str]]:
        """Send a command line (None: only the sentinel) and wait for both sentinels."""
        said = self._said
        self._token = f"b2395-{self._tag}-{next(self._serial)}"
        said.expect(self._token)
        self._stdin.put(("" if line is None else line + "\n") + self._marker_line())
        deadline = time.monotonic() + self.timeout
        with said.cond:
            while not all(said.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VirshTimeout(argv, None, f"virsh {' '.join(argv[:2]) or 'session'} timed out after "
                                                   f"{self.timeout:g}s: virsh killed")
                if said.ended or not said.cond.wait(min(left, _ALIVE_CHECK_S)) and not self._proc.is_alive():
                    raise SessionBroken(argv, None, _message("".join(said.lines[1]), None) + " (virsh ended)")
        return said.take()


def open_virsh(config: Config) -> Virsh:
    """The virsh the config asks for: one session for every call, or one process per call."""
    return (VirshSession if config.session else Virsh)(config.virsh, config.connect, config.timeout)
