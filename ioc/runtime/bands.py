"""The uncertainty PVs of a model's predictions: ``OUT:<name>:STD``, or ``OUT:<name>:LO`` / ``:HI``.

Which of them a model serves is fixed by its config (``training.uncertainty.method``,
:func:`ioc.core.layout.band_specs`); what goes into them comes with each prediction, from the version
that made it (:attr:`ioc.core.engine.LoadedModel.uncertainty`):

* an **ensemble** (:class:`ioc.core.engine.EnsembleModel`) returns its members' standard deviation
  with the mean, in the same ONNX Runtime call: ``STD`` is that spread;
* a **conformal** version's manifest holds one calibrated half-width per output element: ``LO`` and
  ``HI`` are the prediction minus and plus it.

The runner calls :meth:`Bands.post` right after it posts the outputs (same timestamp, same version
tag) and :meth:`Bands.invalidate` wherever it makes the outputs INVALID (same severity, status and
message), so a band can never look valid beside an invalid prediction. A version that makes no such
promise (or another kind than the config's) still serves its predictions; its bands are INVALID and
say why.
"""

from __future__ import annotations

import logging

import numpy as np

from ioc.core.arrays import TensorLayout
from ioc.core.config import ModelConfig
from ioc.core.engine import LoadedModel
from ioc.core.layout import ModelNames
from ioc.core.pvmodel import PV, PVDatabase, Severity, Status, clip_message

log = logging.getLogger("mlioc.bands")


class Bands:
    """The STD or LO/HI PVs of one model, champion and challenger. Build with :meth:`of`."""

    def __init__(self, config: ModelConfig, db: PVDatabase, method: str):
        self.config = config
        self.method = method
        names = ModelNames(config.prefix)
        # Per output: (STD,) or (LO, HI); the flat lists are what invalidation walks.
        self.per_output: list[list[PV]] = [[db[n] for n in names.bands(o.name, method)] for o in config.outputs]
        self.challenger_per_output: list[list[PV]] = [[db[n] for n in names.bands(o.name, method, challenger=True)]
                                                      for o in config.outputs]
        self.champion_pvs = [pv for pvs in self.per_output for pv in pvs]
        self.challenger_pvs = [pv for pvs in self.challenger_per_output for pv in pvs]
        layout = TensorLayout.of(config.outputs)
        self.layout = None if layout.all_scalar else layout
        self._dtypes = [o.dtype if o.shape else None for o in config.outputs]
        # The version whose "no uncertainty" reason the champion's / challenger's bands show now (posted once).
        self._unserved: dict[bool, str | None] = {False: None, True: None}

    @classmethod
    def of(cls, config: ModelConfig, db: PVDatabase) -> Bands | None:
        """None for a model whose config asks for no uncertainty (nothing to do on its hot path)."""
        return cls(config, db, config.uncertainty) if config.uncertainty is not None else None

    # ------------------------------------------------------------------ per cycle

    def post(self, model: LoadedModel, result: np.ndarray, timestamp: float, challenger: bool = False) -> None:
        """The bands of ``result`` (what ``model.run`` returned), stamped like the outputs."""
        per_output = self.challenger_per_output if challenger else self.per_output
        u = model.uncertainty
        if u is None or u.method != self.method:
            self._post_unserved(model, per_output, timestamp, challenger)
            return
        self._unserved[challenger] = None
        version = model.version
        if u.ensemble:
            spread = model.spread(result)
            assert spread is not None  # an ensemble's manifest makes the engine an EnsembleModel
            for pvs, value in zip(per_output, self._values(spread), strict=True):
                pvs[0].post(value, timestamp, tag=version)
            return
        if self.layout is None:  # scalars: plain floats (numpy on three numbers costs more than the sums)
            for pvs, y, h in zip(per_output, result.tolist(), u.halfwidth_values, strict=True):
                pvs[0].post(y - h, timestamp, tag=version)
                pvs[1].post(y + h, timestamp, tag=version)
            return
        halfwidth = u.halfwidth
        assert halfwidth is not None  # the manifest parser requires it for a conformal version
        lows, highs = self._values(result - halfwidth), self._values(result + halfwidth)
        for pvs, low, high in zip(per_output, lows, highs, strict=True):
            pvs[0].post(low, timestamp, tag=version)
            pvs[1].post(high, timestamp, tag=version)

    def _values(self, flat: np.ndarray) -> list:
        """One value per output: floats for scalars, arrays of each output's shape for arrays."""
        if self.layout is None:
            return flat.tolist()
        return self.layout.pieces(flat, self._dtypes)

    def _post_unserved(self, model: LoadedModel, per_output: list[list[PV]], timestamp: float,
                       challenger: bool) -> None:
        """INVALID with the reason, once per version (not at the cycle rate)."""
        if self._unserved[challenger] == model.version:
            return
        self._unserved[challenger] = model.version
        u = model.uncertainty
        why = (f"v{model.version} has no uncertainty" if u is None
               else f"v{model.version} is {u.method}, config {self.method}")
        who = "challenger " if challenger else ""
        log.warning("%s: %s%s: its %s PVs are INVALID until a version with %s uncertainty is served",
                    self.config.name, who, why, "STD" if self.method == "ensemble" else "LO/HI", self.method)
        for pvs in per_output:
            for pv in pvs:
                pv.post(pv.reading.value, timestamp, Severity.INVALID, Status.UDF, clip_message(why),
                        tag=model.version)

    def invalidate(self, status: int, message: str, now: float, *, champion: bool = True,
                   challenger: bool = False) -> None:
        """What the runner does to the outputs, done to their bands: last value kept, INVALID, same status
        and message."""
        for flag, pvs in ((champion, self.champion_pvs), (challenger, self.challenger_pvs)):
            if not flag:
                continue
            self._unserved[pvs is self.challenger_pvs] = None
            for pv in pvs:
                reading = pv.reading
                pv.post(reading.value, now, Severity.INVALID, status, clip_message(message), tag=reading.tag)
