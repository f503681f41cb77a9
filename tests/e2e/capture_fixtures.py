#!/usr/bin/env python3
"""Capture real virsh outputs into tests/fixtures/virsh/ (run as root after
tests/e2e/prepare.sh):

    python3 tests/e2e/capture_fixtures.py [--out DIR] [--no-daemon-stop]

For each capture NAME it writes NAME.stdout (exact bytes), NAME.stderr (exact
bytes, only when not empty), NAME.exit (exit status), NAME.stdin for the
captures that feed virsh's interactive mode, and INDEX.md listing the argv and
the situation of each. Every virsh runs with LC_ALL=C and -c qemu:///system
(except the test:///default reference).

It boots its own guests (all named b2395e2e...), removes them at the end and,
unless --no-daemon-stop, briefly stops the libvirtd that prepare.sh started
(only that PID) to capture the "daemon down" error, then restarts it through
prepare.sh. It refuses to run when a domain it wants to create already exists.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))

from balloon2395_testkit.guests import LIBOSINFO_NS, PREFIX, GuestFactory  # noqa: E402
from balloon2395_testkit.prepared import DAEMONS, check_prerequisites, forget_daemon, recorded_daemon  # noqa: E402
from balloon2395_testkit.virsh_cli import URI, virsh, virsh_env  # noqa: E402
from balloon2395_testkit.waiting import wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "fixtures" / "virsh"
PROJECT_NS = "https://balloon-2395.example/ns/1"

WEB = f"{PREFIX} web é1"
NOSTATS = f"{PREFIX}-nostats"
NODRIVER = f"{PREFIX}-nodriver"
WIN = f"{PREFIX}-win10"
QUOTE = f"{PREFIX} o'brien"
OFF = f"{PREFIX}-off"
NOBALLOON = f"{PREFIX}-noballoon"
MISSING = f"{PREFIX}-does-not-exist"

OBSERVATIONS = r"""
## What these captures show (libvirt 9.0.0, QEMU 7.2, checked on this run)

- **Trailing newline.** A successful one-shot command's stdout ends with one
  extra `\n` (a blank line after `dommemstat`, `domstats`, `list --name` ...);
  on error stdout is exactly `\n`. With `-q` neither: the output ends right
  after its last line and an error leaves stdout empty. `echo` prints its
  words with no newline of its own (`virsh echo X` -> `X\n` only because of
  that extra newline; `virsh -q echo X` -> `X`).
- **Errors** go to stderr as `error: ...` lines, exit 1. Some are ONE line
  (`failed to get domain 'X'`, `unknown command: 'frobnicate'`,
  `invalid argument: cannot set memory higher than max memory`,
  `metadata not found: Requested metadata element is not present`,
  `Requested operation is not valid: domain is not running` from setmem),
  some TWO (dommemstat of a shut-off domain, `--period` failures, and
  `failed to connect to the hypervisor` + `Failed to connect socket to
  '/var/run/libvirt/libvirt-sock': No such file or directory` when libvirtd
  is down). `domstats --domain A --domain MISSING` fails as a whole: no
  output for A.
