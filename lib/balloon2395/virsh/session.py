"""One long-lived virsh process answering every call: no process spawned per steady cycle.

virsh reads commands on its stdin (interactive mode on a pipe). Each command line is
followed by a sentinel on both streams, so that a command's answer is what came on
each stream before its sentinel: errors are matched to their command although virsh
does not keep stdout and stderr in step, and the parsers see the same text as from
one process per call. framing.py is that protocol, a pure parser of the bytes
read; here is only the process: started, written to, read into the parser, killed.

A session is replaced when its process ends, a command outlasts the timeout (the
process is killed), the connection dropped, or the transcript is not the one
expected. A call that finds virsh gone before any byte of its answer came (it ended
while idle) is sent again to a new session, so it costs no cycle; one that ends
inside an answer fails. While no session can start, each call runs as its own
process (a per-call Virsh) and a new session is tried after a growing pause.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import select
import threading
import time
from queue import Queue
from typing import Dict, Iterator, List, Optional, Tuple

import sh

from .. import PROG
from ..config import Config
from .commands import Virsh, VirshCommands, VirshError, VirshTimeout, environment, error_message, start
from .framing import STDERR, STDOUT, Framing, NoEcho, OutOfStep, sentinel_line

log = logging.getLogger(PROG)

# readline would act on a control character (a tab completes), so such a call gets its own process.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BARE = re.compile(r"^[A-Za-z0-9_./:=@%+,-]+$")
_RETRY_S = (1.0, 60.0)  # pause before the next try after a session failed to start: first, longest
_ALIVE_CHECK_S = 0.5  # how often a wait looks whether virsh is still there
_CHUNK = 1 << 16  # a pipe's whole buffer in one read


def quote(word: str) -> str:
    """A word as virsh's command parser reads it back: inside '...' nothing is special, and a
    quote itself is written '\\''."""
    return word if _BARE.match(word) else "'" + word.replace("'", "'\\''") + "'"


class SessionBroken(VirshError):
    """The session cannot go on (ended, out of step): the call fails, the next starts a new one."""


class SessionEnded(SessionBroken):
    """virsh was gone before any byte of the answer came: it ended while idle, most likely before it
    read the command."""


