"""Pieces of demo-like configs, shared by the integration tests and the soak benchmark."""

from __future__ import annotations

from ioc.sim.physics import KNOBS


def demo_inputs(sim_prefix: str, max_age_s: float = 2.0) -> str:
    """The demo model's inputs, mirrored from a simulator under ``sim_prefix``, as one YAML flow list."""
    items = [f'{{name: {k.name}, source: "ca://{sim_prefix}{k.pv}", units: {k.units}, '
             f"range: [{k.range[0]:g}, {k.range[1]:g}], max_age_s: {max_age_s:g}}}" for k in KNOBS]
    return "[" + ", ".join(items) + "]"


def shipped_champion() -> int:
    """The champion of the shipped demo store ``models/beam`` (what a fresh demo serves)."""
    from pathlib import Path

    return int((Path(__file__).resolve().parents[2] / "models" / "beam" / "champion").read_text().strip())


def shipped_next_version() -> int:
    """The version number a run pushing into a copy of the shipped demo store gets."""
    from pathlib import Path

    versions = Path(__file__).resolve().parents[2] / "models" / "beam" / "versions"
    return 1 + max(int(p.name) for p in versions.iterdir() if p.name.isdigit())


def demo_store_copy(dest) -> str:
    """A private copy of the shipped demo store: the IOC appends to a store's events.jsonl, and tests
    must not leave the checkout dirty."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "models" / "beam"
    target = Path(dest) / "beam-store"
    if not target.exists():
        shutil.copytree(root, target, ignore=shutil.ignore_patterns(".lock"))
    return str(target)


def demo_arrays_config(tmp_path, prefix: str, *, record: bool = False, training: bool = False):
    """config/demo-arrays.yaml under this test's prefixes, on private copies of the shipped stores (and,
    with ``record``, recording into ``tmp_path/data``): (config path, IOC prefix ``<prefix>DEMO:``,
    simulator prefix). Everything else (drift, truth PVs, targets) is the shipped config's."""
    import shutil
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "config" / "demo-arrays.yaml").read_text())
    sim_prefix = f"{prefix}SIM:"
    doc["ioc"]["metrics_port"] = 0
    doc["ioc"].pop("state_dir", None)
    doc["simulator"]["prefix"] = sim_prefix

    def resim(ref: str) -> str:
        return ref.replace("://SIM:", f"://{sim_prefix}")

    for m in doc["models"]:
        shutil.copytree(root / "models" / m["name"], tmp_path / m["name"], ignore=shutil.ignore_patterns(".lock"))
        m["store"] = str(tmp_path / m["name"])
        m.pop("store_template", None)
        if not training:
            m.pop("training", None)
        m["prefix"] = m["prefix"].replace("DEMO:", f"{prefix}DEMO:")
        for i in m["inputs"]:
            if isinstance(i.get("source"), str):
                i["source"] = resim(i["source"])
            if "x_axis" in i:
                i["x_axis"] = resim(i["x_axis"])
        for o in m["outputs"]:
            for key in ("truth", "x_axis"):
                if key in o:
                    o[key] = resim(o[key])
        if "record" in m and record:
            m["record"]["dir"] = str(tmp_path / "data" / m["name"])
            m["record"]["targets"] = {k: resim(v) for k, v in m["record"].get("targets", {}).items()}
        else:
            m.pop("record", None)
    path = tmp_path / "demo-arrays.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, f"{prefix}DEMO:", sim_prefix
