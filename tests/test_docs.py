"""The documentation says what the code does (issue 14, point 1): a short README, and every flag,
config key, metric, virsh call, path and link the docs name is one the code has."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import FrozenSet, Iterator, List, Optional, Set, Tuple

import pytest

from balloon2395 import config as cfg
from balloon2395.cli import COMMANDS
from balloon2395.lifetime import READ_LINE
from balloon2395.virsh.commands import Virsh
from conftest import ROOT

README = ROOT / "README.md"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
OPERATIONS = ROOT / "docs" / "operations.md"
SCENARIOS = ROOT / "examples" / "scenarios"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
ALL_DOCS = [*DOCS, CONTRIBUTING, SCENARIOS / "README.md"]

FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Shell separators: `;` anywhere, the others only between blanks (`SIZE|PCT` is one word).
SEPARATOR = re.compile(r"\s*;\s*|\s+(?:\|\||\||&&|&)(?:\s+|$)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code(path: Path) -> List[str]:
    """Each line of the file's fenced blocks (continuation lines joined) and each inline code span."""
    blocks: List[str] = []

    def take(match: re.Match) -> str:
        blocks.extend(match.group(1).replace("\\\n", " ").splitlines())
        return "\n"

    prose = FENCED.sub(take, text(path))
    return blocks + [" ".join(span.replace("\\|", "|").split()) for span in SPAN.findall(prose)]


def table(path: Path, first_header: str) -> List[List[str]]:
    """The body rows (as cells) of every table in the file whose header's first cell is `first_header`."""
    rows: List[List[str]] = []
    inside = False
    for line in text(path).splitlines():
        if not line.startswith("|"):
            inside = False
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if cells[0] == first_header:
            inside = True
        elif inside and not set(cells[0]) <= set("-: "):
            rows.append(cells)
    return rows


def spans(cell: str) -> List[str]:
    return SPAN.findall(cell)


# ---------------------------------------------------------------- commands and their --help

def _without_wrappers(words: List[str]) -> List[str]:
    """The program a command line runs, first: past sudo, bash, VAR=value and `python -m`."""
    while words and (words[0] in ("sudo", "bash", "exec", "env") or re.match(r"^[A-Z_]+=", words[0])):
        words = words[1:]
    if words and re.search(r"(^|/)python[0-9.]*$", words[0]):
        words = words[2:] if words[1:2] == ["-m"] else words[1:]
    return words


def helps_for(segment: str) -> Optional[Tuple[Tuple[str, ...], ...]]:
    """The --help commands whose flags the segment's flags must be among; None: not a program of ours.
    A bare flag (`--dry-run` in prose) is the daemon's, of any of its commands."""
    words = _without_wrappers(segment.split())
    if not words:
        return None
    program, args = os.path.basename(words[0]), [w.strip("[]") for w in words[1:]]
    if words[0].startswith("--"):
        return tuple(daemon_help(command) for command in COMMANDS)
    if program == "balloon-2395":
        return (daemon_help(args[0] if args and args[0] in COMMANDS else "run"),)
    if re.search(r"(^|/)bench/\w+\.py$", words[0]):
        return ((sys.executable, str(ROOT / "bench" / program), "--help"),)
    if program == "install.sh":
        return (("bash", str(ROOT / "install.sh"), "--help"),)
    if program == "virsh":
        command = next((w for w in args if not w.startswith("-")), "")
        return (("virsh", "help", command),)
    return None


def daemon_help(command: str) -> Tuple[str, ...]:
    return (str(ROOT / "balloon-2395"),) + (() if command == "run" else (command,)) + ("--help",)


@functools.lru_cache(maxsize=None)
def flags_in_help(argv: Tuple[str, ...]) -> FrozenSet[str]:
    """The flags a --help lists, from its options on (argparse's description also names other
    commands' flags)."""
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    if ran.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {ran.returncode}: {ran.stderr[-500:]}")
    out = ran.stdout
    options = re.search(r"^(positional arguments|options|optional arguments):", out, re.M)
    return frozenset(FLAG.findall(out[options.start():] if options else out))


def written_flags(paths: List[Path]) -> Iterator[Tuple[Path, str, Tuple[Tuple[str, ...], ...]]]:
    """(file, flag, the --help commands that must list it) for every flag of our programs the docs show."""
    for path in paths:
        for line in code(path):
            line = re.sub(r"(^|\s)#.*$", "", line)  # a shell comment
            for segment in SEPARATOR.split(line):
                helps = helps_for(segment)
                for flag in FLAG.findall(segment) if helps else ():
                    yield path, flag, helps


def unknown_flags(virsh: bool) -> Tuple[int, List[str]]:
    """How many flags were checked, and those no listed --help has (virsh's or the project's own)."""
    checked, unknown = 0, []
    for path, flag, helps in written_flags(ALL_DOCS):
        if (helps[0][0] == "virsh") != virsh:
            continue
        checked += 1
        if not any(flag in flags_in_help(argv) for argv in helps):
            unknown.append(f"{path.relative_to(ROOT)}: {flag} (not in {' '.join(helps[0])})")
    return checked, unknown


# ---------------------------------------------------------------- the README

def test_the_readme_has_at_most_200_lines():
    assert len(text(README).splitlines()) <= 200


def test_the_readme_says_what_guests_need_before_how_the_daemon_works():
    headings = re.findall(r"^## (.*)$", text(README), re.M)
    assert headings.index("What guests need") <= 1, headings


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = [line.strip() for line in text(ROOT / ".ci" / "run").splitlines()
          if "-m pytest" in line and not line.lstrip().startswith("#")]
    rows = [row for row in table(README, "what") if row[0] == "run the tests"]
    assert len(rows) == 1 and len(spans(rows[0][1])) == 1 and spans(rows[0][1])[0] in ci, (ci, rows)


