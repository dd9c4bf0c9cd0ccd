"""bench/arrays: waveforms, images and gathered vectors through the IOC, each beside its floor, in one run.

    python -m bench.arrays [--samples 300] [--seconds 20] [--device cpu|cuda] [--quick]

One table (issue 14.9), floors measured in the same run on the same machine:

* **waveform, 1k and 64k doubles**: CA put -> monitor of a pythonSoftIOC ``waveform`` record (the EPICS C
  core: the floor), then the same record as the source of an IOC input (``shape: [n]``) and a small model
  (y = x[0], one MatMul over the n elements): put into the C IOC -> the prediction's CA monitor. Ratio to
  the floor, and the target p50 <= 1.5 x (floor + ONNX Runtime ``run`` alone, measured here too).
* **image 512 x 512 float32**: a bare p4p NTNDArray camera (bench/_floors.py ``frames``) posting at 10 and
  30 Hz; the floor is its post -> a p4p client monitor; then the camera as the source of an IOC input
  (``shape: [512, 512]``) with a small CNN (one 3 x 3 convolution, two channels, mean over the image:
  tests/support/models.conv_mean_model): post -> the prediction's CA monitor (the output carries the
  frame's time stamp). p50 / p99, frames lost (each frame's value is its number: a gap is a lost frame;
  target 0), ORT ``run`` alone, the IOC's CPU per frame. If 30 Hz loses frames the next rates down are
  tried and the highest that holds is stated.
* **gathered vector of 64 scalar CA PVs** (64 pythonSoftIOC records, ``source: [ca://..., ...]``): a put
  into one of them -> the prediction (their sum); floor: CA put -> monitor of one such record.
* **the array demo** (config/demo-arrays.yaml with the simulator, recording on): the IOC's RSS, its CPU per
  screen frame, and the recorder: rows written vs cycles, rows dropped, the writer thread's CPU.

``--device cuda`` runs the CNN (ORT alone and the IOC's 512 x 512 path) with ONNX Runtime's CUDA provider;
where none is usable the rows say "not measured: no GPU". Benchmarks mean something only on a quiet
machine: a loaded one inflates every p99.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.latency import CaProbe, rss_mb, start, stats  # noqa: E402  (sets its own CA address list: replaced here)
from tests.support.ports import PortPool  # noqa: E402


@dataclass
class Row:
    what: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    floor: str = ""
    ratio: float | None = None
    target: str = ""
    note: str = ""


def print_rows(rows: list[Row]) -> None:
    """The benchmark's table (markdown), each row beside its floor (bench/latency, bench/arrays)."""

    def f(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else ""

    print()
    print("| measurement | p50 ms | p99 ms | vs | ratio (p50) | target | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        print(f"| {r.what} | {f(r.p50_ms)} | {f(r.p99_ms)} | {r.floor} | {ratio} | {r.target} | {r.note} |")


POOL = PortPool(n_ca=12)
os.environ.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=POOL.ca_addr_list, EPICS_PVA_AUTO_ADDR_LIST="NO",
                  EPICS_CA_MAX_ARRAY_BYTES="10000000")  # RSRV serves a 64k-double waveform only up to this
from tests.support.models import (  # noqa: E402
    array_manifest,
    conv_mean,
    conv_mean_model,
    publish_array_linear,
)
from tests.support.procs import ServerProcess, server_env  # noqa: E402

IMAGE = (512, 512)
KERNELS = np.stack([np.ones((3, 3)) / 9, np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=float)])


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------- probes


