"""Reading .db files the way EPICS does: pyPDB's parser, checked against the record definitions
(base.dbd) that epicscorelibs ships, and a real EPICS C IOC (epicscorelibs' softIoc) to load them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

import epicscorelibs.path
from pyPDB.dbd.ast import Block, Command
from pyPDB.dbd.expand import loadDBD
from pyPDB.dbd.yacc import parse

DBD_DIR = os.path.join(epicscorelibs.path.base_path, "dbd")


@dataclass(frozen=True)
class FieldDef:
    name: str
    dbf: str
    menu: str | None = None
    size: int | None = None


@dataclass
class Record:
    rtype: str
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dbd:
    recordtypes: dict[str, dict[str, FieldDef]]
    menus: dict[str, tuple[str, ...]]


def _items(block: Block) -> list:
    return [c for c in (block.body or []) if isinstance(c, (Block, Command))]


@lru_cache(maxsize=1)
def base_dbd() -> Dbd:
    """Record types and menus of EPICS base, from epicscorelibs' base.dbd (includes expanded)."""
    entries = loadDBD("base.dbd", path=[DBD_DIR])
    rtypes: dict[str, dict[str, FieldDef]] = {}
    menus: dict[str, tuple[str, ...]] = {}
    for ent in entries:
        if not isinstance(ent, Block):
            continue
        if ent.name == "recordtype":
            fields = {}
            for f in _items(ent):
                if f.name != "field":
                    continue
                props = {c.name: c.args[0] for c in _items(f) if c.args}
                fields[f.args[0]] = FieldDef(f.args[0], f.args[1], props.get("menu"),
                                             int(props["size"]) if "size" in props else None)
            rtypes[ent.args[0]] = fields
        elif ent.name == "menu":
            menus[ent.args[0]] = tuple(c.args[1] for c in _items(ent) if c.name == "choice")
    return Dbd(rtypes, menus)


_MACRO = re.compile(r"\$\(([A-Za-z0-9_]+)\)")


def parse_db(text: str, filename: str, macros: dict[str, str] | None = None) -> tuple[list[Record], list[str]]:
    """Parse a .db (macros expanded) and validate it against base.dbd; returns (records, problems)."""
    if macros is not None:
        text = _MACRO.sub(lambda m: macros[m.group(1)], text)
    dbd = base_dbd()
    records: list[Record] = []
    problems: list[str] = []
    for ent in parse(text, file=filename):
        if not isinstance(ent, Block) or ent.name != "record":
            continue
        rtype, name = ent.args
        rec = Record(rtype, name)
        records.append(rec)
        defs = dbd.recordtypes.get(rtype)
        if defs is None:
            problems.append(f"{filename}:{ent.lineno}: {name}: unknown record type {rtype}")
            continue
        for item in _items(ent):
            if item.name == "info":
                rec.info[item.args[0]] = item.args[1]
                continue
            if item.name != "field":
                problems.append(f"{filename}:{item.lineno}: {name}: unexpected {item.name}")
                continue
            fname, value = item.args
            if fname in rec.fields:
                problems.append(f"{filename}:{item.lineno}: {name}.{fname} given twice")
            rec.fields[fname] = value
            problems += _check_value(defs.get(fname), dbd, f"{filename}:{item.lineno}: {name}.{fname}", value)
        if len(name) > 60:
            problems.append(f"{filename}:{ent.lineno}: record name {name!r} longer than 60 characters")
    return records, problems


def _check_value(fdef: FieldDef | None, dbd: Dbd, where: str, value: str) -> list[str]:
    if fdef is None:
        return [f"{where}: no such field in this record type"]
    dbf = fdef.dbf
    if dbf == "DBF_MENU":
        choices = dbd.menus[fdef.menu]
        return [] if value in choices else [f"{where}: {value!r} is not one of {choices}"]
    if dbf in ("DBF_STRING",):
        return [] if len(value.encode()) < (fdef.size or 40) else [f"{where}: {value!r} longer than {fdef.size - 1}"]
    if dbf in ("DBF_DOUBLE", "DBF_FLOAT"):
        try:
            float(value)
        except ValueError:
            return [f"{where}: {value!r} is not a number"]
        return []
    if dbf in ("DBF_SHORT", "DBF_USHORT", "DBF_LONG", "DBF_ULONG", "DBF_CHAR", "DBF_UCHAR", "DBF_INT64"):
        try:
            int(value, 0)
        except ValueError:
            return [f"{where}: {value!r} is not an integer"]
        return []
    return []
