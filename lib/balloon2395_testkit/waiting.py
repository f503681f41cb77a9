"""Waiting on a real host: poll a condition until it holds, and the error the harness raises."""

from __future__ import annotations

import subprocess
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class HarnessError(RuntimeError):
    """Something in the real-guest environment did not behave."""


def wait_for(
    predicate: Callable[[], Optional[T]],
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; return that value.

    A HarnessError, OSError or timed-out subprocess inside ``predicate`` counts as "not yet" (a guest
    still booting, a libvirtd restarting); the last one is named when the wait times out.
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (HarnessError, OSError, subprocess.TimeoutExpired) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)
