"""The command line as records, read from cli's own argparse parsers: what the manual page
(balloon2395.manpage) and the shell completions (balloon2395.completion) are made from, so that
neither can name a flag the parsers lack or miss one they have."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from . import cli

COMMANDS_BLOCK = "\ncommands:\n"  # where the default command's description lists every command


@dataclass(frozen=True)
class Option:
    flags: Tuple[str, ...]  # as the parser spells them: ("-c", "--connect"), ("--debug", "--no-debug")
    metavar: Optional[str]  # None: the flag takes no value
    choices: Tuple[str, ...]
    value_optional: bool  # nargs "?": `--simulate` alone or `--simulate NAME`
    repeatable: bool  # each one given counts: `-c A -c B`
    help: str
    group: str  # the argparse group's title: "options", "connection", ...


@dataclass(frozen=True)
class Positional:
    name: str  # FILE, DOMAIN
    help: str
    optional: bool


@dataclass(frozen=True)
class Command:
    name: str
    description: str  # as --help prints it above the flags
    options: Tuple[Option, ...]
    positionals: Tuple[Positional, ...]

    def flags(self) -> Tuple[str, ...]:
        return tuple(flag for option in self.options for flag in option.flags)


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """The help as --help prints it: argparse's %-formatting applied (`%%` is `%`)."""
    return (action.help or "") % dict(vars(action), prog=parser.prog)


def _title(group: argparse._ArgumentGroup) -> str:
    """A group's title, argparse's default one as Python 3.10 and later name it (3.9: "optional arguments")."""
    return "options" if group.title == "optional arguments" else group.title or ""


def _value(action: argparse.Action) -> Tuple[Optional[str], bool]:
    """(metavar, whether the value may be left out); a shape argparse allows but nothing here could
    complete or document (several values, a metavar tuple) is refused rather than shown wrong."""
    if action.nargs == 0:
        return None, False
    if action.nargs not in (None, "?") or isinstance(action.metavar, tuple):
        raise ValueError(f"{'/'.join(action.option_strings) or action.dest}: nargs {action.nargs!r} "
                         f"is not supported by the manual page and completions")
    if action.metavar is not None:
        return str(action.metavar), action.nargs == "?"
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}", action.nargs == "?"
    return action.dest.upper(), action.nargs == "?"


def read(name: str, parser: argparse.ArgumentParser) -> Command:
    options, positionals = [], []
    # argparse keeps its groups and their actions in private attributes; they are the only record of
    # which group (the --help section) a flag belongs to
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS:
                continue
            metavar, value_optional = _value(action)
            if action.option_strings:
                options.append(Option(tuple(action.option_strings), metavar,
                                      tuple(map(str, action.choices or ())), value_optional,
                                      isinstance(action, (argparse._AppendAction, argparse._CountAction)),
                                      _help(action, parser), _title(group)))
            else:
                positionals.append(Positional(metavar or action.dest.upper(), _help(action, parser),
                                              action.nargs == "?"))
    return Command(name, parser.description or "", tuple(options), tuple(positionals))


def commands(names: Iterable[str] = cli.COMMANDS,
             parser_for: Callable[[str], argparse.ArgumentParser] = cli.parser) -> Tuple[Command, ...]:
    """Every command's flags and arguments; `run` first, as the one given by no command word."""
    return tuple(read(name, parser_for(name)) for name in names)


def summaries(description: str) -> Dict[str, Tuple[str, str]]:
    """{command: (how it is called, what it does)} from the `commands:` block of a description."""
    if COMMANDS_BLOCK not in description:
        raise ValueError("the description has no 'commands:' block")
    block = description.split(COMMANDS_BLOCK, 1)[1].split("\n\n", 1)[0]
    entries: List[List[str]] = []
    for line in block.splitlines():
        entry = re.match(r"  (\S.*?)(?: {2,}(\S.*))?$", line)
        if entry:
            entries.append([entry.group(1), entry.group(2) or ""])
        elif entries:
            entries[-1][1] = f"{entries[-1][1]} {line.strip()}".strip()
    return {call.split()[0]: (call, what) for call, what in entries}
