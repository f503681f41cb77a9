"""The session protocol as a pure parser, on the transcripts real virsh gave (tests/fixtures/virsh/
interactive*): answers cut as one process per call would print them, errors matched to their
command, and the hostile transcripts (bytes cut anywhere, stderr ahead of stdout, a sentinel-like
line in the output, a connection note, a virsh that does not echo) never made into a wrong answer."""

from __future__ import annotations

from typing import Tuple

import pytest

from balloon2395.lifetime import parse_running
from balloon2395.virsh.framing import STDERR, STDOUT, Answer, Framing, NoEcho, OutOfStep, sentinel_line
from conftest import FIXTURES

VIRSH = FIXTURES / "virsh"
PROMPT = "virsh # "


def token(n: int) -> str:
    """The tokens of the captured sessions (their .stdin)."""
    return f"b2395-c0ffee00-{n}"


def captured(name: str, stream: str) -> bytes:
    path = VIRSH / f"{name}.{stream}"
    return path.read_bytes() if path.exists() else b""


def fed(name: str) -> Framing:
    """A framing given a whole captured transcript, greeted."""
    framing = Framing()
    framing.feed(STDOUT, captured(name, "stdout"))
    framing.feed(STDERR, captured(name, "stderr"))
    framing.greeting(token(0))
    return framing


def one_shot(name: str) -> Answer:
    """What one virsh process per call printed for the same command (its own capture)."""
    errors = captured(name, "stderr").decode().splitlines(keepends=True)
    return Answer(captured(name, "stdout").decode(), tuple(errors))


def greeted() -> Framing:
    """A framing past a greeting without a banner."""
    framing = Framing()
    framing.feed(STDOUT, f"{PROMPT}{sentinel_line(token(0))}\n{token(0)}\n".encode())
    framing.feed(STDERR, f"error: {token(0)}\n".encode())
    framing.greeting(token(0))
    return framing


def transcript(command: str, output: str, errors: str = "", n: int = 1, prompt: str = PROMPT) -> Tuple[bytes, bytes]:
    """stdout and stderr of one command as virsh frames them: `command` echoed, `output`, the sentinel."""
    return (f"{prompt}{command}\n{output}{prompt}{sentinel_line(token(n))}\n{token(n)}\n".encode(),
            f"{errors}error: {token(n)}\n".encode())


def framed(command: str, output: str, errors: str = "", prompt: str = PROMPT) -> Framing:
    """A greeted framing holding one whole answer."""
    framing = greeted()
    stdout, stderr = transcript(command, output, errors, prompt=prompt)
    framing.feed(STDOUT, stdout)
    framing.feed(STDERR, stderr)
    return framing


def test_the_greeting_tells_the_prompt_after_the_banner():
    framing = Framing()
    framing.feed(STDOUT, captured("interactive.session", "stdout"))
    framing.feed(STDERR, captured("interactive.session", "stderr"))
    assert framing.missing(token(0)) == []
    assert framing.greeting(token(0)) == PROMPT and framing.prompt == PROMPT


@pytest.mark.parametrize("n,one_shot_capture", [(2, "setmem-live.ok"), (3, "dommemstat-domain.missing"),
                                                (4, "setmem-live.above-max"), (5, "frobnicate")])
def test_an_answer_is_what_one_process_per_call_prints(n, one_shot_capture):
    # interactive.session: 1 the read, 2 setmem, 3 dommemstat of a missing domain, 4 setmem above the
    # maximum, 5 an unknown command
    framing = fed("interactive.session")
    for earlier in range(1, n):
        framing.answer(token(earlier))
    assert framing.answer(token(n)) == one_shot(one_shot_capture)


def test_the_read_of_a_cycle_comes_whole_from_a_session():
    answer = fed("interactive.session").answer(token(1))
    read = parse_running(answer.output)
    assert sorted(read.lifetimes) == ["b2395e2e o'brien", "b2395e2e web é1"] and read.conflicts == {}
    assert [s.name for s in read.stats] == ["b2395e2e o'brien", "b2395e2e web é1"]
    assert not answer.failed and answer.errors == ()


def test_errors_fail_only_their_own_command():
    framing = fed("interactive.session")
    assert [framing.answer(token(n)).failed for n in range(1, 6)] == [False, False, True, True, True]


def test_a_line_echoed_scrolled_still_frames_its_answer():
    # interactive.long-line: readline on a dumb terminal echoes '\r<' and the line's end
    answer = fed("interactive.long-line").answer(token(1))
    assert answer.output == "\n" and answer.failed
    assert answer.errors == ("error: failed to get domain 'b2395e2e-does-not-exist-" + "x" * 80 + "'\n",)


def test_bytes_fed_one_at_a_time_give_the_same_answers():
    stdout, stderr = captured("interactive.session", "stdout"), captured("interactive.session", "stderr")
    framing, answers, n = Framing(), [], 0
    for i in range(max(len(stdout), len(stderr))):
        framing.feed(STDOUT, stdout[i:i + 1])
        framing.feed(STDERR, stderr[i:i + 1])
        while n <= 5 and not framing.missing(token(n)):  # each as soon as both sentinels came whole
            answers.append(framing.greeting(token(n)) if n == 0 else framing.answer(token(n)))
            n += 1
    whole = fed("interactive.session")
    assert answers == [PROMPT] + [whole.answer(token(n)) for n in range(1, 6)]


