"""`status --watch` and `explain` read the state file a running daemon writes (issue 24, class 8): read
beside a real daemon, its JSON (lists where History has tuples) must render, not raise `TypeError: can only
concatenate list (not "tuple") to list`; and a state file that is no daemon's (wrong types, missing keys,
huge numbers, not UTF-8, a FIFO, a symlink, another user's) is one clear line, never a traceback."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import time

import pytest
from hypothesis import given, strategies as st

from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.decide.history import History
from balloon2395.lock import InstanceLock
from balloon2395.views import statefile, watch
from conftest import T0, domain, still_host, wait_for

URI = "qemu:///system"


def _reporting(name, **extra):
    """A guest whose reports carry MemFree (`unused`): History.recent fills, as for MoM's averages."""
    dom = domain(name, **extra)
    dom["stats"]["unused"] = dom["stats"]["usable"] // 2
    return dom


def _remembers_recent(host):
    state = host.daemon_state()
    return state and all(row["explain"]["history"]["recent"] for row in state["domains"])


def test_watch_and_explain_render_the_state_a_real_daemon_wrote(fake_host, daemons):
    host = fake_host(_reporting("pressed", usable_mib=300), _reporting("ok", usable_mib=600),
                     _reporting("vm-ü", usable_mib=1500))
    # cycles far enough apart that the views read a report newer than the daemon's last one: only a new
    # report makes History.saw() add to the `recent` the state file gave back as a JSON list
    proc = daemons(host, "--secs", "5")
    assert wait_for(lambda: _remembers_recent(host)), host.daemon_state()
    at = host.daemon_state()["at"]
    assert wait_for(lambda: time.time() >= at + 1.1)  # the guests (a report a second) have reported since
    watched = host.run("status", "--watch", "--count", "2", "--refresh", "0.1")
    assert watched.returncode == 0 and "Traceback" not in watched.stderr, watched.stderr
    assert watched.stderr == ""
    frames = watched.stdout.rstrip("\n").split("\n\n")
    assert len(frames) == 2
    for frame in frames:
        lines = frame.split("\n")
        assert f"daemon pid {proc.pid}" in lines[0] and lines[1].startswith("DOMAIN ")
        assert sorted(line.split()[0] for line in lines[2:]) == ["ok", "pressed", "vm-ü"]
    explained = host.run("explain", "pressed")
    assert explained.returncode == 0 and "Traceback" not in explained.stderr, explained.stderr
    assert f"daemon pid {proc.pid})" in explained.stdout
    assert proc.poll() is None  # the daemon went on meanwhile


# ------------------------------------------------------------------------------ the load boundary

def _good_state(tmp_path):
    """(the state file's path, a state as a daemon writes it, with a change and recent reports)."""
    virsh = still_host(_reporting("web1", usable_mib=300), _reporting("ok", usable_mib=600))
    daemon = Daemon(cfg.build({"host_memory": "off", "policy": "step"}), virsh, clock=lambda: T0)
    daemon.cycle()
    state = json.loads(json.dumps(statefile.snapshot(URI, daemon.last)))  # as the file holds it
    assert state["domains"][0]["explain"]["history"]["recent"] and state["domains"][0]["last_change"]
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir(exist_ok=True)
    return statefile.path_for(InstanceLock(URI, str(lock_dir))), state


def _with(state, path, value):
    changed = copy.deepcopy(state)
    *parents, last = path
    where = changed
    for key in parents:
        where = where[key]
    if value is KeyError:
        del where[last]
    else:
        where[last] = value
    return changed


HISTORY = ("domains", 0, "explain", "history")
BAD = [
    (("at",), "noon", "at: 'noon' is not a number"),
    (("at",), True, "at: True is not a number"),
    (("domains",), {"web1": {}}, "domains: {'web1': {}} is not a list"),
    (("domains", 0, "domain"), 7, "domains[0].domain: 7 is not text"),
    (("domains", 0, "why"), KeyError, "domains[0]: no 'why'"),
    (("domains", 0, "explain"), KeyError, "domains[0].explain: None is not an object"),
    (("domains", 0, "target_mib"), "2148", "domains[0].target_mib: '2148' is not a whole number"),
    (("domains", 0, "last_change", "from_kib"), [1], "domains[0].last_change.from_kib: [1] is not a whole number"),
    (("domains", 0, "last_change"), "grow", "domains[0].last_change: 'grow' is not an object"),
    (HISTORY, [], "domains[0].explain.history: [] is not an object"),
    (HISTORY + ("recent",), "abc", "domains[0].explain.history.recent: 'abc' is not a list of [actual, MemFree]"),
    (HISTORY + ("recent",), [[1, 2, 3]], "history.recent: [[1, 2, 3]] is not a list of [actual, MemFree] pairs"),
    (HISTORY + ("recent",), [["1", 2]], "is not a list of [actual, MemFree] pairs"),
    (HISTORY + ("changed_at",), "yesterday", "history.changed_at: 'yesterday' is not a number"),
    (HISTORY + ("unresponsive",), 1, "history.unresponsive: 1 is not true or false"),
    (HISTORY + ("seen_used_kib",), 10 ** 30, "history.seen_used_kib: a number of more than 15 digits is not"),
    (HISTORY + ("burst_kib",), 1e300 * 1e10, None),  # inf: written as Infinity, which is no JSON figure
    (("pid",), "123", "no daemon's state file (pid '123')"),
    (("pid",), 0, "no daemon's state file (pid 0)"),
    (("pid",), -1, "no daemon's state file (pid -1)"),
    (("pid",), 10 ** 30, "no daemon's state file (pid a number of more than 15 digits)"),
]


