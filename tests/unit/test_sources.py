"""The source update budget (ioc/edges/sources.py): the bound on what an input storm costs the IOC."""

from __future__ import annotations

import threading
import time

from ioc.edges.sources import UpdateBudget


def test_updates_past_the_budget_hold_the_client_threads_back():
    budget = UpdateBudget(rate=2000)  # 20 per 10 ms window
    taken = []

    def client_thread():
        for _ in range(100):
            budget.take()
        taken.append(time.monotonic())

    t0 = time.monotonic()
    threads = [threading.Thread(target=client_thread) for _ in range(2)]  # e.g. two source IOCs' circuits
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(taken) - t0 >= 0.08  # 200 updates at 2000/s: at least 9 windows of 10 ms
    assert budget.held_back_s > 0.05


def test_within_the_budget_nothing_waits():
    budget = UpdateBudget(rate=100_000)
    t0 = time.monotonic()
    for _ in range(500):
        budget.take()
    assert budget.held_back_s == 0.0 and time.monotonic() - t0 < 0.05
