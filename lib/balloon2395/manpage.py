"""The manual page balloon-2395(8), made from the command line itself: SYNOPSIS and OPTIONS from cli's
parsers (cliref), DESCRIPTION and EXIT STATUS from the description --help prints; the rest is
written here. docs/balloon-2395.8 is its output, and tests/test_manpage.py holds it so:

    PYTHONPATH=lib python3 -m balloon2395.manpage > docs/balloon-2395.8
"""

from __future__ import annotations

import re
import sys
from typing import Dict, Iterable, List, Sequence, Tuple

from . import PROG, __version__, cliref, config as cfg, service
from .logs import lines as logs

SUMMARY = "keep QEMU/KVM guests' usable memory in a band by ballooning them"


# ---------------------------------------------------------------- roff

def text(line: str) -> str:
    """Plain text as roff prints it: backslashes literal, every dash ASCII (roff's `-` is a typographic
    hyphen, and flags, paths and names pasted from the page must work), anything beyond ASCII by its code
    point, no line read as a request."""
    out = line.replace("\\", "\\e").replace("-", "\\-")
    out = re.sub(r"[^\x20-\x7e\n]", lambda m: f"\\[u{ord(m.group()):04X}]", out)
    return "\n".join("\\&" + part if part.startswith((".", "'")) else part for part in out.split("\n"))


def _arg(words: str) -> str:
    """A macro's argument, quoted."""
    return '"' + text(words).replace('"', "\\(dq") + '"'


def _bold(words: str) -> str:
    return f"\\fB{text(words)}\\fR"


def _italic(words: str) -> str:
    return f"\\fI{text(words)}\\fR"


def _value(option: cliref.Option) -> str:
    if option.metavar is None:
        return ""
    shown = ("{" + "|".join(_bold(c) for c in option.choices) + "}") if option.choices else _italic(option.metavar)
    return f" [{shown}]" if option.value_optional else f" {shown}"


def _usage(option: cliref.Option, between: str = ", ") -> str:
    return between.join(_bold(flag) for flag in option.flags) + _value(option)


def _tagged(tag: str, body: str) -> List[str]:
    return [".TP", tag, text(body)]


# ---------------------------------------------------------------- the description --help prints

def _exit_statuses(description: str) -> List[Tuple[int, str]]:
    """[(status, meaning)] from the description's `exit status:` sentence."""
    _, found, rest = description.partition("exit status:")
    if not found:
        raise ValueError("the run command's description says no 'exit status:'")
    statuses = re.split(r",\s+(?=\d+ )", " ".join(rest.split()).rstrip("."))
    return [(int(code), meaning) for code, meaning in (s.split(" ", 1) for s in statuses)]


def _notes(description: str) -> List[str]:
    """The paragraphs between the commands and the exit statuses (the units sizes take)."""
    after = description.split(cliref.COMMANDS_BLOCK, 1)[1].split("\n\n", 1)[1]
    return [" ".join(p.split()) for p in after.split("exit status:", 1)[0].split("\n\n") if p.strip()]


# ---------------------------------------------------------------- sections

def _who(names: Sequence[str], every: Sequence[str]) -> str:
    return "every command" if list(names) == list(every) else ", ".join(names)


def _sections(commands: Sequence[cliref.Command]) -> List[Tuple[str, Tuple[str, ...], List[cliref.Option]]]:
    """OPTIONS' subsections: each argparse group once per set of commands that share its flags, those
    of the most commands first, so the knobs `run`, `status` and `explain` all take are said once."""
    users: Dict[cliref.Option, List[str]] = {}
    for command in commands:
        for option in command.options:
            users.setdefault(option, []).append(command.name)
    sections: Dict[Tuple[str, Tuple[str, ...]], List[cliref.Option]] = {}
    for option, names in users.items():
        sections.setdefault((option.group, tuple(names)), []).append(option)
    order = sorted(sections, key=lambda key: -len(key[1]))  # stable: first seen first among equals
    return [(group, names, sections[(group, names)]) for group, names in order]


def _synopsis(commands: Sequence[cliref.Command], shared: Iterable[cliref.Option]) -> List[str]:
    """One line per command with its own flags and arguments (OPTION: the groups it shares with other
    commands), then the flags every command takes."""
    common = set(shared)
    everywhere = [o for o in commands[0].options if all(o in c.options for c in commands)]
    lines = []
    for at, command in enumerate(commands):
        items = [f"[{_bold(command.name)}]" if at == 0 else _bold(command.name)]  # the first is the default
        items += [f"[{_usage(o, '|')}]" for o in command.options if o not in common]
        if any(o in common and o not in everywhere for o in command.options):
            items.append(f"[{_italic('OPTION')}]...")
        items += [f"[{_italic(p.name)}]" if p.optional else _italic(p.name) for p in command.positionals]
        lines += [".SY " + text(PROG), *items, ".YS"]
    return lines + [".SY " + text(PROG), f"[{_italic('COMMAND')}]",
                    "|".join(_usage(o, "|") for o in everywhere), ".YS"]


def _options(commands: Sequence[cliref.Command]) -> Tuple[List[str], List[cliref.Option]]:
    every = [c.name for c in commands]
    lines, shared = [], []
    for group, names, options in _sections(commands):
        lines.append(".SS " + _arg(f"{group[:1].upper()}{group[1:]} ({_who(names, every)})"))
        for option in options:
            lines += _tagged(_usage(option), option.help)
        if len(names) > 1:
            shared += options
    for command in commands:
        if command.positionals:
            lines.append(".SS " + _arg(f"Arguments ({command.name})"))
            for positional in command.positionals:
                lines += _tagged(_italic(positional.name), positional.help)
    return lines, shared