def _status_with(tmp_path, monkeypatch, text):
    """`status` and `explain web1` in process, the daemon's state file holding `text` (bytes or str), the
    domains read from an in-process fake host: (exit status, stdout, stderr) of each."""
    path, _ = _good_state(tmp_path)
    if text is not None:
        with open(path, "wb") as handle:
            handle.write(text if isinstance(text, bytes) else text.encode("utf-8"))
    return _views(tmp_path, monkeypatch)


def _views(tmp_path, monkeypatch):
    virsh = still_host(_reporting("web1", usable_mib=300), _reporting("ok", usable_mib=600))
    monkeypatch.setattr(watch, "open_virsh", lambda config: virsh)
    monkeypatch.setattr(watch, "_SAID", set(), raising=False)  # each view says its lines anew
    config = cfg.build({"host_memory": "off", "policy": "step", "lock_dir": str(tmp_path / "lock"),
                        "connect": URI})
    results = []
    for call in (lambda: watch.status(config, False, True, 0.05, 2), lambda: watch.explain(config, "web1"),
                 lambda: watch.status(config, True, False, 1, None)):
        out = _Captured(monkeypatch)
        results.append((call(), *out.text()))
    return results


class _Captured:
    def __init__(self, monkeypatch) -> None:
        import io
        import sys
        self.out, self.err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdout", self.out)
        monkeypatch.setattr(sys, "stderr", self.err)

    def text(self):
        return self.out.getvalue(), self.err.getvalue()


def test_the_good_state_renders_and_its_history_has_the_types_history_has(tmp_path, monkeypatch):
    path, state = _good_state(tmp_path)
    state["pid"] = os.getpid()
    with open(path, "w") as handle:
        json.dump(state, handle)
    read = statefile.read(path)
    history = statefile.histories(read)["web1"]
    assert isinstance(history.recent, tuple) and all(isinstance(pair, tuple) for pair in history.recent)
    results = _views(tmp_path, monkeypatch)
    assert all(code == 0 and err == "" for code, _, err in results)
    assert results[0][1].count(f"daemon pid {os.getpid()}") == 2 and f"daemon pid {os.getpid()})" in results[1][1]


def test_every_history_field_has_a_checked_kind():
    assert {str(f.type) for f in dataclasses.fields(History)} <= set(statefile.HISTORY_KINDS)


@pytest.mark.parametrize("path_in_state, value, said", BAD)
def test_a_state_of_the_wrong_shape_is_one_line_not_a_traceback(tmp_path, monkeypatch, path_in_state, value, said):
    path, state = _good_state(tmp_path)
    state["pid"] = os.getpid()
    text = json.dumps(_with(state, path_in_state, value))
    results = _status_with(tmp_path, monkeypatch, text)
    for code, out, err in results:
        assert code == 0, err
        assert "Traceback" not in out + err
    code, out, err = results[0]  # --watch, two frames: said once
    assert len(err.splitlines()) == 1 and err.startswith(f"balloon-2395: ignoring {path}: "), err
    if said:
        assert said in err
    assert out.count("no daemon running") == 2 and out.count("web1") == 2


@pytest.mark.parametrize("text, said", [
    (b"\xff\xfe{\"pid\": 1}", "not UTF-8"),
    ("{\"pid\": ", "not JSON"),
    ("{\"pid\": " + "9" * 5000 + "}", "not JSON"),
    ("{\"pid\": NaN}", "not JSON"),
    ("[1, 2]", "no daemon's state file (pid None)"),
    ("null", "no daemon's state file (pid None)"),
    ("", "not JSON"),
])
def test_a_file_that_is_no_state_is_one_line(tmp_path, monkeypatch, text, said):
    results = _status_with(tmp_path, monkeypatch, text)
    code, out, err = results[0]
    assert code == 0 and len(err.splitlines()) == 1 and said in err, err
    assert all("Traceback" not in o + e for _, o, e in results)