def test_a_sentinel_cut_mid_line_has_not_come():
    framing = greeted()
    stdout, stderr = transcript("setmem x", "\n")
    framing.feed(STDERR, stderr)
    framing.feed(STDOUT, stdout[:-1])  # all but the sentinel's newline
    assert framing.missing(token(1)) == [STDOUT]
    framing.feed(STDOUT, b"\n")
    assert framing.missing(token(1)) == [] and framing.answer(token(1)).output == "\n"


def test_a_longer_token_is_not_the_sentinel():
    framing = framed("echo b2395-c0ffee00-10", "b2395-c0ffee00-10\n")
    assert framing.answer(token(1)).output == "b2395-c0ffee00-10\n"


def test_stderr_ahead_of_stdout_waits_for_stdout_and_keeps_each_error_with_its_command():
    stdout, stderr = captured("interactive.session", "stdout"), captured("interactive.session", "stderr")
    framing = Framing()
    framing.feed(STDERR, stderr)  # every error of the session before any output
    assert framing.missing(token(0)) == [STDOUT]
    framing.feed(STDOUT, stdout)
    framing.greeting(token(0))
    assert [framing.answer(token(n)).errors for n in range(1, 6)] == [
        (), (), ("error: failed to get domain 'b2395e2e-does-not-exist'\n",),
        ("error: invalid argument: cannot set memory higher than max memory\n",),
        ("error: unknown command: 'frobnicate'\n",)]


def test_a_line_that_mentions_the_token_is_output():
    framing = framed("dumpxml x", f"<name>{token(1)}</name>\nerror: {token(1)} \n")
    assert framing.answer(token(1)).output == f"<name>{token(1)}</name>\nerror: {token(1)} \n"


def test_a_sentinel_line_inside_the_output_is_out_of_step_never_a_short_answer():
    framing = framed("dumpxml x", f"<a>\n{token(1)}\n</a>\n")
    with pytest.raises(OutOfStep):
        framing.answer(token(1))


def test_an_answer_not_after_the_greetings_prompt_is_out_of_step():
    framing = framed("dommemstat x", "actual 1\n", prompt="virsh$ ")
    with pytest.raises(OutOfStep):
        framing.answer(token(1))


def test_an_answer_before_the_greeting_is_out_of_step():
    framing = Framing()
    stdout, stderr = transcript("version", "v\n\n")
    framing.feed(STDOUT, stdout)
    framing.feed(STDERR, stderr)
    with pytest.raises(OutOfStep):
        framing.answer(token(1))


def test_connection_notes_are_not_the_commands_errors():
    notes = "error: Disconnected from qemu:///system due to end of file\nerror: Reconnected to the hypervisor\n"
    answer = framed("version", "v\n\n", errors=notes).answer(token(1))
    assert answer == Answer("v\n\n", (), tuple(notes.splitlines(keepends=True))) and not answer.failed


def test_a_connection_note_beside_an_error_leaves_the_error():
    notes = "error: Reconnected to the hypervisor\n"
    answer = framed("dommemstat x", "\n", errors=notes + "error: failed to get domain 'x'\n").answer(token(1))
    assert answer.failed and answer.errors == ("error: failed to get domain 'x'\n",) and answer.notes == (notes,)


def test_a_virsh_that_does_not_echo_its_input_is_told_at_the_greeting():
    # a virsh built without readline: a prompt, but the line read is not echoed after it
    framing = Framing()
    framing.feed(STDOUT, f"{PROMPT}\n{token(0)}\n".encode())
    framing.feed(STDERR, f"error: {token(0)}\n".encode())
    with pytest.raises(NoEcho):
        framing.greeting(token(0))


def test_the_prompt_after_an_answer_is_no_answer_begun():
    framing = framed("version", "v\n\n")
    framing.answer(token(1))
    framing.feed(STDOUT, PROMPT[:3].encode())
    assert not framing.began()
    framing.feed(STDOUT, PROMPT[3:].encode())
    assert not framing.began()
    framing.feed(STDOUT, b"dommemstat x\n")
    assert framing.began()


def test_an_error_alone_is_an_answer_begun():
    framing = framed("version", "v\n\n")
    framing.answer(token(1))
    framing.feed(STDERR, b"error: out of memory\n")
    assert framing.began() and framing.said() == "error: out of memory\n"


def test_a_virsh_that_could_not_connect_said_why_and_framed_nothing():
    # daemon-down.interactive: libvirtd gone, virsh ends at once with two error lines and no banner
    framing = Framing()
    framing.feed(STDERR, captured("daemon-down.interactive", "stderr"))
    assert framing.missing(token(0)) == [STDOUT, STDERR]
    assert framing.said() == captured("daemon-down.interactive", "stderr").decode()