- **Names** are printed raw (UTF-8 bytes even under LC_ALL=C) by
  `domstats` (`Domain: 'NAME'`), `list --name`, `list --uuid --name`
  (`UUID NAME`), `dominfo`. A `'` inside a name is NOT escaped
  (`Domain: 'b2395e2e o'brien'`): take everything between `Domain: '` and the
  line's last `'`. The `list` TABLE under LC_ALL=C mangles non-ASCII
  (`b2395e2e web \xff\xff1`): never parse it.
- **Empty host / nothing running**: `domstats --balloon --list-running` and
  `list --name --state-running` print a single `\n`, exit 0.
- **Order**: `domstats` lists domains in no useful order (hash order);
  `list --name` by domain id.
- **Stats period**: with `<stats period='1'/>` all fields are there and
  `last-update` (host epoch seconds) moves every second. WITHOUT a period the
  guest driver still sent ONE report at boot, so every field is present but
  frozen: `last_update` never moves and `available` is the MemTotal from
  before the balloon inflated (`dommemstat.no-stats-period*`). `usable`
  present does not mean fresh: compare `last-update`.
- **Balloon device, no guest driver**: only `current`, `maximum`,
  `last-update=0`, `rss`; `current` stays at `<memory>` (524288) instead of
  `<currentMemory>`; `setmem` and `--period` are accepted (exit 0) and do
  nothing.
- **No balloon device** (`<memballoon model='none'/>`): `current`, `maximum`,
  `rss` only (no `last-update`); setmem fails (`Unable to change memory of
  active domain without the balloon device and guest OS balloon driver`).
- **Units**: `setmem --size 500mb` gives `actual 488284` (10^6-byte MB,
  rounded to 4 KiB pages), not 512000. Plain numbers are KiB. `--size 0` is
  refused (`memory in virDomainSetMemoryFlags must not be zero`).
- **Metadata**: `metadata DOM --uri NS` prints the element without the
  namespace prefix (`<libosinfo>\n  <os id="http://microsoft.com/win/10"/>\n
  </libosinfo>`); `--set` needs `--key`, prints `Metadata modified`; in
  `dumpxml` the element appears as `<b2395:settings xmlns:b2395="..."/>`.
  `<hyperv mode='custom'><relaxed state='on'/></hyperv>` starts fine under TCG.
- **Interactive mode on a pipe** (`virsh -c URI`, commands on stdin): without
  `-q` a welcome banner, then for every command `virsh # ` + the command text
  + `\n` (the input is echoed), its output, and the extra `\n`; at EOF a last
  `virsh # \n`. With `-q`: no banner and no extra `\n`, but the prompt+echo
  stay, so `echo @@END@@` is immediately followed by the next prompt on the
  same line (`@@END@@virsh # ...`). Errors go to stderr (not synchronised
  with stdout) and the session goes on; the exit status at EOF is 0 whatever
  failed; `quit` ends the session. Quoting is shell-like
  (`'b2395e2e o'brien'` -> `b2395e2e obrien`; use double quotes).
  With libvirtd down, an interactive virsh exits at once (exit 1, 2 error
  lines, no banner).
- `domstats --list-running --domain X` is accepted and gives X only.
- **One argument is a command line**: `virsh -c URI 'domstats --balloon
  --list-running ; list --uuid --id --name --state-running'` runs both in one
  process, their outputs one after the other, each with its extra `\n`; an
  error ends the rest of the line (also in interactive mode). `list --uuid
  --id --name` prints `UUID ID NAME`, the name raw.
- **Restarts**: a domain destroyed and started again keeps its name and uuid
  and gets a new id (`list-uuid-id-name-state-running.*-restart`). Its
  `cpu.time` (`domstats --cpu-total`) does not tell: the new QEMU's boot had
  already taken more CPU time than the old one had (`3.00 s` -> `3.11 s`,
  `domstats-cpu-total-domain.*-restart`).
- **Session protocol** (`interactive.session`, what `VirshSession` sends):
  after each command line, `echo --err T ; echo T` puts `error: T` on stderr
  and `\n` + `T\n` on stdout, so each stream is cut at its own sentinel; a
  command's stdout between its echoed line and the sentinel's is exactly its
  one-shot output. With `TERM=dumb` readline echoes a line that does not fit
  80 columns scrolled: `virsh # \r<` and its last 51 characters
  (`interactive.long-line`), still one line.
- **Connection loss in a session** (seen with a session libvirtd run as
  `nobody` and killed; not captured as files): virsh prints `error:
  Disconnected from qemu:///session due to end of file` on its own, and
  before the next command `error: Reconnected to the hypervisor`, then runs
  it. One session answered 20000 reads with its RSS unchanged (19 MB,
  `VIRSH_HISTSIZE=0`).
- test:///default: `domstats --balloon` prints only `Domain: 'test'` (no
  balloon fields); `dommemstat` has static numbers (`last_update 627319920`).
- Sandbox quirks: `nodeinfo` "Memory size" (one NUMA node) is not the host
  total that `nodememstats` shows; `dominfo` says `tainted: running with
  undesirable elevated privileges` because QEMU runs as root here.
