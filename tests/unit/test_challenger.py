"""The challenger's live error and the promotion policy in process: a real runner shadowing a real
challenger (ONNX Runtime), the real model manager on a real store, the promotion edge, a fake clock.
Truth samples go through the same sink a CA monitor of the truth PV would call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ioc.core.config import InferenceConfig
from ioc.core.configfile import load_config
from ioc.core.pvmodel import PVDatabase, Severity
from ioc.core.store import ModelStore
from ioc.edges.model_manager import ModelManager
from ioc.edges.promotion import PromotionEdge
from ioc.runtime.challenger import ChallengerMonitor
from ioc.runtime.runner import ModelRunner
from tests.support.configs import model, write_config
from tests.support.models import linear_model, manifest_for
from tests.unit.test_drift import ref_entry

W = [[1.0, 1.0]]
TRUTH_BIAS = 0.3  # the machine is y = a + b + 0.3: the champion (bias 0) is 0.3 off


def _version(store: ModelStore, bias: float) -> int:
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(20_000, 2))
    ys = xs @ np.array(W).T + bias
    manifest = manifest_for(["a", "b"], ["y"], test_inputs=xs[:4], test_outputs=ys[:4])
    manifest["reference"] = {"inputs": {n: ref_entry(xs[:, i]) for i, n in enumerate("ab")},
                             "outputs": {"y": ref_entry(ys[:, 0])}}
    return store.add_version(linear_model(W, [bias]), manifest)


class Clock:
    def __init__(self) -> None:
        self.t = 1.8e9

    def __call__(self) -> float:
        return self.t


class Rig:
    def __init__(self, tmp: Path, challenger_bias: float, **retrain):
        self.store = ModelStore(tmp / "store")
        self.store.write_pointer("champion", _version(self.store, 0.0))
        self.store.write_pointer("challenger", _version(self.store, challenger_bias))
        path = write_config(tmp / "c.yaml", model(
            "M:", store=str(self.store.root), trigger={"scan_hz": 10}, inputs=["a", "b"],
            outputs=[{"name": "y", "truth": "ca://T:Y"}], record={"dir": "rec"},
            drift={"window_s": 10, "update_s": 0.5, "raise_s": 1, "clear_s": 2, "correlation_s": 0},
            retrain={"promote": "auto", "margin": 0.5, "min_samples": 50, "max_hours": 0.01} | retrain))
        self.config = load_config(path).models[0]
        self.clock = Clock()
        self.db = PVDatabase()
        loop = asyncio.get_running_loop()
        self.runner = ModelRunner(self.config, self.db, InferenceConfig(), loop, clock=self.clock)
        self.challenger = ChallengerMonitor(self.runner, self.db, clock=self.clock)
        self.runner.cycle_listeners.append(self.challenger.on_cycle)  # as ioc.app wires it
        self.runner.challenger_listeners.append(self.challenger.on_challenger)
        self.runner.model_listeners.append(self.challenger.on_model)
        self.manager = ModelManager(self.runner, self.store, InferenceConfig(), loop, poll_s=3600)
        self.promotion = PromotionEdge(self.runner, self.manager, self.config.retrain)
        self.challenger.listeners.append(self.promotion.on_comparison)
        self.runner.start()
        self.promotion.start()
        self.truth = self.challenger.truth_sink(0)
        self.rng = np.random.default_rng(3)

    async def start(self) -> Rig:
        await self.manager.start()
        await self.manager.stop()  # no background polling: the test drives everything
        assert self.runner.challenger is not None
        return self

    async def run(self, cycles: int, shift: float = 0.0) -> None:
        """10 Hz cycles: inputs, a cycle (champion and challenger), the measured truth; an update each second."""
        for i in range(cycles):
            self.clock.t += 0.1
            x = self.rng.normal(size=2)
            x[0] += shift
            for k, v in enumerate(x):
                self.runner.update_input(k, float(v), Severity.NO_ALARM, self.clock.t)
            self.runner.run_cycle()
            self.truth(float(x.sum() + TRUTH_BIAS), Severity.NO_ALARM, self.clock.t, True)
            if i % 10 == 9:
                self.challenger.update()
                await asyncio.sleep(0)  # let the calibration / promotion tasks run
        for _ in range(50):  # the calibration runs on a worker thread
            await asyncio.sleep(0.01)


async def _until(condition, rig: Rig, limit: int = 600, shift: float = 0.0) -> None:
    for _ in range(limit // 10):
        if condition():
            return
        await rig.run(10, shift)
    assert condition()


async def test_a_better_challenger_is_scored_on_the_same_samples_and_promoted_automatically(tmp_path):
    rig = await Rig(tmp_path, challenger_bias=0.2).start()  # 0.1 off: a third of the champion's error
    mae, ready = rig.db["M:CHALLENGER:MAE:y"], rig.db["M:PROMOTE:READY"]
    assert mae.reading.severity == Severity.INVALID
    await rig.run(30)
    assert mae.reading.value == pytest.approx(0.1, abs=1e-5) and mae.reading.severity == 0
    live = rig.challenger.comparison()
    assert live.champion_mae[0] == pytest.approx(0.3, abs=1e-5)
    assert 0 < live.samples < 50 and ready.reading.value == 0  # not judged yet
    assert ready.reading.message.endswith("/50 samples with truth")
    await _until(lambda: rig.db["M:CHAMPION"].value == "2", rig)
    assert rig.store.champion() == 2 and rig.store.challenger() is None
    promote = [e for e in rig.store.events() if e["action"] == "promote"][-1]
    assert (promote["user"], promote["host"], promote["to_version"]) == ("mlioc", "auto-promote", 2)
    assert "+66.7%" in promote["reason"]
    assert any(e["action"] == "challenger-ready" for e in rig.store.events())
    await rig.run(20)
    assert ready.reading.value == 0 and mae.reading.severity == Severity.INVALID  # no challenger any more


async def test_a_challenger_drifting_on_its_own_reference_is_not_ready(tmp_path):
    rig = await Rig(tmp_path, challenger_bias=0.2).start()
    drift, ready = rig.db["M:CHALLENGER:DRIFT"], rig.db["M:PROMOTE:READY"]
    await _until(lambda: drift.reading.severity == Severity.MAJOR, rig, shift=5.0)  # far outside its data
    await rig.run(60, shift=5.0)
    assert rig.challenger.comparison().samples >= 50
    assert ready.reading.value == 0 and ready.reading.message == "challenger +66.7%, own drift MAJOR"
    assert rig.store.champion() == 1


async def test_a_losing_challenger_is_retired_after_max_hours(tmp_path):
    rig = await Rig(tmp_path, challenger_bias=-0.5).start()  # 0.8 off: worse than the champion
    ready = rig.db["M:PROMOTE:READY"]
    await _until(lambda: (live := rig.challenger.comparison()) is not None and live.samples >= 50, rig)
    assert ready.reading.value == 0 and "needs +50.0%" in ready.reading.message
    assert rig.store.challenger() == 2
    await _until(lambda: rig.store.challenger() is None, rig, limit=800)  # 0.01 h = 36 s of losing
    retire = [e for e in rig.store.events() if e["action"] == "retire"][-1]
    assert (retire["from_version"], retire["host"]) == (2, "auto-retire") and "retired" in retire["reason"]
    assert rig.runner.challenger is None and rig.db["M:CHALLENGER"].value == ""
    assert rig.store.champion() == 1
