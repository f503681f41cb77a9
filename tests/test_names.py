"""Names are data, never control (issue 24, class 4): a domain name, a guest's metadata or virsh's stderr
holding CR, LF, other C0/C1 controls, DEL, ANSI escapes, bidi overrides and isolates, zero-width or other
format characters, or the line and paragraph separators forges no log or journal line, no `status`,
`explain` or `--watch` row, no simulator row and no metric line. Each is shown escaped (\\r, \\x1b,
\\u202e); printable text ("vm-ü", CJK) as it is. Hostile names run beside normal ones, in process and
through the real launcher against the fake virsh."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given, strategies as st

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.logs import style as logstyle
from balloon2395.views import status
from conftest import LIB, ROOT, domain, still_host, wait_for

CONTROL = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
# the whole class: every control and format character Unicode has, and lone surrogates (undecodable bytes)
CONTROL_CHARS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in CONTROL - {"Cs"}] + [
    "\udc80", "\udcff", "\ud800"]
PLAIN = "abz09 -_.:'\"\\%{}ü中文é"
hostile = st.lists(st.one_of(st.sampled_from(CONTROL_CHARS), st.sampled_from(PLAIN)), min_size=1,
                   max_size=24).map("".join)
printable = st.text(st.characters(blacklist_categories=tuple(CONTROL) + ("Zs", "Co", "Cn")) | st.just(" "),
                    min_size=1, max_size=24)

FORGED = "Nov 12 10:00:00 host balloon-2395: grow vm1 1024 -> 9999 MiB"
# beside normal names: every kind the class has; the fake virsh's XML carries all but ESC and DEL/C1-less
# C0 controls (XML 1.0 cannot): those domains are read but their XML is not, which is logged by name too
NAMES = {
    "cr": "cr\r" + FORGED,
    "ansi": "ansi\x1b[2J\x1b[1;31mred",
    "bidi": "bidi\u202eevil\u2066iso\u2069\u200f\u061c",
    "separators": "sep\u2028line\u2029para\x85nel",
    "zero-width": "zw\u200b\u200e\ufeffx\u00ad",
    "c1": "del\x7fc1\x9b31m",
}
NORMAL = ["web1", "vm-ü", "数据库-1"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def escaped_name(name: str) -> str:
    """The name as the views show it, spelled out here and not by the code under test."""
    out = []
    for char in name:
        if unicodedata.category(char) not in CONTROL:
            out.append(char)
        elif char in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def no_control(text: str, keep: str = "\n") -> bool:
    return not [c for c in text if c not in keep and unicodedata.category(c) in CONTROL]


# ------------------------------------------------------------------------------------------- the function

@given(hostile)
def test_escaped_leaves_one_inert_line_that_says_what_the_name_holds(name):
    from balloon2395.quoted import escaped
    shown = escaped(name)
    assert shown == escaped_name(name) and no_control(shown, keep="") and len(shown.splitlines()) == 1
    assert escaped(shown) == shown


@given(printable)
def test_printable_text_stays_as_it_is(name):
    from balloon2395.quoted import escaped
    assert escaped(name) == name


def test_each_kind_is_escaped_the_way_python_spells_it():
    from balloon2395.quoted import escaped
    assert escaped("a\nb\rc\td\x1b[2J\x7f\x9b") == "a\\nb\\rc\\td\\x1b[2J\\x7f\\x9b"
    assert escaped("\u202e\u2066\u2069\u200e\u200f\u061c\u2028\u2029\ufeff\U000e0041") == (
        "\\u202e\\u2066\\u2069\\u200e\\u200f\\u061c\\u2028\\u2029\\ufeff\\U000e0041")
    assert escaped("vm-ü 数据库") == "vm-ü 数据库"


@given(st.lists(hostile, max_size=4))
def test_json_escaped_is_the_same_json_and_nothing_for_a_terminal(names):
    from balloon2395.quoted import json_escaped
    text = json_escaped(json.dumps([{"domain": n} for n in names], indent=2, ensure_ascii=False))
    assert json.loads(text) == [{"domain": n} for n in names] and no_control(text)
    assert text.count("\n") == json.dumps([{"domain": "x"} for _ in names], indent=2).count("\n")


# ------------------------------------------------------------------------------------------------ logs

FORMATTERS = [("text", False, False), ("text", True, False), ("json", False, False), ("text", False, True),
              ("text", True, True)]


def _record(msg, args=(), exc_info=None, thread="MainThread"):
    record = logging.LogRecord("balloon-2395", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.threadName = thread
    return record


def _failure(name):
    try:
        try:
            raise KeyError(name)
        except KeyError as exc:
            raise RuntimeError(f"cannot read {name}: virsh said error: {name}") from exc
    except RuntimeError:
        return sys.exc_info()


def _records(name):
    """Every way a call site hands a name to logging: an argument, an exception as an argument, a message
    formatted before (an f-string), a traceback whose messages quote it, a URI's thread."""
    return [_record("%s: cannot read domain XML: %s", (name, ValueError(f"bad {name}"))),
            _record("%s", (f"grow {name} 2048 -> 2148 MiB: usable 14% < 25%",)),
            _record(f"skip {name}: excluded"),
            _record("setmem of %(name)s failed: %(why)s", ({"name": name, "why": "error: " + name},)),
            _record("cycle of %s failed", (name,), exc_info=_failure(name)),
            _record("%s is %d MiB", (name, 5), thread=name)]


