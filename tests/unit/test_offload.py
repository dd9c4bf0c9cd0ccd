"""Where inference runs: the inline / worker-thread decision of ``offload: auto``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ioc.runtime.offload import SLOW_STRIKES, Offloader


async def test_only_consecutive_slow_inline_runs_move_a_model_off_the_loop():
    off = Offloader(asyncio.get_running_loop(), "auto", budget_ms=0.25, name="m")
    model = SimpleNamespace(warm_median_ms=0.01)
    assert off.use_inline(model)
    slow, fast = 4 * 0.25e-3 * 1.5, 0.02e-3
    for _ in range(10):  # a slow run now and then (a busy scheduler, the GIL held elsewhere) is not the model
        for _ in range(SLOW_STRIKES - 1):
            off.note_inline_time(model, slow)
        off.note_inline_time(model, fast)
    assert off.use_inline(model)
    for _ in range(SLOW_STRIKES):
        off.note_inline_time(model, slow)
    assert not off.use_inline(model)
    other = SimpleNamespace(warm_median_ms=0.01)  # the demotion is per model version
    assert off.use_inline(other)
    off.close()


async def test_forced_modes_ignore_timings():
    loop = asyncio.get_running_loop()
    fast, slow = SimpleNamespace(warm_median_ms=0.01), SimpleNamespace(warm_median_ms=50.0)
    never, always = Offloader(loop, "never", 0.25, "a"), Offloader(loop, "always", 0.25, "b")
    for _ in range(SLOW_STRIKES):
        never.note_inline_time(fast, 1.0)
    assert never.use_inline(fast) and never.use_inline(slow)
    assert not always.use_inline(fast) and not always.use_inline(slow)



async def test_an_offloader_holds_one_call_at_most_and_close_waits_for_it():
    import threading

    loop = asyncio.get_running_loop()
    off = Offloader(loop, "always", 0.25, "m")
    release, started, returned = threading.Event(), threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(10)
        returned.set()
        return "first"

    assert off.submit(slow, lambda r, e, dt: None)
    assert off.busy
    assert not off.submit(lambda: "second", lambda r, e, dt: None)  # refused, not queued behind it
    await loop.run_in_executor(None, started.wait, 5)
    worker = next(t for t in threading.enumerate() if t.name == "infer-m")
    threading.Timer(0.3, release.set).start()  # the call in flight returns while close() waits
    off.close()
    assert returned.is_set() and not worker.is_alive()  # no thread left inside the model
    assert not off.submit(lambda: "third", lambda r, e, dt: None)  # closed
