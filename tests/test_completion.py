"""Shell completion (issue 25, point 4): examples/completion/ is what balloon2395.completion makes from the
parsers; both scripts name every command and flag and no other; and the completions a shell really gives,
bash's through its completion function, zsh's through an interactive zsh on a pty: commands, flags, choices,
files, scenarios and the running domains of the fake virsh, hostile names included."""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Set

import pytest

from balloon2395 import cli, cliref, completion, config as cfg
from conftest import ROOT, domain

BASH = ROOT / "examples" / "completion" / "bash" / "balloon-2395"
ZSH = ROOT / "examples" / "completion" / "zsh" / "_balloon-2395"
SCENARIOS = sorted(p.stem for p in (ROOT / "examples" / "scenarios").glob("*.yaml"))
NEEDS_ZSH = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
VIRSH_FLAGS = {"--name"}  # virsh's own, in `virsh list --name`
BASH_BIN = shutil.which("bash")  # by its path: a test may leave PATH without virsh, and so without bash


def parser_flags() -> Dict[str, Set[str]]:
    """{command: its flags}, read from the parsers without cliref."""
    return {name: {flag for action in cli.parser(name)._actions if action.help != argparse.SUPPRESS
                   for flag in action.option_strings} for name in cli.COMMANDS}


def choice_flags() -> Dict[str, List[str]]:
    return {action.option_strings[-1]: list(action.choices) for action in cli.parser("run")._actions
            if action.option_strings and action.choices}


# ---------------------------------------------------------------- the files and the parsers

@pytest.mark.parametrize("shell,path", [("bash", BASH), ("zsh", ZSH)])
def test_the_checked_in_script_is_the_one_the_parsers_make(shell, path):
    assert path.read_text() == getattr(completion, shell)(), (
        f"{path.relative_to(ROOT)} is out of date: PYTHONPATH=lib python3 -m balloon2395.completion {shell} "
        f"> {path.relative_to(ROOT)}")


def test_the_bash_script_gives_each_command_exactly_its_flags():
    text = BASH.read_text()
    said = {m.group(1): set(m.group(2).split()) for m in re.finditer(r"^ {8}([\w-]+)\)\n {12}opts='([^']*)'", text,
                                                                     re.M)}
    assert said == parser_flags()


def test_the_zsh_script_gives_each_command_exactly_its_flags():
    text = ZSH.read_text()
    blocks = re.findall(r"^    \(([\w-]+)\)\n      _arguments -S \\\n(.*?) ;;$", text, re.M | re.S)
    said = {name: set(re.findall(r"^ +'(?:\([^)]*\))?\*?(--?[\w-]+)[\[=+]", specs, re.M)) for name, specs in blocks}
    assert said == parser_flags()


@pytest.mark.parametrize("path", [BASH, ZSH], ids=["bash", "zsh"])
def test_neither_script_names_a_long_flag_no_command_takes(path):
    flags = set().union(*parser_flags().values())
    assert set(re.findall(r"(?<![\w-])--[a-z][\w-]*", path.read_text())) - flags - VIRSH_FLAGS == set()


@pytest.mark.parametrize("path", [BASH, ZSH], ids=["bash", "zsh"])
def test_both_scripts_name_every_command(path):
    text = path.read_text()
    assert all(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) for name in cli.COMMANDS)


