"""``mlioc generate``: one command makes every artefact of the demo, the shipped ones are exactly that,
usage errors exit 2, and ``mlioc serve`` never loads a generator."""

from __future__ import annotations

import subprocess
import sys

from ioc.generate import KINDS
from tests.support.generate import ROOT

DEMO = ROOT / "config" / "demo.yaml"


def _mlioc(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "ioc", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_shipped_artefacts_are_what_generate_all_makes_of_the_demo(tmp_path):
    run = _mlioc("generate", "all", str(DEMO), "-o", str(tmp_path))
    assert run.returncode == 0, run.stderr
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert {str(p).split("/")[0] for p in made} >= {"opi", "db", "deploy"}
    assert sorted(run.stdout.split()) == sorted(str(tmp_path / p) for p in made)  # it lists what it wrote
    stale = [str(rel) for rel in made if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert stale == [], f"shipped files differ from `mlioc generate all config/demo.yaml -o .`: {stale}"
    for kind in KINDS.values():  # nothing shipped that the generators no longer make
        shipped = {p.relative_to(ROOT) for p in (ROOT / kind.subdir).rglob("*") if p.is_file()}
        assert shipped <= set(made), (kind.subdir, shipped - set(made))


def test_each_kind_alone_writes_into_the_given_directory(tmp_path):
    for name in KINDS:
        run = _mlioc("generate", name, str(DEMO), "-o", str(tmp_path / name))
        assert run.returncode == 0, (name, run.stderr)
        assert run.stdout.split() and all(line.startswith(str(tmp_path / name)) for line in run.stdout.split())


def test_usage_errors(tmp_path):
    assert _mlioc("generate", "nosuch", str(DEMO), "-o", str(tmp_path)).returncode == 2
    assert _mlioc("generate", "opi", str(DEMO)).returncode == 2  # no -o
    assert _mlioc("generate", "db", str(DEMO), "-o", str(tmp_path), "--submit", "http://x").returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: []\n")
    run = _mlioc("generate", "opi", str(bad), "-o", str(tmp_path))
    assert run.returncode == 1 and "invalid configuration" in run.stderr
    run = _mlioc("generate", "db", str(DEMO), "-o", str(bad / "sub"))  # under a file: cannot be created
    assert run.returncode == 1 and "cannot write" in run.stderr and "Traceback" not in run.stderr


def test_serve_never_imports_a_generator():
    code = ("import sys; from ioc.cli import build_parser; build_parser(); import ioc.app; "
            "print(sorted(m for m in sys.modules if m.startswith('ioc.generate.') or m == 'PIL'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
