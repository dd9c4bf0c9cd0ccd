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

Arrays (:mod:`ioc.sim.beamline`, the array demo ``config/demo-arrays.yaml``):

* ``ORBIT:X``, ``ORBIT:Y`` — the orbit at 32 BPMs (waveform / NTScalarArray of 32 doubles, mm), and
  the same positions one PV per BPM: ``BPM01:X`` ... ``BPM32:X``, ``BPM01:Y`` ...; ``ORBIT:S`` — the
  BPMs' positions along the line (m)
* ``COR1:I_SP`` ... ``COR4:I_SP`` (writable, -5..5 A), ``COR1:I`` ... — the line's correctors;
  ``COR1:DI_BEST`` ... — the change of each that would flatten the orbit best (the orbit model's truth)
* ``CAM:IMAGE`` — the 64 x 64 screen image (PVA NTNDArray, CA waveform of 4096 floats, row-major),
  at ``simulator.image_hz``; ``CAM:ArraySize0_RBV`` (width), ``CAM:ArraySize1_RBV`` (height),
  ``CAM:ArrayCounter_RBV`` (frames, = the NTNDArray's uniqueId); ``CAM:CENTROID:X``/``Y`` — the spot's
  centroid (mm; its sizes are ``SIGMA:X``/``Y``)
* ``PROFILE:X`` — the horizontal beam profile at 100 points (nC/mm), ``PROFILE:X:POS`` their positions

``DRIFT`` also shifts the error orbit; ``FAULT`` STALL stops the arrays too, NAN puts NaN in BPM
``NAN_BPM`` (its waveform element and its scalar), in image rows ``NAN_ROWS`` and in profile points
``NAN_PROFILE_POINTS`` (every other scalar reads NaN, as before); an array with a NaN element is
INVALID, as the PV model serves any waveform.

It reuses the IOC's own PV model and protocol adapters (waveforms and the NTNDArray included): the
simulator is served exactly like the product, so what a test sees of one is what it would see of
the other.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from ioc.core.pvmodel import PV, ClientInfo, Kind, PVDatabase, PVSpec
from ioc.protocols.ca_server import CaServer
from ioc.protocols.pva_server import PvaServer
from ioc.sim import beamline as bl
from ioc.sim.physics import COR_LIMITS_A, KNOBS, OBSERVABLES, Machine, Steering

log = logging.getLogger("mlioc.sim")

FAULT_CHOICES = ("NONE", "STALL", "NAN")
NAN_BPM = 6  # FAULT = NAN: this BPM reads NaN (BPM06, element 5 of the orbit waveforms)
NAN_ROWS = (30, 31)  # ... these image rows are NaN
NAN_PROFILE_POINTS = (50,)  # ... and these profile points


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

    # The transport line and the screen (arrays).
    def orbit(self, plane: str) -> str:
        return f"{self.prefix}ORBIT:{plane.upper()}"

    @property
    def orbit_s(self) -> str:
        return f"{self.prefix}ORBIT:S"

    def line_bpm(self, i: int, plane: str) -> str:
        """BPM ``i`` (1-based) of the line, one plane."""
        return f"{self.prefix}BPM{i:02d}:{plane.upper()}"

    def line_corrector(self, j: int) -> str:
        return f"{self.prefix}COR{j}:I"

    def line_corrector_setpoint(self, j: int) -> str:
        return f"{self.prefix}COR{j}:I_SP"

    def best_correction(self, j: int) -> str:
        return f"{self.prefix}COR{j}:DI_BEST"

    @property
    def image(self) -> str:
        return f"{self.prefix}CAM:IMAGE"

    def image_size(self, axis: int) -> str:
        return f"{self.prefix}CAM:ArraySize{axis}_RBV"

    @property
    def image_counter(self) -> str:
        return f"{self.prefix}CAM:ArrayCounter_RBV"

    def centroid(self, plane: str) -> str:
        return f"{self.prefix}CAM:CENTROID:{plane.upper()}"

    @property
    def profile(self) -> str:
        return f"{self.prefix}PROFILE:X"

    @property
    def profile_positions(self) -> str:
        return f"{self.prefix}PROFILE:X:POS"


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


def line_pv_specs(n: SimNames) -> list[PVSpec]:
    """The scalars of the transport line and the screen (the array demo, docs/training.md)."""
    specs: list[PVSpec] = []
    for plane in ("x", "y"):
        for i in range(1, bl.N_BPM + 1):
            specs.append(PVSpec(name=n.line_bpm(i, plane), kind=Kind.AI, desc=f"orbit {plane} at BPM {i}", egu="mm",
                                prec=3, display=(-5.0, 5.0), initial=math.nan))
    for j in range(1, bl.N_COR + 1):
        specs.append(PVSpec(name=n.line_corrector_setpoint(j), kind=Kind.AO, desc=f"line corrector {j} setpoint",
                            egu="A", prec=3, display=bl.COR_RANGE_A, control=bl.COR_RANGE_A, writable=True,
                            initial=0.0, scan="Passive", audit=True))
        specs.append(PVSpec(name=n.line_corrector(j), kind=Kind.AI, desc=f"line corrector {j} current", egu="A",
                            prec=3, display=bl.COR_RANGE_A, initial=0.0))
        specs.append(PVSpec(name=n.best_correction(j), kind=Kind.AI, desc=f"change of COR{j} that flattens orbit",
                            egu="A", prec=3, display=(-5.0, 5.0), initial=math.nan))
    h, w = bl.IMAGE_SHAPE
    specs += [
        PVSpec(name=n.image_size(0), kind=Kind.LONGIN, desc="image width (x)", initial=w),
        PVSpec(name=n.image_size(1), kind=Kind.LONGIN, desc="image height (y)", initial=h),
        PVSpec(name=n.image_counter, kind=Kind.LONGIN, desc="frames published", initial=0),
    ]
    for plane in ("x", "y"):
        specs.append(PVSpec(name=n.centroid(plane), kind=Kind.AI, desc=f"beam centroid on the screen, {plane}",
                            egu="mm", prec=3, display=(-10.0, 10.0), initial=math.nan))
    return specs


def array_specs(n: SimNames) -> list[PVSpec]:
    """The waveforms: orbits, the screen image (an NTNDArray over PVA), the profile and their axes."""
    half = bl.PROFILE_HALF_WIDTH_MM

    def wave(name: str, shape: tuple[int, ...], desc: str, egu: str, prec: int, display: tuple[float, float],
             ftvl: str = "DOUBLE") -> PVSpec:
        return PVSpec(name=name, kind=Kind.WAVEFORM, desc=desc, egu=egu, prec=prec, display=display, shape=shape,
                      ftvl=ftvl, initial=math.nan)

    return [
        wave(n.orbit("x"), (bl.N_BPM,), "horizontal orbit", "mm", 3, (-5.0, 5.0)),
        wave(n.orbit("y"), (bl.N_BPM,), "vertical orbit", "mm", 3, (-5.0, 5.0)),
        wave(n.orbit_s, (bl.N_BPM,), "BPM positions along the line", "m", 1, (0.0, float(bl.BPM_S[-1]) + 1)),
        wave(n.image, bl.IMAGE_SHAPE, "screen image", "counts", 0, (0.0, 4000.0), ftvl="FLOAT"),
        wave(n.profile, (bl.PROFILE_POINTS,), "horizontal beam profile", "nC/mm", 4, (0.0, 0.5)),
        wave(n.profile_positions, (bl.PROFILE_POINTS,), "profile positions", "mm", 2, (-half, half)),
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
    specs += line_pv_specs(n)
    specs += array_specs(n)
    return specs


def sim_pv_names(prefix: str) -> list[str]:
    return [s.name for s in sim_pv_specs(prefix)]


def _with_nan(values: np.ndarray, index) -> np.ndarray:
    out = np.array(values, dtype=np.float64)
    out[index] = math.nan
    return out


class Simulator:
    """The machine, its PVs and its update loops (scalars and small arrays at rate_hz, images at image_hz)."""

    def __init__(self, prefix: str, rate_hz: float, seed: int, *, image_hz: float | None = None, clock=time.time):
        self.names = SimNames(prefix)
        self.rate_hz = rate_hz
        self.image_hz = image_hz or rate_hz
        self.clock = clock
        self.machine = Machine(seed=seed, rate_hz=rate_hz)
        self.steering = Steering(seed=seed, rate_hz=rate_hz)
        self.line = bl.Line(seed=seed, rate_hz=rate_hz)
        self.screen = bl.Screen(seed=seed)
        self.fault = 0
        self.db = PVDatabase()
        now = clock()
        for spec in sim_pv_specs(prefix):
            self.db.add(spec, now)
        self.truth: dict[str, float] | None = None  # the beam on the screen, for the next frame
        for k in KNOBS:
            self.db[self.names.setpoint(k.pv)].put_handler = self._setpoint_handler(k.name)
        self.db[self.names.drift].put_handler = self._put_drift
        for k in KNOBS:
            self.db[self.names.knob_drift(k.pv)].put_handler = self._knob_drift_handler(k.name)
        self.db[self.names.fault].put_handler = self._put_fault
        self.db[self.names.corrector_setpoint].put_handler = self._put_corrector
        self.db[self.names.orbit_offset].put_handler = self._put_orbit_offset
        for j in range(1, bl.N_COR + 1):
            self.db[self.names.line_corrector_setpoint(j)].put_handler = self._line_corrector_handler(j)
        for pv in self.db:
            if pv.spec.writable or pv.spec.kind is Kind.LONGIN:
                pv.post(pv.spec.initial, now)
        self.db[self.names.orbit_s].post(bl.BPM_S.copy(), now)
        self.db[self.names.profile_positions].post(bl.PROFILE_MM.copy(), now)

    def _setpoint_handler(self, knob: str):
        def handler(pv: PV, value: float, client: ClientInfo) -> None:
            self.machine.setpoints[knob] = value
            pv.post(value, self.clock())

        return handler

    def _put_drift(self, pv: PV, value: float, client: ClientInfo) -> None:
        self.machine.drift = value
        self.line.drift = value
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

    def _line_corrector_handler(self, j: int):
        def handler(pv: PV, value: float, client: ClientInfo) -> None:
            self.line.setpoints_a[j - 1] = value
            pv.post(value, self.clock())

        return handler

    def step(self) -> None:
        """Advance the machine one period and post what it measured (the image: :meth:`frame`)."""
        readback, observed = self.machine.step()
        corrector, bpm = self.steering.step()
        line = self.line.step()
        truth = self.screen.truth(self.machine.actual, float(line["screen_x"]), float(line["screen_y"]))
        self.truth = truth
        if self.fault == 1:
            return
        nan = self.fault == 2
        now = self.clock()
        n, db = self.names, self.db
        for k, value in zip(KNOBS, readback, strict=True):
            db[n.readback(k.pv)].post(math.nan if nan else float(value), now)
        for o, value in zip(OBSERVABLES, observed, strict=True):
            db[n.observable(o.pv)].post(math.nan if nan else float(value), now)
        db[n.corrector].post(math.nan if nan else corrector, now)
        db[n.bpm].post(math.nan if nan else bpm, now)
        self._post_line(line, truth, now, nan)

    def _post_line(self, line: dict[str, np.ndarray], truth: dict[str, float], now: float, nan: bool) -> None:
        n, db = self.names, self.db
        for plane in ("x", "y"):
            orbit = _with_nan(line[f"orbit_{plane}"], NAN_BPM - 1) if nan else line[f"orbit_{plane}"]
            for i, value in enumerate(orbit, start=1):
                db[n.line_bpm(i, plane)].post(float(value), now)
            db[n.orbit(plane)].post(orbit, now)
        for j in range(1, bl.N_COR + 1):
            db[n.line_corrector(j)].post(math.nan if nan else float(line["currents"][j - 1]), now)
            db[n.best_correction(j)].post(math.nan if nan else float(line["dcor"][j - 1]), now)
        cx, cy = self.screen.centroid(truth)
        db[n.centroid("x")].post(math.nan if nan else cx, now)
        db[n.centroid("y")].post(math.nan if nan else cy, now)
        prof = self.screen.profile(truth)
        db[n.profile].post(_with_nan(prof, list(NAN_PROFILE_POINTS)) if nan else prof, now)

    def frame(self) -> None:
        """Take one camera frame of the current beam (at image_hz)."""
        if self.truth is None or self.fault == 1:
            return
        image = self.screen.frame(self.truth)
        if self.fault == 2:
            image[list(NAN_ROWS), :] = np.nan
        now = self.clock()
        self.db[self.names.image].post(image, now)
        self.db[self.names.image_counter].post(self.screen.unique_id, now)

    async def _every(self, period: float, action) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            action()
            next_t += period
            delay = next_t - loop.time()
            if delay < -period:
                next_t = loop.time()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))

    async def run_updates(self) -> None:
        await self._every(1.0 / self.rate_hz, self.step)

    async def run_images(self) -> None:
        await self._every(1.0 / self.image_hz, self.frame)


async def serve_simulator(prefix: str, rate_hz: float, seed: int, *, image_hz: float | None = None,
                          protocols=("ca", "pva"), ca_port: int | None = None, pva_port: int | None = None,
                          interfaces: list[str] | None = None, stop: asyncio.Event | None = None) -> None:
    sim = Simulator(prefix, rate_hz, seed, image_hz=image_hz)
    sim.step()
    sim.frame()
    servers: list[CaServer | PvaServer] = []
    if "ca" in protocols:
        servers.append(CaServer(sim.db, port=ca_port, interfaces=interfaces))
    if "pva" in protocols:
        servers.append(PvaServer(sim.db, port=pva_port, interfaces=interfaces))
    for server in servers:
        await server.start()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(sim.run_updates(), name="sim-updates"),
             loop.create_task(sim.run_images(), name="sim-images")]
    ports = ", ".join(f"{type(s).__name__[:3].lower()} port {s.port}" for s in servers)
    log.info("simulator ready: %d PVs under %s at %g Hz, images at %g Hz (%s)", len(sim.db), prefix, rate_hz,
             sim.image_hz, ports)
    try:
        await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        for task in tasks:
            task.cancel()
        for server in servers:
            await server.stop()
