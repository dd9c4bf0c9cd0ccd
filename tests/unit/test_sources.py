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


class _SilentThenLiveCa:
    """Stands in for libca where a fault cannot be caused on demand: a subscription made right after
    connecting that never delivers (seen rarely, e.g. in tests/integration/test_quickstart.py's CI runs).
    The first ``silent`` subscriptions stay silent; later ones deliver at once."""

    def __init__(self, silent: int):
        self.silent = silent
        self.made = 0
        self.cleared = 0

    def create_subscription(self, chid, use_time=True, callback=None):
        self.made += 1
        if self.made > self.silent:
            threading.Thread(target=callback, kwargs=dict(value=1.0, severity=0, timestamp=time.time())).start()
        return (None, None, self.made)

    def clear_subscription(self, event_id):
        self.cleared += 1


def _first_value_after(monkeypatch, caplog, silent: int) -> tuple[_SilentThenLiveCa, list]:
    """Connect a CA source whose first ``silent`` subscriptions never deliver; return once a value arrived."""
    from ioc.core.config import PVRef
    from ioc.edges import sources
    from tests.support.wait import wait_until

    ca = _SilentThenLiveCa(silent=silent)
    delivered: list = []
    monkeypatch.setattr(sources, "ca_module", lambda: ca)
    monkeypatch.setattr(sources, "ca_client", lambda: ca)
    source = sources.CaSource(PVRef("ca", "SIM:SILENT"), lambda *a: delivered.append(a))
    source.FIRST_VALUE_S = 0.05
    caplog.set_level("INFO", logger="mlioc.sources")
    source.on_connected(chid=7)
    wait_until(lambda: delivered, timeout=5)
    source.stop()
    return ca, delivered


def test_a_silent_first_subscription_is_made_again_and_its_recovery_is_not_a_warning(monkeypatch, caplog):
    ca, delivered = _first_value_after(monkeypatch, caplog, silent=1)
    assert ca.made == 2 and ca.cleared >= 1
    assert delivered[0][0] == 1.0 and delivered[0][3] is True
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("subscribing again" in r.getMessage() for r in caplog.records)


def test_a_subscription_that_stays_silent_is_a_warning(monkeypatch, caplog):
    ca, _ = _first_value_after(monkeypatch, caplog, silent=3)
    assert ca.made == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and "no value" in warnings[0]