def test_a_fifo_a_symlink_and_another_users_file_are_refused_in_one_line(tmp_path, monkeypatch):
    path, state = _good_state(tmp_path)
    state["pid"] = os.getpid()
    real = tmp_path / "elsewhere.json"
    real.write_text(json.dumps(state))
    os.symlink(real, path)
    assert "a symlink" in _status_with(tmp_path, monkeypatch, None)[0][2]
    os.unlink(path)
    os.mkfifo(path)
    code, out, err = _status_with(tmp_path, monkeypatch, None)[0]  # no wait on the FIFO
    assert code == 0 and len(err.splitlines()) == 1 and "a FIFO, not the file a daemon writes" in err
    os.unlink(path)
    with open(path, "w") as handle:
        json.dump(state, handle)
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, 4321, 4321)
    code, out, err = _status_with(tmp_path, monkeypatch, None)[0]
    assert len(err.splitlines()) == 1 and "belongs to uid 4321" in err, err
    os.chown(path, 0, 0)
    assert _status_with(tmp_path, monkeypatch, None)[0][2] == ""


def test_a_state_whose_writer_is_gone_is_no_daemon_and_no_complaint(tmp_path, monkeypatch):
    path, state = _good_state(tmp_path)
    child = subprocess.Popen(["true"])
    child.wait()
    state["pid"] = child.pid
    code, out, err = _status_with(tmp_path, monkeypatch, json.dumps(state))[0]
    assert code == 0 and err == "" and "no daemon running" in out


def test_extreme_figures_within_bounds_still_render(tmp_path, monkeypatch):
    path, state = _good_state(tmp_path)
    state["pid"] = os.getpid()
    for key in ("changed_at", "paged_at"):
        state["domains"][0]["explain"]["history"][key] = 2 ** 62  # beyond any clock: shown as a number
    state["domains"][0]["last_change"]["at"] = -(2 ** 62)
    state["at"] = 2 ** 63
    for code, out, err in _status_with(tmp_path, monkeypatch, json.dumps(state)):
        assert code == 0 and err == "" and "Traceback" not in out


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


def _paths(value, here=()):
    yield here
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, here + (key,))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _paths(inner, here + (i,))


def test_any_value_anywhere_renders_or_is_one_line(tmp_path, monkeypatch):
    """Whatever JSON value replaces whatever part of a daemon's state: the views render it or say in one
    line why not; never a traceback."""
    path, state = _good_state(tmp_path)
    state["pid"] = os.getpid()
    places = [p for p in _paths(state) if p and p != ("pid",)]

    @given(st.sampled_from(places), JSON)
    def check(place, value):
        results = _status_with(tmp_path, monkeypatch, json.dumps(_with(state, place, value)))
        for code, out, err in results:
            assert code == 0 and "Traceback" not in out + err and len(err.splitlines()) <= 1, (place, value, err)

    check()


@pytest.mark.parametrize("text", ['{"u1": 1e999999, "u2": 1e1}', '{"u1": ' + "9" * 400 + ', "u2": 10}',
                                  '{"u1": true, "u2": 10.0, "u3": "noon", "u4": [1], "u5": null}'])
def test_the_change_journal_takes_only_wall_times(tmp_path, text):
    """The other file a daemon reads back at start (journal.py): a stamp that is no wall time is dropped,
    a number of hundreds of digits too (it once raised OverflowError out of the start)."""
    from balloon2395.journal import ChangeJournal
    path = tmp_path / "x.changes.json"
    path.write_text(text)
    assert ChangeJournal(str(path)).load(now=15.0, keep_s=60) == {"u2": 10.0}


@pytest.mark.parametrize("entry", [[1, 2048, 4096.0], [1, 2048], [1, 2048, 4096, 5], [True, 2048, 4096],
                                   [1, -1, 4096], [1, 4096, 2048], [1, 2048, 2 ** 53], "1 2048 4096",
                                   {"id": 1}, None, [1, "2048", 4096]])
def test_the_journal_takes_only_sizes_that_are_three_whole_numbers(tmp_path, entry):
    """Sizes a restart takes up (idle_shrink needed): what is not a domain id, a found size and a largest
    size no smaller than it is dropped, the well-formed entry beside it kept."""
    from balloon2395.journal import ChangeJournal, Sizes
    path = tmp_path / "x.changes.json"
    path.write_text(json.dumps({"changed": {}, "sizes": {"u1": entry, "u2": [7, 2048, 4096]}}))
    assert ChangeJournal(str(path)).load_sizes() == {"u2": Sizes(7, 2048, 4096)}