"""


WIN_METADATA = (
    '<libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">'
    '<libosinfo:os id="http://microsoft.com/win/10"/></libosinfo:libosinfo>'
)
HYPERV = "<hyperv mode='custom'><relaxed state='on'/></hyperv>"


class Capturer:
    def __init__(self, out: Path):
        self.out = out
        self.entries: List[dict] = []
        out.mkdir(parents=True, exist_ok=True)
        for f in out.iterdir():
            if f.suffix in (".stdout", ".stderr", ".exit", ".stdin") or f.name == "INDEX.md":
                f.unlink()

    def cap(self, name: str, args: List[Union[str, int]], situation: str, *,
            uri: Optional[str] = URI, stdin: Optional[bytes] = None,
            extra_argv: Optional[List[str]] = None,
            extra_env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        assert all(c.isalnum() or c in "._-" for c in name), name
        assert name not in {e["name"] for e in self.entries}, name
        argv = ["virsh"] + (extra_argv or [])
        if uri is not None:
            argv += ["-c", uri]
        argv += [str(a) for a in args]
        proc = subprocess.run(argv, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**virsh_env(), **(extra_env or {})}, timeout=120)
        (self.out / f"{name}.stdout").write_bytes(proc.stdout)
        if proc.stderr:
            (self.out / f"{name}.stderr").write_bytes(proc.stderr)
        (self.out / f"{name}.exit").write_text(f"{proc.returncode}\n")
        if stdin is not None:
            (self.out / f"{name}.stdin").write_bytes(stdin)
        if extra_env:
            situation += " (environment: " + ", ".join(f"{k}={v}" for k, v in extra_env.items()) + ")"
        self.entries.append({"name": name, "argv": argv, "situation": situation,
                             "exit": proc.returncode, "stdin": stdin is not None,
                             "stderr": bool(proc.stderr)})
        print(f"captured {name}: exit {proc.returncode}, {len(proc.stdout)} B out, "
              f"{len(proc.stderr)} B err")
        return proc

    def note(self, text: str) -> None:
        self.entries.append({"note": text})

    def write_index(self, header: str) -> None:
        lines = [
            "# Real virsh outputs (libvirt 9.0 / QEMU 7.2, Debian 12)",
            "",
            "Captured by `tests/e2e/capture_fixtures.py` against real software-emulated",
            "guests booted by the e2e harness (`lib/balloon2395_testkit/guests.py`). Each capture NAME",
            "has `NAME.stdout` (exact bytes), `NAME.stderr` (exact bytes, only when not",
            "empty), `NAME.exit` (exit status) and, for interactive sessions, `NAME.stdin`",
            "(what was fed on a pipe). Environment: `LC_ALL=C`, no `LIBVIRT_DEFAULT_URI`,",
            "run as root. Values (KiB, counters, ids, UUIDs, timestamps) are those of that",
            "run.",
            "",
            header,
            "",
            OBSERVATIONS,
            "## Captures",
            "",
        ]
        for e in self.entries:
            if "note" in e:
                lines += [f"**Note:** {e['note']}", ""]
                continue
            files = ["stdout"] + (["stderr"] if e["stderr"] else []) + ["exit"] + \
                (["stdin"] if e["stdin"] else [])
            lines += [
                f"### `{e['name']}`",
                "",
                f"- argv: `{json.dumps(e['argv'], ensure_ascii=False)}`",
                f"- exit: {e['exit']}; files: {', '.join(files)}",
                f"- situation: {e['situation']}",
                "",
            ]
        (self.out / "INDEX.md").write_text("\n".join(lines), encoding="utf-8")


# What the daemon sends (tests/test_virsh_session.py checks these against its code): its read of a
# cycle (balloon2395.lifetime.READ_LINE), and in a session (balloon2395.virsh.session) the same
# lines, each followed by a sentinel, here with fixed tokens.
READ_LINE = "domstats --balloon --list-running ; list --uuid --id --name --state-running"
SESSION_ENV = {"TERM": "dumb", "VIRSH_HISTSIZE": "0"}


def session_input(*commands: str) -> bytes:
    lines = []
    for n, command in enumerate(("",) + commands):
        token = f"b2395-c0ffee00-{n}"
        lines += ([command] if command else []) + [f"echo --err {token} ; echo {token}"]
    return "".join(line + "\n" for line in lines).encode()


def capture_session_and_restart(c: "Capturer", quote) -> None:
    """The daemon's one read per cycle, its session protocol, and what a restart changes."""
    running = ", ".join(f"'{n}'" for n in virsh("list", "--name", "--state-running", check=True).out.split("\n") if n)
    c.cap("domstats-balloon-list-running-and-ids", [READ_LINE],
          f"running: {running}; the daemon's one virsh process per cycle: one argument, two commands")
    c.cap("interactive.session", [],
          "the daemon's session protocol: each command line followed by a sentinel on both streams; "
          f"its read of a cycle; names with a space, a quote, non-ASCII (setmem to the size it has); "
          f"errors in the middle; running: {running}",
          stdin=session_input(READ_LINE,
                              "setmem --domain 'b2395e2e o'\\''brien' --size 262144 --live",
                              f"dommemstat --domain {MISSING}",
                              f"setmem --domain '{WEB}' --size 2097152 --live",
                              "frobnicate"),
          extra_env=SESSION_ENV)
    c.cap("interactive.long-line", [],
          "a command line longer than 80 columns: readline (TERM=dumb) echoes it scrolled, `\\r<` and its end",
          stdin=session_input(f"dommemstat --domain {MISSING}-{'x' * 80}"), extra_env=SESSION_ENV)
    ids = ["list", "--uuid", "--id", "--name", "--state-running"]
    c.cap("domstats-cpu-total-domain.before-restart", ["domstats", "--cpu-total", "--domain", QUOTE],
          f"'{QUOTE}' a few seconds after its boot")
    c.cap("list-uuid-id-name-state-running.before-restart", ids, f"running: {running}")
    quote.destroy()
    quote.start()
    quote.wait_booted()
    c.cap("domstats-cpu-total-domain.after-restart", ["domstats", "--cpu-total", "--domain", QUOTE],
          f"'{QUOTE}' destroyed and started again: a new QEMU process, whose boot already took more CPU "
          "time than the old one had (cpu.time cannot tell a restart)")
    c.cap("list-uuid-id-name-state-running.after-restart", ids,
          "after the restart: same name and uuid, a new id")


