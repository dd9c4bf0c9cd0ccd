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