def _description(description: str, names: Sequence[str]) -> List[str]:
    summary = " ".join(description.split("\n\n", 1)[0].split())
    entries = cliref.summaries(description)
    missing = [name for name in names if name not in entries]
    if missing:
        raise ValueError(f"the 'commands:' block of run's description lists no {', '.join(missing)}")
    lines = [text(summary), ".PP", text("The first argument may name a command; without one it is run.")]
    for name in names:
        head, what = entries[name]
        lines += _tagged(_bold(name) + text(head[len(name):]), what)
    for note in _notes(description):
        lines += [".PP", text(note)]
    lines += [".PP", text(f"Every flag of the knobs, connection and operation groups is also a key of the "
                          f"configuration file ({cfg.DEFAULT_CONFIG_PATH}, YAML); a flag given on the command "
                          f"line overrides the file. It runs as root, normally as the service {PROG}.service.")]
    return lines


def _signals() -> List[Tuple[str, str]]:
    restart = ", ".join(service.RESTART_ONLY_KEYS)
    return [
        ("SIGTERM, SIGINT",
         "The daemon (run) finishes its current cycle (a setmem under way completes and is logged), removes its "
         "state file, ends its virsh session, releases its lock and exits 0, in the loop and with --once alike. "
         "One that arrives while it starts (the lock, the KSM check) stops it before its first cycle. The other "
         "commands end on SIGINT (Ctrl-C) with status 130, status --watch with 0."),
        ("SIGHUP",
         f"systemctl reload {PROG}: the daemon re-reads the same configuration file with the same flags and each "
         "connection takes the new settings before its next cycle. A bad file is one ERROR line (reload failed, "
         "keeping the running config) and the running configuration stays; so does a reload that fails any "
         f"other way. {restart} need a restart: a reload that changes them says so and keeps the running values."),
    ]


FILES = [
    (cfg.DEFAULT_CONFIG_PATH,
     "The configuration (YAML), read at start and on SIGHUP when no --config is given and it exists; "
     f"{PROG} check-config validates it."),
    ("/run/balloon-2395/",
     "The lock directory (--lock-dir, lock_dir) as root; other users' is $XDG_RUNTIME_DIR/balloon-2395. "
     "Per hypervisor (NAME from its URI, e.g. qemu_system-1021ab2b): NAME.lock, the instance lock; NAME.pid, "
     "its holder; NAME.state.json, the last cycle that status and explain read (removed on a clean stop); "
     "NAME.changes.json, when each domain was last changed (written before every setmem) and the sizes "
     "idle_shrink needed keeps of it."),
    (f"DIR/{logs.LOG_FILE}",
     f"The log with --logdir DIR, rotated at {logs.ROTATE_BYTES // (1024 * 1024)} MiB, {logs.ROTATE_KEEP} kept; "
     "without it, lines go to stderr (under systemd, to the journal: journalctl -u balloon-2395)."),
    (f"/lib/systemd/system/{PROG}.service",
     f"The unit the Debian package installs and starts; install.sh --systemd installs one running a checkout as "
     f"/etc/systemd/system/{PROG}.service."),
]

ENVIRONMENT = [
    ("LIBVIRT_DEFAULT_URI",
     "The hypervisor when no --connect is given; without it, qemu:///system as root, qemu:///session else."),
    ("XDG_RUNTIME_DIR", "Where a user other than root keeps the lock directory when no --lock-dir is given."),
    ("PATH", "Where virsh is found when no --virsh is given. virsh always runs with LC_ALL=C."),
    ("JOURNAL_STREAM",
     "Set by systemd: when stderr is the journal, lines carry their priority and no timestamp "
     "(--log-format text)."),
    ("NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID",
     "Set by systemd for a Type=notify unit: the daemon reports ready, reloading and stopping, and pings the "
     "watchdog while every connection's loop turns; they are removed from the environment virsh gets."),
]

SEE_ALSO = (".BR virsh (1),\n.BR systemctl (1),\n.BR journalctl (1),\n.BR systemd.service (5).\n.PP\n"
            + text("The README and docs/ of the source (operations.md: the configuration keys, per-domain rules, "
                   "logs, metrics; policy.md: how it decides), installed by the Debian package in "
                   f"/usr/share/doc/{PROG}/."))


def render(commands: Sequence[cliref.Command] = ()) -> str:
    commands = commands or cliref.commands()
    description = commands[0].description  # the default command's lists them all
    options, shared = _options(commands)
    lines = [f'.TH {_arg(PROG.upper())} 8 "" {_arg(f"{PROG} {__version__}")} "System Administration"',
             ".nh", ".ad l",  # flags, paths and URIs broken at a hyphen or stretched are misread
             ".SH NAME", f"{text(PROG)} \\- {text(SUMMARY)}",
             ".SH SYNOPSIS", *_synopsis(commands, shared),
             ".SH DESCRIPTION", *_description(description, [c.name for c in commands]),
             ".SH OPTIONS", *options,
             ".SH \"EXIT STATUS\""]
    for code, meaning in _exit_statuses(description):
        lines += _tagged(_bold(str(code)), meaning)
    lines.append(".SH SIGNALS")
    for name, what in _signals():
        lines += _tagged(_bold(name), what)
    lines.append(".SH FILES")
    for path, what in FILES:
        lines += _tagged(_italic(path), what)
    lines.append(".SH ENVIRONMENT")
    for name, what in ENVIRONMENT:
        lines += _tagged(_bold(name), what)
    lines += [".SH \"SEE ALSO\"", SEE_ALSO]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
