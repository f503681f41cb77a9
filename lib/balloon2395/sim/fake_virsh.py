"""A virsh look-alike backed by a JSON host-state file, for tests, fault injection and the simulator.

Its output copies real virsh 9.0 byte for byte (tests compare it with
captured fixtures). It implements only what balloon-2395 and its tests use.

State file (path in $FAKE_VIRSH_STATE):
  {"domains": [{"name", "uuid", "id", "state": "running"|"paused"|"shut off",
                "actual_kib", "maximum_kib", "period": seconds or 0,
                "driver": true (guest has the balloon driver; false: no guest stats, setmem a no-op),
                "stuck": true (stats flow but setmem never takes effect),
                "balloon": "virtio"|"none", "os": libosinfo id or null, "hyperv": bool,
                "autodeflate", "free_page_reporting": bool, the balloon's features (off by default),
                "settings": {attribute: value} of our metadata,
                "stats": {"usable": KiB, "available": ..., ...},
                "last_update": epoch s, or "age": seconds before now,
                "boot_update": epoch s of the one report a guest without a period sent}],
   "host": {"total_kib", "free_kib", "buffers_kib", "cached_kib"},
   "faults": {"COMMAND": {"sleep": s, "exit": n, "stderr": text, "stdout": text, "times": n,
                          "die": true (the process ends after answering)},
              "connect": {...}: libvirtd out of reach, no command runs}}
Without a command it reads commands on stdin, as virsh's interactive mode on a pipe.
Every process start is appended to $FAKE_VIRSH_LOG as its JSON argv list, every
line read in an interactive session as {"in_session": argv}, a line of several
commands as one argument, as in `virsh 'a ; b'`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

# The order real virsh/QEMU report guest stats in.
GUEST_STATS = ("swap_in", "swap_out", "major_fault", "minor_fault", "unused", "available", "usable",
               "last_update", "disk_caches", "hugetlb_pgalloc", "hugetlb_pgfail")
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
SETTINGS_NS = "https://balloon-2395.example/ns/1"
BALLOON_SWITCHES = (("autodeflate", "autodeflate"), ("free_page_reporting", "freePageReporting"))


class Fail(Exception):
    # virsh prints its usual trailing newline on stdout when a known command fails
    def __init__(self, message: str, exit_code: int = 1, stdout: str = "\n") -> None:
        super().__init__(message)
        self.exit_code, self.stdout = exit_code, stdout


def _now() -> float:
    return float(os.environ.get("FAKE_VIRSH_NOW") or time.time())


def _last_update(dom: dict) -> int:
    if "last_update" in dom:
        return int(dom["last_update"])
    return int(_now() - dom.get("age", 0))


def balloon_figures(dom: dict) -> List[Tuple[str, int]]:
    """(dommemstat key, value) in virsh's order, as QEMU reports them in each situation."""
    rss = ("rss", int(dom.get("rss_kib", dom["actual_kib"] // 2)))
    if dom.get("balloon", "virtio") != "virtio":
        return [rss]  # no device: no balloon size at all
    if not dom.get("driver", True):
        # The device answers for a driver that never loaded: size stuck at <memory>, no report.
        return [("actual", dom["maximum_kib"]), ("last_update", 0), rss]
    stats = dict(dom.get("stats", {}))
    # Without a period the driver's one report from boot stays, frozen.
    stats["last_update"] = _last_update(dom) if dom.get("period", 0) else int(dom.get("boot_update", _now() - 600))
    return [("actual", dom["actual_kib"])] + [(key, int(stats[key])) for key in GUEST_STATS if key in stats] + [rss]


def render_dommemstat(dom: dict) -> str:
    return "".join(f"{key} {value}\n" for key, value in balloon_figures(dom)) + "\n"


def render_domstats(domains: List[dict]) -> str:
    out = []
    for dom in domains:
        figures = dict(balloon_figures(dom))
        out.append(f"Domain: '{dom['name']}'\n")
        out.append(f"  balloon.current={figures.pop('actual', dom['actual_kib'])}\n")
        out.append(f"  balloon.maximum={dom['maximum_kib']}\n")
        for key, value in figures.items():
            out.append(f"  balloon.{key.replace('last_update', 'last-update')}={value}\n")
        out.append("\n")
    return "".join(out) or "\n"


def render_dumpxml(dom: dict) -> str:
    meta = ""
    if dom.get("os"):
        meta += (f"    <libosinfo:libosinfo xmlns:libosinfo=\"{LIBOSINFO_NS}\">\n"
                 f"      <libosinfo:os id=\"{dom['os']}\"/>\n    </libosinfo:libosinfo>\n")
    if dom.get("settings"):
        attrs = "".join(f' {key}="{value}"' for key, value in dom["settings"].items())
        meta += f'    <b2395:settings xmlns:b2395="{SETTINGS_NS}"{attrs}/>\n'
    meta = f"  <metadata>\n{meta}  </metadata>\n" if meta else ""
    features = "  <features>\n    <acpi/>\n"
    if dom.get("hyperv"):
        features += "    <hyperv mode='custom'>\n      <relaxed state='on'/>\n    </hyperv>\n"
    features += "  </features>\n"
    model = dom.get("balloon", "virtio")
    period = dom.get("period", 0)
    switches = "".join(f" {attribute}='on'" for key, attribute in BALLOON_SWITCHES if dom.get(key))
    balloon = f"    <memballoon model='{model}'{switches}>\n"
    if period:
        balloon += f"      <stats period='{period}'/>\n"
    balloon += "    </memballoon>\n"
    domid = f" id='{dom['id']}'" if dom.get("state", "running") != "shut off" else ""
    name = dom["name"].replace("&", "&amp;").replace("<", "&lt;")
    return (f"<domain type='qemu'{domid}>\n  <name>{name}</name>\n  <uuid>{dom['uuid']}</uuid>\n{meta}"
            f"  <memory unit='KiB'>{dom['maximum_kib']}</memory>\n"
            f"  <currentMemory unit='KiB'>{dom['actual_kib']}</currentMemory>\n"
            f"  <vcpu placement='static'>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>\n"
            f"  </os>\n{features}  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n{balloon}"
            f"  </devices>\n</domain>\n\n")


def render_list_table(domains: List[dict]) -> str:
    """`virsh list [--all]`: a table that, under LC_ALL=C, shows each non-ASCII byte of a name as \\xff."""
    rows = [(str(d["id"]) if d.get("state", "running") != "shut off" else "-",
             "".join(chr(b) if b < 0x80 else "\\xff" for b in d["name"].encode("utf-8")),
             d.get("state", "running")) for d in domains]
    widths = [max([len(title)] + [len(row[i]) for row in rows]) for i, title in enumerate(("Id", "Name", "State"))]

    def line(cells: Tuple[str, str, str]) -> str:
        return " " + "   ".join(cell.ljust(width) for cell, width in zip(cells[:2], widths)) + "   " + cells[2] + "\n"

    return line(("Id", "Name", "State")) + "-" * (sum(widths) + 9) + "\n" + "".join(map(line, rows)) + "\n"


def render_dominfo(dom: dict) -> str:
    running = dom.get("state", "running") != "shut off"
    rows = [
        ("Id", str(dom["id"]) if running else "-"), ("Name", dom["name"]), ("UUID", dom["uuid"]),
        ("OS Type", "hvm"), ("State", dom.get("state", "running")), ("CPU(s)", "1"),
        ("CPU time", dom.get("cpu_time", "1.0s")), ("Max memory", f"{dom['maximum_kib']} KiB"),
        ("Used memory", f"{dom['actual_kib']} KiB"), ("Persistent", "yes"), ("Autostart", "disable"),
        ("Managed save", "no"), ("Security model", "none"), ("Security DOI", "0"),
    ] + ([("Messages", dom["messages"])] if dom.get("messages") else [])
    return "".join(f"{(key + ':').ljust(16)}{value}\n" for key, value in rows) + "\n"


_AS_ID = re.compile(r"^[ \t\n\v\f\r]*[+-]?[0-9]+\Z")


class FakeHost:
    def __init__(self, state: dict) -> None:
        self.state = state
        self.dying = False  # a "die" fault: the virsh process ends right after this command

    def running(self) -> List[dict]:
        return [d for d in self.state.get("domains", []) if d.get("state", "running") == "running"]

    def domain(self, name: str) -> dict:
        """virsh's lookup (virshLookupDomainInternal): a number is tried as a running domain's id,
        then a 36-character string as a uuid, then it is a name. So `--domain 1` is the domain
        with id 1 while there is one, whatever domain is named "1"."""
        domains = self.state.get("domains", [])
        if _AS_ID.match(name) and int(name) >= 0:  # strtol's reading: leading blanks and a sign
            for dom in self.running():
                if int(dom.get("id", -1)) == int(name):
                    return dom
        for key in ("uuid",) * (len(name) == 36) + ("name",):
            for dom in domains:
                if dom.get(key) == name:
                    return dom
        raise Fail(f"error: failed to get domain '{name}'\n")

    def active(self, name: str) -> dict:
        dom = self.domain(name)
        if dom.get("state", "running") == "shut off":
            raise Fail("error: Requested operation is not valid: domain is not running\n")
        return dom

    def call(self, command: str, args: List[str]) -> Tuple[str, str, int, bool]:
        """(stdout, stderr, exit status, state changed), faults injected first."""
        if not args and " " in command.strip():
            return self._line(command)
        fault = self.state.get("faults", {}).get(command)
        if fault:
            if "times" in fault:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    del self.state["faults"][command]
            if fault.get("sleep"):
                time.sleep(fault["sleep"])
            self.dying = bool(fault.get("die"))
            return fault.get("stdout", ""), fault.get("stderr", ""), int(fault.get("exit", 0)), True
        if command == "echo":
            return _echo(args)
        try:
            stdout, changed = self.run(command, args)
            return stdout, "", 0, changed
        except Fail as exc:
            return exc.stdout, str(exc), exc.exit_code, False

    def _line(self, line: str) -> Tuple[str, str, int, bool]:
        """`virsh 'a ; b'`: the commands in turn, their outputs joined; the first error ends the line."""
        outputs, changed = [], False
        for words in split_commands(line):
            stdout, stderr, code, step_changed = self.call(words[0], words[1:])
            outputs.append(stdout)
            changed = changed or step_changed
            if code or self.dying:
                return "".join(outputs), stderr, code, changed
        return "".join(outputs), "", 0, changed

    def connect(self) -> Optional[Tuple[str, str, int, bool]]:
        """A "connect" fault is libvirtd out of reach: virsh says why and runs no command."""
        return self.call("connect", []) if "connect" in self.state.get("faults", {}) else None

    def run(self, command: str, args: List[str]) -> Tuple[str, bool]:
        """(stdout, state changed); raises Fail as virsh would fail. (`echo` is answered by call.)"""
        opts, positional = _options(args)
        host_wide, per_domain = _HOST_WIDE.get(command), _PER_DOMAIN.get(command)
        if host_wide is not None:
            return host_wide(self, opts, positional)
        if per_domain is None:
            raise Fail(f"error: unknown command: '{command}'\n", stdout="")
        name = opts.get("domain") or (positional[0] if positional else None)
        if name is None:
            raise Fail("error: command '%s' requires <domain> option\n" % command)
        return per_domain(self, name, opts, positional)

    # Host-wide commands: (stdout, state changed) from the options and positional words.

    def _domstats(self, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        names = positional + ([opts["domain"]] if "domain" in opts else [])  # --list-running --domain X: X
        return render_domstats([self.domain(n) for n in names] if names else self.running()), False

    def _list(self, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        doms = self.state.get("domains", [])
        if "state-running" in opts:
            doms = self.running()
        elif "all" not in opts:  # active: running or paused
            doms = [d for d in doms if d.get("state", "running") != "shut off"]
        # active domains by id, then the others by name (domstats keeps no order of its own)
        doms = sorted(doms, key=lambda d: (d.get("state", "running") == "shut off", int(d.get("id", 0)), d["name"]))
        fields = [key for key in ("uuid", "id", "name") if key in opts]  # in virsh's order
        if not fields:
            return render_list_table(doms), False
        return "".join(" ".join(str(d[key]) for key in fields) + "\n" for d in doms) + "\n", False

    def _version(self, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        return ("Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\n"
                "Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.0\n\n"), False

    def _nodememstats(self, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        host = self.state.get("host", {})
        return "".join(f"{k:<7}: {host.get(k + '_kib', 0):>20} KiB\n"
                       for k in ("total", "free", "buffers", "cached")) + "\n", False

    # Commands on one domain, `name` as given (--domain or the first positional word).

    def _dominfo(self, name: str, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        return render_dominfo(self.domain(name)), False

    def _dumpxml(self, name: str, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        return render_dumpxml(self.domain(name)), False

    def _metadata(self, name: str, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        dom = self.domain(name)
        if opts.get("uri") == LIBOSINFO_NS and dom.get("os"):
            return f'<libosinfo>\n  <os id="{dom["os"]}"/>\n</libosinfo>\n\n', False
        raise Fail("error: metadata not found: Requested metadata element is not present\n")

    def _dommemstat(self, name: str, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        dom = self.domain(name)
        if "period" in opts:
            return self._set_period(dom, opts["period"])
        if dom.get("state", "running") == "shut off":
            raise Fail(f"error: Failed to get memory statistics for domain {name}\n"
                       "error: Requested operation is not valid: domain is not running\n")
        return render_dommemstat(dom), False

    @staticmethod
    def _set_period(dom: dict, period_s: str) -> Tuple[str, bool]:
        if dom.get("state", "running") == "shut off":
            raise Fail("error: Unable to change balloon collection period.\n"
                       "error: Requested operation is not valid: domain is not running\n")
        dom["period"] = int(period_s)
        return "\n", True

    def _setmem(self, name: str, opts: Dict[str, str], positional: List[str]) -> Tuple[str, bool]:
        dom = self.active(name)
        size = int(opts.get("size") or positional[1])
        if size > dom["maximum_kib"]:
            raise Fail("error: invalid argument: cannot set memory higher than max memory\n")
        if dom.get("balloon", "virtio") != "virtio":
            raise Fail("error: Requested operation is not valid: Unable to change memory of active domain "
                       "without the balloon device and guest OS balloon driver\n")
        if dom.get("driver", True) and not dom.get("stuck"):
            dom["actual_kib"] = size
        return "\n", True


_HOST_WIDE: Dict[str, Callable[[FakeHost, Dict[str, str], List[str]], Tuple[str, bool]]] = {
    "domstats": FakeHost._domstats, "list": FakeHost._list, "version": FakeHost._version,
    "nodememstats": FakeHost._nodememstats}
_PER_DOMAIN: Dict[str, Callable[[FakeHost, str, Dict[str, str], List[str]], Tuple[str, bool]]] = {
    "dominfo": FakeHost._dominfo, "dumpxml": FakeHost._dumpxml, "metadata": FakeHost._metadata,
    "dommemstat": FakeHost._dommemstat, "setmem": FakeHost._setmem}
PROMPT = "virsh # "
BANNER = ("Welcome to virsh, the virtualization interactive terminal.\n\n"
          "Type:  'help' for help with commands\n       'quit' to quit\n\n")


def _echo(args: List[str]) -> Tuple[str, str, int, bool]:
    """virsh's echo prints its words without a newline of its own; --err makes them an error line."""
    text = " ".join(a for a in args if a not in ("--err", "--shell", "--xml", "--split"))
    if "--err" in args:
        return "\n", f"error: {text}\n", 0, False
    return text + "\n", "", 0, False


_FLAGS = {"list-running", "state-running", "all", "name", "live", "config", "current", "balloon", "inactive",
          "uuid", "id", "err", "shell", "xml", "split"}


def _options(args: List[str]) -> Tuple[Dict[str, str], List[str]]:
    opts: Dict[str, str] = {}
    positional: List[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += args[i + 1:]
            break
        if arg.startswith("--"):
            key = arg[2:]
            if key in _FLAGS:
                opts[key] = ""
            else:
                i += 1
                opts[key] = args[i] if i < len(args) else ""
        else:
            positional.append(arg)
        i += 1
    return opts, positional


def split_commands(line: str) -> List[List[str]]:
    """An interactive line as virsh parses it: words split on blanks, commands on ';', '...' taken
    literally, \\ escaping the next character (also inside "..."), a word starting with '#' a comment."""
    commands: List[List[str]] = [[]]
    word: Optional[str] = None  # None: between words
    quote = ""
    chars = iter(line)
    for ch in chars:
        if quote == "'" and ch != "'":
            word = (word or "") + ch
        elif (ch == "'" and quote != '"') or ch == '"':
            quote = "" if quote else ch
            word = word or ""
        elif ch == "\\":
            word = (word or "") + next(chars, "")
        elif not quote and ch in " \t;":
            if word is not None:
                commands[-1].append(word)
                word = None
            if ch == ";":
                commands.append([])
        elif not quote and ch == "#" and word is None:
            break
        else:
            word = (word or "") + ch
    if word is not None:
        commands[-1].append(word)
    return [words for words in commands if words]


def _with_state(act: Callable[[FakeHost], Tuple[str, str, int, bool]]) -> Tuple[str, str, int, bool]:
    """(stdout, stderr, exit status, dying) of `act` on the state file, locked: concurrent fakes take turns."""
    with open(os.environ["FAKE_VIRSH_STATE"], "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        host = FakeHost(json.load(handle))
        stdout, stderr, code, changed = act(host)
        if changed:
            handle.seek(0)
            handle.truncate()
            json.dump(host.state, handle)
    return stdout, stderr, code, host.dying


def _log(entry) -> None:
    log_path = os.environ.get("FAKE_VIRSH_LOG")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def _command(args: List[str], quiet: bool) -> Tuple[str, str, int, bool]:
    stdout, stderr, code, dying = _with_state(lambda host: host.connect() or host.call(args[0], args[1:]))
    if quiet and stdout.endswith("\n"):  # -q drops the newline virsh adds after each command
        stdout = stdout[:-1]
    return stdout, stderr, code, dying


def _echoed(line: str) -> str:
    """How readline echoes a line read from a pipe, after the prompt. On a dumb terminal (TERM=dumb,
    as the daemon's session runs virsh) of 80 columns, 79 usable, a line that does not fit is
    scrolled: '\\r<' and the last 51 characters of prompt and line (fixture interactive.long-line)."""
    if os.environ.get("TERM") == "dumb" and len(PROMPT + line) >= 79:
        return "\r<" + (PROMPT + line)[-51:]
    return line


def interactive(answer: Callable[[List[str]], Tuple[str, str, int, bool]], quiet: bool) -> int:
    """Commands read from stdin as virsh reads them from a pipe: each line echoed after the prompt, an
    error ending the rest of its line but not the session, exit 0 at EOF or `quit`. `answer(argv)`
    gives (stdout, stderr, exit status, whether the process ends there)."""
    out = sys.stdout
    if not quiet:
        out.write(BANNER)
    while True:
        out.write(PROMPT)
        out.flush()
        line = sys.stdin.readline()
        if not line:
            break
        out.write(_echoed(line.rstrip("\n")) + "\n")
        commands = split_commands(line.rstrip("\n"))
        if commands:
            _log({"in_session": commands[0] if len(commands) == 1 else [line.rstrip("\n")]})
        for words in commands:
            if words[0] in ("quit", "exit"):
                out.write("\n")
                return 0
            stdout, stderr, code, dying = answer(words)
            out.write(stdout)
            out.flush()
            sys.stderr.write(stderr)
            sys.stderr.flush()
            if dying:
                return 1
            if code:
                break
    out.write("\n")
    return 0


def main(argv: List[str]) -> int:
    """One command from argv, or a session reading them on stdin; see the module's doc for the log."""
    args, quiet = list(argv), False
    while args and args[0] in ("-c", "--connect", "-q", "--quiet"):
        quiet = quiet or args[0] in ("-q", "--quiet")
        args = args[1:] if args[0] in ("-q", "--quiet") else args[2:]
    _log(argv)
    if not args:
        _, stderr, code, _ = _with_state(lambda host: host.connect() or ("", "", 0, False))
        if code:
            sys.stderr.write(stderr)
            return code
        return interactive(lambda words: _command(words, quiet), quiet)
    stdout, stderr, code, _ = _command(args, quiet)
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return code


def _record_cpu() -> None:
    """$FAKE_VIRSH_CPU_LOG gets this process's CPU seconds: a benchmark tells the fake's cost from its caller's."""
    path = os.environ.get("FAKE_VIRSH_CPU_LOG")
    if path:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{usage.ru_utime + usage.ru_stime:.6f}\n")


if __name__ == "__main__":
    status = main(sys.argv[1:])
    _record_cpu()
    sys.exit(status)