class WaveProbe:
    """pyepics (libca): put an array whose element 0 is a fresh marker, wait for the monitor that shows it
    (element 0 of a waveform, or a scalar prediction equal to it)."""

    def __init__(self, put_name: str, mon_name: str, n: int):
        import epics

        self.n = n
        self.event = threading.Event()
        self.want: float | None = None
        self.put_pv = epics.PV(put_name, auto_monitor=False)
        self.mon = epics.PV(mon_name, auto_monitor=True, callback=self._seen)
        for pv in (self.put_pv, self.mon):
            if not pv.wait_for_connection(10):
                raise RuntimeError(f"cannot connect {pv.pvname}")
        self.arrays = [np.full(n, float(k)) for k in range(2)]

    def _seen(self, value=None, **_) -> None:
        v = value[0] if isinstance(value, np.ndarray) and value.size else value
        if self.want is not None and v is not None and abs(float(v) - self.want) < 1e-6:
            self.event.set()

    def run(self, count: int) -> list[float]:
        times = []
        for i in range(count):
            marker = float(i % 5000) + 10.0 + (i % 2) * 0.5
            arr = self.arrays[i % 2]
            arr[0] = marker
            self.want = marker
            self.event.clear()
            t0 = time.perf_counter()
            self.put_pv.put(arr, wait=False)
            if not self.event.wait(10):
                raise RuntimeError(f"no monitor for {marker} on {self.mon.pvname}")
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> None:
        self.mon.clear_callbacks()
        for pv in (self.put_pv, self.mon):
            pv.disconnect()


class GatherProbe:
    """Put one element of a gathered vector (in turn), wait for the prediction: the sum of all 64."""

    def __init__(self, names: list[str], mon_name: str):
        import epics

        self.pvs = [epics.PV(n, auto_monitor=False) for n in names]
        self.values = np.zeros(len(names))
        self.event = threading.Event()
        self.want: float | None = None
        self.mon = epics.PV(mon_name, auto_monitor=True, callback=self._seen)
        for pv in (*self.pvs, self.mon):
            if not pv.wait_for_connection(10):
                raise RuntimeError(f"cannot connect {pv.pvname}")

    def _seen(self, value=None, **_) -> None:
        if self.want is not None and value is not None and abs(float(value) - self.want) < 1e-3:
            self.event.set()

    def run(self, count: int) -> list[float]:
        times = []
        for i in range(count):
            j = i % len(self.pvs)
            self.values[j] = float(i % 97) + 1.0 + (self.values[j] == float(i % 97) + 1.0)
            self.want = float(self.values.sum())
            self.event.clear()
            t0 = time.perf_counter()
            self.pvs[j].put(self.values[j], wait=False)
            if not self.event.wait(10):
                raise RuntimeError(f"no prediction {self.want}")
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> None:
        self.mon.clear_callbacks()
        for pv in (*self.pvs, self.mon):
            pv.disconnect()


