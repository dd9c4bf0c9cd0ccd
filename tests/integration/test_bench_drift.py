"""bench/drift.py in its CI size: the replay, the detection trials and the cost rows run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_drift_quick_prints_the_table():
    done = subprocess.run([sys.executable, "-m", "bench.drift", "--quick"], capture_output=True, text=True,
                          cwd=ROOT, timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| ")}
    assert rows["steps detected within 10 min"][0] == "8/8"
    assert rows["drifted input named in DRIFT:WORST / MESSAGE"][0] == "8/8 / 8/8"
    delay = rows["detection delay, 1 std step on one input, median of 8"]
    assert delay[0].endswith(" s") and delay[1].startswith("oracle CUSUM")
    assert any(k.startswith("monitoring per cycle: drift (4 inputs") for k in rows)
    # The array input's table: the orbit waveform, scored by its principal components.
    assert rows["false MINOR / MAJOR per 24 h, DRIFT (0.05 d, 43200 cycles)"][0].count("/") == 1
    found, _, named = rows["corrector step: detected within 10 min / reached MAJOR / named orbit_x[pcK] in "
                           "DRIFT:WORST"][0].split(" / ")
    assert found == "4/4" and named == "4/4"
    assert any(k.startswith("monitoring per cycle (projection on 3 components") for k in rows)