def domain_names() -> List[str]:
    return [n for n in virsh("list", "--all", "--name", check=True).out.splitlines() if n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-daemon-stop", action="store_true")
    args = ap.parse_args()

    reason = check_prerequisites()
    if reason:
        print(f"cannot capture: {reason}", file=sys.stderr)
        return 77
    wanted = [WEB, NOSTATS, NODRIVER, WIN, QUOTE, OFF, NOBALLOON]
    clash = [n for n in wanted if n in domain_names()]
    if clash:
        print(f"refusing: domains already exist: {clash}", file=sys.stderr)
        return 1
    others = domain_names()

    c = Capturer(args.out)
    ver = virsh("version", check=True).out.split("\n")
    header = "Host: " + "; ".join(v.strip() for v in ver if v.strip())
    if others:
        c.note(f"other domains were defined on the host during this run: {others}")

    # ---------------------------------------------------------------- empty host
    if not others:
        c.cap("domstats-balloon-list-running.empty-host",
              ["domstats", "--balloon", "--list-running"],
              "no domain defined at all")
        c.cap("domstats-balloon.empty-host", ["domstats", "--balloon"],
              "no domain defined at all (no --list-running)")
        c.cap("list-name-state-running.empty-host", ["list", "--name", "--state-running"],
              "no domain defined at all")
        c.cap("list-all.empty-host", ["list", "--all"], "no domain defined at all")

    c.cap("version", ["version"], "libvirtd running")
    c.cap("version-daemon", ["version", "--daemon"], "libvirtd running")
    c.cap("nodememstats", ["nodememstats"], "host with 24 GiB RAM")
    c.cap("nodeinfo", ["nodeinfo"], "host with 2 cores, 24 GiB RAM")
    c.cap("uri", ["uri"], "libvirtd running")
    c.cap("frobnicate", ["frobnicate"], "unknown virsh command")
    c.cap("test-default.domstats-balloon-list-running",
          ["domstats", "--balloon", "--list-running"],
          "built-in test driver (no daemon): its one running domain 'test'",
          uri="test:///default")
    c.cap("test-default.dommemstat", ["dommemstat", "--domain", "test"],
          "built-in test driver", uri="test:///default")

    factory = GuestFactory()
    try:
        off = factory.guest("off", name=OFF, current_mib=256, max_mib=512)
        off.define()
        c.cap("domstats-balloon-list-running.zero-running",
              ["domstats", "--balloon", "--list-running"],
              f"only '{OFF}' defined, shut off: zero running domains")
        c.cap("list-name-state-running.zero-running", ["list", "--name", "--state-running"],
              f"only '{OFF}' defined, shut off")

        # ------------------------------------------------------- two running
        web = factory.create("web", name=WEB, current_mib=512, max_mib=1024, stats_period=1)
        nostats = factory.create("nostats", name=NOSTATS, current_mib=384, max_mib=512,
                                 stats_period=None)
        print(f"boot: {WEB!r} {web.boot_seconds:.2f}s, {NOSTATS!r} {nostats.boot_seconds:.2f}s")
        web.wait_fresh_stats()
        two = (f"running: '{WEB}' (512 MiB of 1024, <stats period='1'/>) and "
               f"'{NOSTATS}' (384 of 512 MiB, memballoon without stats period, so "
               f"its stats are the guest's single boot-time report, frozen); "
               f"'{OFF}' shut off")
        c.cap("domstats-balloon-list-running.two-guests",
              ["domstats", "--balloon", "--list-running"], two)
        c.cap("list-name-state-running.two-guests", ["list", "--name", "--state-running"], two)
        c.cap("dommemstat.stats-period-1", ["dommemstat", WEB],
              f"'{WEB}' running, <stats period='1'/>, balloon driver loaded")
        c.cap("dommemstat-domain.stats-period-1", ["dommemstat", "--domain", WEB],
              "same guest, --domain form")
        c.cap("dommemstat.no-stats-period", ["dommemstat", NOSTATS],
              f"'{NOSTATS}' running, driver loaded, no stats period: numbers are the "
              "one report the driver sent at probe time (before the balloon inflated "
              "from 512 to 384 MiB): 'available' is the old MemTotal, last_update "
              "never moves")
        time.sleep(2.2)
        c.cap("dommemstat.no-stats-period.2s-later", ["dommemstat", NOSTATS],
              "same guest 2.2 s later: identical numbers (frozen)")

        # ------------------------------------------------------- more guests
        nodriver = factory.create("nodriver", name=NODRIVER, current_mib=384, max_mib=512,
                                  stats_period=1, balloon_driver=False)
        quote = factory.create("quote", name=QUOTE, current_mib=256, max_mib=512,
                               stats_period=1)
        try:
            factory.create("win", name=WIN, current_mib=256, max_mib=512,
                           stats_period=1, metadata_xml=WIN_METADATA,
                           features_xml=HYPERV)
            win_running = True
        except Exception as exc:  # noqa: BLE001 - TCG may refuse hyperv
            print(f"hyperv guest did not start: {exc}")
            win_running = False
        quote.wait_fresh_stats()
        nodriver.setmem_kib(300 * 1024)
        time.sleep(1.5)
        many = (f"running: '{WEB}' (stats 1), '{NOSTATS}' (no period), "
                f"'{NODRIVER}' (memballoon with stats period 1 but the guest never loads "
                f"virtio_balloon; setmem 307200 KiB was sent and ignored), '{QUOTE}' "
                f"(stats 1)" + (f", '{WIN}' (stats 1, hyperv + libosinfo win10 metadata)"
                                if win_running else "") + f"; '{OFF}' shut off")
        c.cap("domstats-balloon-list-running.many-guests",
              ["domstats", "--balloon", "--list-running"], many)
        c.cap("domstats-balloon.many-guests", ["domstats", "--balloon"],
              many + " (no --list-running: the shut-off domain is listed too)")
        c.cap("domstats-balloon-list-shutoff", ["domstats", "--balloon", "--list-shutoff"],
              f"'{OFF}' shut off (512 MiB max, 256 current)")
        c.cap("domstats-balloon-domain.no-driver",
              ["domstats", "--balloon", "--domain", NODRIVER], many)
        c.cap("domstats-balloon-domain.two-domains",
              ["domstats", "--balloon", "--domain", WEB, "--domain", NOSTATS], many)
        c.cap("dommemstat.no-driver", ["dommemstat", NODRIVER],
              f"'{NODRIVER}': balloon device, no guest driver, stats period 1")
        c.cap("dommemstat.name-with-quote", ["dommemstat", QUOTE],
              f"'{QUOTE}' running, stats period 1")
        c.cap("list-name-state-running.many-guests",
              ["list", "--name", "--state-running"], many)
        c.cap("list-name-all.many-guests", ["list", "--name", "--all"], many)
        c.cap("list-all.many-guests", ["list", "--all"], many + " (table, reference only)")
        c.cap("list-uuid-name.many-guests", ["list", "--uuid", "--name"], many)
        c.cap("list-uuid.many-guests", ["list", "--uuid"], many)
        c.cap("list-state-running-table.many-guests", ["list", "--state-running"], many)
        c.cap("domuuid", ["domuuid", WEB], f"'{WEB}' running")
        c.cap("domid", ["domid", WEB], f"'{WEB}' running")
        c.cap("domid.shut-off", ["domid", OFF], f"'{OFF}' shut off")
        c.cap("domname-by-uuid", ["domname", web.uuid], f"'{WEB}' running, by UUID")
        c.cap("domstate", ["domstate", WEB], f"'{WEB}' running")
        c.cap("domstate-reason", ["domstate", "--reason", WEB], f"'{WEB}' running")
        c.cap("domstate.shut-off", ["domstate", "--reason", OFF], f"'{OFF}' shut off")
        c.cap("dominfo", ["dominfo", WEB], f"'{WEB}' running")
        c.cap("dominfo.shut-off", ["dominfo", OFF], f"'{OFF}' shut off")
        c.cap("dumpxml.live", ["dumpxml", WEB], f"'{WEB}' running (live XML)")
        c.cap("dumpxml-inactive.shut-off", ["dumpxml", "--inactive", OFF], f"'{OFF}' shut off")

        # ------------------------------------------------------- period switch
        c.cap("dommemstat-period-1-live", ["dommemstat", "--domain", NOSTATS,
                                           "--period", "1", "--live"],
              f"'{NOSTATS}' running without a stats period: switch it on (live)")
        nostats.wait_fresh_stats(15)
        c.cap("dommemstat.after-period-1-live", ["dommemstat", NOSTATS],
              f"'{NOSTATS}' after --period 1 --live and one refresh: fresh numbers")
        c.cap("dommemstat-period-1-live.no-driver", ["dommemstat", "--domain", NODRIVER,
                                                     "--period", "1", "--live"],
              f"'{NODRIVER}' (no guest driver): setting the period anyway")
        c.cap("dommemstat-period-1-live.shut-off", ["dommemstat", "--domain", OFF,
                                                    "--period", "1", "--live"],
              f"'{OFF}' shut off")
        c.cap("dommemstat.shut-off", ["dommemstat", OFF], f"'{OFF}' shut off")

        # ------------------------------------------------------- setmem
        c.cap("setmem-live.ok", ["setmem", "--domain", WEB, "--size", 458752, "--live"],
              f"'{WEB}' running at 524288 KiB, max 1048576: shrink to 458752 KiB (448 MiB)")
        web.wait_actual(458752, 10)
        c.cap("dommemstat.after-setmem", ["dommemstat", WEB],
              f"'{WEB}' after setmem 458752 and the balloon moved")
        c.cap("setmem-live.above-max", ["setmem", "--domain", WEB, "--size", 2097152, "--live"],
              f"'{WEB}' max 1048576 KiB: ask 2097152")
        c.cap("setmem-positional.ok", ["setmem", WEB, 491520, "--live"],
              f"'{WEB}': positional form, 491520 KiB (480 MiB)")
        web.wait_actual(491520, 10)
        c.cap("setmem-live.mb-suffix", ["setmem", "--domain", WEB, "--size", "500mb", "--live"],
              f"'{WEB}': '500mb' (virsh reads mb as 10^6 bytes: 488281 KiB, not 512000)")
        time.sleep(1.5)
        c.cap("dommemstat.after-setmem-500mb", ["dommemstat", WEB],
              f"'{WEB}' after setmem 500mb: see 'actual'")
        web.setmem_kib(524288)
        c.cap("setmem-live.shut-off", ["setmem", "--domain", OFF, "--size", 262144, "--live"],
              f"'{OFF}' is shut off")
        c.cap("setmem-live.missing", ["setmem", "--domain", MISSING, "--size", 262144, "--live"],
              f"no domain '{MISSING}'")
        c.cap("setmem-live.no-driver", ["setmem", "--domain", NODRIVER, "--size", 262144,
                                        "--live"],
              f"'{NODRIVER}' (no guest driver): accepted, nothing happens")
        c.cap("setmem-live.zero", ["setmem", "--domain", NODRIVER, "--size", 0, "--live"],
              f"'{NODRIVER}' (no guest driver, so harmless): size 0")

        # ------------------------------------------------------- metadata / windows
        c.cap("metadata-libosinfo.absent", ["metadata", WEB, "--uri", LIBOSINFO_NS],
              f"'{WEB}' has no <metadata>")
        c.cap("metadata-libosinfo.present", ["metadata", WIN, "--uri", LIBOSINFO_NS],
              f"'{WIN}' defined with libosinfo win10 metadata"
              + (" (running)" if win_running else " (shut off: hyperv refused under TCG)"))
        if win_running:
            c.cap("dumpxml.hyperv-live", ["dumpxml", WIN],
                  f"'{WIN}' running: <hyperv mode='custom'><relaxed state='on'/> + metadata")
        c.cap("dumpxml-inactive.hyperv", ["dumpxml", "--inactive", WIN],
              f"'{WIN}' persistent config: hyperv + libosinfo metadata")
        c.cap("metadata-project.set",
              ["metadata", WEB, "--uri", PROJECT_NS, "--key", "b2395",
               "--set", '<settings minimal="20"/>', "--live", "--config"],
              f"'{WEB}' running: store a project element (live + config)")
        c.cap("metadata-project.get", ["metadata", WEB, "--uri", PROJECT_NS],
              f"'{WEB}' after the set (live XML)")
        c.cap("metadata-project.get-config", ["metadata", WEB, "--uri", PROJECT_NS, "--config"],
              f"'{WEB}' after the set (persistent XML)")
        c.cap("dumpxml.with-project-metadata", ["dumpxml", WEB],
              f"'{WEB}' live XML with the project metadata")
        c.cap("metadata-project.absent", ["metadata", NOSTATS, "--uri", PROJECT_NS],
              f"'{NOSTATS}' has no project metadata")
        c.cap("metadata-project.set-no-key",
              ["metadata", NOSTATS, "--uri", PROJECT_NS, "--set", '<settings minimal="20"/>',
               "--live"],
              f"'{NOSTATS}': --set without --key")

        # ------------------------------------------------------- errors
        c.cap("dommemstat.missing", ["dommemstat", MISSING], f"no domain '{MISSING}'")
        c.cap("dommemstat-domain.missing", ["dommemstat", "--domain", MISSING],
              f"no domain '{MISSING}'")
        c.cap("domstats-balloon-domain.missing", ["domstats", "--balloon", "--domain", MISSING],
              f"no domain '{MISSING}'")
        c.cap("domstats-balloon-domain.one-missing",
              ["domstats", "--balloon", "--domain", WEB, "--domain", MISSING],
              f"'{WEB}' exists, '{MISSING}' does not")
        c.cap("dumpxml.missing", ["dumpxml", MISSING], f"no domain '{MISSING}'")
        c.cap("domstats-balloon-list-running-domain.combined",
              ["domstats", "--balloon", "--list-running", "--domain", WEB],
              "--list-running combined with --domain: no error, only that domain")

        # ------------------------------------------------------- no balloon device
        nob = factory.create("noballoon", name=NOBALLOON, current_mib=256, max_mib=256,
                             balloon_device=False)
        c.cap("dommemstat.no-balloon-device", ["dommemstat", NOBALLOON],
              f"'{NOBALLOON}' running with <memballoon model='none'/>")
        c.cap("domstats-balloon-domain.no-balloon-device",
              ["domstats", "--balloon", "--domain", NOBALLOON],
              f"'{NOBALLOON}' running with <memballoon model='none'/>")
        c.cap("setmem-live.no-balloon-device",
              ["setmem", "--domain", NOBALLOON, "--size", 200000, "--live"],
              f"'{NOBALLOON}' running with <memballoon model='none'/>")
        c.cap("dommemstat-period-1-live.no-balloon-device",
              ["dommemstat", "--domain", NOBALLOON, "--period", "1", "--live"],
              f"'{NOBALLOON}' running with <memballoon model='none'/>")
        nob.cleanup()

        # ------------------------------------------------------- quiet one-shot
        c.cap("quiet.dommemstat", ["dommemstat", WEB], f"-q, '{WEB}' running",
              extra_argv=["-q"])
        c.cap("quiet.domstats-balloon-list-running",
              ["domstats", "--balloon", "--list-running"], "-q; " + many,
              extra_argv=["-q"])
        c.cap("quiet.list-name-state-running", ["list", "--name", "--state-running"],
              "-q; " + many, extra_argv=["-q"])
        c.cap("quiet.echo", ["echo", "@@END@@"], "-q echo: note the missing newline",
              extra_argv=["-q"])
        c.cap("echo", ["echo", "@@END@@"], "echo without -q")
        c.cap("quiet.setmem-live.above-max",
              ["setmem", "--domain", WEB, "--size", 2097152, "--live"],
              f"-q, '{WEB}' max 1048576 KiB", extra_argv=["-q"])
        c.cap("quiet.dommemstat.missing", ["dommemstat", MISSING],
              f"-q, no domain '{MISSING}'", extra_argv=["-q"])

        # ------------------------------------------------------- interactive
        c.cap("interactive.domstats-then-echo", [], many + "; commands fed on a pipe",
              stdin=b"domstats --balloon --list-running\necho @@END@@\n")
        c.cap("interactive-quiet.domstats-then-echo", [], many + "; -q, commands on a pipe",
              stdin=b"domstats --balloon --list-running\necho @@END@@\n", extra_argv=["-q"])
        c.cap("interactive.error-inside",
              [], "error inside a piped session: the session goes on",
              stdin=(f"dommemstat {MISSING}\necho @@END@@\nfrobnicate\necho @@END@@\n"
                     f"dommemstat --domain '{WEB}'\necho --- END ---\n").encode())
        c.cap("interactive-quiet.error-inside",
              [], "same with -q",
              stdin=(f"dommemstat {MISSING}\necho @@END@@\nfrobnicate\necho @@END@@\n"
                     f"dommemstat --domain '{WEB}'\necho --- END ---\n").encode(),
              extra_argv=["-q"])
        c.cap("interactive-quiet.quoting",
              [], "-q session: quoting of names with spaces, quotes and non-ASCII",
              stdin=(f"dommemstat \"{WEB}\"\necho @@END@@\n"
                     f"dommemstat \"{QUOTE}\"\necho @@END@@\n"
                     f"dommemstat '{QUOTE}'\necho @@END@@\n"
                     "echo a  'b  c' \"d\"\nquit\necho after-quit\n").encode(),
              extra_argv=["-q"])
        capture_session_and_restart(c, quote)
    finally:
        factory.cleanup()

    # ------------------------------------------------------- nothing running again
    if not others:
        c.cap("domstats-balloon-list-running.empty-host-after",
              ["domstats", "--balloon", "--list-running"],
              "all test domains destroyed and undefined again")

    # ------------------------------------------------------- daemon down
    pid = None if args.no_daemon_stop else recorded_daemon("libvirtd")
    if pid is None:
        c.note("daemon-down captures skipped (libvirtd not started by prepare.sh, "
               "or --no-daemon-stop)")
    else:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, what="libvirtd to stop")
        forget_daemon(pid, DAEMONS)
        try:
            c.cap("daemon-down.domstats-balloon-list-running",
                  ["domstats", "--balloon", "--list-running"], "libvirtd stopped")
            c.cap("daemon-down.dommemstat", ["dommemstat", WEB], "libvirtd stopped")
            c.cap("daemon-down.interactive", [], "libvirtd stopped; commands on a pipe",
                  stdin=b"domstats --balloon --list-running\necho @@END@@\n")
        finally:
            subprocess.run(["bash", str(HERE / "prepare.sh")], check=True)

    c.write_index(header)
    print(f"wrote {len([e for e in c.entries if 'name' in e])} captures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
