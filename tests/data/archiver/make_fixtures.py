"""Regenerate the recorded Archiver Appliance responses in this folder (run from the repository root):

    .venv/bin/python tests/data/archiver/make_fixtures.py

Each ``<PV>.pb`` is the body the appliance returns for ``GET /retrieval/data/getData.raw?pv=<PV>&from=..&to=..``
(its PB/HTTP format: per calendar year one chunk — an escaped ``PayloadInfo`` line with the PV name, type,
year and header fields, then one escaped ``ScalarDouble`` event per line — chunks separated by an empty
line). The content is 30 s of the demo simulator (``ioc.sim.physics.Machine``, seed 7) at 10 Hz across
the 2025/2026 new year, so a response has two year chunks. Two things the appliance really records
are planted: one INVALID (severity 3, status 14 = HW_LIMIT) ``SIM:Q1:I`` event, and a 2 s disconnect of
``SIM:GUN:CHARGE`` (no events; the reconnect event carries the ``cnxlostepsecs`` / ``cnxregainedepsecs``
field values the appliance adds).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from epicsarchiver.retrieval import EPICSEvent_pb2 as ee
from epicsarchiver.retrieval.pb import escape_bytes

from ioc.sim.physics import KNOBS, OBSERVABLES, Machine

HERE = Path(__file__).parent
START = dt.datetime(2025, 12, 31, 23, 59, 45, tzinfo=dt.UTC).timestamp()
RATE_HZ = 10
SECONDS = 30
UNITS = {**{k.pv: k.units for k in KNOBS}, **{o.pv: o.units for o in OBSERVABLES}}
INVALID_Q1_STEP = 100
CHARGE_GAP = range(200, 220)


def main() -> None:
    machine = Machine(seed=7, rate_hz=RATE_HZ)
    events: dict[str, list[tuple[float, float, int, int, dict]]] = {f"SIM:{p}": [] for p in UNITS}
    for step in range(SECONDS * RATE_HZ):
        t = START + step / RATE_HZ
        readback, observed = machine.step()
        for k, v in zip(KNOBS, readback, strict=True):
            name = f"SIM:{k.pv}"
            if k.pv == "GUN:CHARGE" and step in CHARGE_GAP:
                continue
            sev, stat, fields = 0, 0, {}
            if k.pv == "Q1:I" and step == INVALID_Q1_STEP:
                sev, stat = 3, 14
            if k.pv == "GUN:CHARGE" and step == CHARGE_GAP.stop:
                fields = {"cnxlostepsecs": str(int(START + CHARGE_GAP.start / RATE_HZ)),
                          "cnxregainedepsecs": str(int(t))}
            events[name].append((t, float(v), sev, stat, fields))
        for o, v in zip(OBSERVABLES, observed, strict=True):
            events[f"SIM:{o.pv}"].append((t, float(v), 0, 0, {}))
    for pv, evs in events.items():
        chunks = []
        for year in sorted({dt.datetime.fromtimestamp(e[0], dt.UTC).year for e in evs}):
            year_start = dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp()
            info = ee.PayloadInfo(type=6, pvname=pv, year=year, elementCount=1,
                                  headers=[ee.FieldValue(name="EGU", val=UNITS[pv.removeprefix("SIM:")]),
                                           ee.FieldValue(name="PREC", val="3")])
            lines = [escape_bytes(info.SerializeToString())]
            for t, v, sev, stat, fields in evs:
                if dt.datetime.fromtimestamp(t, dt.UTC).year != year:
                    continue
                secs = round((t - year_start) * 1e9)
                ev = ee.ScalarDouble(secondsintoyear=secs // 10**9, nano=secs % 10**9, val=v, severity=sev,
                                     status=stat,
                                     fieldvalues=[ee.FieldValue(name=n, val=x) for n, x in fields.items()])
                lines.append(escape_bytes(ev.SerializeToString()))
            chunks.append(b"\n".join(lines) + b"\n")
        (HERE / f"{pv.replace(':', '_')}.pb").write_bytes(b"\n".join(chunks))


if __name__ == "__main__":
    main()
