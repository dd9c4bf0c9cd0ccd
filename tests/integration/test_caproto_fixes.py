"""The isolated caproto patches: inline coroutine runner, immediate sends, TCP_NODELAY, port binding."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ioc.protocols.caproto_fixes import bind_and_listen, run_inline


async def test_run_inline_completes_a_coroutine_that_does_not_wait_on_the_callers_stack():
    steps = []

    async def quick():
        steps.append("ran")
        return 1

    spawned = []
    run_inline(quick(), spawned.append)
    assert steps == ["ran"] and spawned == []  # no task, no loop iteration


async def test_run_inline_hands_a_waiting_coroutine_to_a_task_that_finishes_it():
    loop = asyncio.get_running_loop()
    results = []

    async def slow():
        value = await loop.run_in_executor(None, lambda: 41)
        await asyncio.sleep(0)
        value += await asyncio.wrap_future(loop.run_in_executor(None, lambda: 1))
        results.append(value)

    tasks = []
    run_inline(slow(), lambda coro: tasks.append(asyncio.ensure_future(coro)))
    assert len(tasks) == 1 and results == []
    await tasks[0]
    assert results == [42]


async def test_run_inline_delivers_exceptions_and_cancellation_to_the_coroutine():
    loop = asyncio.get_running_loop()
    seen = []

    async def failing():
        try:
            await loop.run_in_executor(None, lambda: 1 / 0)
        except ZeroDivisionError:
            seen.append("error reached the coroutine")

    tasks = []
    run_inline(failing(), lambda coro: tasks.append(asyncio.ensure_future(coro)))
    await tasks[0]
    assert seen == ["error reached the coroutine"]

    gate = loop.create_future()

    async def waiting():
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    run_inline(waiting(), lambda coro: tasks.append(asyncio.ensure_future(coro)))
    await asyncio.sleep(0)
    tasks[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert seen[-1] == "cancelled"


async def test_a_taken_port_fails_at_bind_time_not_later_in_a_background_task():
    first = await bind_and_listen("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        with pytest.raises(OSError):
            await bind_and_listen("127.0.0.1", port)
    finally:
        first.close()
    again = await bind_and_listen("127.0.0.1", port)  # free again: reusable at once (SO_REUSEADDR)
    assert again.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    again.close()
