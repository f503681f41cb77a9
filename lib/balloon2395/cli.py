"""Command line: run the loop (default), `status`, `check-config`."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import PROG, __version__, config as cfg, doctor
from .logs import lines as logs
from .quoted import escaped
from .service import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, serve
from .views import watch

# each command: how it is called, and what it does (its own --help says the second; the daemon's, all)
_COMMANDS = {
    "run": ("run", "(default) every --secs, grow guests whose usable share of their size is below --minimal "
                   "(or, with --policy target, whose usable is below --headroom) and shrink those above --maximal"),
    "status": ("status [--json] [--watch]", "what every running domain looks like and what the next cycle would "
                                            "do; --watch: a live table, most pressed domain first"),
    "explain": ("explain DOMAIN", "the inputs and the rule behind a domain's last and next decision"),
    "check-config": ("check-config [FILE] [--print]",
                     f"validate a config file (default {cfg.DEFAULT_CONFIG_PATH}) and exit; --print: the settings "
                     "in effect, as YAML it takes back"),
    "doctor": ("doctor [--json]", "check the host and every running guest for what keeps ballooning from working "
                                  "(balloon driver, stats period, maximum, passthrough, hugepages, swap, KSM, lock "
                                  "directory) and say what to change; changes nothing; exit 1 when a check FAILs"),
}
COMMANDS = tuple(_COMMANDS)
_SUMMARY = "Keep every running QEMU/KVM guest's usable memory inside a band by ballooning it through virsh."
_FOOTER = """\
Sizes take units (512MiB, 2GiB); a bare number is MiB, as in the original.
exit status: 0 ok (the daemon also when SIGTERM or SIGINT stopped it), 1 failure, 2 bad config or usage,
3 another instance holds the lock, 130 interrupted by Ctrl-C (explain, check-config, or the daemon
before it started)."""


def _description(command: str) -> str:
    """The daemon's help lists every command; a command's own, what it does."""
    if command != "run":
        return "\n".join([_SUMMARY, "", *textwrap.wrap(_COMMANDS[command][1], 96), "", _FOOTER])
    lines = [_SUMMARY, "", "commands:"]
    for call, what in _COMMANDS.values():
        wrapped = textwrap.wrap(what, 74)
        first = f"  {call:<18}" if len(call) <= 18 else f"  {call}\n" + " " * 20
        lines += [first + wrapped[0].rstrip(), *(" " * 20 + line for line in wrapped[1:])]
    return "\n".join(lines + ["", _FOOTER])


def _bounded(lo: float, hi: float, integer: bool = False) -> Callable[[str], float]:
    """An argparse type for a flag no config key checks: a finite number from lo to hi, else a usage error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return cfg.checked_number(value, lo, hi, integer)  # the config keys' own check
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


_GROUPS = {"knobs": "knobs (override the config file)", "connection": "connection", "operation": "operation"}
# status and explain take the flags that change a decision or reach the hypervisor; not the daemon's own
# (its cadence, logging, metrics, dry run: a view never acts)
_VIEW_KEYS = tuple(s.key for s in cfg.SETTINGS if s.group in ("knobs", "connection")
                   and s.key not in ("secs", "debug", "dry_run", "logdir"))


def _add_knobs(parser: argparse.ArgumentParser, keys: Optional[Tuple[str, ...]] = None) -> None:
    """Every config key is a flag too (config.SETTINGS: its help and default); only flags given on the
    command line override the file."""
    groups = {name: parser.add_argument_group(title) for name, title in _GROUPS.items()}
    for s in cfg.SETTINGS:
        if not s.group or keys is not None and s.key not in keys:
            continue
        names = ["-c", s.flag] if s.key == "connect" else [s.flag]
        kwargs: Dict[str, Any] = {"default": argparse.SUPPRESS, "dest": s.key,
                                  "help": f"{s.help} (default: {s.default_shown})".replace("%", "%%")}
        if s.choices:
            kwargs["choices"] = s.choices
        elif s.metavar is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = s.metavar
        if s.key == "connect":
            kwargs["action"] = "append"
        if s.flag_type is not None:
            kwargs["type"] = s.flag_type
        groups[s.group].add_argument(*names, **kwargs)


