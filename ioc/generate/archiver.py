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
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ioc.core.config import Config
from ioc.core.pvmodel import Kind, PVSpec
from ioc.generate import GenerateOptions
from ioc.generate.model_pvs import ModelPVs

FILE_NAME = "archive-pvs.json"
CONTENT_TYPE = "application/json"


class ArchiverError(Exception):
    """Submitting to the appliance failed; the message says how."""


def _period(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def entries(config: Config, options: GenerateOptions) -> list[dict[str, str]]:
    """The archivePV request body for every PV of every model, in layout order."""
    stats_period = max(1.0, 1.0 / config.ioc.stats_hz)
    out = []
    for model in config.models:
        pvs = ModelPVs.of(model, options.specs)
        cycle = 1.0 / model.trigger.scan_hz if model.trigger.kind == "scan" and model.trigger.scan_hz else 1.0
        scanned = {s.name for s in pvs.statistics}
        for spec in pvs.specs:
            method, period = sampling(spec, scanned, cycle, stats_period)
            name = f"pva://{spec.name}" if options.protocol == "pva" else spec.name
            out.append({"pv": name, "samplingperiod": _period(period), "samplingmethod": method})
    return out


def sampling(spec: PVSpec, statistics: set[str], cycle_s: float, stats_s: float) -> tuple[str, float]:
    """(method, period) for one PV: SCAN for the IOC's counters, MONITOR for everything else."""
    if spec.name in statistics or spec.kind is Kind.LONGIN:
        return "SCAN", stats_s
    if spec.kind in (Kind.AI, Kind.AO):
        return "MONITOR", min(cycle_s, 1.0)
    return "MONITOR", 1.0


def generate(config: Config, out: Path, options: GenerateOptions) -> list[Path]:
    path = out / FILE_NAME
    lines = [" " + json.dumps(entry) for entry in entries(config, options)]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    return [path]


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