class FrameWatch:
    """Collects (receive time - time stamp, frame number) of a monitor: frames straight from the camera over
    PVA (its uniqueId), or predictions over CA (the frame's value, which the CNN's first channel returns)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[float, int]] = []
        self.recording = False

    def add(self, latency: float, frame: int) -> None:
        if self.recording:
            with self.lock:
                self.rows.append((latency, frame))

    def window(self, seconds: float) -> tuple[list[float], int, int]:
        """Record for ``seconds``: (latencies, frames received, frames lost between the first and the last)."""
        with self.lock:
            self.rows = []
        self.recording = True
        time.sleep(seconds)
        self.recording = False
        with self.lock:
            rows = list(self.rows)
        if not rows:
            return [], 0, 0
        frames = sorted({f for _, f in rows})
        lost = (frames[-1] - frames[0] + 1) - len(frames)
        return [lat for lat, _ in rows], len(frames), lost


def watch_camera(broadcast_port: int, name: str, watch: FrameWatch):
    from p4p.client.thread import Context

    ctx = Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{broadcast_port}", "EPICS_PVA_AUTO_ADDR_LIST": "NO"},
                  useenv=False, nt=False)

    def cb(v) -> None:
        if isinstance(v, Exception):
            return
        now = time.time()
        watch.add(now - (v["timeStamp.secondsPastEpoch"] + v["timeStamp.nanoseconds"] * 1e-9), int(v["uniqueId"]))

    return ctx, ctx.monitor(name, cb, request="field()record[queueSize=8]")


def watch_prediction(name: str, watch: FrameWatch):
    import epics

    def cb(value=None, timestamp=None, severity=3, **_) -> None:
        if value is not None and timestamp and severity < 3 and np.isfinite(value):
            watch.add(time.time() - timestamp, round(float(value)) - 1)

    pv = epics.PV(name, form="time", auto_monitor=True, callback=cb)
    if not pv.wait_for_connection(10):
        raise RuntimeError(f"cannot connect {name}")
    return pv


# --------------------------------------------------------------------------------------------- stores and configs


def waveform_store(tmp: Path, n: int) -> Path:
    w = np.zeros((1, n))
    w[0, 0] = 1.0  # y = x[0]: the marker comes out as the prediction
    root = tmp / f"wave{n}"
    publish_array_linear(root, [("w", (n,))], [("y", ())], w, [0.0])
    return root


def gather_store(tmp: Path, n: int) -> Path:
    root = tmp / f"gather{n}"
    publish_array_linear(root, [("v", (n,))], [("y", ())], np.ones((1, n)), [0.0])
    return root


def cnn_store(tmp: Path) -> Path:
    from ioc.core.store import ModelStore

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, size=(1, *IMAGE)).astype(np.float32)
    y = conv_mean(x, KERNELS)
    manifest = array_manifest([("cam", IMAGE)], [("a", ()), ("b", ())], x.reshape(1, -1), y,
                              input_shape=(1, *IMAGE), output_shape=(2,), onnx_output="m")
    manifest["test_vectors"]["rtol"] = manifest["test_vectors"]["atol"] = 1e-3
    root = tmp / "cnn"
    store = ModelStore(root)
    store.write_pointer("champion", store.add_version(conv_mean_model(*IMAGE, KERNELS), manifest))
    return root


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def ort_alone(model_dir: Path, shape: tuple[int, ...], provider: str, count: int) -> tuple[list[float], str]:
    """ONNX Runtime ``run`` alone (batch 1) on the model of a store's champion: the floor of inference."""
    import onnxruntime as ort

    from ioc.core.engine import CPU, CUDA

    providers = [CUDA, CPU] if provider == "cuda" else [CPU]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    number = (model_dir / "champion").read_text().strip()
    session = ort.InferenceSession(str(model_dir / "versions" / number / "model.onnx"), sess_options=opts,
                                   providers=providers)
    x = np.random.default_rng(1).uniform(0, 1, size=(1, *shape)).astype(np.float32)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(min(20, count)):
        session.run(None, feed)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return times, session.get_providers()[0]


def gpu_usable() -> str | None:
    """None when ONNX Runtime can really run on a GPU here, else why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "no onnxruntime"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider"
    return None  # listed; whether it is really used is read back from the session (FIELD-NOTES)


# --------------------------------------------------------------------------------------------- parts


def waveform_rows(tmp: Path, n: int, samples: int, procs: list) -> list[Row]:
    label = f"{n // 1024}k" if n >= 1024 else str(n)
    ports = POOL.take()
    soft = start(["softioc-wf", f"FLOORWF{label}:W", str(n)], ports, f"softioc-wf{label}", module="bench._floors",
                 ready="ready")
    procs.append(soft)
    probe = WaveProbe(f"FLOORWF{label}:W", f"FLOORWF{label}:W", n)
    probe.run(20)
    f50, f99 = stats(probe.run(samples))
    probe.close()
    store = waveform_store(tmp, n)
    ort_t, _ = ort_alone(store, (n,), "cpu", max(200, samples))
    o50, _ = stats(ort_t)
    cfg = write(tmp, f"wf{label}.yaml", f"""
ioc: {{protocols: [ca, pva], metrics_port: 0, stats_hz: 2}}
models:
  - name: wf{label}
    prefix: "WF{label}:"
    store: {store}
    trigger: {{on_change: true}}
    inputs: [{{name: w, shape: [{n}], source: "ca://FLOORWF{label}:W"}}]
    outputs: [{{name: y}}]
