"""`mlioc models list|show|push|promote|rollback` on a store directory, as an engineer uses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ioc.core.store import ModelStore
from tests.conftest import write_yaml
from tests.support.models import version_files

ROOT = Path(__file__).resolve().parents[2]


def mlioc(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ioc", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=os.environ)


def test_push_list_show_promote_rollback(tmp_path):
    store = tmp_path / "store"
    v1, m1 = version_files(tmp_path, 1.0)
    v2, m2 = version_files(tmp_path, 2.0)
    r = mlioc("models", "push", str(store), str(v1), str(m1), "--as", "champion")
    assert r.returncode == 0, r.stderr
    r = mlioc("models", "push", str(store), str(v2), str(m2))  # default: as challenger
    assert r.returncode == 0 and "version 2 as challenger" in r.stdout
    listing = mlioc("models", "list", str(store)).stdout
    lines = listing.splitlines()
    assert lines[1].startswith("C ") and lines[1].split()[1] == "1"
    assert lines[2].startswith("c ") and lines[2].split()[1] == "2"
    assert "champion: 1" in listing and "challenger: 2" in listing
    shown = mlioc("models", "show", str(store), "2").stdout
    assert "version 2 (challenger)" in shown and '"scale": 2.0' in shown and "push" in shown
    assert mlioc("models", "promote", str(store)).stdout.strip().endswith("champion 1 -> 2")
    assert mlioc("models", "rollback", str(store)).stdout.strip().endswith("champion 2 -> 1")
    r = mlioc("models", "rollback", str(store))
    assert r.returncode == 1 and "no earlier champion" in r.stderr
    actions = [(e["action"], e.get("from_version"), e.get("to_version"), e["protocol"])
               for e in ModelStore(store).events()]
    assert actions == [("push", None, 1, "shell"), ("push", None, 2, "shell"), ("promote", 1, 2, "shell"),
                       ("rollback", 2, 1, "shell")]


def test_push_validates_like_the_ioc_and_refuses_bad_versions(tmp_path):
    store = tmp_path / "store"
    v1, m1 = version_files(tmp_path, 1.0)
    assert mlioc("models", "push", str(store), str(v1), str(m1), "--as", "champion").returncode == 0
    doc = json.loads(m1.read_text())
    doc["test_vectors"]["outputs"][0][0] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = mlioc("models", "push", str(store), str(v1), str(bad))
    assert r.returncode == 1 and "rejected" in r.stderr and "test vector 0 output y0" in r.stderr
    assert ModelStore(store).versions() == [1]  # nothing was published
    # Against a config whose signature differs, even a self-consistent version is refused.
    cfg = write_yaml(tmp_path / "c.yaml", """
        models:
          - {name: lin, prefix: "P:", store: store, inputs: [{name: a}, {name: c}], outputs: [{name: y0}, {name: y1}]}
        """)
    r = mlioc("models", "push", str(store), str(v1), str(m1), "--config", str(cfg))
    assert r.returncode == 1 and "model inputs ['a', 'b'] != config inputs ['a', 'c']" in r.stderr
    events = ModelStore(store).events()
    assert [e["action"] for e in events] == ["push", "rejected", "rejected"]


def test_not_a_store_is_a_clear_error(tmp_path):
    r = mlioc("models", "list", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "is not a model store" in r.stderr


def test_push_validates_an_array_model_against_its_own_signature(tmp_path):
    import numpy as np

    from tests.support.models import publish_array_linear

    scratch, n = publish_array_linear(tmp_path / "scratch", [("screen", (3, 4))], [("profile", (5,))],
                                      np.ones((5, 12)), np.zeros(5), input_shape=[1, 3, 4], pointer=None)
    r = mlioc("models", "push", str(tmp_path / "store"), str(scratch.onnx_path(n)), str(scratch.manifest_path(n)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "version 1 as challenger" in r.stdout


def test_list_shows_the_mlflow_run_id_that_reproduce_takes():
    """The shipped demo models were made by `mlioc train`: each run id is what `mlioc reproduce` needs."""
    from tests.support.demo import shipped_champion

    lines = [line for line in mlioc("models", "list", str(ROOT / "models" / "beam")).stdout.splitlines()[1:]
             if line[2:].split()[:1] and line[2:].split()[0].isdigit()]  # one line per version
    versions = sorted(int(p.name) for p in (ROOT / "models" / "beam" / "versions").iterdir())
    assert len(lines) == len(versions)
    for n, line in zip(versions, lines, strict=True):
        manifest = json.loads((ROOT / "models" / "beam" / "versions" / str(n) / "manifest.json").read_text())
        run_id = manifest["provenance"]["mlflow"]["run_id"]
        assert run_id in line.split() and len(run_id) == 32
        assert line.startswith("C ") == (n == shipped_champion())
