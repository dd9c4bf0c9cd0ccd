"""Configs and PV layouts for the generator tests.

``extended_specs`` is the layout as it will be once the store (issue 3) and drift (issue 4) PVs
exist, named by the PV layout (ioc/core/layout.py): the generators must place widgets for them without any
change, and only then.
"""

from __future__ import annotations

import math
from pathlib import Path

from ioc.core.config import ModelConfig
from ioc.core.layout import CONTROL_ASG, model_pv_specs
from ioc.core.pvmodel import AlarmLimits, Kind, PVSpec
from tests.conftest import write_yaml
from tests.support.demo import demo_store_copy
from tests.support.models import publish_linear

ROOT = Path(__file__).resolve().parents[2]
W = [[2.0, 1.0], [1.0, -1.0]]
B = [0.0, 1.0]


OPTIONAL_SUFFIXES = ("CHALLENGER", "ROLLBACK", "PROMOTE", "RELOAD", "DRIFT", "ANOMALY")


def reduced_specs(model: ModelConfig) -> list[PVSpec]:
    """The layout without the store-control, challenger and drift PVs (a model that has none)."""
    p = model.prefix
    return [s for s in model_pv_specs(model)
            if not any(s.name == p + suffix or s.name.startswith(f"{p}{suffix}:") for suffix in OPTIONAL_SUFFIXES)]


def extended_specs(model: ModelConfig) -> list[PVSpec]:
    """The layout plus every optional PV (store control, challenger, drift, anomaly)."""
    p = model.prefix
    specs = model_pv_specs(model)
    have = {s.name for s in specs}
    specs += [s for s in [
        PVSpec(name=f"{p}CHALLENGER", kind=Kind.STRINGIN, desc="model version shadowed", initial=""),
        *(PVSpec(name=f"{p}{cmd}", kind=Kind.BO, desc=f"{cmd.lower()} the model", choices=("Idle", cmd.title()),
                 writable=True, scan="Passive", asg=CONTROL_ASG, audit=True)
          for cmd in ("ROLLBACK", "PROMOTE", "RELOAD")),
        *(PVSpec(name=f"{p}CHALLENGER:OUT:{o.name}", kind=Kind.AI, desc=f"challenger {o.name}", egu=o.units,
                 prec=o.prec, display=o.display, initial=math.nan) for o in model.outputs),
        PVSpec(name=f"{p}DRIFT", kind=Kind.AI, desc="overall drift score", prec=2, display=(0.0, 5.0),
               alarm=AlarmLimits(high=2.0, hihi=3.0), initial=0.0),
        *(PVSpec(name=f"{p}DRIFT:{i.name}", kind=Kind.AI, desc=f"drift of {i.name}", prec=2, display=(0.0, 5.0),
                 alarm=AlarmLimits(high=2.0, hihi=3.0), initial=0.0) for i in model.inputs),
        PVSpec(name=f"{p}ANOMALY", kind=Kind.AI, desc="anomaly score", prec=3, initial=0.0),
    ] if s.name not in have]
    return specs


def linear_config(tmp_path: Path, prefix: str, name: str = "lin") -> Path:
    """A two-input linear model on writable inputs, with every kind of limit, deadband and hysteresis."""
    publish_linear(tmp_path / "store", ["a", "b"], ["y1", "y2"], W, B, units_in=["A", "mm"])
    return write_yaml(tmp_path / "ioc.yaml", f"""
        ioc: {{protocols: [ca, pva], stats_hz: 10}}
        models:
          - name: {name}
            prefix: "{prefix}"
            store: store
            trigger: {{on_change: true}}
            inputs:
              - {{name: a, units: A, range: [0, 10], description: "input a", mdel: 0.5, adel: 2}}
              - {{name: b, units: mm, initial: 0, prec: 2}}
            outputs:
              - {{name: y1, units: mm, prec: 4, description: "two a plus b", display: [0, 30],
                 alarm: {{high: 8, hihi: 12, hyst: 0.5}}, adel: 1.0}}
              - {{name: y2, units: "%", prec: 2, alarm: {{lolo: -5, low: -2}}, mdel: -1}}
        """)


def demo_like_config(tmp_path: Path, prefix: str) -> Path:
    """config/demo.yaml with its own PV prefix, a copy of the shipped store, recording into ``tmp_path``
    (nothing is written into the checkout)."""
    import yaml

    doc = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    sim = f"{prefix}SIM:"
    doc["simulator"]["prefix"] = sim
    doc["ioc"].pop("state_dir", None)  # beside this copy of the config, not the demo's data/
    for model in doc["models"]:
        model["prefix"] = f"{prefix}{model['name'].upper()}:"
        model["store"] = demo_store_copy(tmp_path)
        model.pop("store_template", None)
        if "record" in model:
            model["record"]["dir"] = str(tmp_path / f"rec-{model['name']}")
        model.pop("training", None)
        for inp in model["inputs"]:
            if "source" in inp:
                inp["source"] = inp["source"].replace("SIM:", sim)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
