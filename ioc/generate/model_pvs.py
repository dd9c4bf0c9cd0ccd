"""One model's PVs as the generators see them: the layout's specs, looked up by role.

Pure logic. The specs come from :func:`ioc.core.layout.model_pv_specs` (via :class:`GenerateOptions`),
never from a list of suffixes here. Roles that :class:`ioc.core.layout.ModelNames` names (inputs,
outputs, ENABLE, STATUS, ...) are looked up through it. The roles below it does not name (yet)
are looked up by the suffix the DESIGN.md PV contract gives them, and a role is ``None`` until
the layout really lists that PV: a screen shows a PROMOTE button only once the IOC serves PROMOTE.
Every spec no role claims is still listed in :attr:`ModelPVs.others`, so a PV added to the layout
later (e.g. ``ANOMALY``) appears on the expert screen, in the archiver list and in the .db at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ioc.core.config import InputConfig, ModelConfig, OutputConfig
from ioc.core.layout import ModelNames
from ioc.core.pvmodel import PVSpec

# Suffixes (after the model prefix) of PVs of the DESIGN.md PV contract that ModelNames does not name.
CHALLENGER = "CHALLENGER"  # stringin: version shadowed ("" when none)
ROLLBACK = "ROLLBACK"  # bo, write 1: back to the previous champion
PROMOTE = "PROMOTE"  # bo, write 1: challenger becomes champion
RELOAD = "RELOAD"  # bo, write 1: rescan the store
DRIFT = "DRIFT"  # ai: overall drift score
ANOMALY = "ANOMALY"  # ai: anomaly score (optional)


def drift_suffix(input_name: str) -> str:
    """``DRIFT:<input>``: per-input drift score (ai)."""
    return f"DRIFT:{input_name}"


def challenger_output_suffix(output_name: str) -> str:
    """``CHALLENGER:OUT:<output>``: the shadow model's prediction (ai)."""
    return f"CHALLENGER:OUT:{output_name}"


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

    def get(self, suffix: str) -> PVSpec | None:
        """The spec of ``<prefix><suffix>`` if the layout lists it."""
        return self._by_name.get(self.prefix + suffix)

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
        return self.get(CHALLENGER)

    @property
    def rollback(self) -> PVSpec | None:
        return self.get(ROLLBACK)

    @property
    def promote(self) -> PVSpec | None:
        return self.get(PROMOTE)

    @property
    def reload(self) -> PVSpec | None:
        return self.get(RELOAD)

    @property
    def drift(self) -> PVSpec | None:
        return self.get(DRIFT)

    @property
    def anomaly(self) -> PVSpec | None:
        return self.get(ANOMALY)

    def drift_of(self, input_name: str) -> PVSpec | None:
        return self.get(drift_suffix(input_name))

    def challenger_output(self, output_name: str) -> PVSpec | None:
        return self.get(challenger_output_suffix(output_name))

    @property
    def input_drifts(self) -> list[tuple[InputConfig, PVSpec]]:
        return [(i, s) for i in self.model.inputs if (s := self.drift_of(i.name)) is not None]

    @property
    def statistics(self) -> list[PVSpec]:
        """Counters and rates computed by the IOC itself (sampled, not monitored, by an archiver)."""
        return [self.latency, self.rate, self.count]

    @property
    def commands(self) -> list[PVSpec]:
        """Write-1 command PVs that exist (ROLLBACK, PROMOTE, RELOAD)."""
        return [s for s in (self.rollback, self.promote, self.reload) if s is not None]

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
        self._claimed = {s.name for s in claimed}

