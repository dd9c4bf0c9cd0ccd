"""One way for a test to wait for something that is not a monitor update: poll a condition until it
holds or a deadline passes. Monitor updates are waited on with :meth:`Monitor.wait_for` (a condition
variable); this is for files written on another thread, HTTP endpoints and process state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, *, what: str = "condition",
               interval: float = 0.05, describe: Callable[[], str] | None = None) -> T:
    """Call ``condition()`` until it returns something truthy and return that; raise ``TimeoutError``
    (naming ``what`` and, if given, ``describe()`` of the last state) after ``timeout`` seconds.

    ``interval`` is a polling period, not a guess at how long the outcome takes.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"; last: {describe()}" if describe is not None else ""
            raise TimeoutError(f"{what} not met within {timeout} s{detail}")
        time.sleep(interval)
