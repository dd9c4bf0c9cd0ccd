"""A settable clock for in-process tests of time-driven logic (monitors, debouncers, the challenger)."""

from __future__ import annotations


class Clock:
    """Returns ``t``; a test advances it (``clock.t += 0.1``) instead of sleeping. Starts in 2027."""

    def __init__(self) -> None:
        self.t = 1.8e9

    def __call__(self) -> float:
        return self.t