""")
    ioc = start(["serve", str(cfg)], POOL.take(), f"ioc-wf{label}", ca_sources=f"127.0.0.1:{ports.ca}")
    procs.append(ioc)
    probe = WaveProbe(f"FLOORWF{label}:W", f"WF{label}:OUT:y", n)
    probe.run(20)
    i50, i99 = stats(probe.run(samples))
    probe.close()
    ioc.stop()
    soft.stop()
    return [
        Row(f"waveform {label} doubles: CA put->monitor, pythonSoftIOC waveform (C core)", f50, f99, note="floor"),
        Row(f"waveform {label}: ORT run alone (y = x[0], MatMul over {n})", o50, None, note="floor of inference"),
        Row(f"waveform {label}: C-IOC put -> IOC prediction (CA source)", i50, i99, "floor + ORT", i50 / (f50 + o50),
            "p50 <= 1.5x"),
    ]


def image_run(tmp: Path, rate: float, seconds: float, store: Path, provider: str, procs: list) -> dict:
    """One rate: the camera's own floor, then the IOC's CNN on it, each over ``seconds``."""
    ports = POOL.take()
    cam = start(["frames", "BENCH:CAM", str(IMAGE[0]), str(IMAGE[1]), str(rate)], ports, f"camera{rate:g}",
                module="bench._floors", ready="ready")
    procs.append(cam)
    watch = FrameWatch()
    ctx, sub = watch_camera(ports.pva_broadcast, "BENCH:CAM", watch)
    time.sleep(2.0)
    floor, floor_n, floor_lost = watch.window(seconds)
    sub.close()
    ctx.close()
    cfg = write(tmp, f"cnn{rate:g}.yaml", f"""
ioc: {{protocols: [ca, pva], metrics_port: 0, stats_hz: 2, inference: {{provider: {provider}}}}}
models:
  - name: cnn
    prefix: "CNN{provider.upper()}{rate:g}:"
    store: {store}
    trigger: {{on_change: true}}
    inputs: [{{name: cam, shape: [{IMAGE[0]}, {IMAGE[1]}], dtype: float32, source: "pva://BENCH:CAM"}}]
    outputs: [{{name: a, prec: 1}}, {{name: b}}]
