"""Operator settings that survive a restart (like EPICS autosave): today, each model's ENABLE.

One small JSON file under ``ioc.state_dir``, rewritten atomically (write, fsync, rename) whenever a
saved setting changes, so a crash at any moment leaves the old or the new file, never half of one.
The champion needs no autosave: it lives in the model store. ``$(P)ACTIONS`` is deliberately never
saved: closed-loop actions start disarmed after every restart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ioc.core.store import atomic_write_text

log = logging.getLogger("mlioc.autosave")


class Autosave:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.values: dict[str, Any] = {}
        self.error: str | None = None

    def load(self) -> dict[str, Any]:
        try:
            self.values = json.loads(self.path.read_text())
            if not isinstance(self.values, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            self.values = {}
        except (OSError, ValueError) as exc:  # a damaged file: start from defaults, say so, keep it
            log.error("autosave file %s unusable (%s): starting from defaults", self.path, exc)
            self.values = {}
        return dict(self.values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> bool:
        """Save one setting; returns False (and remembers why) if it could not be written."""
        if self.values.get(key) == value:
            return True
        self.values[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.values, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            self.error = f"cannot save settings to {self.path}: {exc.strerror or exc}"
            log.error("%s", self.error)
            return False
        self.error = None
        return True
