"""``mlioc generate db``: EPICS databases equal to what the IOC serves.

For each model: ``<model>.db`` (full record names), ``<model>.template`` (the same records named
``$(P)<suffix>``), and one ``<config>.substitutions`` that expands every template with its prefix
(``dbLoadTemplate``). They document the IOC's records in the form controls engineers read, and
can be loaded into a C IOC or used for a gateway / alarm / archiver configuration. Field values are
the ones :mod:`ioc.protocols.ca_server` serves for the same :class:`~ioc.core.pvmodel.PVSpec`; fields left at
their EPICS default are omitted, as ``dbdExpand``/VDCT would. Inputs fed from another IOC carry
their source in an ``info(mlioc:source, ...)`` tag: the IOC mirrors it, a C IOC would not.

Arrays are ``waveform`` records: ``NELM`` (the element count; an image's h*w, row-major), ``FTVL``
(DOUBLE, FLOAT, LONG), ``EGU``, ``PREC``, ``HOPR``/``LOPR``, ``DESC``; an image's ``:SHAPE`` record gets
its constant value ``[h, w]`` through ``INP`` (a JSON array constant link, read at ``iocInit``), so a C IOC
loading the file serves the same shape as the IOC. Waveforms have no alarm limits and no deadbands.
"""

from __future__ import annotations

from pathlib import Path

from ioc.core.config import Config
from ioc.core.pvmodel import Kind, PVSpec, Severity
from ioc.generate import GenerateOptions
from ioc.generate.model_pvs import ModelPVs

MBBI_PREFIXES = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV", "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")
MACRO = "$(P)"


def number(value: float | int) -> str:
    """Shortest text that reads back as the same number (``3``, ``0.25``, ``-1``)."""
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def record_fields(spec: PVSpec) -> list[tuple[str, str]]:
    """(FIELD, value) pairs of one record, in the usual field order; defaults omitted."""
    f: list[tuple[str, str]] = []
    if spec.desc:
        f.append(("DESC", spec.desc))
    if spec.scan != "Passive":
        f.append(("SCAN", spec.scan))
    f.append(("ASG", spec.asg))  # also DEFAULT: what the IOC serves (EPICS shows an unset ASG as "")
    kind = spec.kind
    if kind.is_numeric:
        integer = kind is Kind.LONGIN
        conv = (lambda v: number(int(v))) if integer else number
        if spec.egu:
            f.append(("EGU", spec.egu))
        if not integer:
            f.append(("PREC", str(spec.prec)))
        if spec.display is not None:
            f += [("HOPR", conv(spec.display[1])), ("LOPR", conv(spec.display[0]))]
        if kind is Kind.AO and (spec.control or spec.display) is not None:
            lo, hi = spec.control or spec.display
            f += [("DRVH", conv(hi)), ("DRVL", conv(lo))]
        a = spec.alarm
        if a is not None:
            for fld, sev_fld, limit, sev in (("HIHI", "HHSV", a.hihi, a.hhsv), ("HIGH", "HSV", a.high, a.hsv),
                                              ("LOW", "LSV", a.low, a.lsv), ("LOLO", "LLSV", a.lolo, a.llsv)):
                if limit is not None:
                    f += [(fld, conv(limit)), (sev_fld, Severity(sev).name)]
            if a.hyst:
                f.append(("HYST", conv(a.hyst)))
        if spec.mdel:
            f.append(("MDEL", conv(spec.mdel)))
        if spec.adel:
            f.append(("ADEL", conv(spec.adel)))
    elif kind.is_array:
        f += [("NELM", str(spec.nelm)), ("FTVL", spec.ftvl)]
        if spec.egu:
            f.append(("EGU", spec.egu))
        f.append(("PREC", str(spec.prec)))
        if spec.display is not None:
            f += [("HOPR", number(spec.display[1])), ("LOPR", number(spec.display[0]))]
        if isinstance(spec.initial, tuple):  # every element given: a constant, such as an image's SHAPE
            f.append(("INP", "[" + ", ".join(number(v) for v in spec.initial_value().reshape(-1).tolist()) + "]"))
    elif kind is Kind.BO:
        f += [("ZNAM", spec.choices[0]), ("ONAM", spec.choices[1])]
        for fld, sev in zip(("ZSV", "OSV"), spec.choice_severities, strict=False):
            if sev != Severity.NO_ALARM:
                f.append((fld, Severity(sev).name))
    elif kind is Kind.MBBI:
        sevs = list(spec.choice_severities) + [Severity.NO_ALARM] * len(spec.choices)
        for index, (prefix, choice) in enumerate(zip(MBBI_PREFIXES, spec.choices, strict=False)):
            f += [(f"{prefix}VL", str(index)), (f"{prefix}ST", choice)]
            if sevs[index] != Severity.NO_ALARM:
                f.append((f"{prefix}SV", Severity(sevs[index]).name))
    return f


def render_record(spec: PVSpec, name: str, info: list[tuple[str, str]] = ()) -> str:
    lines = [f"record({spec.kind.value}, {quote(name)}) {{"]
    lines += [f"    field({fld}, {quote(value)})" for fld, value in record_fields(spec)]
    lines += [f"    info({key}, {quote(value)})" for key, value in info]
    lines.append("}")
    return "\n".join(lines)


def render_model(pvs: ModelPVs, source_name: str, template: bool) -> str:
    """One model's records, with full names or (``template``) ``$(P)`` names."""
    sources = {spec.name: str(inp.source) for inp, spec in pvs.inputs if inp.source is not None}
    what = f"a template: load it with P=<prefix>, here P={pvs.prefix}" if template else f"prefix {pvs.prefix}"
    head = [
        f"# Records served by mlioc for model {pvs.model.name!r} ({what}).",
        f"# Generated by `mlioc generate db {source_name}`; regenerate rather than edit.",
        "",
        "",
    ]
    body = []
    for spec in pvs.specs:
        name = MACRO + pvs.suffix(spec) if template else spec.name
        info = [("mlioc:source", sources[spec.name])] if spec.name in sources else []
        body.append(render_record(spec, name, info))
    return "\n".join(head) + "\n\n".join(body) + "\n"


def render_substitutions(models: list[ModelPVs], source_name: str) -> str:
    lines = [f"# dbLoadTemplate file for every model of {source_name} (generated by `mlioc generate db`).", ""]
    for pvs in models:
        lines += [f"file {quote(pvs.model.name + '.template')} {{", "    pattern { P }",
                  f"    {{ {quote(pvs.prefix)} }}", "}"]
    return "\n".join(lines) + "\n"


def generate(config: Config, out: Path, options: GenerateOptions) -> list[Path]:
    models = [ModelPVs.of(m, options.specs) for m in config.models]
    source_name = config.path.name
    written = []
    for pvs in models:
        for suffix, template in ((".db", False), (".template", True)):
            path = out / f"{pvs.model.name}{suffix}"
            path.write_text(render_model(pvs, source_name, template))
            written.append(path)
    path = out / f"{config.path.stem}.substitutions"
    path.write_text(render_substitutions(models, source_name))
    written.append(path)
    return written