""")
    ioc_ports = POOL.take()
    ioc = ServerProcess(["serve", str(cfg)], server_env(ioc_ports, extra={
        "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{ports.pva_broadcast}"}), f"ioc-cnn{rate:g}")
    ioc.start()
    procs.append(ioc)
    ioc.wait_for_line("mlioc ready", timeout=60)
    watch = FrameWatch()
    pv = watch_prediction(f"CNN{provider.upper()}{rate:g}:OUT:a", watch)
    time.sleep(3.0)
    c0 = cpu_s(ioc.proc.pid)
    lat, n, lost = watch.window(seconds)
    cpu = cpu_s(ioc.proc.pid) - c0
    rss = rss_mb(ioc.proc.pid)
    used = next((line for line in ioc.lines if "serving v1 on" in line), "")
    pv.clear_callbacks()
    pv.disconnect()
    ioc.stop()
    cam.stop()
    return dict(floor=floor, floor_n=floor_n, floor_lost=floor_lost, lat=lat, n=n, lost=lost,
                cpu_per_frame=cpu / max(n, 1), rss=rss, provider=used)


def image_rows(tmp: Path, seconds: float, samples: int, device: str, procs: list) -> list[Row]:
    store = cnn_store(tmp)
    rows: list[Row] = []
    ort_t, used = ort_alone(store, (1, *IMAGE), "cpu", max(100, samples // 2))
    o50, o99 = stats(ort_t)
    rows.append(Row("image 512x512: ORT run alone, small CNN (conv 3x3 x2, mean), CPU", o50, o99,
                    note="floor of inference"))
    providers = ["cpu"]
    if device == "cuda":
        why = gpu_usable()
        if why is None:
            g_t, g_used = ort_alone(store, (1, *IMAGE), "cuda", max(100, samples // 2))
            if g_used == "CUDAExecutionProvider":
                g50, g99 = stats(g_t)
                rows.append(Row("image 512x512: ORT run alone, CUDA", g50, g99, note="floor of inference (GPU)"))
                providers.append("cuda")
            else:
                why = f"CUDA provider listed, session ran on {g_used}"
        if why is not None:
            rows.append(Row("image 512x512 on CUDA (--device cuda)", note=f"not measured: no GPU ({why})"))
    held = None
    for provider in providers:
        floor_ort = o50 if provider == "cpu" else rows[-1].p50_ms
        tag = "" if provider == "cpu" else ", CUDA"
        for rate in (10.0, 30.0, 20.0, 15.0):
            if rate < 30.0 and (held is not None and held >= 30.0):
                break  # 30 Hz held: no need to look lower
            r = image_run(tmp, rate, seconds, store, provider, procs)
            if not r["lat"] or not r["floor"]:
                rows.append(Row(f"image 512x512 at {rate:g} Hz{tag}", note="no frames received"))
                continue
            f50, f99 = stats(r["floor"])
            rows.append(Row(f"image 512x512 at {rate:g} Hz: p4p NTNDArray post->monitor", f50, f99,
                            note=f"floor; {r['floor_n']} frames, {r['floor_lost']} lost"))
            i50, i99 = stats(r["lat"])
            rows.append(Row(f"image 512x512 at {rate:g} Hz{tag}: camera post -> IOC prediction (CNN)", i50, i99,
                            "floor + ORT", i50 / (f50 + floor_ort), "p50 <= 1.5x; 0 lost",
                            f"{r['n']} frames, {r['lost']} lost; IOC CPU {r['cpu_per_frame'] * 1e3:.2f} ms/frame, "
                            f"RSS {r['rss']:.0f} MB"))
            if r["lost"] == 0 and r["floor_lost"] == 0 and rate != 10.0:
                held = max(held or 0.0, rate)
            if rate == 30.0 and r["lost"] == 0:
                break
        rows.append(Row(f"image 512x512{tag}: highest rate with 0 frames lost (of 10, 30, then 20, 15 Hz)",
                        note=f"{held:g} Hz" if held else "none above 10 Hz", target="30 Hz"))
        held = None
    return rows


def gather_rows(tmp: Path, samples: int, procs: list) -> list[Row]:
    n = 64
    ports = POOL.take()
    soft = start(["softioc-many", "GATHER:E", str(n)], ports, "softioc-many", module="bench._floors", ready="ready")
    procs.append(soft)
    names = [f"GATHER:E{i:02d}" for i in range(n)]
    probe = CaProbe(names[0], names[0])
    probe.run(20, lambda v: v)
    f50, f99 = stats(probe.run(samples, lambda v: v))
    store = gather_store(tmp, n)
    sources = ", ".join(f'"ca://{name}"' for name in names)
    cfg = write(tmp, "gather.yaml", f"""
ioc: {{protocols: [ca, pva], metrics_port: 0, stats_hz: 2}}
models:
  - name: gather
    prefix: "GATHER:M:"
    store: {store}
    trigger: {{on_change: true}}
    inputs: [{{name: v, shape: [{n}], source: [{sources}]}}]
    outputs: [{{name: y}}]
