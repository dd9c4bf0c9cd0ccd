"""Checking a YAML document key by key and reporting every problem as ``FILE:LINE: key.path: what``.

The IOC's config (:mod:`ioc.core.config`) and the training sidecar's ``training:`` section
(``training/spec.py``) both validate with :class:`Checker`, so every config error a user sees has the
same shape and points at the line to fix.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# EPICS record names: letters, digits and _ - + : [ ] < > ; . (no spaces); PVNAME_STRINGSZ is 61.
PV_CHARS = re.compile(r"^[A-Za-z0-9_\-+:\[\]<>;.]*$")
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_PV_NAME = 60
PROTOCOLS = ("ca", "pva")


class ConfigError(Exception):
    """A configuration that cannot be served; ``problems`` lists every finding."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class PVRef:
    """A PV on another IOC: ``ca://NAME`` or ``pva://NAME`` (a bare name means CA)."""

    protocol: str
    name: str

    def __str__(self) -> str:
        return f"{self.protocol}://{self.name}"



KeyPath = tuple[str | int, ...]


def fmt_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def line_index(node: yaml.Node, path: KeyPath = (), index: dict | None = None) -> dict[KeyPath, int]:
    """Map every key path of a composed YAML document to its 1-based line number."""
    if index is None:
        index = {}
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[(*path, key)] = key_node.start_mark.line + 1
            line_index(value_node, (*path, key), index)
            index[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            line_index(item, (*path, i), index)
    return index


class Checker:
    """Collects problems with their locations instead of stopping at the first."""

    def __init__(self, file: Path, lines: dict[KeyPath, int]):
        self.file = file
        self.lines = lines
        self.problems: list[str] = []

    def error(self, path: KeyPath, message: str) -> None:
        line = None
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                break
        where = f"{self.file}:{line}" if line is not None else str(self.file)
        self.problems.append(f"{where}: {fmt_path(path)}: {message}")

    def mapping(self, value: Any, path: KeyPath, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {typename(value)}")
            return {}
        allowed = list(allowed)
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
                self.error((*path, key), f"unknown key{extra}")
        for key in required:
            if key not in value:
                self.error(path, f"missing required key {key!r}")
        return value

    def number(self, value: Any, path: KeyPath, *, positive: bool = False, nonneg: bool = False,
               integer: bool = False, default: Any = None) -> Any:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(path, f"expected a number, got {typename(value)} {value!r}")
            return default
        if not math.isfinite(value):
            self.error(path, f"must be finite, got {value}")
            return default
        if integer and int(value) != value:
            self.error(path, f"expected an integer, got {value}")
            return default
        if positive and value <= 0:
            self.error(path, f"must be > 0, got {value}")
            return default
        if nonneg and value < 0:
            self.error(path, f"must be >= 0, got {value}")
            return default
        return int(value) if integer else float(value)

    def string(self, value: Any, path: KeyPath, *, max_len: int | None = None, default: str = "",
               pattern: re.Pattern | None = None, what: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(path, f"expected a string, got {typename(value)} {value!r}")
            return default
        if max_len is not None and len(value) > max_len:
            self.error(path, f"at most {max_len} characters (EPICS field size), got {len(value)}: {value!r}")
        if pattern is not None and not pattern.match(value):
            self.error(path, f"{value!r} is not a valid {what}")
        return value

    def pair(self, value: Any, path: KeyPath, what: str) -> tuple[float, float] | None:
        if value is None:
            return None
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
            self.error(path, f"expected [low, high] ({what}), got {value!r}")
            return None
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
            self.error(path, f"expected [low, high] with low < high ({what}), got {value!r}")
            return None
        return lo, hi

    def pvref(self, value: Any, path: KeyPath) -> PVRef | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"expected 'ca://NAME' or 'pva://NAME', got {value!r}")
            return None
        protocol, sep, name = value.partition("://")
        if not sep:
            protocol, name = "ca", value
        if protocol not in PROTOCOLS:
            self.error(path, f"unknown protocol {protocol!r} (use ca:// or pva://)")
            return None
        if not name or not PV_CHARS.match(name) or len(name) > MAX_PV_NAME:
            self.error(path, f"{name!r} is not a valid PV name")
            return None
        return PVRef(protocol, name)


def typename(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            type(None): "nothing"}.get(type(value), type(value).__name__)


