"""A virsh look-alike backed by a JSON host-state file, for tests, fault injection and the simulator.

Its output copies real virsh 9.0 byte for byte (tests compare it with
captured fixtures). It implements only what balloon-2395 and its tests use.

State file (path in $FAKE_VIRSH_STATE):
  {"domains": [{"name", "uuid", "id", "state": "running"|"paused"|"shut off",
                "actual_kib", "maximum_kib", "period": seconds or 0,
                "driver": true (guest has the balloon driver; false: no guest stats, setmem a no-op),
                "stuck": true (stats flow but setmem never takes effect),
                "balloon": "virtio"|"none", "os": libosinfo id or null, "hyperv": bool,
                "stats": {"usable": KiB, "available": ..., ...},
                "last_update": epoch s, or "age": seconds before now,
                "boot_update": epoch s of the one report a guest without a period sent}],
   "host": {"total_kib", "free_kib", "buffers_kib", "cached_kib"},
   "faults": {"COMMAND": {"sleep": s, "exit": n, "stderr": text, "stdout": text, "times": n}}}
Every call is appended to $FAKE_VIRSH_LOG as one JSON argv list per line.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

from .virsh import Virsh, VirshError, _message

# The order real virsh/QEMU report guest stats in.
GUEST_STATS = ("swap_in", "swap_out", "major_fault", "minor_fault", "unused", "available", "usable",
               "last_update", "disk_caches", "hugetlb_pgalloc", "hugetlb_pgfail")
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"


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
        meta = (f"  <metadata>\n    <libosinfo:libosinfo xmlns:libosinfo=\"{LIBOSINFO_NS}\">\n"
                f"      <libosinfo:os id=\"{dom['os']}\"/>\n    </libosinfo:libosinfo>\n  </metadata>\n")
    features = "  <features>\n    <acpi/>\n"
    if dom.get("hyperv"):
        features += "    <hyperv mode='custom'>\n      <relaxed state='on'/>\n    </hyperv>\n"
    features += "  </features>\n"
    model = dom.get("balloon", "virtio")
    period = dom.get("period", 0)
    balloon = f"    <memballoon model='{model}'>\n"
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


class FakeHost:
    def __init__(self, state: dict) -> None:
        self.state = state

    def running(self) -> List[dict]:
        return [d for d in self.state.get("domains", []) if d.get("state", "running") == "running"]

    def domain(self, name: str) -> dict:
        for dom in self.state.get("domains", []):
            if name in (dom["name"], dom.get("uuid"), str(dom.get("id"))):
                return dom
        raise Fail(f"error: failed to get domain '{name}'\n")

    def active(self, name: str) -> dict:
        dom = self.domain(name)
        if dom.get("state", "running") == "shut off":
            raise Fail("error: Requested operation is not valid: domain is not running\n")
        return dom

    def call(self, command: str, args: List[str]) -> Tuple[str, str, int, bool]:
        """(stdout, stderr, exit status, state changed), faults injected first."""
        fault = self.state.get("faults", {}).get(command)
        if fault:
            if "times" in fault:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    del self.state["faults"][command]
            if fault.get("sleep"):
                time.sleep(fault["sleep"])
            return fault.get("stdout", ""), fault.get("stderr", ""), int(fault.get("exit", 0)), True
        try:
            stdout, changed = self.run(command, args)
            return stdout, "", 0, changed
        except Fail as exc:
            return exc.stdout, str(exc), exc.exit_code, False

    def run(self, command: str, args: List[str]) -> Tuple[str, bool]:
        """(stdout, state changed); raises Fail as virsh would fail."""
        if command not in COMMANDS:
            raise Fail(f"error: unknown command: '{command}'\n", stdout="")
        opts, positional = _options(args)
        name = opts.get("domain") or (positional[0] if positional else None)
        if command == "domstats":
            doms = self.running() if "list-running" in opts or not positional else [self.domain(n) for n in positional]
            return render_domstats(doms), False
        if command == "list":
            doms = self.running() if "state-running" in opts else self.state.get("domains", [])
            return "".join(f"{d['name']}\n" for d in doms) + "\n", False
        if command == "version":
            return ("Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\n"
                    "Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.0\n\n"), False
        if command == "nodememstats":
            host = self.state.get("host", {})
            return "".join(f"{k:<7}: {host.get(k + '_kib', 0):>20} KiB\n"
                           for k in ("total", "free", "buffers", "cached")) + "\n", False
        if name is None:
            raise Fail("error: command '%s' requires <domain> option\n" % command)
        if command == "dominfo":
            return render_dominfo(self.domain(name)), False
        if command == "dumpxml":
            return render_dumpxml(self.domain(name)), False
        if command == "metadata":
            dom = self.domain(name)
            if opts.get("uri") == LIBOSINFO_NS and dom.get("os"):
                return f'<libosinfo>\n  <os id="{dom["os"]}"/>\n</libosinfo>\n\n', False
            raise Fail("error: metadata not found: Requested metadata element is not present\n")
        if command == "dommemstat":
            dom = self.domain(name)
            if "period" in opts:
                if dom.get("state", "running") == "shut off":
                    raise Fail("error: Unable to change balloon collection period.\n"
                               "error: Requested operation is not valid: domain is not running\n")
                dom["period"] = int(opts["period"])
                return "\n", True
            if dom.get("state", "running") == "shut off":
                raise Fail(f"error: Failed to get memory statistics for domain {name}\n"
                           "error: Requested operation is not valid: domain is not running\n")
            return render_dommemstat(dom), False
        return self._setmem(name, opts, positional)

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


class InProcessVirsh(Virsh):
    """The real Virsh class with its process call answered in process: same argv, same
    parsing, no spawn (tests, the simulator). `answer(command, args)` gives
    (stdout, stderr, exit status)."""

    def __init__(self, answer: Callable[[str, List[str]], Tuple[str, str, int]]) -> None:
        super().__init__()
        self.answer = answer
        self.argv_log: List[List[str]] = []

    def run(self, *args: str) -> str:
        self.calls += 1
        self.argv_log.append(list(args))
        stdout, stderr, code = self.answer(args[0], list(args[1:]))
        if code:
            raise VirshError(list(args), code, _message(stderr, code))
        return stdout


COMMANDS = ("domstats", "list", "version", "nodememstats", "dominfo", "dumpxml", "metadata", "dommemstat", "setmem")
_FLAGS = {"list-running", "state-running", "all", "name", "live", "config", "current", "balloon", "inactive"}


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


def main(argv: List[str]) -> int:
    args = list(argv)
    if len(args) >= 2 and args[0] in ("-c", "--connect"):
        args = args[2:]
    log_path = os.environ.get("FAKE_VIRSH_LOG")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(argv) + "\n")
    if not args:
        sys.stderr.write("error: interactive mode is not supported by this fake\n")
        return 1
    path = os.environ["FAKE_VIRSH_STATE"]
    with open(path, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state = json.load(handle)
        stdout, stderr, code, changed = FakeHost(state).call(args[0], args[1:])
        if changed:
            handle.seek(0)
            handle.truncate()
            json.dump(state, handle)
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
