"""Datasets from the EPICS Archiver Appliance, against recorded responses in its PB/HTTP format.

No appliance runs here, so a loopback HTTP server plays its retrieval endpoint
(``/retrieval/data/getData.raw``) with the recorded bodies in tests/data/archiver (see
make_fixtures.py there for what they contain). The real ``epicsarchiver-retrieval-client`` makes the
requests and parses the bytes.
"""

from __future__ import annotations

import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

pytest.importorskip("epicsarchiver", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("torch", reason="needs the train extra (scripts/setup train)")

from epicsarchiver.retrieval.pb import read_pb_file

from ioc.core.configfile import load_config
from tests.conftest import write_yaml
from training.dataset import DatasetError, build_dataset
from training.pipeline import Options, run
from training.spec import load_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "archiver"
START = dt.datetime(2025, 12, 31, 23, 59, 45, tzinfo=dt.UTC)
PVS = {"q1": "SIM:Q1:I", "q2": "SIM:Q2:I", "rf_phase": "SIM:RF:PHASE", "charge": "SIM:GUN:CHARGE",
       "sigma_x": "SIM:SIGMA:X", "sigma_y": "SIM:SIGMA:Y", "loss": "SIM:LOSS"}


class _Appliance(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).requests.append({"path": url.path, **query})
        body = None
        if url.path == "/retrieval/data/getData.raw" and "pv" in query:
            f = DATA / f"{query['pv'].replace(':', '_')}.pb"
            body = f.read_bytes() if f.exists() else None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def appliance():
    _Appliance.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Appliance)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


CONFIG = """\
ioc: {{protocols: [ca], metrics_port: 0}}
models:
  - name: beam
    prefix: "A:"
    store: store
    inputs:
      - {{name: q1, units: A}}
      - {{name: q2, units: A}}
      - {{name: rf_phase, units: deg}}
      - {{name: charge, units: nC}}
    outputs:
      - {{name: sigma_x, units: mm}}
      - {{name: sigma_y, units: mm}}
      - {{name: loss, units: "%"}}
    training:
      epochs: 3
      hidden: [8]
      data:
        source: archiver
        archiver:
          url: "{url}"
          start: "2025-12-31T23:59:44Z"
          end: "2026-01-01T00:00:16Z"
          max_age_s: 0.25
          pvs: {pvs}
"""


def _config(tmp_path, url):
    pvs = "{" + ", ".join(f'{k}: "{v}"' for k, v in PVS.items()) + "}"
    return load_config(write_yaml(tmp_path / "a.yaml", CONFIG.format(url=url, pvs=pvs)))


def test_rows_are_aligned_across_the_year_boundary_and_filtered(tmp_path, appliance):
    config = _config(tmp_path, appliance)
    model = config.model("beam")
    ds = build_dataset(model, load_spec(config, "beam"), None)

    # One request per PV, in the appliance's query format.
    got = {r["pv"]: r for r in _Appliance.requests}
    assert set(got) == set(PVS.values())
    assert got["SIM:Q1:I"]["from"].startswith("2025-12-31T23:59:44") and got["SIM:Q1:I"]["to"].startswith("2026")

    # 300 measurements (align_to: the first target); dropped: the INVALID Q1 event (severity filter)
    # and the charge disconnect, where charge's last value is older than max_age_s (0.25 s) for 18 rows.
    _, sx = read_pb_file(str(DATA / "SIM_SIGMA_X.pb"))
    assert len(sx) == 300
    assert ds.filtered == {"no recent archived value": 18, "severity worse than MINOR": 1}
    assert len(ds) == 300 - 18 - 1
    assert ds.time[0] == pytest.approx(START.timestamp()) and ds.time[-1] - ds.time[0] == pytest.approx(29.9)
    assert np.all(np.diff(ds.time) > 0)
    # Values are the archived ones at the same instants (a row of one moment).
    _, q1 = read_pb_file(str(DATA / "SIM_Q1_I.pb"))
    by_time = {round(e.timestamp_ns / 1e9, 3): e.val for e in q1}
    for i in (0, 150, len(ds) - 1):
        assert ds.x[i, 0] == by_time[round(ds.time[i], 3)]
    assert ds.source["kind"] == "archiver" and ds.source["pvs"] == PVS


def test_training_from_the_archiver_logs_its_source(tmp_path, appliance):
    config = _config(tmp_path, appliance)
    outcome = run(config, "beam", load_spec(config, "beam"),
                  Options(data="archiver", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert outcome.dataset.source["url"] == appliance and outcome.parity.ok
    import mlflow

    run_ = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(outcome.run_id)
    assert run_.data.params["dataset.source"] == "archiver"
    assert run_.data.params["dataset.rows"] == str(len(outcome.dataset))


def test_unreachable_archiver_is_a_clear_error(tmp_path, appliance):
    config = _config(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(DatasetError, match=r"archiver: retrieving SIM:\S+ failed"):
        build_dataset(config.model("beam"), load_spec(config, "beam"), None)
