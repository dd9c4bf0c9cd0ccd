"""``mlioc generate``: control-room artefacts (screens, archiver list, .db files, dashboards) from a config.

Every generator reads PV names and metadata only from :func:`ioc.core.layout.model_pv_specs` (through
:class:`ioc.generate.model_pvs.ModelPVs`), so an artefact can never name a PV the IOC does not serve,
and PVs added to the layout later appear in the artefacts without touching the generators.

This module is only the registry: it imports no generator. ``mlioc serve`` builds the CLI parser
(which reads :data:`KINDS`) but never loads a generator module. To add a kind, add one line to
:data:`KINDS`; ``mlioc generate all`` then runs it too, into its ``subdir``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ioc.core.config import Config, ModelConfig
    from ioc.core.pvmodel import PVSpec


def _layout_specs(model: ModelConfig) -> list[PVSpec]:
    from ioc.core.layout import model_pv_specs

    return model_pv_specs(model)


@dataclass(frozen=True)
class GenerateOptions:
    """What every generator is given besides the config and the output directory.

    ``protocol``: how screens and the archiver list name PVs: ``ca`` (plain names, Phoebus' and the
    appliance's default) or ``pva`` (``pva://`` prefix). ``specs`` is the PV layout (tests pass a
    layout with PVs the IOC does not serve yet, to check the widgets that depend on them).
    """

    protocol: str = "ca"
    specs: Callable[[ModelConfig], list[PVSpec]] = field(default=_layout_specs)
    display_base: str = "opi"  # alarms: where the model screens are installed (folder or URL)


# A generator writes its files under ``out`` (created by the caller) and returns their paths.
Generator = Callable[["Config", Path, GenerateOptions], list[Path]]


@dataclass(frozen=True)
class Kind:
    """One kind of artefact: where its generator lives (imported only when it runs) and where
    ``mlioc generate all`` puts it, relative to ``-o DIR``."""

    target: str  # "module:function"
    subdir: str
    help: str

    def load(self) -> Generator:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


KINDS: dict[str, Kind] = {
    "opi": Kind("ioc.generate.opi:generate", "opi", "Phoebus display screens (.bob)"),
    "archiver": Kind("ioc.generate.archiver:generate", "deploy/archiver",
                     "Archiver Appliance PV list (archivePV JSON)"),
    "db": Kind("ioc.generate.db:generate", "db", "EPICS databases (.db, $(P) templates, substitutions)"),
    "alarms": Kind("ioc.generate.alarms:generate", "deploy/alarms", "Phoebus alarm-server configuration XML"),
    "grafana": Kind("ioc.generate.grafana:generate", "deploy/grafana",
                    "Grafana dashboard, provisioning and Prometheus scrape example"),
}


def run(kind: str, config: Config, out: Path, options: GenerateOptions | None = None) -> list[Path]:
    """Generate one kind into ``out``, or every kind (``all``) into ``out/<its subdir>``."""
    options = options or GenerateOptions()
    if kind == "all":
        written: list[Path] = []
        for entry in KINDS.values():
            target = out / entry.subdir
            target.mkdir(parents=True, exist_ok=True)
            written += entry.load()(config, target, options)
        return written
    out.mkdir(parents=True, exist_ok=True)
    return KINDS[kind].load()(config, out, options)
