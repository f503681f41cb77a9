"""Bounded input, bounded output: a hostile value in a config file, a domain's metadata, a flag or a
scenario is one short error line naming the key, never a traceback, a MemoryError or megabytes of output."""

from __future__ import annotations

import pytest

from balloon2395 import config as cfg
from balloon2395.sim.scenario import ScenarioError, load
from conftest import domain

# 9 to the power 5: 300 bytes of YAML that print as 900 KB
BOMB = ("[&a [lololololol,lololololol,lololololol,lololololol,lololololol,lololololol,lololololol,lololololol],"
        " &b [*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c],"
        " [*d,*d,*d,*d,*d,*d,*d,*d]]")
HUGE = "9" * 5000  # Python refuses to print an int beyond 4300 digits, or to make a float of it
HOSTILE = [HUGE, "-" + HUGE, BOMB, "1e999", ".inf", ".nan", "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]"]
LINE = 400  # characters: a few lines at most


def one_short_line(text: str) -> bool:
    return text.count("\n") == 0 and len(text) < LINE


@pytest.mark.parametrize("key", ["minimal", "critical", "headroom", "secs", "host_reserve", "shares"])
@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_in_the_config_file_is_one_short_error(tmp_path, key, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: {value}\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path), {})
    assert one_short_line(str(err.value)) and (key in str(err.value) or "file" in str(err.value))


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_in_a_domains_metadata_is_one_short_reason(value):
    settings = cfg.build({}).for_domain("vm", (("minimal", value),))
    assert settings.invalid and one_short_line(settings.invalid) and "metadata minimal" in settings.invalid
    assert settings.minimal == cfg.build({}).defaults.minimal  # nothing of it applied


@pytest.mark.parametrize("value", ["20", "25.5"])
def test_a_plain_value_in_a_domains_metadata_applies(value):
    assert cfg.build({}).for_domain("vm", (("minimal", value),)).minimal == float(value)


@pytest.mark.parametrize("uri, problem", [
    ("qemu:///sys\udcfftem", "must be UTF-8 text"),  # how Python hands over a non-UTF-8 argument
    ("qemu:///sys\ntem", "must not contain control characters"),
    ("qemu:///sys\x1b[2Jtem", "must not contain control characters"),
])
def test_a_connect_value_that_is_not_clean_utf_8_text_is_refused(uri, problem):
    with pytest.raises(cfg.ConfigError, match=problem):
        cfg.build({"connect": uri})


def test_a_non_utf_8_connect_flag_exits_2_with_one_line(fake_host):
    host = fake_host(domain("web1", usable_mib=600))
    result = host.run("--once", "--connect", "qemu:///sys\udcfftem")
    assert result.returncode == 2 and one_short_line(result.stderr.rstrip("\n")), result.stderr
    assert host.calls() == []


def test_an_alias_bomb_in_the_config_is_one_short_line_through_the_launcher(fake_host):
    host = fake_host(domain("web1", usable_mib=600))
    host.config.write_text(f"policy: step\nminimal: {BOMB}\n")
    result = host.run("--once")
    assert result.returncode == 2 and one_short_line(result.stderr.rstrip("\n")), result.stderr[:500]


SCENARIO = """
guests:
  - name: a
    current: 1GiB
    maximum: 2GiB
    {extra}
    workload:
      - {{at: {at}, anon: +100MiB{over}}}
host: {{total: 8GiB}}
"""


@pytest.mark.parametrize("extra, at, over, key", [
    ("repeat: 0.000001", "0", "", "repeat"),  # a period of no ticks: the run would never end
    ("", "0", ", over: .inf", "over"),
    ("", "1e999", "", "at"),
    ("", HUGE, "", "at"),
    ("", "0", ", over: .nan", "over"),
    ("repeat: " + HUGE, "0", "", "repeat"),
])
def test_a_hostile_time_in_a_scenario_is_one_short_error(tmp_path, extra, at, over, key):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(extra=extra, at=at, over=over))
    with pytest.raises(ScenarioError) as err:
        load(str(path))
    # (an int of 5000 digits stops PyYAML itself from Python 3.11 on: then the file is named)
    message = str(err.value).replace(str(path), "")
    assert one_short_line(message) and (f".{key}:" in message or "file: holds a number too long" in message)


def test_a_scenario_with_plain_times_loads(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(extra="repeat: 10m", at="30", over=", over: 10s"))
    assert load(str(path)).guests[0].workload_kib(40, 0) == 100 * 1024 * 1024 // 1024
