"""``mlioc generate archiver``: the PV list for the EPICS Archiver Appliance, and submitting it.

The file is what the appliance's ``/mgmt/bpl/archivePV`` takes as a JSON POST: a list of
``{"pv", "samplingperiod", "samplingmethod"}``. Two details from the appliance's ArchivePVAction
matter and are tested: ``samplingperiod`` must be a JSON *string* (a number is silently skipped:
the appliance casts it to String and drops the PV on the exception), and the Content-Type must be
exactly ``application/json`` (compared with ``equals``; anything else is read as a form post).

Sampling policy: predictions, inputs, drift scores, status and control PVs are archived on
MONITOR (every update that passes the archive deadband ADEL, which the IOC honours); the IOC's own
counters and rates (LATENCY, RATE, COUNT) are sampled on SCAN, since their every update carries no
information beyond the sample. The period given with MONITOR is the appliance's estimate of the
update rate (it sizes buffers with it): the model's scan period for values that change each cycle.

Arrays: a waveform (``shape: [n]``: an orbit, a profile) is sampled on SCAN every
:data:`WAVEFORM_SCAN_S` (or the model's period, if slower): every element changes every cycle, and at
10 Hz a 100-point waveform is 700 MB a day in the appliance. An image's ``:SHAPE`` is monitored (it
changes only with the frame size). **Images are left out** (``IN:``/``OUT:``/``CHALLENGER:OUT:`` of a
``[h, w]`` signal): a 64 x 64 frame at 10 Hz is 14 GB a day as float32, and an appliance archives a
scalar PV far better than a camera; archive the camera with its own areaDetector file plugins (HDF5)
and the model's scalar outputs here. The PVs left out, and why, are listed beside the request
(:data:`LEFT_OUT_NAME`) and printed by ``mlioc generate archiver``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ioc.core.config import Config
from ioc.core.pvmodel import Kind, PVSpec
from ioc.generate import GenerateOptions
from ioc.generate.model_pvs import ModelPVs

log = logging.getLogger("mlioc.generate")

FILE_NAME = "archive-pvs.json"
LEFT_OUT_NAME = "archive-pvs-left-out.txt"
CONTENT_TYPE = "application/json"
WAVEFORM_SCAN_S = 1.0


class ArchiverError(Exception):
    """Submitting to the appliance failed; the message says how."""


def _period(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def entries(config: Config, options: GenerateOptions) -> list[dict[str, str]]:
    """The archivePV request body for every archived PV of every model, in layout order."""
    stats_period = max(1.0, 1.0 / config.ioc.stats_hz)
    out = []
    for model in config.models:
        pvs = ModelPVs.of(model, options.specs)
        cycle = 1.0 / model.trigger.scan_hz if model.trigger.kind == "scan" and model.trigger.scan_hz else 1.0
        scanned = {s.name for s in pvs.statistics}
        for spec in pvs.specs:
            if left_out_reason(spec) is not None:
                continue
            method, period = sampling(spec, scanned, cycle, stats_period)
            name = f"pva://{spec.name}" if options.protocol == "pva" else spec.name
            out.append({"pv": name, "samplingperiod": _period(period), "samplingmethod": method})
    return out


def left_out_reason(spec: PVSpec) -> str | None:
    """Why a PV is not archived (None: it is): images."""
    if spec.kind is Kind.WAVEFORM and len(spec.shape) == 2:
        h, w = spec.shape
        per_day = h * w * spec.dtype.itemsize * 10 * 86_400 / 1e9
        return (f"an image ({h}x{w} {spec.ftvl}, {per_day:.1f} GB a day at 10 Hz): archive the camera with its "
                "areaDetector file plugins, and the model's scalar outputs here")
    return None


def left_out(config: Config, options: GenerateOptions) -> list[tuple[str, str]]:
    """(PV, why) of every PV of the layout the request leaves out."""
    out = []
    for model in config.models:
        for spec in ModelPVs.of(model, options.specs).specs:
            reason = left_out_reason(spec)
            if reason is not None:
                out.append((spec.name, reason))
    return out


def sampling(spec: PVSpec, statistics: set[str], cycle_s: float, stats_s: float) -> tuple[str, float]:
    """(method, period) for one PV: SCAN for the IOC's counters and for waveforms, MONITOR for everything else."""
    if spec.name in statistics or spec.kind is Kind.LONGIN:
        return "SCAN", stats_s
    if spec.kind in (Kind.AI, Kind.AO):
        return "MONITOR", min(cycle_s, 1.0)
    if spec.kind is Kind.WAVEFORM and not isinstance(spec.initial, tuple):  # (a SHAPE PV is a constant)
        return "SCAN", max(WAVEFORM_SCAN_S, cycle_s)
    return "MONITOR", 1.0


def generate(config: Config, out: Path, options: GenerateOptions) -> list[Path]:
    path = out / FILE_NAME
    lines = [" " + json.dumps(entry) for entry in entries(config, options)]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    written = [path]
    skipped = left_out(config, options)
    notes = out / LEFT_OUT_NAME
    if skipped:
        notes.write_text(f"# PVs served by the IOC for {config.path.name} that {FILE_NAME} does not archive, and why\n"
                         + "".join(f"{pv}\t{why}\n" for pv, why in skipped))
        written.append(notes)
        for pv, why in skipped:
            log.warning("archiver: %s left out: %s", pv, why)
    elif notes.exists():
        notes.unlink()  # a stale list from an earlier run of another config
    return written


def archive_pv_url(url: str) -> str:
    """Accept the appliance's base URL, its ``/mgmt/bpl`` URL, or the full ``archivePV`` URL."""
    url = url.rstrip("/")
    if url.endswith("/archivePV"):
        return url
    if url.endswith("/mgmt/bpl"):
        return url + "/archivePV"
    return url + "/mgmt/bpl/archivePV"


@dataclass(frozen=True)
class SubmitResult:
    statuses: dict[str, str]  # PV name -> the appliance's status text
    missing: list[str]  # PVs sent that the appliance did not answer for


def submit(body: list[dict[str, str]], url: str, timeout: float = 30.0) -> SubmitResult:
    """POST the list to the appliance's archivePV; raise :class:`ArchiverError` on any failure."""
    target = archive_pv_url(url)
    request = urllib.request.Request(target, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()[:300]
        raise ArchiverError(f"{target}: HTTP {exc.code} {exc.reason}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ArchiverError(f"{target}: cannot reach the appliance: {reason}") from exc
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchiverError(f"{target}: the answer is not JSON: {text.strip()[:200]!r}") from exc
    if not isinstance(answer, list):
        raise ArchiverError(f"{target}: expected a JSON list, got {type(answer).__name__}: {text.strip()[:200]!r}")
    statuses = {str(item.get("pvName")): str(item.get("status")) for item in answer if isinstance(item, dict)}
    # The appliance reports names without the pva:// prefix.
    sent = [e["pv"].removeprefix("pva://") for e in body]
    return SubmitResult(statuses, [pv for pv in sent if pv not in statuses])