@pytest.mark.parametrize("fmt, journal, per_uri", FORMATTERS)
@given(name=hostile)
def test_a_record_has_as_many_lines_whatever_the_name_holds(fmt, journal, per_uri, name):
    """The lines a record takes depend on its call site, never on its data: each formats to exactly the
    lines it has with a plain name of the same length; none carries a raw control or format character."""
    formatter = logstyle.formatter(fmt, journal, per_uri)
    for bad, plain in zip(_records(name), _records("x" * len(name))):
        out, expected = formatter.format(bad), formatter.format(plain)
        assert out.count("\n") == expected.count("\n"), out
        assert no_control(out)
        if fmt == "json":
            assert escaped_name(name) in json.loads(out)["message"]
        else:
            assert escaped_name(name) in out


def test_the_record_is_left_as_logged_for_other_handlers():
    record = _record("%s", ("a\nb",))
    logstyle.formatter("text", False).format(record)
    assert record.msg == "%s" and record.args == ("a\nb",) and record.getMessage() == "a\nb"


def test_the_debug_block_keeps_its_four_lines_whatever_the_name():
    from balloon2395.logs.lines import debug_block
    daemon = Daemon(cfg.build({"host_memory": "off", "policy": "step"}),
                    still_host(domain("ok", usable_mib=300)), clock=lambda: 1_800_000_000.0)
    daemon.cycle()
    obs, decision = daemon.last.observations[0], daemon.last.decisions[0]
    bad = dataclasses.replace(obs, stats=dataclasses.replace(obs.stats, name=NAMES["cr"] + "\n" + FORGED))
    block = debug_block(bad, daemon.last.settings["ok"], decision, 1_800_000_000.0)
    out = logstyle.formatter("text", True).format(_record("%s", (block,)))
    assert len(out.split("\n")) == 4 and all(line.startswith("<4>") for line in out.split("\n"))
    assert escaped_name(NAMES["cr"]) + "\\n" + FORGED in out.split("\n")[0]


# ---------------------------------------------------------------------------------------- status, sim

def _row(name, why="usable 14% < 25%", last=None):
    row = {"domain": name, "actual_mib": 2048, "usable_mib": 300, "usable_pct": 14, "band_pct": [25, 35],
           "floor_mib": 300, "maximum_mib": 4096, "balloon": "virtio", "autodeflate": False,
           "free_page_reporting": False, "next": "grow", "target_mib": 2148, "why": why}
    if last is not None:
        row["last"] = last
    return row


@given(st.lists(hostile, min_size=1, max_size=5))
def test_status_table_is_one_row_per_domain(names):
    rows = [_row(n, why=f"metadata said {n}", last=f"grow 1->2 {n}") for n in names] + [_row(n) for n in NORMAL]
    table = status.render_table(rows)
    assert len(table.split("\n")) == 1 + len(rows) and no_control(table)
    for line, name in zip(table.split("\n")[1:], names + NORMAL):
        assert line.startswith(escaped_name(name) + " ")
    parsed = json.loads(status.render_json(rows))
    assert [d["domain"] for d in parsed] == names + NORMAL and no_control(status.render_json(rows))


