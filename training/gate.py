"""Challenger vs champion on the same held-out data, and the promotion policy from the config.

Both models are run through the IOC's own engine (:mod:`ioc.core.engine`: checksum, signature vs config,
test vectors, finite outputs, the normalisation around the graph), so the comparison is of what the
IOC would actually serve, and a challenger the IOC would reject is rejected here first.

Score: per-output RMSE in raw units on the test split, normalised by that output's standard deviation
in the test split (NRMSE), and their mean. An array output is one output: RMSE and spread over all its
elements. Policy (``gate:`` in the config):

* ``min_improvement`` — the challenger's mean NRMSE must be at least this much (relative) lower
  than the champion's (0 = not worse; 0.01 = 1 % better);
* ``max_output_regression`` — and no single output may be more than this much (relative) worse;
* ``promote_to`` — a winner becomes ``champion`` (served at once) or ``challenger`` (served in shadow
  until an operator writes ``$(P)PROMOTE``).

With no champion (or one the current config cannot load) the challenger is promoted, and the reason
says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ioc.core.config import InferenceConfig, ModelConfig
from ioc.core.engine import EngineError, LoadedModel, load_version
from ioc.core.store import ModelStore
from training.dataset import Dataset
from training.layout import slices
from training.spec import GateSpec


@dataclass
class Scores:
    rmse: dict[str, float]
    nrmse: dict[str, float]

    @property
    def mean_nrmse(self) -> float:
        return float(np.mean(list(self.nrmse.values())))


@dataclass
class Decision:
    promote: bool
    pointer: str | None  # "champion" / "challenger" when promoted
    reason: str
    challenger: Scores | None = None
    champion: Scores | None = None
    champion_version: int | None = None
    checks: dict[str, bool] = field(default_factory=dict)


def score(model: LoadedModel, test: Dataset) -> Scores:
    pred = model.run_batch(test.x)
    rmse, nrmse = {}, {}
    for name, cols in slices(test.output_signals).items():
        err = pred[:, cols] - test.y[:, cols]
        rmse[name] = float(np.sqrt((err**2).mean()))
        spread = float(test.y[:, cols].std())
        nrmse[name] = rmse[name] / (spread if spread > 0 else 1.0)
    return Scores(rmse, nrmse)


def load_champion(store: ModelStore, config: ModelConfig, inference: InferenceConfig) -> tuple[int | None, str,
                                                                                                 LoadedModel | None]:
    """(version, why-not, model): the current champion through the engine, or the reason it cannot be used."""
    if not store.exists():
        return None, "no model store yet", None
    number = store.champion()
    if number is None:
        return None, "no champion in the store", None
    try:
        return number, "", load_version(store, number, config, inference)
    except EngineError as exc:
        return number, f"champion v{number} cannot be loaded with this config ({exc})", None


def decide(challenger: LoadedModel, test: Dataset, gate: GateSpec, champion: LoadedModel | None,
           champion_version: int | None, champion_problem: str) -> Decision:
    mine = score(challenger, test)
    if champion is None:
        return Decision(True, gate.promote_to, f"{champion_problem}: promoted to {gate.promote_to}", mine,
                        None, champion_version, {"beats_champion": True})
    theirs = score(champion, test)
    improvement = (theirs.mean_nrmse - mine.mean_nrmse) / theirs.mean_nrmse if theirs.mean_nrmse > 0 else 0.0
    checks = {"beats_champion": improvement >= gate.min_improvement}
    worse = {n: (mine.rmse[n] - theirs.rmse[n]) / theirs.rmse[n] if theirs.rmse[n] > 0 else 0.0
             for n in mine.rmse}
    worst_name = max(worse, key=worse.__getitem__)
    checks["no_output_worse"] = worse[worst_name] <= gate.max_output_regression
    versus = (f"mean NRMSE {mine.mean_nrmse:.4g} vs champion v{champion_version} {theirs.mean_nrmse:.4g} "
              f"({improvement:+.2%})")
    if not checks["beats_champion"]:
        return Decision(False, None, f"loses to the champion: {versus}, needs >= {gate.min_improvement:+.2%}",
                        mine, theirs, champion_version, checks)
    if not checks["no_output_worse"]:
        return Decision(False, None, f"worse than the champion on {worst_name}: RMSE {mine.rmse[worst_name]:.4g} "
                        f"vs {theirs.rmse[worst_name]:.4g} ({worse[worst_name]:+.2%}, allowed "
                        f"{gate.max_output_regression:+.2%})", mine, theirs, champion_version, checks)
    return Decision(True, gate.promote_to, f"beats the champion: {versus}; promoted to {gate.promote_to}",
                    mine, theirs, champion_version, checks)
