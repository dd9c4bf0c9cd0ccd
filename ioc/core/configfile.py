"""Loading a config file: the YAML parsed and checked section by section (:mod:`ioc.core.config`),
then as a whole against the PV layout (:mod:`ioc.core.layout`: every PV name unique and short enough).

This is the function every command uses; it sits above both modules so that the config parser never
depends on the layout built from its own dataclasses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ioc.core import config as _config
from ioc.core.config import Config
from ioc.core.layout import pv_name_problems
from ioc.core.yamlcheck import KeyPath


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file; raise :class:`~ioc.core.config.ConfigError` listing every problem."""
    return _config.read_config(path, pv_name_problems)


def parse_config(raw: Any, file: Path, lines: dict[KeyPath, int] | None = None) -> Config:
    """Validate an already-loaded YAML document (as :func:`load_config` does after reading it)."""
    return _config.parse_config(raw, file, lines, pv_name_problems)
