"""The manual page balloon-2395(8) (issue 25, point 4): docs/balloon-2395.8 is what balloon2395.manpage
makes from the parsers; every flag of every command is in OPTIONS with its help, and nothing else is;
groff renders it without a warning, and help text that looks like roff stays text."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from balloon2395 import cli, cliref, manpage, sdnotify, service
from conftest import ROOT

PAGE = ROOT / "docs" / "balloon-2395.8"
GROFF = pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed (Debian: groff-base)")
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SIGNALS", "FILES", "ENVIRONMENT",
            "SEE ALSO"]


def plain(roff: str) -> str:
    """A roff line's text as printed: escapes undone, fonts dropped."""
    out = re.sub(r"\\f[BIR]", "", roff)
    out = re.sub(r"\\\[u([0-9A-F]{4})\]", lambda m: chr(int(m.group(1), 16)), out)
    return out.replace("\\-", "-").replace("\\(dq", '"').replace("\\&", "").replace("\\e", "\\")


def sections(source: str) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    current = None
    for line in source.splitlines():
        if line.startswith(".SH "):
            current = line[4:].strip('"')
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def options_entries(source: str) -> Set[Tuple[str, Tuple[str, ...], str]]:
    """{(command, flags, help)} as OPTIONS says them: each .TP entry under a subsection titled
    `Group (every command)` or `Group (run, status, ...)`."""
    entries = set()
    lines = sections(source)["OPTIONS"]
    names: List[str] = []
    for at, line in enumerate(lines):
        if line.startswith(".SS "):
            said = re.search(r"\(([^()]*)\)\"$", plain(line)).group(1)
            names = list(cli.COMMANDS) if said == "every command" else said.split(", ")
        elif line == ".TP" and not plain(lines[at + 1]).startswith(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")):
            flags = tuple(re.findall(r"(?<![\w-])--?\w[\w-]*", plain(lines[at + 1])))
            for name in names:
                entries.add((name, flags, plain(lines[at + 2])))
    return entries


def parser_options() -> Set[Tuple[str, Tuple[str, ...], str]]:
    """{(command, flags, help)} as the parsers hold them, read without cliref."""
    found = set()
    for name in cli.COMMANDS:
        parser = cli.parser(name)
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                found.add((name, tuple(action.option_strings), action.help % dict(vars(action), prog=parser.prog)))
    return found


def groff(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P-cbou", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_the_checked_in_page_is_the_one_the_parsers_make():
    assert PAGE.read_text() == manpage.render(), (
        "docs/balloon-2395.8 is out of date: PYTHONPATH=lib python3 -m balloon2395.manpage > docs/balloon-2395.8")


def test_the_page_has_the_sections_in_order():
    assert list(sections(PAGE.read_text())) == SECTIONS


def test_every_flag_of_every_command_is_in_options_with_its_help():
    assert parser_options() - options_entries(PAGE.read_text()) == set()


def test_options_names_no_flag_a_command_does_not_take():
    assert options_entries(PAGE.read_text()) - parser_options() == set()


def test_the_synopsis_names_every_command_and_its_arguments():
    synopsis = [plain(line) for line in sections(PAGE.read_text())["SYNOPSIS"]]
    calls = [synopsis[at + 1] for at, line in enumerate(synopsis) if line.startswith(".SY ")]
    assert calls == ["[run]", *cli.COMMANDS[1:], "[COMMAND]"]
    for command in cliref.commands():
        for positional in command.positionals:
            assert any(positional.name in line for line in synopsis), positional


def test_the_description_says_what_every_command_does():
    text = " ".join(plain(line) for line in sections(PAGE.read_text())["DESCRIPTION"])
    for name, (_, what) in cliref.summaries(cli.parser("run").description).items():
        assert " ".join(what.split()) in text, name
    assert set(cliref.summaries(cli.parser("run").description)) == set(cli.COMMANDS)


def test_the_exit_statuses_are_the_services_codes():
    page = sections(PAGE.read_text())["EXIT STATUS"]
    codes = {int(plain(page[at + 1])) for at, line in enumerate(page) if line == ".TP"}
    assert codes == {service.EXIT_OK, service.EXIT_FAIL, service.EXIT_USAGE, service.EXIT_RUNNING,
                     service.EXIT_INTERRUPTED}


def test_the_signals_are_the_ones_the_service_takes():
    page = sections(PAGE.read_text())["SIGNALS"]
    tags = [plain(page[at + 1]) for at, line in enumerate(page) if line == ".TP"]
    assert tags == ["SIGTERM, SIGINT", "SIGHUP"]
    reload = " ".join(page)
    assert all(key in plain(reload) for key in service.RESTART_ONLY_KEYS) and "connect" in service.RESTART_ONLY_KEYS


def test_the_environment_names_every_variable_the_daemon_reads():
    sources = [p for p in (ROOT / "lib" / "balloon2395").glob("*.py")]  # sim/ reads the fake's own, not these
    read = {name for p in sources for name in re.findall(r"""\.get\("([A-Z][A-Z_]+)\"""", p.read_text())}
    page = plain(" ".join(sections(PAGE.read_text())["ENVIRONMENT"]))
    assert read and not (read | set(sdnotify.VARIABLES)) - set(re.findall(r"[A-Z][A-Z_]+", page))


@GROFF
def test_groff_renders_the_page_without_a_warning():
    result = groff(PAGE)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "balloon-2395 status [--json]" in result.stdout  # every dash ASCII: a flag pasted from it works


@GROFF
def test_man_renders_the_page_without_a_warning():
    if shutil.which("man") is None:
        pytest.skip("man not installed (Debian: man-db)")
    result = subprocess.run(["man", "--warnings", "-l", str(PAGE)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "MANPAGER": "cat", "LANG": "C.UTF-8"})
    assert result.returncode == 0 and result.stderr == "", result.stderr


def _hostile_parser(help_text: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balloon-2395", description=(
        "Summary.\n\ncommands:\n  run  the loop\n\nexit status: 0 ok, 1 failure."))
    parser.add_argument("--x", metavar="N", help=help_text)
    return parser


@GROFF
@pytest.mark.parametrize("help_text", [".TH not a request", "'ne 99 neither", "a \\fBbackslash\\fR and \\n(.l",
                                       'a "quoted" word', "m\u00e9moire \u2264 1 GiB", "-- dashes --x"])
def test_help_that_looks_like_roff_is_printed_as_written(tmp_path, help_text):
    page = tmp_path / "x.8"
    page.write_text(manpage.render([cliref.read("run", _hostile_parser(help_text))]))
    result = groff(page)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert help_text in result.stdout


def test_a_command_the_description_does_not_list_is_refused():
    commands = [cliref.read("run", _hostile_parser("x")), cliref.read("doctor", _hostile_parser("x"))]
    with pytest.raises(ValueError, match="lists no doctor"):
        manpage.render(commands)


def test_a_flag_of_several_values_is_refused_not_shown_wrong():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pair", nargs=2)
    with pytest.raises(ValueError, match="--pair: nargs 2"):
        cliref.read("run", parser)
