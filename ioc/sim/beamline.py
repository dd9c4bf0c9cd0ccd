"""The simulator's array physics: a 32-BPM orbit steered by 4 correctors, a screen image and a profile.

Pure numpy and deterministic given a seed. The *machine* (optics, response matrix, magnet
misalignments, camera background) is fixed by ``LINE_SEED`` whatever the simulator's noise seed,
as a real machine is the same machine every day; the seed drives only the noise and the wander.

**Orbit.** A 64 m FODO transport line: 8 cells of 8 m, a BPM every 2 m (s = 1, 3, ..., 63 m), a
focusing/defocusing quadrupole pair per cell whose misalignments kick the beam (16 error kicks per
plane, each an Ornstein-Uhlenbeck process), and 4 horizontal correctors at s = 0, 8, 16, 24 m. The
beta functions oscillate once per cell (x and y in anti-phase, a few per cent seeded beta-beat) and
the betatron phase is the integral of 1/beta, about 76 degrees per cell. A kick theta at s_j moves
the beam downstream by the transfer-line response

    x(s_i) = sqrt(beta_i beta_j) sin(psi_i - psi_j) theta   (s_i > s_j; 0 upstream: causal)

so ``orbit = R @ (COR_KICK * I) + R_err @ theta_err + BPM noise`` (mm; beta in m, kicks in mrad).
The correction that flattens the orbit best (least squares, the four correctors only) is
``dI = -pinv(R COR_KICK) @ orbit`` — what the orbit demo model learns from the orbit alone.

**Screen.** A 64 x 64 camera at the end of the line (s = 66 m), 0.3 mm per pixel. The beam spot is
a 2-D Gaussian whose sizes are the doublet's (:func:`ioc.sim.physics.beam`: Q1, Q2, RF phase,
charge) and whose centroid is the line's orbit at the screen plus the steering of the misaligned
doublet (a quad offset d kicks the beam by k d, so the spot moves when Q1/Q2 change). Counts:
``GAIN`` per nC, a fixed background (pedestal, gradient, fixed-pattern noise), shot and read noise.
**Profile.** The horizontal beam density (nC/mm) at 100 points across the screen, as a wire scanner
would measure it (1 % noise): what the virtual-diagnostic demo model predicts from the knobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ioc.sim.physics import KNOBS, L1_M, L2_M, MEASUREMENT_NOISE, beam, sample_inputs

LINE_SEED = 14  # the machine itself: optics errors, misalignments, camera background
N_BPM = 32
N_COR = 4
N_ERR = 16  # misaligned quadrupoles (error kick sources) per plane
CELL_M = 8.0
BETA_MEAN_M = 6.0
BETA_BEAT = 0.4  # beta oscillation amplitude within a cell (relative)
BPM_S = 1.0 + 2.0 * np.arange(N_BPM)  # m
COR_S = np.array([0.0, 8.0, 16.0, 24.0])  # m
ERR_S = 0.5 + 4.0 * np.arange(N_ERR)  # m: the F and D quadrupole of each cell
SCREEN_S = 66.0  # m
COR_KICK_MRAD_PER_A = 0.05
COR_RANGE_A = (-5.0, 5.0)
COR_TAU_S = 0.2  # power-supply lag, as the steering demo's corrector
COR_READBACK_NOISE_A = 0.002
ERR_KICK_MRAD = 0.02  # stationary spread of each error kick
ERR_TAU_S = 120.0  # the error orbit wanders slowly (ground motion, temperature)
BPM_NOISE_MM = 0.01
DOUBLET_OFFSETS_MM = {"x": (0.3, -0.25), "y": (-0.2, 0.15)}  # Q1, Q2 misalignment per plane
CORRECTOR_SPREAD_A = 2.0  # training data: corrector currents ~ U(-2, 2) A

IMAGE_SHAPE = (64, 64)  # (height, width): rows are y, columns are x
PIXEL_MM = 0.3
GAIN_COUNTS_PER_NC = 2.5e5  # counts in a pixel = GAIN * charge density * pixel area
PEDESTAL = 50.0
READ_NOISE = 4.0
PROFILE_POINTS = 100
PROFILE_HALF_WIDTH_MM = 9.9


@dataclass(frozen=True)
class Optics:
    """The fixed optics of the line: response matrices of the correctors and the error kicks."""

    response: dict[str, np.ndarray]  # plane -> (N_BPM, N_COR) mm/A (y: zeros; the correctors are horizontal)
    error_response: dict[str, np.ndarray]  # plane -> (N_BPM, N_ERR) mm/mrad
    screen_response: dict[str, np.ndarray]  # plane -> (N_COR,) mm/A at the screen
    screen_error_response: dict[str, np.ndarray]  # plane -> (N_ERR,) mm/mrad
    correction: np.ndarray  # (N_COR, N_BPM): dI = correction @ orbit_x flattens the orbit (least squares)


def _beta_and_phase(plane: str, s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """beta(s) oscillating once per cell (anti-phase in y), psi(s) = integral of 1/beta (rad)."""
    sign = 1.0 if plane == "x" else -1.0
    grid = np.linspace(-1.0, SCREEN_S + 1.0, 8001)
    beat = 1.0 + 0.03 * np.interp(grid, np.linspace(grid[0], grid[-1], 40), rng.standard_normal(40))
    beta = BETA_MEAN_M * (1.0 + sign * BETA_BEAT * np.cos(2 * np.pi * grid / CELL_M)) * beat
    psi = np.concatenate([[0.0], np.cumsum(np.diff(grid) / (0.5 * (beta[1:] + beta[:-1])))])
    return np.interp(s, grid, beta), np.interp(s, grid, psi)


def _response(plane: str, rng: np.random.Generator, at: np.ndarray, sources: np.ndarray) -> np.ndarray:
    both = np.concatenate([at, sources])
    beta, psi = _beta_and_phase(plane, both, rng)
    bi, pi_ = beta[: len(at)], psi[: len(at)]
    bj, pj = beta[len(at):], psi[len(at):]
    r = np.sqrt(bi[:, None] * bj[None, :]) * np.sin(pi_[:, None] - pj[None, :])
    return np.where(at[:, None] > sources[None, :], r, 0.0)


def build_optics(seed: int = LINE_SEED) -> Optics:
    """The line's response matrices (deterministic: the same seed, the same machine)."""
    resp, err, scr, scr_err = {}, {}, {}, {}
    at = np.concatenate([BPM_S, [SCREEN_S]])
    for plane in ("x", "y"):
        # One generator per plane and matrix so each is the same whatever else is built.
        rc = _response(plane, np.random.default_rng([seed, ord(plane)]), at, COR_S) * COR_KICK_MRAD_PER_A
        re = _response(plane, np.random.default_rng([seed, ord(plane)]), at, ERR_S)
        if plane == "y":
            rc = np.zeros_like(rc)
        resp[plane], scr[plane] = rc[:-1], rc[-1]
        err[plane], scr_err[plane] = re[:-1], re[-1]
    return Optics(resp, err, scr, scr_err, -np.linalg.pinv(resp["x"]))