def test_both_parse_as_their_shells_scripts():
    assert subprocess.run([BASH_BIN, "-n", str(BASH)], capture_output=True, timeout=30).returncode == 0
    if shutil.which("zsh"):
        result = subprocess.run(["zsh", "-n", str(ZSH)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_a_choice_that_could_not_be_written_unquoted_is_refused(shell):
    parser = argparse.ArgumentParser(description="Summary.\n\ncommands:\n  run  the loop\n")
    parser.add_argument("--mode", choices=["fine", "$(reboot)"])
    with pytest.raises(ValueError, match=r"'\$\(reboot\)' cannot be completed"):
        getattr(completion, shell)([cliref.read("run", parser)])


# ---------------------------------------------------------------- bash, for real

def bash_complete(*words: str, cwd: Path = ROOT, env: Dict[str, str] = None, line: str = None) -> List[str]:
    """What the completion function offers for the words typed, the last one under the cursor, as bash splits
    them (COMP_WORDS); `line` is the line as typed when that differs from the words joined by spaces."""
    script = ('source "$1"; shift; complete -p balloon-2395 >/dev/null || exit 9\n'
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE=${LINE:-$*}; COMP_POINT=${#COMP_LINE}\n'
              '_balloon_2395; printf "%s\\n" "${COMPREPLY[@]}"')
    argv = [BASH_BIN, "--norc", "--noprofile", "-c", script, "bash", str(BASH), "balloon-2395", *words]
    env = dict(env or os.environ, LINE=line or "")
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line for line in result.stdout.split("\n") if line]


def test_bash_completes_a_command():
    assert bash_complete("st") == ["status"]


def test_bash_offers_every_command_first():
    assert bash_complete("") == list(cli.COMMANDS)


def test_bash_offers_the_policies_for_policy():
    assert bash_complete("--policy", "") == list(cfg.POLICIES)


def test_bash_completes_a_value_after_an_equals_sign():
    assert bash_complete("status", "--policy", "=", "ta") == ["target"]


@pytest.mark.parametrize("flag", sorted(choice_flags()))
def test_bash_offers_each_choice_flags_choices(flag):
    assert bash_complete(flag, "") == choice_flags()[flag]


def test_bash_offers_statuss_flags_and_not_the_daemons():
    offered = bash_complete("status", "--")
    assert {"--json", "--watch", "--refresh"} <= set(offered) and "--once" not in offered


def test_bash_offers_the_scenarios_and_yaml_files_for_simulate(tmp_path):
    (tmp_path / "mine.yaml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert sorted(bash_complete("--simulate", "", cwd=tmp_path)) == sorted(SCENARIOS + ["mine.yaml"])


def test_bash_offers_flags_after_simulate_once_a_dash_is_typed():
    assert bash_complete("--simulate", "--on") == ["--once"]


@pytest.mark.parametrize("words", [("--config",), ("check-config",), ("--metrics-textfile",)])
def test_bash_offers_files_where_a_file_goes(tmp_path, words):
    (tmp_path / "with space.yaml").write_text("")
    (tmp_path / "sub").mkdir()
    assert sorted(bash_complete(*words, "", cwd=tmp_path)) == ["sub", "with space.yaml"]


def test_bash_offers_only_directories_for_the_lock_dir(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    assert bash_complete("--lock-dir", "", cwd=tmp_path) == ["dir"]


def test_bash_offers_nothing_for_a_number():
    assert bash_complete("--secs", "") == []


def _with_domains(fake_host, *names: str, **state):
    host = fake_host(*(domain(name) for name in names))
    if state:
        host.write(dict(host.read(), **state))
    return host


def test_bash_offers_the_running_domains_to_explain(fake_host):
    host = _with_domains(fake_host, "web1", "db1")
    assert sorted(bash_complete("explain", "", env=host.env)) == ["db1", "web1"]
    assert bash_complete("explain", "w", env=host.env) == ["web1"]


def test_bash_asks_virsh_of_every_uri_given_with_connect(fake_host):
    host = _with_domains(fake_host, "web1")
    bash_complete("explain", "-c", "test:///a", "--connect=test:///b", "", env=host.env)
    assert [argv[:2] for argv in host.processes()] == [["-c", "test:///a"], ["-c", "test:///b"]]
    assert all(argv[2:] == ["list", "--name"] for argv in host.processes())


def test_bash_offers_the_domains_after_a_uri_bash_split_at_its_colons(fake_host):
    host = _with_domains(fake_host, "web1")
    words = ("explain", "-c", "test", ":", "///a", "--config", "=", "x.yaml", "")
    assert bash_complete(*words, env=host.env, line="balloon-2395 explain -c test:///a --config=x.yaml ") == ["web1"]
    assert host.processes() == [["-c", "test:///a", "list", "--name"]]


def test_bash_uses_the_virsh_given(fake_host, tmp_path):
    host = _with_domains(fake_host, "web1")
    other = tmp_path / "other-virsh"
    other.write_text("#!/bin/sh\nprintf 'from-other\\n\\n'\n")
    other.chmod(0o755)
    assert bash_complete("explain", "--virsh", str(other), "", env=host.env) == ["from-other"]
    assert host.processes() == []


def test_bash_never_expands_a_domains_name(fake_host, tmp_path):
    host = _with_domains(fake_host, "$(touch pwned)", "web 1")
    offered = bash_complete("explain", "", cwd=tmp_path, env=host.env)
    assert not (tmp_path / "pwned").exists()
    assert sorted(offered) == sorted([r"\$\(touch\ pwned\)", r"web\ 1"])


def test_bash_leaves_out_a_name_with_a_control_character(fake_host):
    host = _with_domains(fake_host, "red\x1b[31m", "tab\there", "web1")
    assert bash_complete("explain", "", env=host.env) == ["web1"]


def test_bash_offers_no_domain_and_says_nothing_when_virsh_fails(fake_host):
    host = _with_domains(fake_host, "web1", faults={"connect": {"stderr": "error: failed to connect", "exit": 1}})
    assert bash_complete("explain", "", env=host.env) == []


def test_bash_offers_no_domain_when_there_is_no_virsh(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    assert bash_complete("explain", "", env=env) == []


def test_bash_offers_no_second_domain(fake_host):
    host = _with_domains(fake_host, "web1")
    assert bash_complete("explain", "web1", "", env=host.env) == []


# ---------------------------------------------------------------- zsh, for real

def zsh_complete(line: str, tmp_path: Path, env: Dict[str, str] = None, cwd: Path = None) -> List[str]:
    """What an interactive zsh offers for `line` + TAB: compinit over the script's directory, compadd
    wrapped to write down each match it is given (the calls that only collect, -O/-A/-D, left alone)."""
    out, done = tmp_path / "zsh-matches", "DO" "NE"
    setup = (f"fpath=({ZSH.parent} $fpath); unsetopt autolist automenu; cd {cwd or tmp_path}\n"
             f"autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump\n"
             "compadd() {\n"
             '  if [[ " ${@[1,(i)(-|--)]} " == *\\ -[OAD]\\ * ]]; then builtin compadd "$@"; return; fi\n'
             f'  local -a hits; builtin compadd -A hits "$@"; print -rl -- $hits >> {out}; builtin compadd "$@"\n'
             "}\n"
             "PS1='RE''ADY> '\n")  # the prompt says READY, the line typed does not
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive zsh without any user's rc files
        os.execvpe("zsh", ["zsh", "-f", "-i"], dict(env or os.environ, TERM="dumb"))
    seen = b""

    def read_until(token: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 20
        while token not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    return
    try:
        os.write(fd, setup.encode())
        read_until(b"READY> ")  # zle is up: keys typed before it may be dropped
        out.write_text("")
        # keys are taken in order: the TAB's completion is over before ^U clears the line for the marker
        os.write(fd, f"{line}\t\x15print -r {done[:2]}''{done[2:]}\n".encode())
        read_until(done.encode() + b"\r\n")
        assert done.encode() + b"\r\n" in seen, seen[-2000:]
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return [word for word in out.read_text().split("\n") if word]


@NEEDS_ZSH
def test_zsh_completes_a_command(tmp_path):
    assert zsh_complete("balloon-2395 st", tmp_path) == ["status"]


@NEEDS_ZSH
def test_zsh_offers_the_policies_for_policy(tmp_path):
    assert zsh_complete("balloon-2395 --policy ", tmp_path) == list(cfg.POLICIES)


@NEEDS_ZSH
def test_zsh_offers_statuss_flags_and_not_the_daemons(tmp_path):
    offered = zsh_complete("balloon-2395 status --", tmp_path)
    assert {"--json", "--watch", "--refresh"} <= set(offered) and "--once" not in offered


@NEEDS_ZSH
def test_zsh_offers_a_scenario_for_simulate(tmp_path):
    assert zsh_complete("balloon-2395 --simulate de", tmp_path) == ["demo"]


@NEEDS_ZSH
def test_zsh_offers_files_to_check_config(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.yaml").write_text("")
    assert "mine.yaml" in zsh_complete("balloon-2395 check-config ", tmp_path, cwd=work)


@NEEDS_ZSH
def test_zsh_offers_the_running_domains_of_the_uri_given(fake_host, tmp_path):
    host = _with_domains(fake_host, "web1", "db1", "red\x1b[31m")
    assert sorted(zsh_complete("balloon-2395 explain -c test:///a ", tmp_path, env=host.env)) == ["db1", "web1"]
    assert [argv for argv in host.processes()] == [["-c", "test:///a", "list", "--name"]]


def test_the_scenarios_offered_are_the_shipped_ones():
    assert completion.scenarios() == SCENARIOS

