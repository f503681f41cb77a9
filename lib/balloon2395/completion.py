"""bash and zsh completion for balloon-2395, made from cli's parsers (cliref): the commands, each one's
flags, the choices of a flag that has them, files and directories, the running domains `explain` takes
(virsh list --name, with the -c URIs and --virsh of the line) and the shipped scenarios for --simulate.
examples/completion/ holds the output, which tests/test_completion.py holds equal to it:

    PYTHONPATH=lib python3 -m balloon2395.completion bash > examples/completion/bash/balloon-2395
    PYTHONPATH=lib python3 -m balloon2395.completion zsh > examples/completion/zsh/_balloon-2395
"""

from __future__ import annotations

import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from . import PROG, cliref, resources

# what a value is, by its metavar; a value of another metavar (a number, a size, a URI) is not guessed
KINDS = {"FILE": "file", "PATH": "file", "DIR": "dir", "DOMAIN": "domain", "SCENARIO": "scenario"}
_WORD = re.compile(r"[A-Za-z0-9-][A-Za-z0-9._:/-]*\Z")  # what may be written into a script unquoted

HEADER = """\
# {shell} completion for {prog}: commands, their flags, choices, files, running domains (explain), scenarios.
# Made by `PYTHONPATH=lib python3 -m balloon2395.completion {shell}` from the parsers of
# lib/balloon2395/cli.py: after a change there, make it again (tests/test_completion.py fails until then).
"""


def _kind(option: cliref.Option) -> Optional[str]:
    if option.choices:
        return "choices"
    return KINDS.get(option.metavar or "")


def _word(word: str) -> str:
    if not _WORD.match(word):
        raise ValueError(f"{word!r} cannot be completed as a plain word")
    return word


def scenarios() -> List[str]:
    return sorted(_word(p.stem) for p in resources.scenario_dir().glob("*.yaml"))


def _value_kinds(commands: Sequence[cliref.Command]) -> Dict[str, Tuple[Optional[str], Tuple[str, ...]]]:
    """{flag: (kind, choices)} over every command: a flag is one thing wherever it is taken."""
    kinds: Dict[str, Tuple[Optional[str], Tuple[str, ...]]] = {}
    for command in commands:
        for option in command.options:
            if option.metavar is None:
                continue
            for flag in option.flags:
                kind = (_kind(option), option.choices)
                if kinds.setdefault(flag, kind) != kind:
                    raise ValueError(f"{flag} takes a different value in {command.name}")
    return kinds


# ---------------------------------------------------------------- bash

BASH_FUNCTIONS = r"""
_balloon_2395_words() {  # COMPREPLY: those of the words after $1 that begin with $1 (plain words, unquoted)
    local cur=$1
    shift
    mapfile -t COMPREPLY < <(compgen -W "$*" -- "$cur")
}

_balloon_2395_files() {  # $1: the word; $2, $3: globs a file must match (a directory always does)
    compopt -o filenames 2>/dev/null
    mapfile -t COMPREPLY < <(if [ $# -gt 1 ]; then
                                 compgen -f -X "!$2" -- "$1"; compgen -f -X "!$3" -- "$1"; compgen -d -- "$1"
                             else
                                 compgen -f -- "$1"
                             fi)
}

_balloon_2395_dirs() {
    compopt -o filenames 2>/dev/null
    mapfile -t COMPREPLY < <(compgen -d -- "$1")
}

_balloon_2395_scenarios() {  # a shipped scenario's name or a YAML file
    local names
    _balloon_2395_files "$1" '*.yaml' '*.yml'
    names=("${COMPREPLY[@]}")
    _balloon_2395_words "$1" $_balloon_2395_scenario_names
    COMPREPLY+=("${names[@]}")
}

_balloon_2395_domains() {
    # the running domains of every -c/--connect URI on the line (virsh's default without one), listed by
    # the --virsh given; never through compgen -W, which would expand a name such as $(...), and no name
    # with a control character, which would reach the terminal
    local cur=$1 virsh=virsh word name quoted uri i
    local -a line=() uris=() limit=()
    read -ra line <<< "${COMP_LINE:0:COMP_POINT}"
    for ((i = 1; i < ${#line[@]}; i++)); do
        word=${line[i]}
        case $word in
            -c|--connect) [ -n "${line[i+1]:-}" ] && uris+=("${line[i+1]}") ;;
            --connect=?*) uris+=("${word#--connect=}") ;;
            -c?*) uris+=("${word#-c}") ;;
            --virsh) [ -n "${line[i+1]:-}" ] && virsh=${line[i+1]} ;;
            --virsh=?*) virsh=${word#--virsh=} ;;
        esac
    done
    [ ${#uris[@]} -gt 0 ] || uris=("")
    command -v timeout >/dev/null 2>&1 && limit=(timeout 5)  # a hung libvirtd must not hang the shell
    COMPREPLY=()
    for uri in "${uris[@]}"; do
        while IFS= read -r name; do
            [[ -n $name && $name != *[[:cntrl:]]* ]] || continue
            printf -v quoted '%q' "$name"
            [[ $name == "$cur"* || $quoted == "$cur"* ]] && COMPREPLY+=("$quoted")
        done < <(LC_ALL=C "${limit[@]}" "$virsh" ${uri:+-c "$uri"} list --name 2>/dev/null </dev/null)
    done
}
"""