OPTICS = build_optics()


def doublet_steering(q1, q2, rf_phase_deg) -> tuple[np.ndarray, np.ndarray]:
    """Centroid shift (mm) at the screen from the misaligned Q1/Q2 doublet (thin lenses, as in ``beam``)."""
    q1, q2, ph = (np.asarray(v, dtype=np.float64) for v in (q1, q2, rf_phase_deg))
    energy = 1.0 - 0.5 * (1.0 - np.cos(np.radians(ph)))
    k1, k2 = 0.15 * q1 / energy, 0.15 * q2 / energy
    out = []
    for plane, (ka, kb) in (("x", (k1, -k2)), ("y", (-k1, k2))):
        d1, d2 = DOUBLET_OFFSETS_MM[plane]
        xp = ka * d1  # a thin lens with focal power k offset by d: x' -= k (x - d)
        x = L1_M * xp
        xp = xp - kb * (x - d2)
        out.append(x + L2_M * xp)
    return out[0], out[1]


def orbit(currents_a: np.ndarray, kicks_x: np.ndarray, kicks_y: np.ndarray) -> dict[str, np.ndarray]:
    """Noise-free orbits (..., N_BPM) and the line's offset at the screen (...,) for batches of settings."""
    o = OPTICS
    return {
        "orbit_x": currents_a @ o.response["x"].T + kicks_x @ o.error_response["x"].T,
        "orbit_y": kicks_y @ o.error_response["y"].T,
        "screen_x": currents_a @ o.screen_response["x"] + kicks_x @ o.screen_error_response["x"],
        "screen_y": kicks_y @ o.screen_error_response["y"],
    }