class VirshSession(VirshCommands):
    """The commands of a Virsh, answered by one virsh process for as long as it lasts, and by a
    per-call Virsh while there is none."""

    def __init__(self, binary: str = "virsh", uri: Optional[str] = None, timeout: float = 10.0) -> None:
        self.binary, self.uri, self.timeout = binary, uri, timeout
        self.commands = 0  # commands answered inside a session
        self._per_call = Virsh(binary, uri, timeout)
        self._env = environment(TERM="dumb", VIRSH_HISTSIZE="0")  # plain echo; keep no command history
        self._proc: Optional[_Process] = None
        self._framing = Framing()
        self._tried = 0  # sessions started or tried
        self._tag = secrets.token_hex(4)
        self._serial = itertools.count()
        self._lock = threading.Lock()  # one command at a time
        self._retry_at = 0.0
        self._pause = _RETRY_S[0]
        self._unsupported = False  # this virsh does not echo commands: never try again

    @property
    def calls(self) -> int:
        """virsh processes started: the sessions, and the calls that ran on their own."""
        return self._tried + self._per_call.calls

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
            return self._per_call.run(*argv)
        with self._lock:
            try:
                return self._in_session(line, argv)
            except SessionEnded:
                # Sent once more, to a new virsh: every command the daemon sends is idempotent (the reads,
                # `dommemstat --period`, setmem to an absolute size), so even one the dead virsh did run
                # comes out the same. A session that ended inside an answer is not retried (SessionBroken).
                return self._in_session(line, argv)

    def _in_session(self, line: str, argv: List[str]) -> str:
        # sh's view of the process comes from a thread that may not have seen it end yet; a pipe
        # whose writer is gone says so at once.
        if self._proc is not None and self._proc.hung_up():
            self._stop(kill=True)  # ended while idle (killed, crashed): nothing was lost, start anew
        proc = self._proc or self._start()
        if proc is None:
            return self._per_call.run(*argv)
        try:
            return self._command(proc, line, argv)
        except (SessionBroken, VirshTimeout):
            self._stop(kill=True)
            raise

    # ------------------------------------------------------------ session

    def _start(self) -> Optional[_Process]:
        """A new session, greeted; None when none can start now."""
        if self._unsupported or time.monotonic() < self._retry_at:
            return None
        self._tried += 1
        try:
            proc = self._proc = _Process(self.binary, self.uri, self._env)
            self._framing = Framing()
            self._framing.greeting(self._exchange(proc, None, []))
        except NoEcho:
            self._unsupported = True
            self._stop(kill=True)
            log.warning("virsh does not echo commands read from a pipe: one virsh process per call")
            return None
        except (OSError, VirshError) as exc:
            self._stop(kill=True)
            self._start_failed(exc.message if isinstance(exc, VirshError) else str(exc))
            return None
        if self._pause > _RETRY_S[0]:
            log.info("virsh session started again")
        self._pause = _RETRY_S[0]
        return proc

    def _start_failed(self, why: str) -> None:
        if self._pause == _RETRY_S[0]:
            log.warning("cannot start a virsh session (%s): one virsh process per call until it can", why)
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, _RETRY_S[1])

    def _stop(self, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(wait_s=0.0 if kill else min(self.timeout, 2.0))

    # ------------------------------------------------------------ one command

    def _command(self, proc: _Process, line: str, argv: List[str]) -> str:
        try:
            answer = self._framing.answer(self._exchange(proc, line, argv))
        except OutOfStep as exc:
            raise SessionBroken(argv, None, str(exc)) from None
        self.commands += 1
        if answer.notes:  # virsh reconnects by itself, but a new process is a known state
            log.info("virsh: %s; starting a new session", error_message("".join(answer.notes), None))
            self._stop(kill=True)
        if answer.failed:
            raise VirshError(argv, 1, error_message("".join(answer.errors), 1))
        return answer.output

    def _exchange(self, proc: _Process, line: Optional[str], argv: List[str]) -> str:
        """Send a command line (None: only the sentinel) and read until both its sentinels came: the
        exchange's token, for the framing to cut its answer."""
        token = f"b2395-{self._tag}-{next(self._serial)}"
        proc.send(("" if line is None else line + "\n") + sentinel_line(token))
        deadline = time.monotonic() + self.timeout
        missing = self._framing.missing(token)
        while missing:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VirshTimeout(argv, None, f"virsh {' '.join(argv[:2]) or 'session'} timed out after "
                                               f"{self.timeout:g}s: virsh killed")
            chunks = proc.read(missing, min(left, _ALIVE_CHECK_S))
            for stream, data in chunks:
                self._framing.feed(stream, data)
            if any(not data for _, data in chunks) or (not chunks and not proc.alive()):
                raise self._ended(proc, argv)
            missing = self._framing.missing(token)
        return token

    def _ended(self, proc: _Process, argv: List[str]) -> SessionBroken:
        """virsh went before answering; what it said on stderr last is the likely reason."""
        self._framing.feed(STDERR, proc.rest(STDERR))
        why = error_message(self._framing.said(), None) + " (virsh ended)"
        return (SessionBroken if self._framing.began() else SessionEnded)(argv, None, why)


class _Process:
    """One virsh reading commands on its stdin, which sh feeds, its stdout and stderr on pipes of our
    own: read here in large chunks when an answer is awaited, rather than by sh's reader thread,
    which hands over one line at a time (1500 a cycle at 100 guests) and polls ten times a second
    while the session is idle. Raises VirshError (or OSError) when it cannot start."""

    def __init__(self, binary: str, uri: Optional[str], env: Dict[str, str]) -> None:
        self._stdin: Queue = Queue()
        out_r, out_w = os.pipe()
        try:
            err_r, err_w = os.pipe()
        except OSError:
            os.close(out_r)
            os.close(out_w)
            raise
        self._pipes = (out_r, err_r)  # our ends, by stream: STDOUT, STDERR
        try:
            self._proc = start(binary, ["-c", uri] if uri else [], env, _in=_fed(self._stdin), _tty_in=False,
                               _out=out_w, _err=err_w)
        except BaseException:
            self._stdin.put(None)
            self._close()
            raise
        finally:  # the child has its copies: an end of file now means virsh is gone
            os.close(out_w)
            os.close(err_w)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, text: str) -> None:
        self._stdin.put(text)

    def read(self, streams: List[int], timeout_s: float) -> List[Tuple[int, bytes]]:
        """(stream, bytes) of each of `streams` that had something within the timeout; b"" at its end."""
        ready = _readable([self._pipes[stream] for stream in streams], timeout_s)
        return [(self._pipes.index(fd), os.read(fd, _CHUNK)) for fd in ready]

    def rest(self, stream: int) -> bytes:
        """What is still coming on a stream of a virsh that ended."""
        rest = bytearray()
        try:
            while _readable([self._pipes[stream]], 0.1):
                chunk = os.read(self._pipes[stream], _CHUNK)
                if not chunk:
                    break
                rest.extend(chunk)
        except OSError:
            pass
        return bytes(rest)

    def alive(self) -> bool:
        return bool(self._proc.is_alive())

    def hung_up(self) -> bool:
        """Whether virsh closed its stdout (it ended), whatever is still unread in it."""
        return _hung_up(self._pipes[STDOUT])

    def stop(self, wait_s: float) -> None:
        """EOF, as at the end of a script (it also ends the thread that feeds virsh); killed unless it
        ends within `wait_s`."""
        self._stdin.put(None)
        if not (wait_s > 0 and self._ends_within(wait_s)):
            try:
                self._proc.kill_group()
            except OSError:
                pass  # already gone
        self._close()

    def _ends_within(self, wait_s: float) -> bool:
        try:
            self._proc.wait(timeout=wait_s)
        except (sh.TimeoutException, sh.ErrorReturnCode):
            return False
        return True

    def _close(self) -> None:
        for fd in self._pipes:
            os.close(fd)


def _fed(lines: Queue) -> Iterator[str]:
    """What is put on the queue, until None, as sh's stdin for virsh. sh polls a Queue ten times a
    second; a generator it just reads from, so an idle session costs nothing."""
    while True:
        line = lines.get()
        if line is None:
            return
        yield line


def _readable(fds: List[int], timeout_s: float) -> List[int]:
    """The fds with data or at their end (poll: select cannot take an fd above 1023)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(timeout_s * 1000)]


def _hung_up(fd: int) -> bool:
    """Whether every writer of the pipe is gone, whatever is still unread in it."""
    poller = select.poll()
    poller.register(fd, 0)  # POLLHUP is reported whatever the mask asks for
    return any(event & select.POLLHUP for _, event in poller.poll(0))


def open_virsh(config: Config) -> VirshCommands:
    """The virsh the config asks for: one session for every call, or one process per call."""
    if config.connection.session:
        return VirshSession(config.connection.virsh, config.connect, config.connection.timeout)
    return Virsh(config.connection.virsh, config.connect, config.connection.timeout)
