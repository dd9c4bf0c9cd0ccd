"""The inference engine: one validated ONNX Runtime session per model version.

:func:`load_version` turns a store version into a :class:`LoadedModel` only after every check
passes (checksum, ONNX loads with the chosen provider, signature matches the config, test vectors
reproduce, outputs finite) and after warming the session up, so the first live cycle is not the slow
one. A :class:`LoadedModel` is immutable and can be swapped in between two cycles.

Provider choice (:func:`choose_providers`): CUDA only when the installed onnxruntime build has it
*and* a session really runs on it; otherwise CPU, with the reason logged. ``onnxruntime-gpu`` lists
CUDA even with no GPU and silently falls back, so the provider in use is read back from the session.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ioc.core.arrays import TensorLayout
from ioc.core.config import InferenceConfig, ModelConfig
from ioc.core.manifest import Manifest, ManifestError, Uncertainty, read_manifest
from ioc.core.store import ModelStore, StoreError, model_store, sha256_file

log = logging.getLogger("mlioc.engine")

try:  # onnxruntime comes from the `cpu` or `gpu` extra: exactly one of them.
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only on a broken install
    ort = None

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
WARMUP_RUNS = 20  # untimed: the first runs pay for lazy allocations inside ONNX Runtime
TIMED_RUNS = 200
WARMUP_BUDGET_S = 0.3


class EngineError(Exception):
    """A model version cannot be served; the message says which check failed."""


class SignatureMismatch(EngineError):
    """The model and the config disagree on one key of the model's config entry.

    ``key`` is the path inside the model's entry (e.g. ``("inputs", 0, "shape")``) and ``fix`` what to
    change, so ``mlioc check`` can print ``FILE:LINE: models[i].inputs[0].shape: ... fix: ...``.
    """

    def __init__(self, message: str, key: tuple[str | int, ...], fix: str):
        super().__init__(message)
        self.key = key
        self.fix = fix


def _require_ort():
    if ort is None:
        raise EngineError(
            "onnxruntime is not installed: install exactly one of `pip install mlioc[cpu]` "
            "or `pip install mlioc[gpu]` (never both)"
        )
    return ort


def choose_providers(preference: str) -> list[str]:
    """Execution providers to ask for, most preferred first."""
    rt = _require_ort()
    available = rt.get_available_providers()
    if preference == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if preference == "cuda":
        raise EngineError(
            f"provider 'cuda' requested but this onnxruntime build has no CUDA provider "
            f"(available: {available}); install onnxruntime-gpu in place of onnxruntime"
        )
    return [CPU]


def _session_options(threads: int):
    rt = _require_ort()
    opts = rt.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = rt.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Do not let idle ORT threads spin: the IOC shares a small machine with its servers.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A validated, warmed-up model version, ready to run one input vector at a time.

    Inputs and outputs cross this class as flat float64 vectors (every named signal flattened, in
    order: :class:`ioc.core.arrays.TensorLayout`); :meth:`run` reshapes to the ONNX tensors' shapes
    (``in_shape``/``out_shape``, batch first) and applies the per-element normalisation.
    """

    model: str
    version: str
    manifest: Manifest
    session: object = field(repr=False)
    provider: str
    input_name: str
    output_name: str
    in_mean: np.ndarray = field(repr=False)
    in_scale: np.ndarray = field(repr=False)
    out_mean: np.ndarray = field(repr=False)
    out_std: np.ndarray = field(repr=False)
    in_shape: tuple[int, ...] = ()  # the input tensor's shape after the batch axis
    out_shape: tuple[int, ...] = ()
    in_identity: bool = False  # mean 0 and std 1 everywhere: no normalisation pass
    out_identity: bool = False
    warm_median_ms: float = 0.0
    warm_p99_ms: float = 0.0
    sha256: str = ""

    @property
    def n_inputs(self) -> int:
        return len(self.in_mean)

    @property
    def n_outputs(self) -> int:
        return len(self.out_mean)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw-unit inputs (n_inputs,) -> raw-unit outputs (n_outputs,), float64.

        Normalisation from the manifest is applied on both sides of the graph. Thread-safe:
        ONNX Runtime sessions may be run concurrently, and this object is never mutated.
        """
        if self.in_identity:  # e.g. a CNN that normalises inside its graph: one pass, not three
            xn = x.astype(np.float32)
        else:
            t = x - self.in_mean  # in float64: x - mean may be a small difference of large numbers
            t *= self.in_scale
            xn = t.astype(np.float32)
        y = self.session.run([self.output_name], {self.input_name: xn.reshape(1, *self.in_shape)})[0].reshape(-1)
        if self.out_identity:
            return y.astype(np.float64)
        out = y * self.out_std
        out += self.out_mean
        return out

    def run_batch(self, xs: np.ndarray) -> np.ndarray:
        """Flat raw-unit inputs (k, n_inputs) -> flat raw-unit outputs (k, n_outputs)."""
        xs = np.asarray(xs, dtype=np.float64)
        xn = ((xs - self.in_mean) * self.in_scale).astype(np.float32).reshape(len(xs), *self.in_shape)
        y = self.session.run([self.output_name], {self.input_name: xn})[0]
        return y.astype(np.float64).reshape(len(xs), -1) * self.out_std + self.out_mean

    @property
    def uncertainty(self) -> Uncertainty | None:
        """What this version promises about its error (None: nothing)."""
        return self.manifest.uncertainty

    def spread(self, result: np.ndarray) -> np.ndarray | None:
        """The standard deviations that came with ``result`` (a value :meth:`run` returned); None here:
        only an :class:`EnsembleModel` has them."""
        return None


@dataclass(frozen=True, eq=False)
class EnsembleModel(LoadedModel):
    """An ensemble exported as one graph: its output tensor is ``[batch, 2 * n_out]``, the members'
    mean then their standard deviation (manifest ``uncertainty.method: ensemble``).

    :meth:`run` returns the means as before (every consumer of a prediction is unchanged): a view of
    the first half of one freshly allocated row, whose second half :meth:`spread` hands out. Both are
    de-normalised in one pass (a standard deviation scales with the output's std, with no shift).
    """

    out_scale2: np.ndarray = field(default_factory=lambda: np.ones(0), repr=False)  # (out_std, out_std)
    out_shift2: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # (out_mean, 0)

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.in_identity:
            xn = x.astype(np.float32)
        else:
            t = x - self.in_mean
            t *= self.in_scale
            xn = t.astype(np.float32)
        y = self.session.run([self.output_name], {self.input_name: xn.reshape(1, *self.in_shape)})[0].reshape(-1)
        if self.out_identity:
            full = y.astype(np.float64)
        else:
            full = y * self.out_scale2
            full += self.out_shift2
        return full[: len(self.out_mean)]

    def spread(self, result: np.ndarray) -> np.ndarray | None:
        full = result.base
        n = len(self.out_mean)
        if not isinstance(full, np.ndarray) or full.shape != (2 * n,):
            raise ValueError("not a prediction returned by this ensemble's run()")
        return full[n:]

    def run_batch(self, xs: np.ndarray) -> np.ndarray:
        return self.run_batch_spread(xs)[0]

    def run_batch_spread(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat raw-unit inputs (k, n_inputs) -> (means, standard deviations), each (k, n_outputs)."""
        xs = np.asarray(xs, dtype=np.float64)
        xn = ((xs - self.in_mean) * self.in_scale).astype(np.float32).reshape(len(xs), *self.in_shape)
        y = self.session.run([self.output_name], {self.input_name: xn})[0].astype(np.float64).reshape(len(xs), -1)
        full = y * self.out_scale2 + self.out_shift2
        n = len(self.out_mean)
        return full[:, :n], full[:, n:]


def _dim_ok(dim, expected: int) -> bool:
    """A fixed dimension must equal ``expected``; a symbolic one (str/None) accepts anything."""
    return dim == expected if isinstance(dim, int) else True


def _check_signature(session, manifest: Manifest, where: str) -> tuple[str, str]:
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        raise EngineError(
            f"{where}: expected one input and one output tensor, got inputs {[i.name for i in ins]} "
            f"and outputs {[o.name for o in outs]}"
        )
    tin, tout = ins[0], outs[0]
    if tin.name != manifest.onnx_input or tout.name != manifest.onnx_output:
        raise EngineError(
            f"{where}: ONNX tensors are {tin.name!r} -> {tout.name!r}, manifest says "
            f"{manifest.onnx_input!r} -> {manifest.onnx_output!r}"
        )
    for t, dims, what in ((tin, manifest.input_shape, "input"), (tout, manifest.output_shape, "output")):
        if t.type != "tensor(float)":
            raise EngineError(f"{where}: {what} tensor {t.name!r} is {t.type}, expected tensor(float)")
        shape = list(t.shape)
        if len(shape) != 1 + len(dims) or not all(_dim_ok(d, n) for d, n in zip(shape[1:], dims, strict=True)):
            key = "onnx.input_shape" if what == "input" else "onnx.output_shape"
            raise EngineError(f"{where}: {what} tensor {t.name!r} has shape {shape}, expected "
                              f"[batch, {', '.join(map(str, dims))}] (manifest {key})")
    return tin.name, tout.name


def _shape_mismatch(where: str, what: str, index: int, sig_shape: tuple, cfg_shape: tuple) -> SignatureMismatch:
    model, config = list(sig_shape) or "a scalar", list(cfg_shape) or "a scalar"
    fix = (f"set 'shape: {list(sig_shape)}'" if sig_shape else "remove 'shape'") + \
        f" on this {what[:-1]}, or push a model trained on {config}"
    return SignatureMismatch(f"{where}: {what[:-1]} shape is {model} in the model, {config} in the config",
                             (what, index, "shape"), fix)


def check_against_config(manifest: Manifest, config: ModelConfig, where: str) -> None:
    """The manifest's inputs/outputs must be the config's, in the same order, shapes and units."""
    want_in = tuple(i.name for i in config.inputs)
    want_out = tuple(o.name for o in config.outputs)
    if manifest.input_names != want_in:
        raise SignatureMismatch(f"{where}: model inputs {list(manifest.input_names)} != config inputs {list(want_in)}",
                                ("inputs",), "list the model's inputs in its order, or push the matching model")
    if manifest.output_names != want_out:
        raise SignatureMismatch(
            f"{where}: model outputs {list(manifest.output_names)} != config outputs {list(want_out)}",
            ("outputs",), "list the model's outputs in its order, or push the matching model")
    for what, sigs, cfgs in (("inputs", manifest.inputs, config.inputs), ("outputs", manifest.outputs, config.outputs)):
        for index, (sig, cfg) in enumerate(zip(sigs, cfgs, strict=True)):
            if sig.shape != cfg.shape:
                raise _shape_mismatch(where, what, index, sig.shape, cfg.shape)
            if sig.units and cfg.units and sig.units != cfg.units:
                raise SignatureMismatch(
                    f"{where}: {what[:-1]} {sig.name} is in {sig.units!r} in the model, {cfg.units!r} in config",
                    (what, index, "units"), f"set 'units: {sig.units}' or push a model trained in {cfg.units}")


def _normalisation(signals) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (mean, std) of the flat vector of ``signals``."""
    means, stds = zip(*(s.normalisation() for s in signals), strict=True)
    return np.concatenate(means), np.concatenate(stds)


def build_model(
    onnx_path: Path,
    manifest: Manifest,
    config: ModelConfig,
    inference: InferenceConfig,
    version: str,
    *,
    verify_sha: bool = True,
) -> LoadedModel:
    """Validate and warm up one ONNX file + manifest; raise :class:`EngineError` on any failure."""
    rt = _require_ort()
    where = f"{config.name} v{version}"
    if verify_sha:
        try:
            digest = sha256_file(onnx_path)
        except OSError as exc:
            raise EngineError(f"{where}: cannot read {onnx_path}: {exc.strerror or exc}") from exc
        if digest != manifest.sha256:
            raise EngineError(f"{where}: sha256 mismatch (file {digest[:12]}..., manifest {manifest.sha256[:12]}...)")
    else:
        digest = manifest.sha256
    check_against_config(manifest, config, where)
    providers = choose_providers(inference.provider)
    try:
        session = rt.InferenceSession(str(onnx_path), sess_options=_session_options(inference.threads),
                                      providers=providers)
    except Exception as exc:  # ORT raises its own exception types for corrupt/incompatible files
        raise EngineError(f"{where}: ONNX Runtime cannot load the model: {str(exc).splitlines()[0][:300]}") from exc
    in_name, out_name = _check_signature(session, manifest, where)
    provider = session.get_providers()[0]
    if providers[0] == CUDA and provider != CUDA:
        log.warning("%s: CUDA provider not usable, running on %s", where, provider)
    in_mean, in_std = _normalisation(manifest.inputs)
    out_mean, out_std = _normalisation(manifest.outputs)
    ensemble = manifest.uncertainty is not None and manifest.uncertainty.ensemble
    extra = dict(out_scale2=np.concatenate([out_std, out_std]),
                 out_shift2=np.concatenate([out_mean, np.zeros_like(out_mean)])) if ensemble else {}
    model = (EnsembleModel if ensemble else LoadedModel)(
        model=config.name,
        version=version,
        manifest=manifest,
        session=session,
        provider=provider,
        input_name=in_name,
        output_name=out_name,
        in_mean=in_mean,
        in_scale=1.0 / in_std,
        out_mean=out_mean,
        out_std=out_std,
        in_shape=manifest.input_shape,
        out_shape=manifest.output_shape,
        in_identity=bool(not in_mean.any() and (in_std == 1.0).all()),
        out_identity=bool(not out_mean.any() and (out_std == 1.0).all()),
        sha256=digest,
        **extra,
    )
    _check_test_vectors(model, where)
    median, p99 = _warm_up(model)
    object.__setattr__(model, "warm_median_ms", median)
    object.__setattr__(model, "warm_p99_ms", p99)
    return model


def _check_test_vectors(model: LoadedModel, where: str) -> None:
    tv = model.manifest.test_vectors
    try:
        if tv is None:
            y = model.run(model.in_mean)
            if not np.all(np.isfinite(y)):
                raise EngineError(f"{where}: non-finite output at the reference mean input: {y.tolist()}")
            return
        got_spread = None
        if isinstance(model, EnsembleModel):
            got, got_spread = model.run_batch_spread(tv.inputs)
        else:
            got = model.run_batch(tv.inputs)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"{where}: running the test vectors failed: {str(exc).splitlines()[0][:300]}") from exc
    _compare_vectors(model, where, got, tv.outputs, tv, "test vector")
    if got_spread is not None and tv.spread is not None:
        _compare_vectors(model, where, got_spread, tv.spread, tv, "spread of test vector")


def _compare_vectors(model: LoadedModel, where: str, got: np.ndarray, want: np.ndarray, tv, what: str) -> None:
    if got.shape != want.shape:
        raise EngineError(f"{where}: test vectors gave shape {got.shape}, expected {want.shape}")
    if not np.all(np.isfinite(got)):
        raise EngineError(f"{where}: non-finite outputs on the test vectors")
    bad = ~np.isclose(got, want, rtol=tv.rtol, atol=tv.atol)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise EngineError(
            f"{where}: {what} {i} output {TensorLayout.of(model.manifest.outputs).locate(j)} = {got[i, j]:.6g}, "
            f"expected {want[i, j]:.6g} (rtol {tv.rtol}, atol {tv.atol}); {int(bad.sum())} mismatches"
        )


def _warm_up(model: LoadedModel) -> tuple[float, float]:
    """Median and p99 run time (ms) after warm-up; decides inline vs worker-thread inference.

    Bounded in time (WARMUP_BUDGET_S) so a slow model does not delay a reload by minutes.
    """
    x = model.in_mean.copy()
    deadline = time.perf_counter() + WARMUP_BUDGET_S
    for _ in range(WARMUP_RUNS):
        model.run(x)
        if time.perf_counter() > deadline:
            break
    times = []
    deadline = time.perf_counter() + WARMUP_BUDGET_S
    while len(times) < TIMED_RUNS and (len(times) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        model.run(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3, times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3


def load_version(store: ModelStore, number: int, config: ModelConfig, inference: InferenceConfig) -> LoadedModel:
    """Load store version ``number`` with every validation; raise :class:`EngineError` if it fails."""
    where = f"{config.name} v{number}"
    if number not in store.versions():
        raise EngineError(f"{where}: no such version in {store.root}")
    try:
        manifest = read_manifest(store.manifest_path(number))
    except ManifestError as exc:
        raise EngineError(f"{where}: bad manifest: {exc}") from exc
    onnx_path = store.onnx_path(number)
    if not onnx_path.is_file():
        raise EngineError(f"{where}: {onnx_path} is missing")
    return build_model(onnx_path, manifest, config, inference, str(number))


def load_champion(config: ModelConfig, inference: InferenceConfig) -> LoadedModel:
    """Load the store's champion; raise :class:`EngineError` if there is none or it fails."""
    store = model_store(config)
    if not store.exists():
        raise EngineError(f"{config.name}: {store.root}: no such store")
    try:
        champion = store.champion()
    except StoreError as exc:
        raise EngineError(f"{config.name}: {exc}") from exc
    if champion is None:
        raise EngineError(f"{config.name}: {store.root}: no champion")
    return load_version(store, champion, config, inference)
