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
one expected. A call that finds virsh gone before any byte of its answer came
(it ended while idle) is sent again to a new session, so it costs no cycle; one
that ends inside an answer fails. While no session can start, each call runs as
its own process (Virsh.run) and a new session is tried after a growing pause.
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
_CHUNK = 1 << 16  # a pipe's whole buffer in one read


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


class SessionEnded(SessionBroken):
    """virsh was gone before any byte of the answer came: it ended while idle, most likely before it
    read the command."""


def _line_end(data: bytearray, line: bytes) -> int:
    """Where the first whole line `line` in `data` ends, -1 while it has not come."""
    if data.startswith(line):
        return len(line)
    at = data.find(b"\n" + line)
    return -1 if at < 0 else at + 1 + len(line)


def _lines(data: bytes) -> List[str]:
    """Lines split at "\n" only, as virsh ends them (a readline echo may hold a "\r")."""
    return [line + "\n" for line in data.decode("utf-8", "replace").split("\n")[:-1]]


class VirshSession(Virsh):
    """Virsh with the same methods, answered by one virsh process for as long as it lasts."""

    def __init__(self, binary: str = "virsh", uri: Optional[str] = None, timeout: float = 10.0) -> None:
        super().__init__(binary, uri, timeout)
        self._env = dict(self._env, TERM="dumb", VIRSH_HISTSIZE="0")  # plain echo; keep no command history
        self.commands = 0  # commands answered inside a session
        self._proc = None
        self._stdin: Queue = Queue()
        self._pipes: Optional[Tuple[int, int]] = None  # our ends of its stdout and stderr
        self._unread = (bytearray(), bytearray())  # read from stdout, stderr; not yet an answer
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
        if self._proc is not None and _hung_up(self._pipes[0]):
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
        self.calls += 1
        try:
            self._spawn()
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

    def _spawn(self) -> None:
        """virsh started by sh, its stdin fed by sh, its stdout and stderr on pipes of our own: read
        here in large chunks when an answer is awaited, rather than by sh's reader thread, which
        hands over one line at a time (1500 a cycle at 100 guests) and polls ten times a second
        while the session is idle."""
        out_r, out_w = os.pipe()
        try:
            err_r, err_w = os.pipe()
        except OSError:
            os.close(out_r)
            os.close(out_w)
            raise
        self._stdin, self._pipes, self._unread = Queue(), (out_r, err_r), (bytearray(), bytearray())
        try:
            self._proc = sh.Command(self.binary)(
                *(["-c", self.uri] if self.uri else []), _bg=True, _bg_exc=False, _in=_fed(self._stdin),
                _tty_in=False, _out=out_w, _err=err_w, _env=self._env, _new_session=True, _ok_code=range(256))
        finally:  # the child has its copies: an end of file now means virsh is gone
            os.close(out_w)
            os.close(err_w)

    def _start_failed(self, why: str) -> None:
        if self._pause == _RETRY_S[0]:
            log.warning("cannot start a virsh session (%s): one virsh process per call until it can", why)
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, _RETRY_S[1])

    def _stop(self, kill: bool) -> None:
        proc, self._proc = self._proc, None
        pipes, self._pipes = self._pipes, None
        self._stdin.put(None)  # EOF, as at the end of a script; it also ends the thread that feeds virsh
        if proc is not None and not kill:
            try:
                proc.wait(timeout=min(self.timeout, 2.0))
                proc = None
            except (sh.TimeoutException, sh.ErrorReturnCode):
                pass
        if proc is not None:
            try:
                proc.kill_group()
            except OSError:
                pass  # already gone
        for fd in pipes or ():
            os.close(fd)

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
        """Send a command line (None: only the sentinel) and read until both sentinels came: the
        stdout lines up to its sentinel, the stderr lines before it."""
        self._token = f"b2395-{self._tag}-{next(self._serial)}"
        wants = (f"{self._token}\n".encode(), f"error: {self._token}\n".encode())
        self._stdin.put(("" if line is None else line + "\n") + self._marker_line())
        ends = [_line_end(self._unread[0], wants[0]), _line_end(self._unread[1], wants[1])]
        deadline = time.monotonic() + self.timeout
        while -1 in ends:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VirshTimeout(argv, None, f"virsh {' '.join(argv[:2]) or 'session'} timed out after "
                                               f"{self.timeout:g}s: virsh killed")
            waiting = [self._pipes[i] for i in (0, 1) if ends[i] < 0]
            ready = _readable(waiting, min(left, _ALIVE_CHECK_S))
            if not ready and not self._proc.is_alive():
                raise self._ended(argv)
            for fd in ready:
                stream = self._pipes.index(fd)
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    raise self._ended(argv)
                self._unread[stream].extend(chunk)
                ends[stream] = _line_end(self._unread[stream], wants[stream])
        taken = []
        for stream, end in enumerate(ends):
            taken.append(bytes(self._unread[stream][:end]))
            del self._unread[stream][:end]
        return _lines(taken[0]), _lines(taken[1])[:-1]

    def _ended(self, argv: List[str]) -> SessionBroken:
        """virsh went before answering; what it said on stderr last is the likely reason."""
        try:
            while _readable([self._pipes[1]], 0.1):
                chunk = os.read(self._pipes[1], _CHUNK)
                if not chunk:
                    break
                self._unread[1].extend(chunk)
        except OSError:
            pass
        said = self._unread[1].decode("utf-8", "replace")
        # Before the command's echo, stdout holds at most the prompt that followed the last answer.
        answered = self._unread[1] or not self._prompt.encode().startswith(bytes(self._unread[0]))
        return (SessionBroken if answered else SessionEnded)(argv, None, _message(said, None) + " (virsh ended)")


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


def open_virsh(config: Config) -> Virsh:
    """The virsh the config asks for: one session for every call, or one process per call."""
    return (VirshSession if config.session else Virsh)(config.virsh, config.connect, config.timeout)
