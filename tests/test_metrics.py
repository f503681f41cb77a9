"""Prometheus metrics: the HTTP endpoint on loopback and the node_exporter textfile, both read
back with prometheus-client's own parser; the textfile is never seen half-written."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import platform
import re
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request

import pytest

import balloon2395
from balloon2395 import config as cfg
from balloon2395.daemon import Daemon
from balloon2395.lifetime import READ_LINE, READ_LINE_NO_ID
from balloon2395.virsh.commands import VirshCommands, default_uri
from conftest import GIB, LIB, MIB, T0, domain, still_host, wait_for

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="prometheus-client is optional: pip install -r requirements-metrics.txt")
from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from balloon2395 import metrics  # noqa: E402

HOST = socket.gethostname()
URI = default_uri({})  # the fake host's: its environment names none
ON = {"host": HOST, "uri": URI}  # the labels of each series of a daemon on that URI


def _samples(text):
    """{(name, frozenset(labels)): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _host_with_every_kind_of_domain(fake_host):
    host = fake_host(domain("web1", usable_mib=370), domain("ok", usable_mib=600),
                     domain("win", os="http://microsoft.com/win/10"), domain("fw", usable_mib=600))
    host.config.write_text("policy: step\ndomains:\n  fw: {exclude: true}\n")
    state = host.read()
    state["faults"] = {"setmem": {"exit": 1, "stderr": "error: internal error: oops\n", "times": 1}}
    host.write(state)
    return host


def test_http_endpoint_on_loopback(fake_host, daemons):
    host = _host_with_every_kind_of_domain(fake_host)
    port = _free_port()
    proc = daemons(host, "--secs", "0.2", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return _samples(response.read().decode())
        except OSError:
            return None

    def grown():
        samples = scrape()
        return samples and samples.get(("balloon2395_adjustments_total",
                                        frozenset({"host": HOST, "uri": URI, "direction": "grow"}.items())), 0) >= 1

    assert wait_for(grown), f"no grow counted at {url}"
    s = scrape()
    on = {"host": HOST, "uri": URI}
    assert s[("balloon2395_domain_maximum_bytes", frozenset(dict(on, domain="ok").items()))] == 4096 * MIB * 1024
    assert s[("balloon2395_domain_usable_bytes", frozenset(dict(on, domain="ok").items()))] == 600 * MIB * 1024
    assert ("balloon2395_domain_actual_bytes", frozenset(dict(on, domain="web1").items())) in s
    assert s[("balloon2395_domains_skipped", frozenset(dict(on, reason="windows").items()))] == 1
    assert s[("balloon2395_domains_skipped", frozenset(dict(on, reason="excluded").items()))] == 1
    assert s[("balloon2395_virsh_errors_total", frozenset(dict(on, command="setmem").items()))] == 1
    assert s[("balloon2395_host_available_bytes", frozenset(on.items()))] > 0
    assert s[("balloon2395_cycle_duration_seconds_count", frozenset(on.items()))] >= 1
    assert 0 < s[("balloon2395_cycle_duration_seconds_sum", frozenset(on.items()))] < 10 * \
        s[("balloon2395_cycle_duration_seconds_count", frozenset(on.items()))]
    assert ("balloon2395_adjustments_total", frozenset(dict(on, direction="shrink").items())) in s
    proc.terminate()
    assert proc.wait(timeout=20) == 0


def test_textfile_once(fake_host, tmp_path):
    host = _host_with_every_kind_of_domain(fake_host)
    prom = tmp_path / "textfile" / "balloon2395.prom"
    prom.parent.mkdir()
    result = host.cli("--once", "--metrics-textfile", str(prom))
    assert result.returncode == 0, result.stderr
    s = _samples(prom.read_text())
    # web1's grow was decided but its setmem failed: no target, a failure counted
    assert ("balloon2395_domain_target_bytes", frozenset(dict(ON, domain="web1").items())) not in s
    failed = {"host": HOST, "uri": URI, "direction": "grow", "outcome": "failed"}
    assert s[("balloon2395_changes_total", frozenset(failed.items()))] == 1
    state = host.read()
    state.pop("faults", None)
    host.write(state)
    for journal in host.lock_dir.glob("*.changes.json"):  # else the next run waits for newer figures
        journal.unlink()
    assert host.cli("--once", "--metrics-textfile", str(prom)).returncode == 0
    assert _samples(prom.read_text())[("balloon2395_domain_target_bytes",
                                       frozenset(dict(ON, domain="web1").items()))] == 2148 * MIB * 1024
    assert [p.name for p in prom.parent.iterdir()] == ["balloon2395.prom"]  # no temp file left behind


def test_metrics_from_the_config_file_and_errors_naming_the_key(fake_host, tmp_path):
    host = fake_host(domain("web1", usable_mib=600))
    prom = tmp_path / "m.prom"
    host.config.write_text(f"metrics:\n  textfile: {prom}\n")
    assert host.cli("--once").returncode == 0 and prom.exists()
    host.config.write_text("metrics:\n  port: http\n")
    bad = host.cli("--once")
    assert bad.returncode == 2 and "metrics.port: expected a number" in bad.stderr
    assert cfg.build({}).metrics.address == "127.0.0.1"  # loopback unless told otherwise


def test_textfile_is_never_seen_half_written(tmp_path):
    prom = tmp_path / "b.prom"
    config = cfg.build({"host_memory": "off", "metrics_textfile": str(prom)})
    daemon = Daemon(config, still_host(*[domain(f"vm{i}", usable_mib=600) for i in range(40)]), clock=lambda: T0)
    daemon.cycle()
    m = metrics.Metrics(config)
    m.add_host("h")
    done = threading.Event()

    def write():
        while not done.is_set():
            m.cycle_done("h", daemon.last, 0.5)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert wait_for(prom.exists)
        whole = prom.read_text()
        for _ in range(300):
            assert prom.read_text() == whole  # every write is the same: a torn file would differ
    finally:
        done.set()
        writer.join()
    assert {dict(labels).get("domain") for _, labels in _samples(whole)} >= {f"vm{i}" for i in range(40)}


def test_missing_prometheus_client_is_a_config_error(fake_host, tmp_path):
    blocker = tmp_path / "block" / "prometheus_client"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    host = fake_host(domain("web1"))
    env = dict(host.env, PYTHONPATH=f"{blocker.parent}:{host.env['PYTHONPATH']}")
    result = subprocess.run(host.daemon_argv("--once", "--metrics-port", "9"), env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "./install.sh --metrics" in result.stderr
    assert host.calls() == []
    plain = subprocess.run(host.daemon_argv("--once"), env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr  # without metrics it never needs the package
    assert json.loads(host.state_file.read_text())


def test_an_unwritable_textfile_is_said_once_and_costs_no_cycle(fake_host, daemons, tmp_path):
    host = fake_host(domain("web1", usable_mib=600))
    prom = tmp_path / "missing" / "b.prom"
    proc = daemons(host, "--secs", "0.05", "--metrics-textfile", str(prom))
    assert wait_for(lambda: host.calls().count([READ_LINE]) >= 10), "not many cycles"
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    err = proc.stderr.read()
    assert err.count(f"cannot write {prom}") == 1 and "cycle failed" not in err


def test_textfile_symlinks_planted_at_the_target_and_the_old_temp_name_are_never_followed(tmp_path):
    # issue 13, point 5: prometheus-client's write_to_textfile wrote through PATH.<pid>.<thread id>
    prom = tmp_path / "b.prom"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    old_temp = f"{prom}.{os.getpid()}.{threading.current_thread().ident}"
    for name in (prom, old_temp):
        os.symlink(victim, name)
    m = metrics.Metrics(cfg.build({"metrics_textfile": str(prom)}))
    m.add_host("h")
    m.cycle_done("h", None, 0.5)
    assert victim.read_text() == "precious\n" and os.readlink(old_temp) == str(victim)
    info = os.lstat(prom)  # the link at the target itself was replaced, not written through
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o644
    assert _samples(prom.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b.prom", "victim", os.path.basename(old_temp)])


def test_headroom_and_the_host_reserve_are_exported(fake_host, tmp_path):
    # what the operator kit's alerts hold usable memory and the host's available memory against
    host = fake_host(domain("web1", usable_mib=600), domain("db1", usable_mib=600))
    host.config.write_text("policy: step\nhost_memory: virsh\nhost_reserve: 3GiB\n"
                           "domains:\n  db1: {headroom: 1GiB}\n")
    state = host.read()
    state["host"] = {"total_kib": 64 * GIB, "free_kib": 32 * GIB}
    host.write(state)
    prom = tmp_path / "b.prom"
    result = host.cli("--once", "--metrics-textfile", str(prom))
    assert result.returncode == 0, result.stderr
    s = _samples(prom.read_text())
    headroom = {name: s[("balloon2395_domain_headroom_bytes", frozenset(dict(ON, domain=name).items()))]
                for name in ("web1", "db1")}
    assert headroom == {"web1": 256 * MIB * 1024, "db1": GIB * 1024}  # the default, and db1's own
    assert s[("balloon2395_host_reserve_bytes", frozenset({"host": HOST, "uri": URI}.items()))] == 3 * GIB * 1024


def test_the_interval_in_force_is_exported_and_follows_a_reload(fake_host, daemons, tmp_path):
    host = fake_host(domain("web1", usable_mib=600))
    host.config.write_text("policy: step\nsecs: 0.05\n")
    prom = tmp_path / "b.prom"
    proc = daemons(host, "--metrics-textfile", str(prom))
    interval = ("balloon2395_cycle_interval_seconds", frozenset({"host": HOST, "uri": URI}.items()))

    def exported():
        return prom.exists() and _samples(prom.read_text()).get(interval)

    assert wait_for(lambda: exported() == 0.05), exported()
    host.config.write_text("policy: step\nsecs: 0.1\n")
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: exported() == 0.1), exported()
    proc.terminate()
    assert proc.wait(timeout=20) == 0


# ----------------------------------------------------------------- issue 24, class 7: the endpoint

POOL = 4  # the most threads the endpoint may take for its answers, whatever its clients do


def _scrape(port, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return response.headers["Content-Type"], response.read().decode()


def _hostile_clients(port, idle=60, slow=10):
    """`idle` connections that never send a byte and `slow` that send half a request (slowloris)."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle + slow)]
    for conn in conns[idle:]:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return conns


def test_idle_and_slow_connections_pin_no_thread_and_a_scrape_still_answers():
    port = _free_port()
    before = threading.active_count()
    m = metrics.Metrics(cfg.build({"metrics_port": port}))
    conns = []
    try:
        m.add_host("qemu:///system")
        m.cycle_done("qemu:///system", None, 0.5)
        conns = _hostile_clients(port)
        time.sleep(0.5)
        for conn in conns[60:]:
            conn.sendall(b"x")  # a byte more of the header, as slowloris does, keeps no one waiting
        assert threading.active_count() <= before + POOL + 2, threading.active_count() - before
        started = time.monotonic()
        content_type, text = _scrape(port)
        assert time.monotonic() - started < 3
        assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
        assert _samples(text)[("balloon2395_cycle_interval_seconds",
                               frozenset({"host": HOST, "uri": "qemu:///system"}.items()))] == 0.5
        assert threading.active_count() <= before + POOL + 2
        for conn in conns:  # none of them is kept: closed by the endpoint within a few seconds
            conn.settimeout(15)
            assert conn.recv(100) == b""
    finally:
        for conn in conns:
            conn.close()
        m.close()
    assert wait_for(lambda: threading.active_count() <= before)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.0\r\n\r\n", b"200"),
    (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200"),
    (b"GET /etc/passwd HTTP/1.0\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", b"501"),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", None),  # too big: closed unanswered
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", None),  # TLS, or any garbage: an error
])
def test_the_endpoint_answers_only_a_bounded_get(request_bytes, status):
    port = _free_port()
    m = metrics.Metrics(cfg.build({"metrics_port": port}))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            try:
                conn.sendall(request_bytes)
            except OSError:  # closed while we were still sending the oversized one
                pass
            answer = b""
            try:
                while chunk := conn.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
        if status:
            assert answer.split(b" ")[1:2] == [status]
        assert (b"# HELP balloon2395_" in answer) == request_bytes.startswith(b"GET /metrics?")
        assert _scrape(port)[1].startswith("# HELP")  # and it still serves the next one
    finally:
        m.close()


def _tasks(pid, seconds=1.0):
    """The fewest and the most threads `pid` ran over `seconds`: each virsh call runs a few short
    threads of its own (sh's I/O), so one reading is noise; a thread pinned by a connection is in
    every reading."""
    counts = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        counts.append(len(os.listdir(f"/proc/{pid}/task")))
        time.sleep(0.02)
    return min(counts), max(counts)


def test_idle_connections_to_a_running_daemon_pin_no_thread(fake_host, daemons):
    host = fake_host(domain("web1", usable_mib=600))
    port = _free_port()
    proc = daemons(host, "--secs", "0.2", "--metrics-port", str(port))

    def scraped():
        try:
            return _samples(_scrape(port)[1])
        except OSError:
            return None

    assert wait_for(scraped), "the endpoint never answered"
    _, before = _tasks(proc.pid)
    conns = _hostile_clients(port)
    try:
        time.sleep(0.5)
        during, _ = _tasks(proc.pid)
        assert during <= before + 2, f"{during - before} threads more for {len(conns)} idle connections"
        started = time.monotonic()
        assert ("balloon2395_domain_actual_bytes", frozenset(dict(ON, domain="web1").items())) in scraped()
        assert time.monotonic() - started < 3
    finally:
        for conn in conns:
            conn.close()
    proc.terminate()
    assert proc.wait(timeout=20) == 0


# ------------------------------------------------------------ issue 24, class 7: a label per connection

def test_two_uris_with_the_same_domain_are_two_series(fake_host, tmp_path):
    host = fake_host(domain("web1", usable_mib=370))  # the fake virsh answers the same on both URIs
    prom = tmp_path / "b.prom"
    uris = ("qemu:///system", "qemu:///session")
    result = host.cli("--once", "--connect", uris[0], "--connect", uris[1], "--metrics-textfile", str(prom))
    assert result.returncode == 0, result.stderr
    text = prom.read_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in families.items():
        labels = [(s.name, frozenset(s.labels.items())) for s in family.samples]  # a histogram: _sum, _count
        assert len(labels) == len(set(labels)), f"{name}: two series with the same labels"
        assert all(s.labels["host"] == HOST and s.labels["uri"] in uris for s in family.samples), name
    actual = families["balloon2395_domain_actual_bytes"].samples
    assert sorted(s.labels["uri"] for s in actual if s.labels["domain"] == "web1") == sorted(uris)
    grown = [s for s in families["balloon2395_adjustments"].samples
             if s.name.endswith("_total") and s.labels["direction"] == "grow"]
    assert sorted((s.labels["uri"], s.value) for s in grown) == sorted((uri, 1.0) for uri in uris)
    assert {s.labels["uri"] for s in families["balloon2395_last_cycle_timestamp_seconds"].samples} == set(uris)


def test_the_uri_label_carries_no_password_and_no_undecodable_byte():
    m = metrics.Metrics(cfg.build({}))
    for uri in ("qemu+tcp://admin:s3cret@host2/system", "qemu:///sys\udcfftem"):
        m.add_host(uri)
        m.cycle_done(uri, None, 0.5)
    text = generate_latest(m.registry).decode("utf-8")
    assert "s3cret" not in text
    assert {s.labels["uri"] for f in text_string_to_metric_families(text) for s in f.samples} == \
        {"qemu+tcp://admin:***@host2/system", "qemu:///sys\\udcfftem"}
    hosts = {s.labels["uri"]: s.labels["host"] for f in text_string_to_metric_families(text) for s in f.samples}
    assert hosts["qemu+tcp://admin:***@host2/system"] == "host2"


# ------------------------------------------------------------ issue 25, point 4: what an operator expects

def _one_cycle(config, *domains):
    daemon = Daemon(config, still_host(*domains), clock=lambda: T0)
    daemon.cycle()
    return daemon.last


def _fresh(uri="qemu:///system", **config):
    m = metrics.Metrics(cfg.build(dict({"host_memory": "off"}, **config)))
    m.add_host(uri)
    return m


def _scraped(m):
    return _samples(generate_latest(m.registry).decode("utf-8"))


def _on(uri="qemu:///system", **labels):
    return frozenset(dict({"host": HOST, "uri": uri}, **labels).items())


def test_build_info_names_the_version_the_python_and_the_policy():
    s = _scraped(_fresh(policy="mom"))
    info = [dict(labels) for name, labels in s if name == "balloon2395_build_info"]
    assert info == [{"host": HOST, "uri": "qemu:///system", "version": balloon2395.__version__,
                     "python": platform.python_version(), "policy": "mom"}]
    assert s[("balloon2395_build_info", frozenset(info[0].items()))] == 1


def test_build_info_follows_the_policy_a_reload_brings():
    m = _fresh(policy="step")
    m.cycle_done("qemu:///system", None, 0.5, "proxmox")
    policies = [dict(labels)["policy"] for name, labels in _scraped(m) if name == "balloon2395_build_info"]
    assert policies == ["proxmox"]


def test_every_counter_and_the_cycle_histogram_are_there_at_zero_before_any_cycle():
    s = _scraped(_fresh())
    changes = {(dict(labels)["direction"], dict(labels)["outcome"]): value for (name, labels), value in s.items()
               if name == "balloon2395_changes_total"}
    assert changes == {(d, o): 0 for d in ("grow", "shrink") for o in
                       ("applied", "failed", "timed-out", "gone", "fenced", "dry-run")}
    assert {dict(labels)["direction"]: value for (name, labels), value in s.items()
            if name == "balloon2395_adjustments_total"} == {"grow": 0, "shrink": 0}
    assert {dict(labels)["command"]: value for (name, labels), value in s.items()
            if name == "balloon2395_virsh_errors_total"} == dict.fromkeys(metrics.COMMANDS, 0)
    buckets = {dict(labels)["le"]: value for (name, labels), value in s.items()
               if name == "balloon2395_cycle_duration_seconds_bucket"}
    assert len(buckets) == len(metrics.BUCKETS) + 1 and set(buckets.values()) == {0}
    assert s[("balloon2395_cycle_duration_seconds_count", _on())] == 0


def test_a_failed_call_of_a_command_not_known_in_advance_is_still_counted():
    m = _fresh()
    m.virsh_error("qemu:///system", "metadata")
    m.virsh_error("qemu:///system", "setmem")
    s = _scraped(m)
    assert s[("balloon2395_virsh_errors_total", _on(command="metadata"))] == 1
    assert s[("balloon2395_virsh_errors_total", _on(command="setmem"))] == 1
    assert s[("balloon2395_virsh_errors_total", _on(command="dumpxml"))] == 0


def test_every_virsh_command_the_daemon_runs_is_counted_from_the_start():
    """VirshCommands' named commands and the read line, named as CountingVirsh names a failed one."""
    ran = set()

    class Recorder(VirshCommands):
        def run(self, *args):
            ran.add(args[0])
            return ""

        def run_line(self, line):
            ran.add(line.split()[0])
            return ""

    recorder = Recorder()
    for name, method in inspect.getmembers(VirshCommands, inspect.isfunction):
        if name.startswith("_") or name in ("run", "run_line", "close"):
            continue
        try:
            method(recorder, *["1"] * (len(inspect.signature(method).parameters) - 1))
        except Exception:  # the parsers refuse the empty output: what matters is the command it ran
            pass
    ran |= {line.split()[0] for line in (READ_LINE, READ_LINE_NO_ID)}
    assert ran and ran <= set(metrics.COMMANDS), sorted(ran - set(metrics.COMMANDS))


def test_every_skip_reason_is_exported_at_zero_beside_the_ones_the_cycle_had():
    config = cfg.build({"host_memory": "off", "policy": "step"})
    cycle = _one_cycle(config, domain("web1", usable_mib=600), domain("win", os="http://microsoft.com/win/10"))
    m = metrics.Metrics(config)
    m.add_host("qemu:///system")
    m.cycle_done("qemu:///system", cycle, 0.5)
    skipped = {dict(labels)["reason"]: value for (name, labels), value in _scraped(m).items()
               if name == "balloon2395_domains_skipped"}
    assert skipped == dict(dict.fromkeys(metrics.SKIP_REASONS, 0), windows=1)


def test_the_skip_reasons_known_in_advance_are_the_decide_packages():
    source = "".join(path.read_text() for path in (LIB / "balloon2395" / "decide").glob("*.py"))
    codes = set(re.findall(r'\bSKIP, "([a-z-]+)"', source))
    assert codes and codes == set(metrics.SKIP_REASONS)


def test_each_cycle_is_counted_once_in_the_bucket_of_its_duration():
    config = cfg.build({"host_memory": "off"})
    cycle = _one_cycle(config, domain("web1", usable_mib=600))
    m = metrics.Metrics(config)
    m.add_host("h")
    for seconds in (0.003, 0.005, 0.7, 12.0, 400.0):  # 0.005: at a bound, in its bucket (le)
        one = dataclasses.replace(cycle, duration_s=seconds)
        m.cycle_done("h", one, 0.5)
        m.cycle_done("h", one, 0.5)  # the same cycle published again (an outage): not a second cycle
    s = _scraped(m)
    ids = {"host": socket.gethostname(), "uri": "h"}
    bucket = {dict(labels)["le"]: value for (name, labels), value in s.items()
              if name == "balloon2395_cycle_duration_seconds_bucket"}
    assert bucket["0.005"] == 2 and bucket["0.5"] == 2 and bucket["1.0"] == 3 and bucket["10.0"] == 3
    assert bucket["30.0"] == 4 and bucket["+Inf"] == 5
    assert s[("balloon2395_cycle_duration_seconds_count", frozenset(ids.items()))] == 5
    assert s[("balloon2395_cycle_duration_seconds_sum", frozenset(ids.items()))] == pytest.approx(412.708)
