"""A simulated accelerator section: a quadrupole doublet after an RF-gun, seen on a screen.

Pure and deterministic given a seed. Four knobs (two quadrupole currents, the RF phase and the gun
charge) set the beam; three observables come out: the rms beam sizes on a screen 2 m downstream and
the fraction of beam lost on a 4 mm aperture. The optics is linear thin-lens transport:

* beam energy falls off with RF phase: E = 1 - 0.5 (1 - cos phase)
* quadrupole focal power k_i = 0.15 I_i / E  [1/m]; Q1 focuses in x and defocuses in y, Q2 the reverse
* the initial beam grows with charge (space charge): sigma0 = 1.0 (1 + 0.25 Q) mm,
  divergence 0.4 (1 + 0.15 Q) mrad
* M = Drift(2 m) Q2 Drift(1 m) Q1;  sigma^2 = (M11 sigma0)^2 + (M12 sigma0')^2
* loss = 100 (1 - erf(a / sqrt(2) sigma_x) erf(a / sqrt(2) sigma_y)) %, a = 4 mm

In operation every knob wanders around its setpoint (an Ornstein-Uhlenbeck process whose stationary
spread is the knob's reference standard deviation), which is also the distribution the demo model
is trained on, so live data is in-distribution until someone moves a setpoint or injects DRIFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

L1_M = 1.0
L2_M = 2.0
APERTURE_MM = 4.0
MEASUREMENT_NOISE = 0.01  # relative rms noise of the beam observables
READBACK_NOISE = 0.02  # readback noise, in units of each knob's reference std


@dataclass(frozen=True, slots=True)
class Knob:
    """One machine input: its PV suffix, units, nominal setpoint, reference spread and valid range."""

    name: str
    pv: str
    units: str
    nominal: float
    ref_std: float
    range: tuple[float, float]
    description: str


@dataclass(frozen=True, slots=True)
class Observable:
    name: str
    pv: str
    units: str
    description: str


KNOBS: tuple[Knob, ...] = (
    Knob("q1", "Q1:I", "A", 5.0, 0.8, (0.0, 10.0), "quadrupole Q1 current"),
    Knob("q2", "Q2:I", "A", 4.0, 0.8, (0.0, 10.0), "quadrupole Q2 current"),
    Knob("rf_phase", "RF:PHASE", "deg", 0.0, 4.0, (-30.0, 30.0), "RF gun phase"),
    Knob("charge", "GUN:CHARGE", "nC", 1.0, 0.15, (0.0, 3.0), "bunch charge"),
)
OBSERVABLES: tuple[Observable, ...] = (
    Observable("sigma_x", "SIGMA:X", "mm", "horizontal beam size on screen"),
    Observable("sigma_y", "SIGMA:Y", "mm", "vertical beam size on screen"),
    Observable("loss", "LOSS", "%", "beam lost on the aperture"),
)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[float])(x)


def beam(q1, q2, rf_phase_deg, charge) -> np.ndarray:
    """Noise-free observables for arrays (or scalars) of knob values: shape (..., 3)."""
    q1, q2, ph, qc = (np.asarray(v, dtype=np.float64) for v in (q1, q2, rf_phase_deg, charge))
    energy = 1.0 - 0.5 * (1.0 - np.cos(np.radians(ph)))
    k1 = 0.15 * q1 / energy
    k2 = 0.15 * q2 / energy
    s0 = 1.0 * (1.0 + 0.25 * qc)
    sp0 = 0.4 * (1.0 + 0.15 * qc)

    def plane(ka, kb):
        # Thin lens (focal power ka) -> drift L1 -> thin lens (kb) -> drift L2, first row of M.
        m11, m12 = 1.0, 0.0
        m21, m22 = -ka, 1.0
        m11, m12 = m11 + L1_M * m21, m12 + L1_M * m22
        m21, m22 = m21 - kb * m11, m22 - kb * m12
        m11, m12 = m11 + L2_M * m21, m12 + L2_M * m22
        return np.sqrt((m11 * s0) ** 2 + (m12 * sp0) ** 2)

    sx = plane(k1, -k2)
    sy = plane(-k1, k2)
    transmission = _erf(APERTURE_MM / (math.sqrt(2) * sx)) * _erf(APERTURE_MM / (math.sqrt(2) * sy))
    loss = 100.0 * (1.0 - transmission)
    return np.stack([sx, sy, loss], axis=-1)


def sample_inputs(n: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """Draw ``n`` knob settings from the reference distribution (shifted by ``shift`` std devs)."""
    cols = []
    for k in KNOBS:
        col = rng.normal(k.nominal + shift * k.ref_std, k.ref_std, size=n)
        cols.append(np.clip(col, *k.range))
    return np.stack(cols, axis=1)


def generate_dataset(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The documented demo data generator: i.i.d. reference draws and noisy measured observables.

    Returns (X, Y) with X[:, i] in KNOBS order and Y[:, j] in OBSERVABLES order. Same seed, same data.
    """
    rng = np.random.default_rng(seed)
    x = sample_inputs(n, rng, shift)
    y = beam(*x.T)
    y = y * (1.0 + MEASUREMENT_NOISE * rng.standard_normal(y.shape))
    return x, y