class Camera:
    """Renders screen images: separable Gaussians on precomputed pixel centres (cheap at 10 Hz)."""

    def __init__(self, seed: int = LINE_SEED):
        h, w = IMAGE_SHAPE
        self.x_mm = (np.arange(w) - (w - 1) / 2) * PIXEL_MM
        self.y_mm = (np.arange(h) - (h - 1) / 2) * PIXEL_MM
        rng = np.random.default_rng([seed, 99])
        gradient = 10.0 * (self.x_mm[None, :] - self.y_mm[:, None]) / (w * PIXEL_MM)
        self.background = (PEDESTAL + gradient + 2.0 * rng.standard_normal(IMAGE_SHAPE)).astype(np.float64)

    def spot(self, sigma_x, sigma_y, centroid_x, centroid_y, charge) -> np.ndarray:
        """Noise-free signal counts (..., h, w) of a Gaussian spot (arguments: scalars or (n,) arrays)."""
        sx, sy, cx, cy, q = (np.asarray(v, dtype=np.float64)[..., None] for v in
                             (sigma_x, sigma_y, centroid_x, centroid_y, charge))
        gx = np.exp(-0.5 * ((self.x_mm - cx) / sx) ** 2) / (math.sqrt(2 * math.pi) * sx)
        gy = np.exp(-0.5 * ((self.y_mm - cy) / sy) ** 2) / (math.sqrt(2 * math.pi) * sy)
        scale = GAIN_COUNTS_PER_NC * PIXEL_MM**2 * q[..., None]
        return scale * gy[..., :, None] * gx[..., None, :]

    def image(self, spot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A measured frame: background + signal with shot noise (Gaussian approximation) + read noise."""
        noise = np.sqrt(spot + READ_NOISE**2) * rng.standard_normal(spot.shape)
        return self.background + spot + noise


CAMERA = Camera()
PROFILE_MM = np.linspace(-PROFILE_HALF_WIDTH_MM, PROFILE_HALF_WIDTH_MM, PROFILE_POINTS)


def profile(sigma_x, centroid_x, charge) -> np.ndarray:
    """Noise-free horizontal density (nC/mm) at PROFILE_MM, shape (..., PROFILE_POINTS)."""
    sx, cx, q = (np.asarray(v, dtype=np.float64)[..., None] for v in (sigma_x, centroid_x, charge))
    return q * np.exp(-0.5 * ((PROFILE_MM - cx) / sx) ** 2) / (math.sqrt(2 * math.pi) * sx)


# ----------------------------------------------------------------------------- training data

ARRAY_SIGNALS: dict[str, tuple[tuple[int, ...], str, str]] = {
    # name: (shape, units, meaning); with the knobs (q1, q2, rf_phase, charge) and sigma_x, sigma_y, loss
    **{f"cor{j + 1}": ((), "A", f"corrector {j + 1} current") for j in range(N_COR)},
    **{f"dcor{j + 1}": ((), "A", f"change of corrector {j + 1} that flattens the orbit") for j in range(N_COR)},
    "orbit_x": ((N_BPM,), "mm", "horizontal orbit at the 32 BPMs"),
    "orbit_y": ((N_BPM,), "mm", "vertical orbit at the 32 BPMs"),
    "centroid_x": ((), "mm", "beam centroid on the screen, x"),
    "centroid_y": ((), "mm", "beam centroid on the screen, y"),
    "screen": (IMAGE_SHAPE, "counts", "screen image (rows y, columns x)"),
    "profile_x": ((PROFILE_POINTS,), "nC/mm", "horizontal beam profile at the screen"),
}


def signal_shapes() -> dict[str, tuple[int, ...]]:
    """Every signal :func:`generate_array_dataset` can produce, with its shape (() = scalar)."""
    scalars = [k.name for k in KNOBS] + ["sigma_x", "sigma_y", "loss"]
    return {n: () for n in scalars} | {n: v[0] for n, v in ARRAY_SIGNALS.items()}


def generate_array_dataset(n: int, seed: int, names: tuple[str, ...] | list[str],
                           shift: float = 0.0) -> dict[str, np.ndarray]:
    """The documented array data generator: i.i.d. machine states, each signal as the simulator measures it.

    Knobs from the reference distribution (shifted by ``shift`` std devs, as ``generate_dataset``),
    corrector currents ~ U(-2, 2) A, error kicks ~ N(shift * s, s) mrad. Returns only the ``names``
    asked for (an image costs 32 kB a row), each of shape (n, *shape). Same seed, same data.
    """
    shapes = signal_shapes()
    unknown = [nm for nm in names if nm not in shapes]
    if unknown:
        raise KeyError(f"the simulator has no signal(s) {unknown}; it has {sorted(shapes)}")
    rng = np.random.default_rng([seed, 14])
    knobs = sample_inputs(n, rng, shift)
    currents = rng.uniform(-CORRECTOR_SPREAD_A, CORRECTOR_SPREAD_A, size=(n, N_COR))
    kicks_x = rng.normal(shift * ERR_KICK_MRAD, ERR_KICK_MRAD, size=(n, N_ERR))
    kicks_y = rng.normal(shift * ERR_KICK_MRAD, ERR_KICK_MRAD, size=(n, N_ERR))
    true = beam(*knobs.T)
    orb = orbit(currents, kicks_x, kicks_y)
    dx, dy = doublet_steering(knobs[:, 0], knobs[:, 1], knobs[:, 2])
    cx, cy = orb["screen_x"] + dx, orb["screen_y"] + dy
    # Every noise draw happens whatever is asked for, so each signal is the same in any selection.
    noise = {
        "obs": rng.standard_normal((n, 3)),
        "orbit_x": rng.standard_normal((n, N_BPM)),
        "orbit_y": rng.standard_normal((n, N_BPM)),
        "cor": rng.standard_normal((n, N_COR)),
        "centroid": rng.standard_normal((n, 2)),
        "profile": rng.standard_normal((n, PROFILE_POINTS)),
    }
    image_rng = np.random.default_rng([seed, 15])
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in [k.name for k in KNOBS]:
            out[name] = knobs[:, [k.name for k in KNOBS].index(name)]
        elif name in ("sigma_x", "sigma_y", "loss"):
            j = ("sigma_x", "sigma_y", "loss").index(name)
            out[name] = true[:, j] * (1.0 + MEASUREMENT_NOISE * noise["obs"][:, j])
        elif name.startswith("dcor"):
            best = (orb["orbit_x"] @ OPTICS.correction.T)
            out[name] = best[:, int(name[4:]) - 1]
        elif name.startswith("cor"):
            j = int(name[3:]) - 1
            out[name] = currents[:, j] + COR_READBACK_NOISE_A * noise["cor"][:, j]
        elif name in ("orbit_x", "orbit_y"):
            out[name] = orb[name] + BPM_NOISE_MM * noise[name]
        elif name in ("centroid_x", "centroid_y"):
            j = name[-1] == "y"
            out[name] = (cy if j else cx) + BPM_NOISE_MM * noise["centroid"][:, int(j)]
        elif name == "screen":
            out[name] = np.stack([CAMERA.image(CAMERA.spot(true[i, 0], true[i, 1], cx[i], cy[i], knobs[i, 3]),
                                               image_rng) for i in range(n)])
        elif name == "profile_x":
            clean = profile(true[:, 0], cx, knobs[:, 3])
            out[name] = clean + MEASUREMENT_NOISE * clean.max(axis=1, keepdims=True) * noise["profile"]
    return out


# ----------------------------------------------------------------------------- the live line


@dataclass
class Line:
    """The live transport line: correctors following their setpoints, wandering error kicks (seeded)."""

    seed: int = 0
    rate_hz: float = 10.0
    setpoints_a: np.ndarray = field(default_factory=lambda: np.zeros(N_COR))
    drift: float = 0.0  # the error kicks' centre, in their reference standard deviations
    currents_a: np.ndarray = field(init=False)
    kicks: np.ndarray = field(init=False)  # (2, N_ERR) mrad: x, y
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 2000])
        self.currents_a = np.array(self.setpoints_a, dtype=np.float64)
        self.kicks = ERR_KICK_MRAD * self.rng.standard_normal((2, N_ERR))

    def step(self) -> dict[str, np.ndarray]:
        """Advance one period; return corrector readbacks, measured orbits, the ideal correction and the
        noise-free beam offset at the screen."""
        dt = 1.0 / self.rate_hz
        self.currents_a = self.currents_a + (self.setpoints_a - self.currents_a) * (1.0 - math.exp(-dt / COR_TAU_S))
        a = math.exp(-dt / ERR_TAU_S)
        centre = self.drift * ERR_KICK_MRAD
        self.kicks = centre + (self.kicks - centre) * a + ERR_KICK_MRAD * math.sqrt(1 - a * a) * \
            self.rng.standard_normal(self.kicks.shape)
        orb = orbit(self.currents_a, self.kicks[0], self.kicks[1])
        return {
            "currents": self.currents_a + COR_READBACK_NOISE_A * self.rng.standard_normal(N_COR),
            "orbit_x": orb["orbit_x"] + BPM_NOISE_MM * self.rng.standard_normal(N_BPM),
            "orbit_y": orb["orbit_y"] + BPM_NOISE_MM * self.rng.standard_normal(N_BPM),
            "dcor": OPTICS.correction @ orb["orbit_x"],
            "screen_x": np.float64(orb["screen_x"]),
            "screen_y": np.float64(orb["screen_y"]),
        }


@dataclass
class Screen:
    """The live camera and profile monitor: frames and truths from the machine's actual state."""

    seed: int = 0
    unique_id: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 3000])

    def truth(self, knobs: np.ndarray, screen_x: float, screen_y: float) -> dict[str, float]:
        """Noise-free beam sizes and centroid on the screen for the actual knob values (KNOBS order)."""
        sx, sy, _ = beam(*knobs)
        dx, dy = doublet_steering(knobs[0], knobs[1], knobs[2])
        return {"sigma_x": float(sx), "sigma_y": float(sy), "centroid_x": float(screen_x + dx),
                "centroid_y": float(screen_y + dy), "charge": float(knobs[3])}

    def frame(self, t: dict[str, float]) -> np.ndarray:
        """A (h, w) float32 frame; bumps the unique id as an areaDetector driver does."""
        self.unique_id += 1
        spot = CAMERA.spot(t["sigma_x"], t["sigma_y"], t["centroid_x"], t["centroid_y"], t["charge"])
        return CAMERA.image(spot, self.rng).astype(np.float32)

    def profile(self, t: dict[str, float]) -> np.ndarray:
        clean = profile(t["sigma_x"], t["centroid_x"], t["charge"])
        return clean + MEASUREMENT_NOISE * clean.max() * self.rng.standard_normal(PROFILE_POINTS)

    def centroid(self, t: dict[str, float]) -> tuple[float, float]:
        n = BPM_NOISE_MM * self.rng.standard_normal(2)
        return t["centroid_x"] + float(n[0]), t["centroid_y"] + float(n[1])