BASH_MAIN = r"""
_balloon_2395() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev= command=run start=1 opts valued optional args i n=0
    local -a line=()
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD-1]}
    if [[ $cur == = ]]; then  # a value after '=': bash splits the word there (COMP_WORDBREAKS)
        cur=
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then
        prev=${COMP_WORDS[COMP_CWORD-2]}
    fi
    if ((COMP_CWORD == 1)) && [[ $cur != -* ]]; then
        _balloon_2395_words "$cur" $_balloon_2395_commands
        return
    fi
    if [[ " $_balloon_2395_commands " == *" ${COMP_WORDS[1]} "* ]]; then  # only the first word names one
        command=${COMP_WORDS[1]} start=2
    fi
    case $command in
%(commands)s
    esac
    if [[ " $valued $optional " == *" $prev "* ]]; then
        if [[ " $optional " != *" $prev "* || $cur != -* ]]; then
            case $prev in
%(values)s
                *) COMPREPLY=() ;;
            esac
            return
        fi
    fi
    if [[ $cur == -* ]]; then
        _balloon_2395_words "$cur" $opts
        return
    fi
    # which argument this is, flags and their values skipped, counted in the line's own words: bash splits
    # -c qemu:///system and --config=FILE into several (COMP_WORDBREAKS)
    read -ra line <<< "${COMP_LINE:0:COMP_POINT}"
    [ -z "$cur" ] || unset 'line[${#line[@]}-1]'
    for ((i = start; i < ${#line[@]}; i++)); do
        if [[ " $valued " == *" ${line[i]} "* ]]; then
            ((i++))
        elif [[ ${line[i]} != -* ]]; then
            ((n++))
        fi
    done
    read -ra args <<< "$args"
    case ${args[n]:-} in
        domain) _balloon_2395_domains "$cur" ;;
        file) _balloon_2395_files "$cur" ;;
        *) COMPREPLY=() ;;
    esac
}

complete -F _balloon_2395 %(prog)s
"""

_BASH_VALUE = {"file": '_balloon_2395_files "$cur"', "dir": '_balloon_2395_dirs "$cur"',
               "scenario": '_balloon_2395_scenarios "$cur"', "domain": '_balloon_2395_domains "$cur"'}


def _bash_command(command: cliref.Command) -> str:
    valued = [f for o in command.options if o.metavar and not o.value_optional for f in o.flags]
    optional = [f for o in command.options if o.value_optional for f in o.flags]
    args = [KINDS.get(p.name, "-") for p in command.positionals]
    return (f"        {_word(command.name)})\n"
            f"            opts='{' '.join(map(_word, command.flags()))}'\n"
            f"            valued='{' '.join(valued)}' optional='{' '.join(optional)}' args='{' '.join(args)}' ;;")


def _bash_values(commands: Sequence[cliref.Command]) -> str:
    """A case branch per kind of value: the flags of each choice list together, every file flag together."""
    branches: Dict[str, List[str]] = {}
    for flag, (kind, choices) in _value_kinds(commands).items():
        if kind == "choices":
            action = '_balloon_2395_words "$cur" ' + " ".join(map(_word, choices))
        elif kind is not None:
            action = _BASH_VALUE[kind]
        else:
            continue
        branches.setdefault(action, []).append(_word(flag))
    return "\n".join(f"                {'|'.join(flags)}) {action} ;;" for action, flags in branches.items())


def bash(commands: Sequence[cliref.Command] = ()) -> str:
    commands = commands or cliref.commands()
    return (HEADER.format(shell="bash", prog=PROG)
            + f"\n_balloon_2395_commands='{' '.join(_word(c.name) for c in commands)}'\n"
            + f"_balloon_2395_scenario_names='{' '.join(scenarios())}'\n"
            + BASH_FUNCTIONS
            + BASH_MAIN % {"commands": "\n".join(map(_bash_command, commands)), "values": _bash_values(commands),
                           "prog": PROG})


# ---------------------------------------------------------------- zsh

