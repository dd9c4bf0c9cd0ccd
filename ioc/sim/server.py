"""``mlioc sim``: the simulated machine served as its own IOC, over CA and PVA.

Served under the simulator prefix (``SIM:`` in the demo):

* ``Q1:I``, ``Q2:I``, ``RF:PHASE``, ``GUN:CHARGE`` — knob readbacks (the demo model's inputs)
* ``Q1:I_SP``, ... — writable setpoints: the centre the knob wanders around
* ``SIGMA:X``, ``SIGMA:Y``, ``LOSS`` — the measured beam (the model's ground truth)
* ``DRIFT`` — 0 = none; x = shift every knob by x reference standard deviations
* ``Q1:I_DRIFT``, ... — the same for one knob only (adds to ``DRIFT``)
* ``FAULT`` — 0 NONE; 1 STALL (stop updating); 2 NAN (publish NaN readbacks)
* ``COR:I_SP`` (writable, DRVL/DRVH -5..5 A), ``COR:I`` — a corrector magnet's setpoint and its
  current, which follows the setpoint with a 0.2 s lag; ``BPM:X`` — the beam position it steers;
  ``ORBIT:OFFSET`` (writable) — an injected orbit offset the steering demo corrects

It reuses the IOC's own PV model and protocol adapters: the simulator is served exactly like
the product, so what a test sees of one is what it would see of the other.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from ioc.core.pvmodel import PV, ClientInfo, Kind, PVDatabase, PVSpec
from ioc.protocols.ca_server import CaServer
from ioc.protocols.pva_server import PvaServer
from ioc.sim.physics import COR_LIMITS_A, KNOBS, OBSERVABLES, Machine, Steering

log = logging.getLogger("mlioc.sim")

FAULT_CHOICES = ("NONE", "STALL", "NAN")


@dataclass(frozen=True, slots=True)
class SimNames:
    prefix: str

    def readback(self, knob_pv: str) -> str:
        return f"{self.prefix}{knob_pv}"

    def setpoint(self, knob_pv: str) -> str:
        return f"{self.prefix}{knob_pv}_SP"

    def knob_drift(self, knob_pv: str) -> str:
        return f"{self.prefix}{knob_pv}_DRIFT"

    def observable(self, pv: str) -> str:
        return f"{self.prefix}{pv}"

    @property
    def drift(self) -> str:
        return f"{self.prefix}DRIFT"

    @property
    def fault(self) -> str:
        return f"{self.prefix}FAULT"

    @property
    def corrector_setpoint(self) -> str:
        return f"{self.prefix}COR:I_SP"

    @property
    def corrector(self) -> str:
        return f"{self.prefix}COR:I"

    @property
    def bpm(self) -> str:
        return f"{self.prefix}BPM:X"

    @property
    def orbit_offset(self) -> str:
        return f"{self.prefix}ORBIT:OFFSET"


def steering_pv_specs(n: SimNames) -> list[PVSpec]:
    """The corrector / BPM pair of the closed-loop demo (docs/how-to/actions.md)."""
    return [
        PVSpec(name=n.corrector_setpoint, kind=Kind.AO, desc="corrector setpoint", egu="A", prec=3,
               display=COR_LIMITS_A, control=COR_LIMITS_A, writable=True, initial=0.0, scan="Passive", audit=True),
        PVSpec(name=n.corrector, kind=Kind.AI, desc="corrector current readback", egu="A", prec=3,
               display=COR_LIMITS_A, initial=0.0),
        PVSpec(name=n.bpm, kind=Kind.AI, desc="beam position at the BPM", egu="mm", prec=3, display=(-10.0, 10.0),
               initial=math.nan),
        PVSpec(name=n.orbit_offset, kind=Kind.AO, desc="injected orbit offset", egu="mm", prec=3,
               display=(-5.0, 5.0), control=(-5.0, 5.0), writable=True, initial=0.0, scan="Passive", audit=True),
    ]


def sim_pv_specs(prefix: str) -> list[PVSpec]:
    n = SimNames(prefix)
    specs: list[PVSpec] = []
    for k in KNOBS:
        specs.append(PVSpec(name=n.readback(k.pv), kind=Kind.AI, desc=f"{k.description} readback"[:40], egu=k.units,
                            prec=3, display=k.range, initial=k.nominal))
    for k in KNOBS:
        specs.append(PVSpec(name=n.setpoint(k.pv), kind=Kind.AO, desc=f"{k.description} setpoint"[:40], egu=k.units,
                            prec=3, display=k.range, control=k.range, writable=True, initial=k.nominal,
                            scan="Passive", audit=True))
    for o in OBSERVABLES:
        specs.append(PVSpec(name=n.observable(o.pv), kind=Kind.AI, desc=o.description[:40], egu=o.units, prec=3,
                            display=(0.0, 100.0) if o.units == "%" else (0.0, 5.0), initial=math.nan))
    specs.append(PVSpec(name=n.drift, kind=Kind.AO, desc="injected drift (reference std devs)", egu="sigma",
                        prec=2, display=(-10.0, 10.0), control=(-10.0, 10.0), writable=True, initial=0.0,
                        scan="Passive", audit=True))
    for k in KNOBS:
        specs.append(PVSpec(name=n.knob_drift(k.pv), kind=Kind.AO, desc=f"injected drift of {k.name}"[:40],
                            egu="sigma", prec=2, display=(-10.0, 10.0), control=(-10.0, 10.0), writable=True,
                            initial=0.0, scan="Passive", audit=True))
    specs.append(PVSpec(name=n.fault, kind=Kind.MBBI, desc="injected fault", choices=FAULT_CHOICES,
                        writable=True, initial=0, scan="Passive", audit=True))
    specs += steering_pv_specs(n)
    return specs


def sim_pv_names(prefix: str) -> list[str]:
    return [s.name for s in sim_pv_specs(prefix)]


class Simulator:
    """The machine, its PVs and its update loop."""

    def __init__(self, prefix: str, rate_hz: float, seed: int, *, clock=time.time):
        self.names = SimNames(prefix)
        self.rate_hz = rate_hz
        self.clock = clock
        self.machine = Machine(seed=seed, rate_hz=rate_hz)
        self.steering = Steering(seed=seed, rate_hz=rate_hz)
        self.fault = 0
        self.db = PVDatabase()
        now = clock()
        for spec in sim_pv_specs(prefix):
            self.db.add(spec, now)
        for k in KNOBS:
            self.db[self.names.setpoint(k.pv)].put_handler = self._setpoint_handler(k.name)
        self.db[self.names.drift].put_handler = self._put_drift
        for k in KNOBS:
            self.db[self.names.knob_drift(k.pv)].put_handler = self._knob_drift_handler(k.name)
        self.db[self.names.fault].put_handler = self._put_fault
        self.db[self.names.corrector_setpoint].put_handler = self._put_corrector
        self.db[self.names.orbit_offset].put_handler = self._put_orbit_offset
        for pv in self.db:
            if pv.spec.writable:
                pv.post(pv.spec.initial, now)

    def _setpoint_handler(self, knob: str):
        def handler(pv: PV, value: float, client: ClientInfo) -> None:
            self.machine.setpoints[knob] = value
            pv.post(value, self.clock())

        return handler

    def _put_drift(self, pv: PV, value: float, client: ClientInfo) -> None:
        self.machine.drift = value
        pv.post(value, self.clock())
        log.warning("drift set to %g reference std devs by %s", value, client)

    def _knob_drift_handler(self, knob: str):
        def handler(pv: PV, value: float, client: ClientInfo) -> None:
            self.machine.knob_drift[knob] = value
            pv.post(value, self.clock())
            log.warning("drift of %s set to %g reference std devs by %s", knob, value, client)

        return handler

    def _put_fault(self, pv: PV, value: int, client: ClientInfo) -> None:
        self.fault = value
        pv.post(value, self.clock())
        log.warning("fault set to %s by %s", FAULT_CHOICES[value], client)

    def _put_corrector(self, pv: PV, value: float, client: ClientInfo) -> None:
        self.steering.setpoint_a = value
        pv.post(value, self.clock())

    def _put_orbit_offset(self, pv: PV, value: float, client: ClientInfo) -> None:
        self.steering.offset_mm = value
        pv.post(value, self.clock())
        log.warning("orbit offset set to %g mm by %s", value, client)

    def step(self) -> None:
        readback, observed = self.machine.step()
        corrector, bpm = self.steering.step()
        if self.fault == 1:
            return
        now = self.clock()
        for k, value in zip(KNOBS, readback, strict=True):
            self.db[self.names.readback(k.pv)].post(math.nan if self.fault == 2 else float(value), now)
        for o, value in zip(OBSERVABLES, observed, strict=True):
            self.db[self.names.observable(o.pv)].post(math.nan if self.fault == 2 else float(value), now)
        self.db[self.names.corrector].post(math.nan if self.fault == 2 else corrector, now)
        self.db[self.names.bpm].post(math.nan if self.fault == 2 else bpm, now)

    async def run_updates(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        next_t = loop.time()
        while True:
            self.step()
            next_t += period
            delay = next_t - loop.time()
            if delay < -period:
                next_t = loop.time()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))


async def serve_simulator(prefix: str, rate_hz: float, seed: int, *, protocols=("ca", "pva"),
                          ca_port: int | None = None, pva_port: int | None = None,
                          interfaces: list[str] | None = None, stop: asyncio.Event | None = None) -> None:
    sim = Simulator(prefix, rate_hz, seed)
    sim.step()
    servers = []
    if "ca" in protocols:
        servers.append(CaServer(sim.db, port=ca_port, interfaces=interfaces))
    if "pva" in protocols:
        servers.append(PvaServer(sim.db, port=pva_port, interfaces=interfaces))
    for server in servers:
        await server.start()
    task = asyncio.get_running_loop().create_task(sim.run_updates(), name="sim-updates")
    ports = ", ".join(f"{type(s).__name__[:3].lower()} port {s.port}" for s in servers)
    log.info("simulator ready: %d PVs under %s at %g Hz (%s)", len(sim.db), prefix, rate_hz, ports)
    try:
        await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        task.cancel()
        for server in servers:
            await server.stop()