@given(st.lists(hostile, min_size=1, max_size=5))
def test_the_simulator_table_is_one_row_per_guest(names):
    from balloon2395.sim import live
    lines = live._table(live.COLUMNS, [(n, "1", "2%", "25-35%", "0", "hold", f"grow {n}", f"why {n}")
                                               for n in names])
    assert len(lines) == 1 + len(names) and all(no_control(line, keep="") for line in lines)


# ---------------------------------------------------------------------------------------------- metrics

def test_metric_lines_one_per_series_and_each_name_parses_back():
    """prometheus-client escapes \\, " and LF in label values (its exposition format): a name holding them
    is one line per series and reads back as itself. (The fake virsh's text cannot carry a LF in a name,
    as libvirt refuses one: the cycle's names are replaced after it ran.)"""
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from balloon2395 import metrics
    wanted = ["lf\n" + FORGED, 'quote"} 1\nballoon2395_domain_actual_bytes{domain="vm1"} 0', "back\\slash\\n",
              *NAMES.values(), *NORMAL]
    config = cfg.build({"host_memory": "off"})
    daemon = Daemon(config, still_host(*[domain(f"n{i}", usable_mib=600) for i in range(len(wanted))]),
                    clock=lambda: 1_800_000_000.0)
    daemon.cycle()
    cycle = daemon.last
    rename = {f"n{i}": name for i, name in enumerate(wanted)}
    cycle = dataclasses.replace(
        cycle, observations=[dataclasses.replace(o, stats=dataclasses.replace(o.stats, name=rename[o.name]))
                             for o in cycle.observations],
        decisions=[dataclasses.replace(d, name=rename[d.name]) for d in cycle.decisions],
        settings={rename[k]: v for k, v in cycle.settings.items()})
    m = metrics.Metrics(config)
    m.add_host("h")
    m.cycle_done("h", cycle, 0.5)
    text = generate_latest(m.registry).decode("utf-8")
    samples = [line for line in text.split("\n") if line.startswith("balloon2395_domain_actual_bytes{")]
    assert len(samples) == len(wanted)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert sorted(s.labels["domain"] for s in families["balloon2395_domain_actual_bytes"].samples) == sorted(wanted)
    lines = [line for line in text.split("\n") if line and not line.startswith("#")]
    assert len(lines) == sum(len(f.samples) for f in families.values())  # no line that is not a sample


# ------------------------------------------------------------------------------- through the launcher

def _hostile_host(fake_host):
    return fake_host(*[domain(name, usable_mib=300) for name in [*NAMES.values(), *NORMAL]])


def _events(text, name):
    return [line for line in text.split("\n") if escaped_name(name) in line]


def test_a_log_line_per_event_whatever_the_names_hold(fake_host):
    host = _hostile_host(fake_host)
    run = host.run("--once", "--debug")
    assert run.returncode == 0, run.stderr
    log = run.stderr
    assert no_control(log), [c for c in log if unicodedata.category(c) in CONTROL and c != "\n"]
    lines = log.rstrip("\n").split("\n")
    assert all(STAMP.match(line) or line.startswith("  ") for line in lines), log  # the debug block's lines
    assert not [line for line in lines if line.startswith(FORGED)]
    for name in [NAMES["cr"], NAMES["bidi"], NAMES["separators"], NAMES["zero-width"], NAMES["c1"], *NORMAL]:
        grows = [line for line in _events(log, name) if " INFO grow " in line]
        assert len(grows) == 1 and grows[0].endswith(" 2048 -> 2148 MiB: usable 14% < 25%"), (name, log)
    assert any("WARNING " + escaped_name(NAMES["ansi"]) + ": cannot read domain XML" in line for line in lines)
    assert [line for line in lines if " INFO grow vm-ü 2048 -> 2148 MiB" in line]  # printable as it is


