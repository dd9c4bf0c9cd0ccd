"""One model's PVs as the generators see them: the layout's specs, looked up by role.

Pure logic. The specs come from :func:`ioc.core.layout.model_pv_specs` (via :class:`GenerateOptions`),
never from a list of suffixes here: every role is looked up by the name :class:`ioc.core.layout.ModelNames`
gives it, and an optional role is ``None`` until the layout really lists that PV (a screen shows an
ANOMALY gauge only for a model that serves ANOMALY).
Every spec no role claims is still listed in :attr:`ModelPVs.others`, so a PV added to the layout
later (e.g. ``ANOMALY``) appears on the expert screen, in the archiver list and in the .db at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ioc.core.config import InputConfig, ModelConfig, OutputConfig
from ioc.core.layout import ModelNames
from ioc.core.pvmodel import PVSpec


@dataclass
class ModelPVs:
    """The PV specs of one model, with lookups by role. Build with :meth:`of`."""

    model: ModelConfig
    specs: list[PVSpec]
    names: ModelNames = field(init=False)
    _by_name: dict[str, PVSpec] = field(init=False, repr=False)
    _claimed: set[str] = field(init=False, repr=False, default_factory=set)

    def __post_init__(self) -> None:
        self.names = ModelNames(self.model.prefix)
        self._by_name = {s.name: s for s in self.specs}

    @classmethod
    def of(cls, model: ModelConfig, specs: Callable[[ModelConfig], list[PVSpec]]) -> ModelPVs:
        pvs = cls(model, list(specs(model)))
        pvs._claim_all()
        return pvs

    # ------------------------------------------------------------------ lookups

    @property
    def prefix(self) -> str:
        return self.model.prefix

    def get(self, name: str) -> PVSpec | None:
        """The spec of PV ``name`` (from :class:`~ioc.core.layout.ModelNames`) if the layout lists it."""
        return self._by_name.get(name)

    def suffix(self, spec: PVSpec) -> str:
        """The part of the PV name after the model prefix (what a ``$(P)`` template writes)."""
        return spec.name[len(self.prefix):] if spec.name.startswith(self.prefix) else spec.name

    def _must(self, name: str) -> PVSpec:
        return self._by_name[name]

    @property
    def inputs(self) -> list[tuple[InputConfig, PVSpec]]:
        return [(i, self._must(self.names.input(i.name))) for i in self.model.inputs]

    @property
    def outputs(self) -> list[tuple[OutputConfig, PVSpec]]:
        return [(o, self._must(self.names.output(o.name))) for o in self.model.outputs]

    @property
    def enable(self) -> PVSpec:
        return self._must(self.names.enable)

    @property
    def status(self) -> PVSpec:
        return self._must(self.names.status)

    @property
    def message(self) -> PVSpec:
        return self._must(self.names.message)

    @property
    def champion(self) -> PVSpec:
        return self._must(self.names.champion)

    @property
    def latency(self) -> PVSpec:
        return self._must(self.names.latency)

    @property
    def rate(self) -> PVSpec:
        return self._must(self.names.rate)

    @property
    def count(self) -> PVSpec:
        return self._must(self.names.count)

    @property
    def challenger(self) -> PVSpec | None:
        return self.get(self.names.challenger)

    @property
    def rollback(self) -> PVSpec | None:
        return self.get(self.names.rollback)

    @property
    def promote(self) -> PVSpec | None:
        return self.get(self.names.promote)

    @property
    def reload(self) -> PVSpec | None:
        return self.get(self.names.reload)

    @property
    def drift(self) -> PVSpec | None:
        return self.get(self.names.drift)

    @property
    def anomaly(self) -> PVSpec | None:
        return self.get(self.names.anomaly)

    def drift_of(self, input_name: str) -> PVSpec | None:
        return self.get(self.names.drift_input(input_name))

    def challenger_output(self, output_name: str) -> PVSpec | None:
        return self.get(self.names.challenger_output(output_name))

    # The continual-learning loop (docs/how-to/retraining-loop.md): None where the layout does not serve them.
    def mae(self, output_name: str) -> PVSpec | None:
        return self.get(self.names.mae(output_name))

    def challenger_mae(self, output_name: str) -> PVSpec | None:
        return self.get(self.names.challenger_mae(output_name))

    @property
    def retrain(self) -> PVSpec | None:
        return self.get(self.names.retrain)

    @property
    def retrain_status(self) -> PVSpec | None:
        return self.get(self.names.retrain_status)

    @property
    def retrain_message(self) -> PVSpec | None:
        return self.get(self.names.retrain_message)

    @property
    def promote_ready(self) -> PVSpec | None:
        return self.get(self.names.promote_ready)

    @property
    def challenger_drift(self) -> PVSpec | None:
        return self.get(self.names.challenger_drift)

    @property
    def loop(self) -> list[PVSpec]:
        """The retraining state PVs that exist (a model with a retrain: section)."""
        return [s for s in (self.retrain_status, self.retrain_message, self.promote_ready, self.challenger_drift)
                if s is not None]

    @property
    def input_drifts(self) -> list[tuple[InputConfig, PVSpec]]:
        return [(i, s) for i in self.model.inputs if (s := self.drift_of(i.name)) is not None]

    @property
    def statistics(self) -> list[PVSpec]:
        """Counters and rates computed by the IOC itself (sampled, not monitored, by an archiver)."""
        return [self.latency, self.rate, self.count]

    @property
    def commands(self) -> list[PVSpec]:
        """Write-1 command PVs that exist (ROLLBACK, PROMOTE, RELOAD, RETRAIN)."""
        return [s for s in (self.rollback, self.promote, self.reload, self.retrain) if s is not None]

    @property
    def others(self) -> list[PVSpec]:
        """Specs no role above claims, in layout order: new PVs show up here until given a role."""
        return [s for s in self.specs if s.name not in self._claimed]

    def _claim_all(self) -> None:
        claimed = [s for _, s in self.inputs] + [s for _, s in self.outputs]
        claimed += [self.enable, self.status, self.message, self.champion, *self.statistics, *self.commands]
        claimed += [s for s in (self.challenger, self.drift) if s is not None]
        claimed += [s for _, s in self.input_drifts]
        claimed += [s for o in self.model.outputs if (s := self.challenger_output(o.name)) is not None]
        claimed += [s for o in self.model.outputs for s in (self.mae(o.name), self.challenger_mae(o.name))
                    if s is not None]
        claimed += self.loop
        self._claimed = {s.name for s in claimed}

