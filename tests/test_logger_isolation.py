"""One test's logger set-up must not leak into the next (conftest.py restores it around each test).
The two tests below run in this order: the second fails if the first one's setup() leaks."""

from __future__ import annotations

import io
import logging

from balloon2395.logs import lines as logs


def test_setup_sends_the_daemons_lines_to_its_stream_only():
    stream = io.StringIO()
    logs.setup(None, debug=False, stream=stream)
    logs.log.info("grow web1 2048 -> 2148 MiB: usable 18% < 25%")
    assert "grow web1 2048 -> 2148 MiB" in stream.getvalue()
    assert logs.log.propagate is False  # not a second copy through the root logger


def test_caplog_sees_the_daemons_lines_after_a_test_that_set_them_up(caplog):
    # A leaked setup() drops the debug line (its level INFO) or, before pytest 9.2, every line (no
    # propagation to caplog's handler on the root logger).
    caplog.set_level(logging.DEBUG)
    logs.log.debug("----- idle -----")
    logs.log.info("shrink idle 4096 -> 4046 MiB: usable 60% > 35%")
    assert caplog.messages == ["----- idle -----", "shrink idle 4096 -> 4046 MiB: usable 60% > 35%"]