@dataclass
class Machine:
    """The live, stateful machine the simulator IOC serves."""

    seed: int = 0
    rate_hz: float = 10.0
    tau_s: float = 1.0
    setpoints: dict[str, float] = field(default_factory=lambda: {k.name: k.nominal for k in KNOBS})
    drift: float = 0.0  # every knob's centre shifted by this many reference std devs
    knob_drift: dict[str, float] = field(default_factory=lambda: {k.name: 0.0 for k in KNOBS})  # one knob's
    rng: np.random.Generator = field(init=False)
    state: np.ndarray = field(init=False)
    actual: np.ndarray = field(init=False)  # the knobs' true values (the screen image is made from them)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.state = np.array([k.nominal for k in KNOBS])
        self.actual = self.state.copy()

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """Advance one update period; return (knob readbacks, measured observables)."""
        a = math.exp(-1.0 / (self.rate_hz * self.tau_s))
        noise_scale = math.sqrt(1.0 - a * a)
        centres = np.array([self.setpoints[k.name] + (self.drift + self.knob_drift[k.name]) * k.ref_std
                            for k in KNOBS])
        stds = np.array([k.ref_std for k in KNOBS])
        self.state = centres + (self.state - centres) * a + stds * noise_scale * self.rng.standard_normal(len(KNOBS))
        lo = np.array([k.range[0] for k in KNOBS])
        hi = np.array([k.range[1] for k in KNOBS])
        actual = self.actual = np.clip(self.state, lo, hi)
        readback = actual + READBACK_NOISE * stds * self.rng.standard_normal(len(KNOBS))
        observed = beam(*actual) * (1.0 + MEASUREMENT_NOISE * self.rng.standard_normal(len(OBSERVABLES)))
        return readback, observed


# ----------------------------------------------------------------------------- steering (closed-loop demo)
#
# A horizontal corrector magnet upstream of a beam position monitor (BPM). The corrector's current
# follows its setpoint with a first-order lag (a power supply with an inductive load), so a readback
# check after a write means something. The beam position is the orbit offset (an injected offset
# plus a slow Ornstein-Uhlenbeck wander: ground motion, thermal drift) plus the corrector's kick:
#
#     x_bpm = offset + wander + COR_KICK_MM_PER_A * I_cor  (+ BPM noise)
#
# The corrector setting that centres the beam is I* = I_cor - x_bpm / COR_KICK_MM_PER_A; the steering
# demo model learns it from (x_bpm, I_cor).

COR_KICK_MM_PER_A = 0.8  # beam displacement at the BPM per ampere of corrector current
COR_TAU_S = 0.2  # power-supply lag
COR_LIMITS_A = (-5.0, 5.0)  # the corrector's own drive limits (DRVL/DRVH of its setpoint)
COR_READBACK_NOISE_A = 0.002
BPM_NOISE_MM = 0.005
ORBIT_WANDER_MM = 0.05  # stationary spread of the orbit wander
ORBIT_TAU_S = 20.0


@dataclass
class Steering:
    """The live corrector + BPM (stateful, seeded)."""

    seed: int = 0
    rate_hz: float = 10.0
    setpoint_a: float = 0.0
    offset_mm: float = 0.0  # injected orbit offset (SIM:ORBIT:OFFSET)
    current_a: float = 0.0
    wander_mm: float = 0.0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed + 1000)

    def step(self) -> tuple[float, float]:
        """Advance one update period; return (corrector current readback A, BPM x mm)."""
        dt = 1.0 / self.rate_hz
        self.current_a += (self.setpoint_a - self.current_a) * (1.0 - math.exp(-dt / COR_TAU_S))
        a = math.exp(-dt / ORBIT_TAU_S)
        self.wander_mm = self.wander_mm * a + ORBIT_WANDER_MM * math.sqrt(1 - a * a) * self.rng.standard_normal()
        x = self.offset_mm + self.wander_mm + COR_KICK_MM_PER_A * self.current_a
        readback = self.current_a + COR_READBACK_NOISE_A * self.rng.standard_normal()
        return float(readback), float(x + BPM_NOISE_MM * self.rng.standard_normal())


def generate_steering_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented steering data generator: X = (bpm_x mm, cor_i A), Y = (cor_sp A), the corrector
    setting that centres the beam. Orbit offsets ~ N(0, 1 mm), corrector currents ~ U(-3, 3) A."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0.0, 1.0, size=n)
    current = rng.uniform(-3.0, 3.0, size=n)
    bpm = offset + COR_KICK_MM_PER_A * current + BPM_NOISE_MM * rng.standard_normal(n)
    readback = current + COR_READBACK_NOISE_A * rng.standard_normal(n)
    best = -offset / COR_KICK_MM_PER_A
    return np.stack([bpm, readback], axis=1), best[:, None]
