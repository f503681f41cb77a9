"""pytest glue for the real-hypervisor e2e tests.

Every test collected under tests/e2e/ gets the ``e2e`` marker (select with
``-m e2e``, leave out with ``-m 'not e2e'``) and is skipped, with the reason,
when the host cannot boot guests (not root, libvirt not running, assets not
built: run ``tests/e2e/prepare.sh``). Set BALLOON_E2E_REQUIRE=1 to turn that
skip into a failure (CI after prepare.sh), BALLOON_E2E_SKIP=1 to skip always,
BALLOON_E2E_KEEP=1 to keep console logs and domain XML in /tmp.

Fixtures:
  e2e_ready             session: prerequisites checked (skips otherwise)
  guest_factory         function: a GuestFactory, all its guests removed after
  session_guest_factory session: same, shared by the whole session
  e2e_report            function: e2e_report("text") prints the line now and
                        again in an "e2e report" section of the terminal summary
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from balloon2395_testkit.guests import GuestFactory
from balloon2395_testkit.prepared import check_prerequisites

E2E_DIR = Path(__file__).resolve().parent
_REPORT_LINES = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "e2e: boots real QEMU guests through libvirt "
        "(needs root and tests/e2e/prepare.sh)",
    )


def _in_e2e_dir(item) -> bool:
    path = getattr(item, "path", None) or Path(str(item.fspath))
    try:
        Path(path).resolve().relative_to(E2E_DIR)
        return True
    except ValueError:
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _in_e2e_dir(item):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and _in_e2e_dir(item):
        item.e2e_failed = rep.failed


@pytest.fixture(scope="session")
def e2e_ready() -> bool:
    reason = check_prerequisites()
    if reason:
        if os.environ.get("BALLOON_E2E_REQUIRE"):
            pytest.fail(f"e2e prerequisites missing: {reason}", pytrace=False)
        pytest.skip(reason)
    return True


@pytest.fixture(autouse=True)
def _e2e_gate(e2e_ready):
    """Skip every e2e test when the host is not ready."""
    yield


def _report_console(factory: GuestFactory) -> None:
    for g in factory.guests:
        print(f"\n----- console tail of {g.name} ({g.console_path}) -----")
        print(g.console_tail(60))


@pytest.fixture
def guest_factory(request, e2e_ready):
    factory = GuestFactory()
    yield factory
    if getattr(request.node, "e2e_failed", False):
        _report_console(factory)
    factory.cleanup()


@pytest.fixture(scope="session")
def session_guest_factory(e2e_ready):
    factory = GuestFactory()
    yield factory
    factory.cleanup()


@pytest.fixture
def e2e_report(request):
    """Callable recording a measured fact of this test for the summary."""
    def report(text: str) -> None:
        line = f"{request.node.name}: {text}"
        _REPORT_LINES.append(line)
        print(f"\n[e2e] {line}")
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _REPORT_LINES:
        terminalreporter.section("e2e report")
        for line in _REPORT_LINES:
            terminalreporter.write_line(line)
