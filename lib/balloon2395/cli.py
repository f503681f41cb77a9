"""Command line: run the loop (default), `status`, `check-config`."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Optional

from . import PROG, __version__, config as cfg, logs, watch
from .quoted import escaped
from .service import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, serve

COMMANDS = ("run", "status", "explain", "check-config")

DESCRIPTION = f"""\
Keep every running QEMU/KVM guest's usable memory inside a band by ballooning it through virsh.

commands:
  run                 (default) every --secs, grow guests whose usable memory is below
                      --minimal % of their size (or, with --policy target, below
                      --headroom) and shrink those above --maximal %
  status [--json] [--watch]
                      what every running domain looks like and what the next cycle would do;
                      --watch: a live table, most pressed domain first
  explain DOMAIN      the inputs and the rule behind a domain's last and next decision
  check-config [FILE] validate a config file (default {cfg.DEFAULT_CONFIG_PATH}) and exit

Sizes take units (512MiB, 2GiB); a bare number is MiB, as in the original.
exit status: 0 ok (the daemon also when SIGTERM or SIGINT stopped it), 1 failure, 2 bad config or usage,
3 another instance holds the lock, 130 interrupted by Ctrl-C (explain, check-config, or the daemon
before it started)."""


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


def _add_knobs(parser: argparse.ArgumentParser) -> None:
    """Every config key is a flag too; only flags given on the command line override the file."""
    S = argparse.SUPPRESS
    g = parser.add_argument_group("knobs (override the config file)")
    g.add_argument("--minimal", type=float, default=S, metavar="PCT", help="grow below this usable %% (default 25)")
    g.add_argument("--maximal", type=float, default=S, metavar="PCT", help="shrink above this usable %% (default 35)")
    g.add_argument("--critical", default=S, metavar="SIZE", help="floor: never shrink below it (default 300MiB)")
    g.add_argument("--addram", default=S, metavar="SIZE", help="step: grow step; target: the least a grow adds while "
                                                                 "the guest is paging (default 100MiB)")
    g.add_argument("--rmram", default=S, metavar="SIZE", help="step: shrink step (default 50MiB)")
    g.add_argument("--secs", type=float, default=S, metavar="S", help="seconds between cycles (default 0.5)")
    g.add_argument("--stats-period", type=int, default=S, metavar="S", dest="stats_period",
                   help="guest stats period set on domains that report no usable memory (default 1)")
    g.add_argument("--stale-after", type=float, default=S, metavar="S", dest="stale_after",
                   help="ignore stats older than this (default max(5, 3 x stats period))")
    g.add_argument("--policy", default=S, choices=cfg.POLICIES,
                   help="decision rule: target (default), step (the original's fixed steps), or the peers' "
                        "rules proxmox and mom, ported (best with --secs 10)")
    g.add_argument("--headroom", default=S, metavar="SIZE",
                   help="target: usable never planned below this (default 256MiB)")
    g.add_argument("--max-shrink", default=S, metavar="SIZE", dest="max_shrink",
                   help="target: the most one shrink takes (default 256MiB)")
    g.add_argument("--shares", type=int, default=S, metavar="N",
                   help="target: weight of the guest's fair share under host pressure; fewer shares give "
                        "back more (default 1000)")
    g.add_argument("--burst-wait", type=float, default=S, metavar="S", dest="burst_wait",
                   help="target: a guest that cannot page (no swap seen, no autodeflate) is shrunk for saving "
                        "only after this many seconds without a burst; 0: at once (default 600)")
    g.add_argument("--host-reserve", default=S, metavar="SIZE|PCT", dest="host_reserve",
                   help="target: memory the host keeps, e.g. 2GiB or 10%% (default: the larger of 10%% and 1GiB)")
    g.add_argument("--host-memory", default=S, choices=cfg.HOST_MEMORY, dest="host_memory",
                   help="where host memory is read (default auto: /proc locally, nodememstats for a remote URI; "
                        "cgroup: the limit and usage of --host-cgroup)")
    g.add_argument("--host-cgroup", default=S, metavar="DIR", dest="host_cgroup",
                   help="with --host-memory cgroup: the memory cgroup the guests run in, its limit taken as the "
                        f"host's memory (default {cfg.DEFAULT_HOST_CGROUP})")
    g.add_argument("--host-psi", type=float, default=S, metavar="AVG10", dest="host_psi",
                   help="target: host PSI memory 'some avg10' above which the host counts as short (default off)")
    g.add_argument("--manage-windows", action=argparse.BooleanOptionalAction, default=S, dest="manage_windows",
                   help="also balloon Windows guests (default: leave them alone)")
    g.add_argument("--debug", action=argparse.BooleanOptionalAction, default=S,
                   help="log a block per domain per cycle")
    g.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=S, dest="dry_run",
                   help="decide and log; never setmem, never switch a stats period on")
    g.add_argument("--logdir", default=S, metavar="DIR", help="log to DIR/balloon-2395.log (rotated) instead of stderr")
    c = parser.add_argument_group("connection")
    c.add_argument("-c", "--connect", action="append", default=S, metavar="URI",
                   help="hypervisor URI (default $LIBVIRT_DEFAULT_URI, else qemu:///system as root); "
                        "repeat it to serve several from one process, each with its own lock")
    c.add_argument("--virsh", default=S, metavar="PATH", help="virsh binary (default: virsh from PATH)")
    c.add_argument("--timeout", type=float, default=S, metavar="S", help="per virsh call timeout (default 10)")
    c.add_argument("--session", action=argparse.BooleanOptionalAction, default=S,
                   help="one long-lived virsh process for all calls instead of one per call (default: on)")
    c.add_argument("--lock-dir", default=S, metavar="DIR", dest="lock_dir",
                   help="where the instance lock lives (default /run/balloon-2395, or $XDG_RUNTIME_DIR/balloon-2395)")
    o = parser.add_argument_group("operation")
    o.add_argument("--log-format", default=S, choices=cfg.LOG_FORMATS, dest="log_format",
                   help="text (default; bare lines with priorities under systemd's journal) or json")
    o.add_argument("--ksm", default=S, choices=cfg.KSM_MODES,
                   help="when KSM runs: warn (default, one line saying what it means), refuse to start, ignore")
    o.add_argument("--metrics-textfile", default=S, metavar="PATH", dest="metrics_textfile",
                   help="write Prometheus metrics to PATH (node_exporter textfile collector) after every cycle")
    o.add_argument("--metrics-port", type=int, default=S, metavar="PORT", dest="metrics_port",
                   help="serve Prometheus metrics over HTTP on PORT")
    o.add_argument("--metrics-address", default=S, metavar="IP", dest="metrics_address",
                   help="address the metrics endpoint listens on (default 127.0.0.1)")


def _parser(command: str) -> argparse.ArgumentParser:
    prog = PROG if command == "run" else f"{PROG} {command}"
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    if command == "check-config":
        parser.add_argument("file", nargs="?", help=f"config file (default {cfg.DEFAULT_CONFIG_PATH})")
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
    else:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--watch", action="store_true", help="redraw every --refresh seconds until Ctrl-C")
        parser.add_argument("--refresh", type=_bounded(0.05, 86400), default=2.0, metavar="S",
                            help="--watch: seconds between redraws")
        parser.add_argument("--count", type=_bounded(1, 100000, integer=True), metavar="N",
                            help="--watch: stop after N redraws")
    _add_knobs(parser)
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
    args = _parser(command).parse_args(argv)
    try:
        if command == "check-config":
            path = args.file or cfg.default_path()
            if path is None:
                return _fail(f"no file given and {cfg.DEFAULT_CONFIG_PATH} does not exist", EXIT_USAGE)
            cfg.load(path, {})
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
    return watch.status(config, args.json, args.watch, args.refresh, args.count)