def parser(command: str) -> argparse.ArgumentParser:
    prog = PROG if command == "run" else f"{PROG} {command}"
    # the daemon's usage names the other commands too: each has its own flags, shown by COMMAND --help
    usage = (f"%(prog)s [run] [options]\n       %(prog)s {{{','.join(COMMANDS[1:])}}} [options] "
             "(COMMAND --help: its own)") if command == "run" else None
    parser = argparse.ArgumentParser(prog=prog, description=_description(command), usage=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    if command == "check-config":
        parser.add_argument("file", nargs="?", help=f"config file (default {cfg.DEFAULT_CONFIG_PATH})")
        parser.add_argument("--print", action="store_true", dest="print_settings",
                            help="print the settings in effect (the file over the defaults) as YAML that "
                                 "check-config takes back")
        return parser
    parser.add_argument("--config", metavar="FILE",
                        help=f"YAML config (default {cfg.DEFAULT_CONFIG_PATH} when it exists)")
    if command == "run":
        parser.add_argument("--once", action="store_true", help="run one cycle, then exit")
        sim = parser.add_argument_group("simulated host (no VMs, no libvirt needed)")
        sim.add_argument("--simulate", nargs="?", const="", metavar="SCENARIO",
                         help="run against a simulated host: a scenario from examples/scenarios/ or a YAML file "
                              "(default demo)")
        sim.add_argument("--duration", type=_bounded(0.1, 864000), metavar="S",
                         help="stop after S simulated seconds (default: Ctrl-C)")
        sim.add_argument("--speed", type=_bounded(0.01, 100000), default=10.0, metavar="N",
                         help="simulated seconds per real second (default 10)")
        sim.add_argument("--seed", type=int, default=0, help="seed of the simulated workloads (default 0)")
    elif command == "explain":
        parser.add_argument("domain", help="a running domain's name")
    elif command == "doctor":
        parser.add_argument("--json", action="store_true", help="print the findings as JSON")
        _add_knobs(parser, ("connect", "virsh", "timeout"))  # what reaches the hypervisor; the rest: --config
        return parser
    else:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--watch", action="store_true", help="redraw every --refresh seconds until Ctrl-C")
        parser.add_argument("--refresh", type=_bounded(0.05, 86400), default=2.0, metavar="S",
                            help="--watch: seconds between redraws")
        parser.add_argument("--count", type=_bounded(1, 100000, integer=True), metavar="N",
                            help="--watch: stop after N redraws")
    _add_knobs(parser, None if command == "run" else _VIEW_KEYS)
    return parser


def _flags(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in cfg.KEYS}


def _fail(message: str, code: int) -> int:
    print(escaped(f"{PROG}: {message}"), file=sys.stderr)  # it may quote a name or virsh's stderr
    return code


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C in a view or check, or before the daemon's own handlers: no traceback
        return EXIT_INTERRUPTED


def _main(argv: Optional[List[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    args = parser(command).parse_args(argv)
    try:
        if command == "check-config":
            path = args.file or cfg.default_path()
            if path is None:
                return _fail(f"no file given and {cfg.DEFAULT_CONFIG_PATH} does not exist", EXIT_USAGE)
            checked = cfg.load(path, {})
            if args.print_settings:
                print(cfg.render_effective(checked, path), end="")
            else:
                print(f"{path}: ok")
            return EXIT_OK
        config = cfg.load(args.config or cfg.default_path(), _flags(args))
    except cfg.ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if command == "run" and args.simulate is not None:
        from .sim.live import simulate  # the daemon proper never loads the simulator
        return simulate(config, args.simulate, args.duration, args.speed, args.seed)
    if command == "run":
        return serve(config, args.config or cfg.default_path(), _flags(args), args.once)
    logs.setup(None, debug=False)
    if command == "explain":
        return watch.explain(config, args.domain)
    if command == "doctor":
        return doctor.doctor(config, args.json)
    return watch.status(config, args.json, args.watch, args.refresh, args.count)