ZSH_FUNCTIONS = r"""
_balloon-2395_domains() {
  # the running domains of every -c/--connect URI on the line (virsh's default without one), listed by
  # the --virsh given; no name with a control character, which would reach the terminal
  local virsh=virsh uri name i
  local -a uris names limit
  for (( i = 2; i < CURRENT; i++ )); do
    case $words[i] in
      (-c|--connect) [[ -n $words[i+1] ]] && uris+=("$words[i+1]") ;;
      (--connect=?*) uris+=("${words[i]#--connect=}") ;;
      (-c?*) uris+=("${words[i]#-c}") ;;
      (--virsh) [[ -n $words[i+1] ]] && virsh=$words[i+1] ;;
      (--virsh=?*) virsh=${words[i]#--virsh=} ;;
    esac
  done
  (( $#uris )) || uris=("")
  (( $+commands[timeout] )) && limit=(timeout 5)  # a hung libvirtd must not hang the shell
  for uri in "${uris[@]}"; do
    for name in ${(f)"$(LC_ALL=C $limit ${(Q)virsh} ${uri:+-c} ${uri:+${(Q)uri}} list --name 2>/dev/null \
                        </dev/null)"}; do
      [[ $name == *[[:cntrl:]]* ]] || names+=("$name")
    done
  done
  _wanted domains expl 'running domain' compadd -a names
}

_balloon-2395_scenarios() {
  _alternative 'scenarios:scenario:(%(scenarios)s)' 'files:scenario file:_files -g "*.(yaml|yml)"'
}
"""

ZSH_MAIN = r"""
_balloon-2395() {
  local -a commands
  commands=(
%(descriptions)s
  )
  if (( CURRENT == 2 )) && [[ $words[2] != -* ]]; then
    _describe -t commands command commands
    return
  fi
  local command=run
  case $words[2] in
    (%(names)s) command=$words[2]; shift words; (( CURRENT-- )) ;;  # only the first word names one
  esac
  case $command in
%(dispatch)s
  esac
}

_balloon-2395 "$@"
"""

_ZSH_ACTION = {"file": "_files", "dir": "_files -/", "scenario": "_balloon-2395_scenarios",
               "domain": "_balloon-2395_domains"}


def _zsh_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_help(text: str) -> str:
    return " ".join(text.split()).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_described(name: str, what: str) -> str:
    """A `_describe` entry: NAME:WHAT, a colon in WHAT escaped."""
    return _zsh_quoted(f"{_word(name)}:" + " ".join(what.split()).replace("\\", "\\\\").replace(":", "\\:"))


def _zsh_action(option: cliref.Option) -> str:
    kind = _kind(option)
    if kind == "choices":
        return "(" + " ".join(map(_word, option.choices)) + ")"
    return _ZSH_ACTION.get(kind or "", " ")


def _zsh_specs(option: cliref.Option) -> List[str]:
    help_ = _zsh_help(option.help)
    if {"-h", "--help", "--version"} & set(option.flags):
        exclusive = "(- *)"
    elif len(option.flags) > 1 and option.metavar is None:  # --x and --no-x: one or the other
        exclusive = "(" + " ".join(option.flags) + ")"
    else:
        exclusive = ""
    repeat = "*" if option.repeatable else ""
    specs = []
    for flag in option.flags:
        if option.metavar is None:
            spec = f"{exclusive}{repeat}{flag}[{help_}]"
        else:
            joined = "+" if not flag.startswith("--") else "="
            colons = "::" if option.value_optional else ":"
            message = option.metavar.lower().replace(":", "\\:")
            spec = f"{exclusive}{repeat}{flag}{joined}[{help_}]{colons}{message}:{_zsh_action(option)}"
        specs.append(_zsh_quoted(spec))
    return specs


def _zsh_positional(positional: cliref.Positional) -> str:
    colons = "::" if positional.optional else ":"
    return _zsh_quoted(f"{colons}{positional.name.lower()}:{_ZSH_ACTION.get(KINDS.get(positional.name, ''), ' ')}")


def _zsh_dispatch(command: cliref.Command) -> str:
    specs = [s for o in command.options for s in _zsh_specs(o)] + [_zsh_positional(p) for p in command.positionals]
    return f"    ({_word(command.name)})\n      _arguments -S \\\n        " + " \\\n        ".join(specs) + " ;;"


def zsh(commands: Sequence[cliref.Command] = ()) -> str:
    commands = commands or cliref.commands()
    summaries = cliref.summaries(commands[0].description)
    descriptions = "\n".join("    " + _zsh_described(c.name, summaries.get(c.name, ("", ""))[1]) for c in commands)
    return (f"#compdef {PROG}\n" + HEADER.format(shell="zsh", prog=PROG)
            + ZSH_FUNCTIONS % {"scenarios": " ".join(scenarios())}
            + ZSH_MAIN % {"descriptions": descriptions, "names": "|".join(c.name for c in commands),
                          "dispatch": "\n".join(map(_zsh_dispatch, commands))})


if __name__ == "__main__":
    shells = {"bash": bash, "zsh": zsh}
    if len(sys.argv) != 2 or sys.argv[1] not in shells:
        sys.exit(f"usage: python3 -m balloon2395.completion {'|'.join(shells)}")
    sys.stdout.write(shells[sys.argv[1]]())