# ---------------------------------------------------------------- flags, keys, metrics, calls

def test_every_flag_the_docs_show_is_in_its_commands_help():
    checked, unknown = unknown_flags(virsh=False)
    assert checked > 50 and not unknown, unknown


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh is not installed: its help cannot be read")
def test_every_virsh_option_the_docs_show_is_in_virshs_help():
    checked, unknown = unknown_flags(virsh=True)
    assert checked > 5 and not unknown, unknown


class _Recording(Virsh):
    """The real Virsh, recording the argv it would run instead of running it."""

    def run(self, *args: str) -> str:
        self.argv = " ".join(args)
        return ""


@pytest.mark.parametrize("command, call, placeholders", [
    ("setmem", lambda v: v.setmem("UUID", 4096), {"4096": "KIB"}),
    ("dommemstat", lambda v: v.enable_stats("UUID", 7), {"7": "N"}),
])
def test_every_changing_virsh_call_the_docs_show_is_the_one_the_daemon_runs(command, call, placeholders):
    virsh = _Recording()
    call(virsh)
    runs = virsh.argv
    for value, placeholder in placeholders.items():
        runs = runs.replace(value, placeholder)
    shown = {m for path in ALL_DOCS for m in re.findall(rf"{command} --domain[^`\n]*", text(path))}
    assert shown == {runs}


def test_the_read_the_docs_show_is_the_one_the_daemon_sends():
    shown = {m for path in ALL_DOCS for m in re.findall(r"domstats --balloon --list-running ;[^`\n]*", text(path))}
    assert shown == {READ_LINE}


def _config_table() -> List[List[str]]:
    return table(OPERATIONS, "key")


def test_every_key_in_the_configuration_table_is_a_config_key():
    keys = [spans(row[0])[0] for row in _config_table()]
    assert len(keys) > 20 and set(keys) <= set(cfg.KEYS), sorted(set(keys) - set(cfg.KEYS))


def test_every_config_key_is_in_the_configuration_table():
    named = {span for row in _config_table() for cell in row for span in spans(cell)}
    assert set(cfg.KEYS) <= named, sorted(set(cfg.KEYS) - named)


def _a_rule_key(key: str) -> bool:
    """Whether a per-domain rule takes `key` (a bad value for it is another error than an unknown key)."""
    try:
        cfg.build({"domains": {"some-domain": {key: "?"}}})
    except cfg.ConfigError as exc:
        return "unknown key" not in exc.problem
    return True


def _per_domain_table_keys() -> Set[str]:
    return {span for row in table(OPERATIONS, "per-domain key") for span in spans(row[0])}


def test_every_per_domain_key_the_docs_name_is_one_a_rule_takes():
    documented = _per_domain_table_keys()
    assert documented and not [key for key in documented if not _a_rule_key(key)]


def test_every_key_a_rule_takes_is_in_the_per_domain_table():
    rule_keys = {s.key for s in cfg.SETTINGS if s.where != "top"}
    assert len(rule_keys) > 10 and all(_a_rule_key(key) for key in rule_keys)
    assert rule_keys <= _per_domain_table_keys(), sorted(rule_keys - _per_domain_table_keys())


def _exported_metrics() -> Set[str]:
    pytest.importorskip("prometheus_client")
    from balloon2395.metrics import Metrics

    metrics = Metrics(cfg.Config())
    try:
        families = list(metrics.registry.collect())
    finally:
        metrics.close()
    return {f.name + ("_total" if f.type == "counter" else "") for f in families}


def test_every_metric_the_docs_name_is_one_the_daemon_exports():
    packages = {p.name for p in (ROOT / "lib").iterdir() if p.name.startswith("balloon2395")}
    named = {m for path in ALL_DOCS for m in re.findall(r"\bballoon2395_[a-z_]+", text(path))} - packages
    assert named and named <= _exported_metrics(), sorted(named - _exported_metrics())


def test_every_metric_the_daemon_exports_is_in_the_metrics_table():
    documented = {spans(row[0])[0] for row in table(OPERATIONS, "metric")}
    assert _exported_metrics() <= documented, sorted(_exported_metrics() - documented)


# ---------------------------------------------------------------- paths and links

def test_every_path_in_the_contributing_layout_tables_exists():
    paths = [span for row in table(CONTRIBUTING, "path") for span in spans(row[0])]
    assert len(paths) > 30 and not [p for p in paths if not (ROOT / p).exists()]


def _links() -> Iterator[Tuple[Path, str]]:
    for path in ALL_DOCS:
        for target in LINK.findall(FENCED.sub("", text(path))):
            if not re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                yield path, target


def test_every_relative_link_reaches_a_file():
    links = list(_links())
    broken = [f"{path.relative_to(ROOT)}: {target}" for path, target in links
              if not (path.parent / target.split("#")[0]).exists()]
    assert len(links) > 20 and not broken, broken


def _anchors(path: Path) -> Set[str]:
    """A markdown file's heading anchors, as GitHub makes them."""
    headings = re.findall(r"^#+ (.*)$", FENCED.sub("", text(path)), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_to_a_section_reaches_a_heading():
    broken = []
    for path, target in _links():
        file, _, anchor = target.partition("#")
        if anchor and anchor not in _anchors(path.parent / file if file else path):
            broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_shipped_scenario_is_in_the_scenarios_readme_table_and_only_those():
    listed = {spans(row[0])[0] for row in table(SCENARIOS / "README.md", "scenario")}
    assert listed == {p.stem for p in SCENARIOS.glob("*.yaml")}
