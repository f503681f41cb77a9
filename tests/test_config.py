"""Config: the original's knobs, units, per-domain rules, and one clear line for every mistake."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from balloon2395 import config as cfg
from balloon2395.units import parse_size_kib
from conftest import ROOT, domain, run_cli

MIB = 1024


def test_defaults_are_the_originals():
    c = cfg.build({})
    d = c.defaults
    assert (d.minimal, d.maximal) == (25, 35)
    assert (d.floor_kib, d.addram_kib, d.rmram_kib) == (300 * MIB, 100 * MIB, 50 * MIB)
    assert c.secs == 0.5 and c.log.debug is False and c.log.logdir is None
    assert c.policy == "target"  # the original's rule stays selectable as "step"


@pytest.mark.parametrize("text,kib", [
    (300, 300 * MIB), (0.5, 512), ("300", 300 * MIB), ("512MiB", 512 * MIB), ("512M", 512 * MIB),
    ("2GiB", 2 * 1024 * MIB), ("2 GiB", 2 * 1024 * MIB), ("1.5G", 1536 * MIB), ("4096KiB", 4096),
    ("512MB", 512 * MIB),  # binary: an operator's MB is never virsh's 10^6
])
def test_sizes(text, kib):
    assert parse_size_kib(text) == kib


@pytest.mark.parametrize("bad", ["-5", -1, "5XB", "lots", "", True, [1], None])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size_kib(bad)


def test_per_domain_rules_exact_beats_glob_first_glob_wins():
    c = cfg.build({"minimal": 20, "maximal": 30, "domains": {
        "web*": {"minimal": 10, "critical": "1GiB"},
        "web-*": {"minimal": 15},
        "web-db": {"exclude": True},
        "win-*": {"manage_windows": True, "maximum": "8GiB"},
    }})
    assert c.for_domain("web-1").minimal == 10 and c.for_domain("web-1").floor_kib == 1024 * MIB
    assert c.for_domain("web-1").maximal == 30  # unspecified keys come from the top level
    assert c.for_domain("web-db").exclude and c.for_domain("web-db").minimal == 20
    assert c.for_domain("win-7").manage_windows and c.for_domain("win-7").maximum_kib == 8 * 1024 * MIB
    assert c.for_domain("other") == c.defaults


@pytest.mark.parametrize("values,key,words", [
    ({"minimall": 20}, "minimall", "did you mean 'minimal'"),
    ({"minimal": "20"}, "minimal", "expected a number"),
    ({"minimal": 120}, "minimal", "between 0 and 100"),
    ({"minimal": 40}, "minimal", "must be below maximal"),
    ({"minimal": 35, "maximal": 35}, "minimal", "must be below maximal"),
    ({"critical": -300}, "critical", "negative"),
    ({"addram": 0}, "addram", "more than 0"),
    ({"rmram": "50XB"}, "rmram", "unknown unit"),
    ({"secs": 0}, "secs", "between"),
    ({"secs": float("nan")}, "secs", "finite"),
    ({"debug": "yes"}, "debug", "true or false"),
    ({"stats_period": 1.5}, "stats_period", "whole number"),
    ({"policy": "magic"}, "policy", "expected one of"),
    ({"domains": ["web1"]}, "domains", "mapping"),
    ({"domains": {"web1": {"minimal": 50}}}, "domains.web1.minimal", "must be below maximal"),
    ({"domains": {"web1": {"colour": 1}}}, "domains.web1.colour", "unknown key"),
    ({"domains": {"web1": {"exclude": "yes"}}}, "domains.web1.exclude", "true or false"),
    ({"domains": {"web1": 5}}, "domains.web1", "mapping"),
    ({"domains": {7: {}}}, "domains", "string"),
])
def test_errors_name_the_key(values, key, words):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.build(values)
    assert err.value.key == key
    assert words in err.value.problem


def test_file_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("minimal: [\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load(str(bad_yaml), {})
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes(b"logdir: /var/log/b\xe9\n")
    with pytest.raises(cfg.ConfigError, match="not UTF-8"):
        cfg.load(str(not_utf8), {})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(cfg.ConfigError, match="mapping"):
        cfg.load(str(scalar), {})
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(str(tmp_path / "missing.yaml"), {})


def test_a_file_nested_deeper_than_the_yaml_parser_goes_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 1000)  # the parser's recursion ends long before: a RecursionError inside
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), {})
    assert str(err.value) == f"{path}: file: nested too deeply"


def test_flags_override_the_file_and_are_named_as_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("minimal: 20\nmaximal: 30\n")
    assert cfg.load(str(path), {"maximal": 50}).defaults.maximal == 50
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), {"stats_period": 0})
    assert str(err.value).startswith("--stats-period:")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), {"minimal": 40})
    assert str(err.value) == f"--minimal 40: must be below maximal (30, from {path})"
    bad = tmp_path / "bad.yaml"
    bad.write_text("minimal: 50\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(bad), {"maximal": 60})  # the file alone is wrong even if flags would fix it
    assert str(err.value).startswith(str(bad))


# Anything YAML can hold, at any key: a ConfigError or a Config, never another exception.
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=4 * settings.default.max_examples)  # cheap examples: a larger share of the budget
@given(st.dictionaries(st.sampled_from(list(cfg.KEYS) + ["maximum", "bogus"]), yaml_values, max_size=5))
def test_any_value_is_a_config_or_a_config_error(values):
    try:
        cfg.build(values)
    except cfg.ConfigError as exc:
        assert exc.key and exc.problem and "\n" not in str(exc)


@pytest.mark.parametrize("text,words", [
    ("minimal: 50\n", "minimal 50: must be below maximal (35, the default)"),
    ("critical: -300\n", "critical: must not be negative"),
    ("addram: lots\n", "addram: expected a size"),
    ("frobnicate: 1\n", "frobnicate: unknown key"),
])
def test_bad_config_exits_2_with_one_line_and_no_virsh_call(fake_host, text, words):
    host = fake_host(domain("web1", usable_mib=100))
    host.config.write_text(text)
    for argv in (["--once"], ["status"]):
        result = host.cli(*argv)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and str(host.config) in lines[0]
        assert host.calls() == []
    check = run_cli(["check-config", str(host.config)], host.env)
    assert check.returncode == 2 and words in check.stderr


@pytest.mark.parametrize("text, flags, message", [
    (None, {"maximal": 10}, "--maximal 10: must be above minimal (25, the default)"),
    ("minimal: 25\n", {"maximal": 10}, "--maximal 10: must be above minimal (25, from {path})"),
    (None, {"minimal": 50}, "--minimal 50: must be below maximal (35, the default)"),
    ("maximal: 40\n", {"minimal": 50}, "--minimal 50: must be below maximal (40, from {path})"),
    ("minimal: 30\nmaximal: 40\n", {"minimal": 50}, "--minimal 50: must be below maximal (40, from {path})"),
    (None, {"minimal": 50, "maximal": 40}, "--minimal: must be below maximal (50 >= 40)"),
    ("maximal: 20\n", {}, "{path}: maximal 20: must be above minimal (25, the default)"),
    ("minimal: 50\nmaximal: 40\n", {}, "{path}: minimal: must be below maximal (50 >= 40)"),
])
def test_a_band_error_blames_the_value_given_last_and_says_where_the_other_came_from(tmp_path, text, flags, message):
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path) if text is not None else None, flags)
    assert str(err.value) == message.format(path=path)


@pytest.mark.parametrize("text, flags, message", [
    ("domains:\n  web: {minimal: 50}\n", {}, "domains.web.minimal 50: must be below maximal (35, the default)"),
    ("maximal: 40\ndomains:\n  web: {minimal: 45}\n", {},
     "domains.web.minimal 45: must be below maximal (40, from {path})"),
    ("domains:\n  web: {minimal: 32}\n", {"maximal": 30},
     "domains.web.minimal 32: must be below maximal (30, from --maximal)"),
    ("domains:\n  web: {maximal: 20}\n", {}, "domains.web.maximal 20: must be above minimal (25, the default)"),
    ("domains:\n  web: {minimal: 50, maximal: 40}\n", {}, "domains.web.minimal: must be below maximal (50 >= 40)"),
])
def test_a_rules_band_error_names_the_rule_and_where_the_rest_came_from(tmp_path, text, flags, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), flags)
    assert str(err.value) == f"{path}: " + message.format(path=path)


def test_a_metadata_band_error_says_where_the_rest_of_the_band_came_from(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("domains:\n  web: {maximal: 45}\n")
    config = cfg.load(str(path), {"minimal": 30})
    assert config.for_domain("web", (("minimal", "50"),)).invalid == \
        "metadata minimal 50: must be below maximal (45, from domains.web)"
    assert config.for_domain("db", (("maximal", "20"),)).invalid == \
        "metadata maximal 20: must be above minimal (30, from --minimal)"
    assert config.for_domain("db", (("minimal", "50"),)).invalid == \
        "metadata minimal 50: must be below maximal (35, the default)"
    assert config.for_domain("db", (("minimal", "50"), ("maximal", "40"))).invalid == \
        "metadata minimal: must be below maximal (50 >= 40)"
    assert config.for_domain("web", (("minimal", "40"),)).invalid is None


@pytest.mark.parametrize("text, line, first, key", [
    ("minimal: 20\nmaximal: 40\nminimal: 30\n", 3, 1, "minimal"),
    ("domains:\n  web: {minimal: 20}\n  db: {}\n  web: {exclude: true}\n", 4, 2, "web"),
    ("domains:\n  web:\n    minimal: 20\n    maximal: 40\n    minimal: 30\n", 5, 3, "minimal"),
    ("metrics:\n  port: 9100\n  port: 9200\n", 3, 2, "port"),
])
def test_a_key_given_twice_in_one_mapping_is_an_error_naming_it(tmp_path, text, line, first, key):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), {})
    assert str(err.value) == \
        f"{path}: file: not valid YAML at line {line}: key '{key}' given twice (first at line {first})"


def test_the_same_key_in_different_mappings_and_over_a_yaml_merge_is_fine(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("minimal: 20\nmaximal: 40\ndomains:\n  web: &common {minimal: 10, maximal: 30}\n"
                    "  db:\n    <<: *common\n    minimal: 15\n")
    config = cfg.load(str(path), {})
    assert (config.for_domain("web").minimal, config.for_domain("db").minimal) == (10, 15)


def test_check_config_refuses_a_key_given_twice_with_exit_2(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("policy: step\nminimal: 20\nminimal: 30\n")
    check = run_cli(["check-config", str(path)])
    assert check.returncode == 2
    assert check.stderr == f"balloon-2395: {path}: file: not valid YAML at line 3: key 'minimal' given twice " \
                           "(first at line 2)\n"


def test_check_config_accepts_the_example():
    result = run_cli(["check-config", str(ROOT / "examples" / "config.yaml")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": ok")
