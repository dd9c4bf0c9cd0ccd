"""scripts/setup installs the union of every extra ever asked for, once: `scripts/demo` after
`scripts/test` installs nothing, and switching between them never reinstalls (issue 19.8).

Run on a copy of the script and pyproject.toml whose `.venv/bin/python` is a stub that records what
pip was asked to do: the real environment is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUB = """#!/bin/sh
case "$*" in *" show "*) exit 1 ;; esac   # no ONNX Runtime build of the other kind installed
echo "$*" >> "$(dirname "$0")/../pip.log"
"""


def _setup(repo: Path, *extras: str) -> list[str]:
    log = repo / ".venv" / "pip.log"
    before = log.read_text().splitlines() if log.exists() else []
    env = {**os.environ, "MLIOC_ORT": "cpu"}
    r = subprocess.run([str(repo / "scripts" / "setup"), *extras], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    after = log.read_text().splitlines() if log.exists() else []
    return after[len(before):]


def test_extras_accumulate_and_nothing_is_reinstalled_when_switching(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB)
    python.chmod(0o755)
    assert _setup(tmp_path, "test", "train", "record") == ["-m pip install -q -e .[cpu,record,test,train]"]
    assert _setup(tmp_path, "record") == []  # scripts/demo after scripts/test
    assert _setup(tmp_path, "test", "train", "record") == []  # and back
    assert _setup(tmp_path) == []
    assert _setup(tmp_path, "docs") == ["-m pip install -q -e .[cpu,docs,record,test,train]"]  # one more extra
    with open(tmp_path / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert _setup(tmp_path, "record") == ["-m pip install -q -e .[cpu,docs,record,test,train]"]  # keeps them all
    assert _setup(tmp_path, "record") == []


def test_demo_and_test_scripts_ask_for_extras_that_make_the_second_a_no_op():
    demo = (ROOT / "scripts" / "demo").read_text()
    test = (ROOT / "scripts" / "test").read_text()
    asked = {name: set(line.split("#")[0].split()[1:]) for name, text in (("demo", demo), ("test", test))
             for line in text.splitlines() if line.startswith("scripts/setup")}
    assert asked["demo"] <= asked["test"]
