"""Loading a config file: the YAML parsed and checked section by section (:mod:`ioc.core.config`),
then as a whole against the PV layout (:mod:`ioc.core.layout`: every PV name unique and short enough).

This is the function every command uses; it sits above both modules so that the config parser never
depends on the layout built from its own dataclasses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ioc.core import config as _config
from ioc.core.config import Config
from ioc.core.layout import pv_name_problems
from ioc.core.yamlcheck import KeyPath, fmt_path, line_index


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file; raise :class:`~ioc.core.config.ConfigError` listing every problem."""
    return _config.read_config(path, pv_name_problems)


def parse_config(raw: Any, file: Path, lines: dict[KeyPath, int] | None = None) -> Config:
    """Validate an already-loaded YAML document (as :func:`load_config` does after reading it)."""
    return _config.parse_config(raw, file, lines, pv_name_problems)


def where(path: str | os.PathLike, key: KeyPath) -> str:
    """``FILE:LINE: key.path`` of a key in a config file (the nearest enclosing key that has a line),
    the form every config problem is reported in."""
    try:
        node = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        node = None
    lines = line_index(node) if node is not None else {}
    for n in range(len(key), -1, -1):
        line = lines.get(tuple(key[:n]))
        if line is not None:
            return f"{path}:{line}: {fmt_path(key)}"
    return f"{path}: {fmt_path(key)}"
