"""A small builder for the IOC configs tests write: Python dicts dumped as YAML, instead of an inline
YAML string per test. Only what a test cares about is spelled out; the rest takes the defaults below.

    path = write_config(tmp_path / "ioc.yaml",
                        model(prefix, inputs=["a", {"name": "b", "initial": 0}], outputs=["y"]),
                        ioc={"store_poll_s": 0.2})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Item = str | dict[str, Any]


def _named(items: list[Item] | tuple[Item, ...]) -> list[dict[str, Any]]:
    return [{"name": item} if isinstance(item, str) else dict(item) for item in items]


def model(prefix: str, *, name: str = "m", store: str = "store", trigger: dict | None = None,
          inputs: list[Item] | tuple[Item, ...] = ("a",), outputs: list[Item] | tuple[Item, ...] = ("y",),
          **keys: Any) -> dict[str, Any]:
    """One entry of ``models:``; ``trigger`` defaults to ``{on_change: true}``; extra keys (``drift``,
    ``record``, ``rollback_after_faults`` ...) pass through as given."""
    entry: dict[str, Any] = {"name": name, "prefix": prefix, "store": store,
                             "trigger": trigger if trigger is not None else {"on_change": True},
                             "inputs": _named(inputs), "outputs": _named(outputs)}
    entry.update(keys)
    return entry


def config(*models: dict[str, Any], ioc: dict[str, Any] | None = None, simulator: dict[str, Any] | None = None,
           access: dict[str, Any] | None = None, protocols: tuple[str, ...] = ("ca", "pva")) -> dict[str, Any]:
    """A whole config document; ``ioc`` keys are added to ``{protocols: [ca, pva]}``."""
    doc: dict[str, Any] = {"ioc": {"protocols": list(protocols), **(ioc or {})}}
    if simulator is not None:
        doc["simulator"] = simulator
    if access is not None:
        doc["access"] = access
    doc["models"] = list(models)
    return doc


def write_config(path: Path, *models: dict[str, Any], **sections: Any) -> Path:
    """Write :func:`config` of ``models`` to ``path`` (relative store/record paths resolve beside it)."""
    path.write_text(yaml.safe_dump(config(*models, **sections), sort_keys=False))
    return path