def test_journal_and_json_lines_one_per_event(fake_host, tmp_path):
    host = _hostile_host(fake_host)
    out = tmp_path / "journal"
    with open(out, "w") as stream:
        info = os.fstat(stream.fileno())
        env = dict(host.env, JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")  # stderr is the journal's stream
        assert subprocess.run(host.daemon_argv("--once"), env=env, stderr=stream, timeout=60).returncode == 0
    journal = out.read_text()
    assert no_control(journal) and all(re.match(r"^<\d>", line) for line in journal.rstrip("\n").split("\n"))
    assert len([line for line in _events(journal, NAMES["cr"]) if line.startswith("<6>grow ")]) == 1
    logged = host.run("--once", "--log-format", "json")
    assert logged.returncode == 0 and no_control(logged.stderr)
    entries = [json.loads(line) for line in logged.stderr.rstrip("\n").split("\n")]
    assert [e["message"] for e in entries if e["message"].startswith("note " + escaped_name(NORMAL[0]))]
    assert all(no_control(e["message"], keep="") for e in entries)


def test_status_and_explain_rows_escape_the_names(fake_host):
    host = _hostile_host(fake_host)
    shown = host.run("status")
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.rstrip("\n").split("\n")
    assert len(table) == 1 + len(NAMES) + len(NORMAL) and no_control(shown.stdout)
    assert sorted(line.split("  ")[0] for line in table[1:]) == sorted(
        escaped_name(n) for n in [*NAMES.values(), *NORMAL])
    as_json = host.run("status", "--json")
    assert sorted(d["domain"] for d in json.loads(as_json.stdout)) == sorted([*NAMES.values(), *NORMAL])
    assert no_control(as_json.stdout)
    for name in (NAMES["bidi"], NAMES["cr"]):
        for asked in (name, escaped_name(name)):  # the name, or as status showed it
            explained = host.run("explain", asked)
            assert explained.returncode == 0, explained.stderr
            lines = explained.stdout.rstrip("\n").split("\n")
            assert lines[0] == f"{escaped_name(name)} on qemu:///system (step policy)" and no_control(explained.stdout)
            assert len(lines) == len(host.run("explain", "web1").stdout.rstrip("\n").split("\n"))
    missing = host.run("explain", "no\x1b[2Jsuch")
    assert missing.returncode == 1 and "no\\x1b[2Jsuch: not a running domain" in missing.stderr


def test_watch_rows_beside_a_daemon_escape_the_names(fake_host, daemons):
    host = _hostile_host(fake_host)
    proc = daemons(host, "--secs", "0.2", "--dry-run")
    assert wait_for(host.state_files)
    watched = host.run("status", "--watch", "--count", "1")
    assert watched.returncode == 0 and "Traceback" not in watched.stderr, watched.stderr
    lines = watched.stdout.rstrip("\n").split("\n")
    assert f"daemon pid {proc.pid}" in lines[0] and no_control(watched.stdout)
    assert len(lines) == 2 + len(NAMES) + len(NORMAL)
    assert lines[1].startswith("DOMAIN ") and escaped_name(NAMES["ansi"]) in watched.stdout


def test_the_simulator_shows_a_row_per_guest_whatever_its_name(tmp_path):
    scenario = tmp_path / "names.yaml"
    guests = ["lf\n" + FORGED, *NAMES.values(), *NORMAL]
    scenario.write_text("host: {total: 16GiB}\nguests:\n" + "".join(
        f"  - {{name: {json.dumps(name)}, current: 1GiB, maximum: 2GiB}}\n" for name in guests))
    run = subprocess.run([str(ROOT / "balloon-2395"), "--simulate", str(scenario), "--duration", "20",
                          "--speed", "10000"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(LIB)))
    assert run.returncode == 0, run.stderr
    assert no_control(run.stdout) and no_control(run.stderr)
    summary = run.stdout.rstrip("\n").split("\n")[-(2 + len(guests)):]
    assert summary[0].startswith("simulated 20s") and summary[1].startswith("GUEST ")
    assert [line.split("  ")[0] for line in summary[2:]] == [escaped_name(name) for name in guests]
