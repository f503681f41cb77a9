"""Bad input (issue 8, point 2): config files and virsh output made by hypothesis. A config is a
Config or one line naming the key; virsh output is parsed or refused, never an escaped exception,
and nothing the daemon does on it breaks a safety rule."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.lifetime import READ_LINE, parse_running
from balloon2395.virsh.domain_xml import parse_domain_xml
from balloon2395.virsh.output import (
    VirshOutputError,
    parse_dominfo_max_kib,
    parse_dommemstat,
    parse_domstats,
    parse_nodememstats,
)
from balloon2395_testkit.faults import CheckedVirsh
from conftest import FIXTURES, T0, domain, still_host

NUMBERS = st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.sampled_from([0, -1, 1e308, -1e308, 2 ** 63])
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=16) | st.sampled_from(
    ["512MiB", "-5GiB", "99999999PiB", "1e9", "10%", "150%", "nan", "inf", "[", "*", "[z-a]", "\x00"])
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
KEYS = st.sampled_from(list(cfg.KEYS) + ["maximum", "bogus", "Minimal", ""])
GLOBS = st.text(alphabet="ab*?[]!-\\^ \x00é", max_size=8)
DOMAIN_KEYS = st.sampled_from(["minimal", "maximal", "critical", "maximum", "exclude", "shares", "colour"])
CONFIGS = st.dictionaries(KEYS, VALUES, max_size=5) | st.fixed_dictionaries(
    {"domains": st.dictionaries(GLOBS, st.dictionaries(DOMAIN_KEYS, VALUES, max_size=3) | VALUES, max_size=3)})


def _one_line_or_config(path):
    try:
        config = cfg.load(str(path), {})
    except cfg.ConfigError as exc:
        assert exc.key and "\n" not in str(exc) and str(exc).startswith(str(path))
        return None
    return config


def _loaded(path, values):
    """The config a file of these values makes, or None: not YAML at all, or refused in one line."""
    try:
        path.write_text(yaml.safe_dump(values, allow_unicode=True))
    except yaml.YAMLError:
        return None
    return _one_line_or_config(path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(CONFIGS)
def test_any_yaml_config_file_is_a_config_or_one_line(tmp_path, values):
    config = _loaded(tmp_path / "config.yaml", values)
    if config is not None:  # a glob that passed is usable at runtime, for any name
        for name in ("web1", "a[b", "-x", "é"):
            config.for_domain(name)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(CONFIGS)
def test_the_settings_check_config_prints_load_back_the_same(tmp_path, values):
    config = _loaded(tmp_path / "config.yaml", values)
    if config is None:
        return
    printed = tmp_path / "printed.yaml"
    printed.write_text(cfg.render_effective(config, "config.yaml"))
    assert cfg.load(str(printed), {}) == config


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
@example(b"minimal: 20\nlogdir: /var/log/b\xe9\n")
@example(b"\xff\xfe" + "minimal: 20".encode("utf-16-le"))
@example(b"a: &a [*a, *a, *a]\n")
@example(b"minimal: !!python/object/apply:os.system ['true']\n")
def test_any_bytes_as_a_config_file_is_a_config_or_one_line(tmp_path, raw):
    path = tmp_path / "config.yaml"
    path.write_bytes(raw)
    _one_line_or_config(path)


def _fixture(name):
    return (FIXTURES / "virsh" / f"{name}.stdout").read_text(encoding="utf-8")


REAL = [_fixture("domstats-balloon-list-running.two-guests"), _fixture("dommemstat.stats-period-1"),
        _fixture("dominfo"), _fixture("nodememstats"), _fixture("dumpxml.live")]
PARSERS = [parse_domstats, parse_running, lambda t: parse_running(t, with_ids=False),
           lambda t: parse_dommemstat("x", t), parse_dominfo_max_kib, parse_nodememstats]


@st.composite
def mangled(draw):
    """A real output with a few characters changed, dropped or inserted, or cut short; or any text."""
    if draw(st.booleans()):
        return draw(st.text(max_size=300))
    text = list(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["replace", "drop", "insert", "cut"]))
        char = draw(st.characters())
        if how == "cut":
            text = text[:at]
        elif how == "insert":
            text.insert(at, char)
        elif at < len(text):
            text[at:at + 1] = [char] if how == "replace" else []
    return "".join(text)


@settings(max_examples=4 * settings.default.max_examples)  # cheap examples: a larger share of the budget
@given(mangled())
def test_parsers_refuse_garbage_but_never_raise_anything_else(text):
    for parse in PARSERS:
        try:
            parse(text)
        except VirshOutputError:
            pass
    try:
        parse_domain_xml(text)
    except ValueError:  # what the observer catches
        pass


@given(st.data())
def test_daemon_on_mangled_reads_never_acts_unsafely(data):
    fake = still_host(domain("web1", usable_mib=300), domain("idle", usable_mib=1500))
    good = fake.run_line(READ_LINE)
    bad = data.draw(mangled_from(good))
    answer = fake.answer
    fake.answer = lambda c, a: (bad, "", 0) if c.startswith("domstats") else answer(c, a)
    config = cfg.build({"policy": "step", "host_memory": "off"})
    checked = CheckedVirsh(fake, config, lambda: T0)
    Daemon(config, checked, lambda: T0).cycle()
    assert checked.violations == []


def mangled_from(text):
    """Edits of one real read: a digit changed, a line dropped or doubled, a cut."""
    lines = text.split("\n")

    @st.composite
    def edit(draw):
        out = list(lines)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(out) - 1))
            how = draw(st.sampled_from(["digit", "drop", "double", "cut", "char"]))
            if how == "drop":
                del out[i]
            elif how == "double":
                out.insert(i, out[i])
            elif how == "cut":
                return "\n".join(out)[:draw(st.integers(0, len(text)))]
            elif how == "digit":
                out[i] = "".join(draw(st.sampled_from("0123456789")) if c.isdigit() and draw(st.booleans()) else c
                                 for c in out[i])
            else:
                at = draw(st.integers(0, len(out[i])))
                out[i] = out[i][:at] + draw(st.characters()) + out[i][at:]
            if not out:
                break
        return "\n".join(out)
    return edit()