""")
    # (the probe above moved element 0: the gathered probe starts from what the records hold)
    ioc = start(["serve", str(cfg)], POOL.take(), "ioc-gather", ca_sources=f"127.0.0.1:{ports.ca}")
    procs.append(ioc)
    gprobe = GatherProbe(names, "GATHER:M:OUT:y")
    import epics

    for name in names:
        epics.caput(name, 0.0, wait=True)
    gprobe.run(20)
    g50, g99 = stats(gprobe.run(samples))
    gprobe.close()
    ioc.stop()
    soft.stop()
    return [
        Row("gathered vector: CA put->monitor, one pythonSoftIOC ao record (C core)", f50, f99, note="floor"),
        Row(f"gathered vector of {n} CA PVs: put one element -> IOC prediction", g50, g99, "floor", g50 / f50,
            note="each element its own CA monitor in the IOC"),
    ]


def demo_rows(tmp: Path, seconds: float, procs: list) -> list[Row]:
    """The shipped array demo (sim + IOC, recording on): RSS, CPU per frame, the recorder's rows and CPU."""
    import epics

    from tests.support.demo import demo_arrays_config

    (tmp / "demo").mkdir()
    config, p, _ = demo_arrays_config(tmp / "demo", "BA:", record=True)
    sim_ports = POOL.take()
    sim = start(["sim", str(config)], sim_ports, "sim-arrays", ready="simulator ready")
    procs.append(sim)
    ioc_ports = POOL.take()
    ioc = ServerProcess(["serve", str(config)], server_env(ioc_ports, f"127.0.0.1:{sim_ports.ca}", extra={
        "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{sim_ports.pva_broadcast}"}), "ioc-arrays")
    ioc.start()
    procs.append(ioc)
    ioc.wait_for_line("mlioc ready", timeout=60)
    count = epics.PV(f"{p}SCREEN:COUNT", auto_monitor=False)
    count.wait_for_connection(10)
    time.sleep(10.0)  # every model serving, drift windows filling
    n0, c0 = count.get(use_monitor=False), cpu_s(ioc.proc.pid)
    time.sleep(seconds)
    n1, c1 = count.get(use_monitor=False), cpu_s(ioc.proc.pid)
    rss = rss_mb(ioc.proc.pid)
    frames = n1 - n0
    count.disconnect()
    ioc.stop()
    sim.stop()
    closed = {m.group(1): m for m in (re.search(r"(\w+): recorder closed: (\d+) rows received, (\d+) written, "
                                                r"(\d+) dropped, ([\d.]+) s CPU", line) for line in ioc.lines) if m}
    rows = [Row("array demo running (3 models, sim at 10 Hz, images 64x64 at 10 Hz, recording on): IOC RSS",
                note=f"{rss:.0f} MB", target="<= 300 MB"),
            Row("array demo: IOC CPU per screen frame (all 3 models, recording, drift, truth)",
                note=f"{(c1 - c0) / max(frames, 1) * 1e3:.2f} ms over {frames} frames in {seconds:g} s")]
    for name in ("screen", "orbit", "profile"):
        m = closed.get(name)
        if m is None:
            rows.append(Row(f"array demo: recorder {name}", note="no 'recorder closed' line in the IOC's log"))
            continue
        received, written, dropped, cpu = int(m.group(2)), int(m.group(3)), int(m.group(4)), float(m.group(5))
        rows.append(Row(f"array demo: recorder {name}: rows written / cycles recorded, dropped",
                        note=f"{written} / {received}, {dropped} dropped; writer thread {cpu:.2f} s CPU "
                             f"({cpu / max(written, 1) * 1e3:.3f} ms/row)", target="every row, 0 dropped"))
    return rows


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=300, help="put->monitor samples per latency row")
    ap.add_argument("--seconds", type=float, default=20.0, help="window of each image rate and of the demo")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the CNN runs")
    ap.add_argument("--quick", action="store_true", help="CI size (figures not meaningful; every path exercised)")
    ap.add_argument("--only", choices=("waveform", "image", "gather", "demo"), action="append",
                    help="run only these parts (repeatable)")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.seconds = 30, 4.0
    parts = args.only or ["waveform", "image", "gather", "demo"]
    tmp = Path(tempfile.mkdtemp(prefix="mlioc-bench-arrays-"))
    rows: list[Row] = []
    procs: list[ServerProcess] = []
    try:
        if "waveform" in parts:
            for n in (1024, 65536):
                rows += waveform_rows(tmp, n, args.samples, procs)
        if "image" in parts:
            rows += image_rows(tmp, args.seconds, args.samples, args.device, procs)
        if "gather" in parts:
            rows += gather_rows(tmp, args.samples, procs)
        if "demo" in parts:
            rows += demo_rows(tmp, args.seconds, procs)
    finally:
        for proc in procs:
            proc.stop()

    print_rows(rows)
    print(f"\n{args.samples} samples per put->monitor row after 20 warm-up, {args.seconds:g} s per image rate; "
          f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, device {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
