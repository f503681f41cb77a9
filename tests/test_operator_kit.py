"""The operator's kit beside the daemon (issue 17, point 4): Prometheus alert rules with their promtool
unit tests (examples/prometheus/) and a Grafana dashboard (examples/grafana/). Every metric and label
they use is checked against what a real cycle of the daemon exports; promtool, where it is found
(`bash .ci/promtool` fetches it), checks the rules and plays their tests, which must catch a broken alert."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest
import yaml

from conftest import ROOT, FakeHostDir, domain

PROMETHEUS = ROOT / "examples" / "prometheus"
RULES = PROMETHEUS / "balloon-2395.rules.yml"
RULE_TESTS = PROMETHEUS / "balloon-2395.test.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "balloon-2395.json"
PROMTOOL_CACHE = ROOT / ".cache" / "promtool"  # where .ci/promtool leaves it
ALERTS = ("Balloon2395CyclesStalled", "Balloon2395VirshErrorsRising", "Balloon2395GuestAtMaximumShort",
          "Balloon2395HostBelowReserve")

Exported = Dict[str, Set[str]]  # series name -> its label names

# ---------------------------------------------------------------- what the daemon exports


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    """The series of a real `--once` cycle's textfile, over a fake host with a bit of everything: a grow
    and a shrink (the first setmem fails: a virsh error, and a target for the other), a Windows guest
    left alone, the host's memory."""
    pytest.importorskip("prometheus_client", reason="prometheus-client is optional: "
                        "pip install -r requirements-metrics.txt")
    from prometheus_client.parser import text_string_to_metric_families

    host = FakeHostDir(tmp_path_factory.mktemp("kit"), [domain("web1", usable_mib=370),
                                                        domain("big", usable_mib=1500),
                                                        domain("win", os="http://microsoft.com/win/10")])
    state = host.read()
    state["faults"] = {"setmem": {"exit": 1, "stderr": "error: internal error: oops\n", "times": 1}}
    host.write(state)
    prom = host.path / "balloon2395.prom"
    result = host.cli("--once", "--metrics-textfile", str(prom))
    assert result.returncode == 0, result.stderr
    names: Exported = {}
    for family in text_string_to_metric_families(prom.read_text()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


# ---------------------------------------------------------------- PromQL, as far as the kit uses it

SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RANGE = re.compile(r"\[[^\]]*\]")
WORD = re.compile(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?")
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
FUNCTIONS = {"sum", "min", "max", "avg", "count", "rate", "irate", "increase", "delta", "time", "clamp_min",
             "clamp_max", "abs", "absent", "vector", "scalar", "max_over_time", "min_over_time", "avg_over_time",
             "last_over_time", "changes", "resets", "topk", "bottomk", "sort", "sort_desc", "histogram_quantile"}
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$")  # a Grafana variable's query


class Query:
    """The metrics a PromQL expression reads, the labels its matchers and groupings name, and the words
    that are none of these (an unknown function, a stray name)."""

    def __init__(self, expr: str) -> None:
        self.matched: Dict[str, Set[str]] = {}
        self.grouping: Set[str] = set()
        self.by: Optional[Set[str]] = None  # the labels an aggregation keeps, when there is one
        self.metrics: Set[str] = set()
        self.unknown: List[str] = []
        text = SELECTOR.sub(self._selector, expr)
        text = RANGE.sub(" ", GROUPING.sub(self._grouping, text))
        for word, call in WORD.findall(text):
            if word in KEYWORDS:
                continue
            if call:
                self.unknown += [] if word in FUNCTIONS else [f"{word}()"]
            else:
                self.metrics.add(word)

    def _selector(self, match: re.Match) -> str:
        name = match.group(1) or ""
        self.matched.setdefault(name, set()).update(MATCHER.findall(match.group(2)))
        return f" {name} "

    def _grouping(self, match: re.Match) -> str:
        labels = {label.strip() for label in match.group(2).split(",") if label.strip()}
        self.grouping |= labels
        if match.group(1) == "by":
            self.by = labels | (self.by or set())
        return " "

    def problems(self, exported: Exported) -> List[str]:
        """Each metric the daemon does not export, each label its metric lacks, each unknown word."""
        out = [f"{word}: not a function the kit knows" for word in self.unknown]
        out += [f"{name}: not exported" for name in sorted(self.metrics) if name not in exported]
        out += [f"{name}{{{label}}}: no such label" for name, labels in sorted(self.matched.items())
                if name in exported for label in sorted(labels - exported[name])]
        out += [f"by/on ({label}): no metric here has it" for label in sorted(self.grouping - self.labels(exported))]
        return out

    def labels(self, exported: Exported) -> Set[str]:
        """The labels its result may have: those of its metrics, or those an aggregation keeps."""
        known = set().union(*(exported.get(name, set()) for name in self.metrics))
        return known if self.by is None else known & self.by


def label_problems(used: Set[str], query: Query, exported: Exported) -> List[str]:
    return [f"{{{{ {label} }}}}: not a label of its result" for label in sorted(used - query.labels(exported))]


# ---------------------------------------------------------------- the rules and the dashboard, read


def alert_rules() -> List[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(items: List[dict]) -> Iterator[dict]:
    """Every panel, those inside rows too."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries() -> Iterator[Tuple[str, dict]]:
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target


# ---------------------------------------------------------------- the checker catches what it must

@pytest.mark.parametrize("expr, problem", [
    ('balloon2395_domain_usable_byte{host="h"}', "balloon2395_domain_usable_byte: not exported"),
    ('balloon2395_host_reserve_bytes{domain="web1"}', "balloon2395_host_reserve_bytes{domain}: no such label"),
    ("sum by (domain) (balloon2395_adjustments_total)", "by/on (domain): no metric here has it"),
    ("up == 0", "up: not exported"),
    ("rat(balloon2395_virsh_errors_total[5m])", "rat(): not a function the kit knows"),
])
def test_the_check_reports_a_metric_or_label_the_daemon_does_not_export(exported, expr, problem):
    assert Query(expr).problems(exported) == [problem]


def test_the_check_finds_nothing_wrong_in_a_query_on_exported_series(exported):
    expr = '60 * sum by (host, direction) (rate(balloon2395_adjustments_total{host=~"$host"}[$__rate_interval]))'
    query = Query(expr)
    assert query.metrics == {"balloon2395_adjustments_total"} and query.problems(exported) == []
    assert label_problems({"host", "direction"}, query, exported) == []
    assert label_problems({"host", "domain"}, query, exported) == ["{{ domain }}: not a label of its result"]


# ---------------------------------------------------------------- the alert rules

def test_the_rules_have_the_four_alerts():
    assert [rule["alert"] for rule in alert_rules()] == list(ALERTS)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_reads_only_what_the_daemon_exports(exported, rule):
    query = Query(rule["expr"])
    used = {label for text in rule["annotations"].values() for label in re.findall(r"\$labels\.(\w+)", text)}
    assert query.problems(exported) + label_problems(used, query, exported) == []


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_names_its_host_and_guest_and_says_what_to_do(rule):
    notes = rule["annotations"]
    names = ["host", "domain"] if "balloon2395_domain_" in rule["expr"] else ["host"]
    assert all(f"{{{{ $labels.{name} }}}}" in notes["summary"] for name in names), notes["summary"]
    assert "balloon-2395" in notes["description"] and "`" in notes["description"]  # a command to run


def _rule_tests() -> List[dict]:
    return [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_has_a_firing_and_a_silent_case_in_the_promtool_tests(alert):
    cases = [case for case in _rule_tests() if case["alertname"] == alert]
    assert any(case["exp_alerts"] for case in cases) and any(not case["exp_alerts"] for case in cases)


# ---------------------------------------------------------------- the dashboard

def _variables() -> Dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


def test_the_dashboard_has_a_data_source_a_host_and_a_guest_variable():
    board, variables = dashboard(), _variables()
    assert board["schemaVersion"] >= 39 and board["uid"] == "balloon-2395"
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["host"]["type"] == variables["domain"]["type"] == "query"
    assert "$host" in variables["domain"]["query"]  # the guests of the chosen hosts


def test_every_panel_and_variable_reads_only_what_the_daemon_exports(exported):
    problems = []
    for title, target in dashboard_queries():
        query = Query(target["expr"])
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        problems += [f"{title}: {p}" for p in query.problems(exported) + label_problems(legend, query, exported)]
    for name in ("host", "domain"):
        expr, label = LABEL_VALUES.match(_variables()[name]["query"]).groups()
        query = Query(expr)
        problems += [f"${name}: {p}" for p in query.problems(exported) + label_problems({label}, query, exported)]
    assert problems == []


def test_the_dashboard_shows_every_metric_the_daemon_exports(exported):
    shown = {name for _, target in dashboard_queries() for name in Query(target["expr"]).metrics}
    assert {name for name in exported if not name.endswith("_created")} - shown == set()


def test_every_panel_uses_the_chosen_data_source_and_variables_that_exist():
    defined = set(_variables()) | {"__rate_interval", "__interval"}
    for panel in panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(re.findall(r"\$\{?(\w+)", json.dumps(panel))) <= defined, panel["title"]
        assert panel.get("repeat") in defined | {None}
    ids = [panel["id"] for panel in panels(dashboard()["panels"])]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- promtool

def _promtool() -> Optional[str]:
    given = os.environ.get("BALLOON_PROMTOOL")
    if given:
        assert os.access(given, os.X_OK), f"BALLOON_PROMTOOL={given}: not an executable"
        return given
    return str(PROMTOOL_CACHE) if os.access(PROMTOOL_CACHE, os.X_OK) else shutil.which("promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = _promtool()
    if found is None:
        why = "promtool not found: `bash .ci/promtool` fetches it (or set BALLOON_PROMTOOL=PATH)"
        if os.environ.get("BALLOON_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"{why}; BALLOON_REQUIRE_PROMTOOL=1 says it must be there")
        pytest.skip(why)
    return found


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_rules(promtool):
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0 and f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, \
        result.stdout + result.stderr


def test_promtool_passes_the_rule_tests(promtool):
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


BREAKS = {
    "never fires": lambda rule: dict(rule, expr="absent(vector(1))"),
    "always fires": lambda rule: dict(rule, expr="vector(1)"),
    "fires at once": lambda rule: {key: value for key, value in rule.items() if key != "for"},
}


@pytest.mark.parametrize("alert", ALERTS)
@pytest.mark.parametrize("broken", sorted(BREAKS))
def test_the_rule_tests_catch_a_broken_alert(promtool, tmp_path, alert, broken):
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["rules"] = [BREAKS[broken](rule) if rule["alert"] == alert else rule for rule in group["rules"]]
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    shutil.copy(RULE_TESTS, tmp_path)
    result = _run(promtool, "test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode != 0 and f"alertname: {alert}" in result.stdout + result.stderr, result.stdout
