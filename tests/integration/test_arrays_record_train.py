"""Issue 14.6 end to end: the IOC records the array demo (`mlioc sim` + `mlioc serve` on config/demo-arrays.yaml,
recording on), then `mlioc train --data recorded` trains the screen model (a 2-D CNN) on the recorded 64 x 64
frames and their measured beam sizes, exports ONNX with parity, and pushes a version the IOC's engine accepts.

Real parts only: simulator and IOC subprocesses, the recorder's files (Arrow stream, then Parquet), `mlioc train`
as a subprocess with a sqlite MLflow store, ONNX Runtime."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

pq = pytest.importorskip("pyarrow.parquet", reason="needs the train extra (scripts/setup train)")
pa = pytest.importorskip("pyarrow", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("torch", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("mlflow", reason="needs the train extra (scripts/setup train)")

from tests.support.demo import demo_arrays_config  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _quick_training(config, model: str) -> None:
    """The shipped training section, cut to seconds: two epochs warm-started from the champion, a gate that
    takes what it gets (the test proves the path, not the model's quality)."""
    doc = yaml.safe_load(config.read_text())
    m = next(m for m in doc["models"] if m["name"] == model)
    m["training"].update(epochs=2, lr=1.0e-4, data={"source": "recorded"}, log_dataset=False,
                         split={"val": 0.15, "test": 0.25},
                         gate={"parity_atol": 1.0e-4, "test_vectors": 2, "min_improvement": -100.0,
                               "max_output_regression": 1000.0, "promote_to": "challenger"})
    config.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_the_ioc_records_the_array_demo_and_training_learns_from_it(tmp_path, launch, ca, prefix):
    config, p, _ = demo_arrays_config(tmp_path, prefix, record=True, training=True)
    _quick_training(config, "screen")
    sim = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim], env={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{sim.ports.pva_broadcast}"})
    count = ca.monitor(f"{p}SCREEN:COUNT")
    count.wait_for(lambda u: u.value >= 200, timeout=90)  # 20 s of frames at 10 Hz
    assert ioc.stop() == 0  # SIGTERM: every buffered row written, the files converted to Parquet
    closed = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4))) for m in
              (re.search(r"(\w+): recorder closed: (\d+) rows received, (\d+) written, (\d+) dropped", line)
               for line in ioc.output().splitlines()) if m}
    assert set(closed) == {"orbit", "screen", "profile"}, closed
    for received, written, dropped in closed.values():
        assert written == received >= 200 and dropped == 0, closed

    # What the recorder wrote: fixed-size list columns of each signal's dtype, the array target included.
    screen = pq.read_table(sorted((tmp_path / "data" / "screen").glob("*.parquet")))
    assert screen.schema.field("in.screen").type == pa.list_(pa.float32(), 64 * 64)
    assert screen.num_rows >= 200 and screen.schema.field("target.sigma_x").type == pa.float64()
    profile = pq.read_table(sorted((tmp_path / "data" / "profile").glob("*.parquet")))
    assert profile.schema.field("target.profile_x").type == pa.list_(pa.float64(), 100)

    # The nightly job: train on the recording, parity, the IOC's own validation, push.
    done = subprocess.run([sys.executable, "-m", "ioc", "train", str(config), "--model", "screen", "--data", "recorded",
                           "--push", "--no-progress", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = tmp_path / "screen"
    pointer = store / "challenger"
    assert pointer.is_file() and pointer.read_text().strip() == "2", done.stdout[-3000:]
    manifest = json.loads((store / "versions" / "2" / "manifest.json").read_text())
    provenance = manifest["provenance"]
    assert provenance["metrics"]["onnx_parity_max_abs"] <= 1.0e-4
    assert provenance["dataset"]["source"]["kind"] == "recorded" and provenance["dataset"]["rows"] >= 150
    assert manifest["inputs"][0]["shape"] == [64, 64] and manifest["onnx"]["input_shape"] == [1, 64, 64]
    assert manifest["reference"]["inputs"]["screen"]["summary"] == "pca"  # drift of the next version too
    events = [json.loads(line) for line in (store / "events.jsonl").read_text().splitlines()]
    assert any(e["action"] == "push" and e["to_version"] == 2 for e in events), events
    checked = subprocess.run([sys.executable, "-m", "ioc", "check", str(config)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
