"""config.SETTINGS is the one description of every setting: the flags are made from it, and what the
docs' settings table, the example config and --help say of a setting (its flag, its default, its
choices) is checked against its values here."""

import re
from pathlib import Path

import pytest
import yaml

from balloon2395 import cli, config as cfg

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
EXAMPLE = ROOT / "examples" / "config.yaml"
FLAGGED = [s for s in cfg.SETTINGS if s.group]
TOP_LEVEL = [s for s in cfg.SETTINGS if s.where != "rule"]


def built(argv):
    args = cli.parser("run").parse_args(argv)
    return cfg.build(cli._flags(args), flags=cli._flags(args))


def settings_table():
    """The docs' settings table, {key: (flag cell, default cell, meaning cell)}, code spans unwrapped."""
    rows = {}
    inside = False
    for line in OPERATIONS.read_text().splitlines():
        if not line.startswith("|"):
            inside = False
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if cells[:3] == ["key", "flag", "default"]:
            inside = True
        elif inside and not set(cells[0]) <= set("-: "):
            rows[cells[0].strip("`")] = tuple(cells[1:])
    return rows


def unwrapped(cell):
    return cell.replace("`", "")


@pytest.mark.parametrize("setting", [s for s in FLAGGED if s.default_text is None], ids=lambda s: s.key)
def test_the_default_a_flag_states_is_the_default(setting):
    if setting.metavar is None and not setting.choices:  # a yes/no flag: its default said as --x or --no-x
        argv = [setting.flag if setting.default else "--no-" + setting.flag[2:]]
    else:
        argv = [setting.flag, setting.default_shown]
    assert built(argv) == built([])


@pytest.mark.parametrize("setting", FLAGGED, ids=lambda s: s.key)
def test_help_shows_each_flag_with_the_schemas_default(setting):
    text = " ".join(cli.parser("run").format_help().split())
    assert setting.flag in text and f"(default: {' '.join(setting.default_shown.split())})" in text


def test_settings_without_a_flag_are_the_per_domain_ones():
    assert sorted(s.key for s in cfg.SETTINGS if not s.group) == ["exclude", "maximum"]


@pytest.mark.parametrize("setting", [s for s in TOP_LEVEL if not s.key.startswith("metrics_")], ids=lambda s: s.key)
def test_the_docs_table_states_the_schemas_flag_and_default(setting):
    flag, default, meaning = settings_table()[setting.key]
    assert unwrapped(default) == setting.default_shown
    if setting.group:
        assert setting.flag in flag and (setting.metavar is None or f"{setting.flag} {setting.metavar}" in flag)
    else:
        assert flag == "none"
    assert not [c for c in setting.choices if f"`{c}`" not in meaning], meaning


def test_the_docs_table_names_the_metrics_flags():
    flag, _, _ = settings_table()["metrics"]
    assert all(f"{s.flag} {s.metavar}" in flag for s in cfg.SETTINGS if s.key.startswith("metrics_"))


def test_the_example_configs_values_are_the_defaults():
    example = yaml.safe_load(EXAMPLE.read_text())
    keys = [s for s in TOP_LEVEL if s.key in example]
    assert len(keys) > 15
    defaults = cfg.build({})
    for s in keys:
        assert cfg.build({s.key: example[s.key]}) == defaults, s.key


def test_the_example_config_names_every_top_level_setting():
    text = EXAMPLE.read_text()
    named = set(re.findall(r"^#? ?([a-z_]+):", text, re.M))
    nested = {"metrics_" + k for k in re.findall(r"^#\s+([a-z]+):", text, re.M)}
    assert not [s.key for s in TOP_LEVEL if s.key not in named | nested]


def test_check_config_print_says_the_settings_in_effect_and_loads_back(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text('minimal: 20\nhost_reserve: 5%\nconnect: [qemu:///system, "qemu+ssh://h2/system"]\n'
                    'metrics: {port: 9239}\ndomains:\n  "web*": {critical: 1GiB, maximum: 4GiB}\n'
                    '  "db\\u202e\\e": {exclude: true}\n')
    assert cli.main(["check-config", str(path), "--print"]) == 0
    out = capsys.readouterr().out
    assert "minimal: 20.0\n" in out and "host_reserve: 5%\n" in out and "metrics_port: 9239\n" in out
    assert "stale_after: null  # max(5, 3 x stats_period)\n" in out
    assert out.isascii() and "\x1b" not in out  # a glob's bidi override and ESC as YAML escapes
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert cfg.load(str(printed), {}) == cfg.load(str(path), {})


def flags_of(command):
    return {opt for action in cli.parser(command)._actions for opt in action.option_strings}


def test_the_views_take_the_flags_that_change_a_decision_and_not_the_daemons_own():
    for command in ("status", "explain"):
        flags = flags_of(command)
        assert {"--minimal", "--policy", "--host-reserve", "--connect", "--lock-dir"} <= flags
        assert not flags & {"--secs", "--debug", "--dry-run", "--logdir", "--log-format", "--ksm", "--metrics-port",
                            "--once", "--simulate"}


def test_the_daemons_usage_names_every_other_command():
    usage = cli.parser("run").format_usage()
    assert all(command in usage for command in cli.COMMANDS[1:])


def test_a_commands_help_says_what_it_does_not_what_the_others_do():
    text = cli.parser("explain").format_help()
    assert "the rule behind a domain's last and next decision" in text and "check-config [FILE]" not in text
