"""Arrays in the config and the PV layout: shape, gathered sources, dtype, what arrays refuse; the
waveform / SHAPE PVs the layout builds from them."""

from __future__ import annotations

import pytest

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names, model_pv_specs
from ioc.core.pvmodel import Kind
from tests.support.configs import model, write_config

BPMS = [f"ca://SIM:BPM{i:02d}:Y" for i in range(4)]


def _load(tmp_path, *models):
    return load_config(write_config(tmp_path / "c.yaml", *models))


def _problems(tmp_path, *models) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, *models)
    return "\n".join(info.value.problems)


def _arrays_model(**extra):
    return model("A:", inputs=[{"name": "orbit_x", "shape": [32], "source": "ca://SIM:BPM:X", "units": "mm"},
                               {"name": "orbit_y", "shape": [4], "source": BPMS, "max_age_s": 2},
                               {"name": "screen", "shape": [64, 48], "source": "pva://SIM:CAM:IMAGE",
                                "dtype": "float32"},
                               {"name": "kick", "shape": [3], "initial": 0.5},
                               "q1"],
                 outputs=[{"name": "profile", "shape": [100], "units": "mm", "prec": 2},
                          {"name": "image", "shape": [16, 16], "dtype": "float32"},
                          {"name": "sigma", "alarm": {"high": 3}}], **extra)


def test_array_inputs_and_outputs_parse(tmp_path):
    m = _load(tmp_path, _arrays_model()).models[0]
    orbit_x, orbit_y, screen, kick, q1 = m.inputs
    assert orbit_x.shape == (32,) and str(orbit_x.source) == "ca://SIM:BPM:X" and not orbit_x.gather
    assert orbit_y.source is None and [str(r) for r in orbit_y.gather] == BPMS and not orbit_y.writable
    assert screen.shape == (64, 48) and screen.dtype == "float32" and screen.source.protocol == "pva"
    assert kick.writable and kick.initial == 0.5 and q1.shape == ()
    assert [o.shape for o in m.outputs] == [(100,), (16, 16), ()]
    assert m.has_arrays


def test_layout_serves_waveforms_and_image_shapes(tmp_path):
    m = _load(tmp_path, _arrays_model()).models[0]
    specs = {s.name: s for s in model_pv_specs(m)}
    x = specs["A:IN:orbit_x"]
    assert (x.kind, x.shape, x.nelm, x.ftvl, x.egu, x.writable) == (Kind.WAVEFORM, (32,), 32, "DOUBLE", "mm", False)
    assert specs["A:IN:orbit_y"].nelm == 4 and not specs["A:IN:orbit_y"].writable
    assert specs["A:IN:screen"].shape == (64, 48) and specs["A:IN:screen"].ftvl == "FLOAT"
    assert specs["A:IN:kick"].writable
    assert specs["A:OUT:profile"].kind is Kind.WAVEFORM and specs["A:OUT:profile"].version_field
    assert specs["A:CHALLENGER:OUT:image"].shape == (16, 16)
    assert specs["A:OUT:sigma"].kind is Kind.AI and specs["A:IN:q1"].kind is Kind.AI
    # [h, w] of images only, as a LONG waveform
    shapes = [n for n in model_pv_names(m) if n.endswith(":SHAPE")]
    assert shapes == ["A:IN:screen:SHAPE", "A:OUT:image:SHAPE"]
    s = specs["A:IN:screen:SHAPE"]
    assert (s.kind, s.ftvl, s.nelm) == (Kind.WAVEFORM, "LONG", 2)
    assert s.initial_value().tolist() == [64, 48]


@pytest.mark.parametrize(
    ("inp", "expected"),
    [
        ({"shape": [2, 3, 4]}, "inputs[0].shape: expected [n] (a waveform) or [height, width]"),
        ({"shape": [0]}, "inputs[0].shape: expected [n]"),
        ({"shape": [3.5]}, "inputs[0].shape: expected [n]"),
        ({"shape": [True]}, "inputs[0].shape: expected [n]"),
        ({"shape": 32}, "inputs[0].shape: expected [n]"),
        ({"shape": [1 << 13, 1 << 12]}, "elements; at most 16777216 per array"),
        ({"source": BPMS}, "a list of 4 PVs is gathered into a vector: add 'shape: [4]'"),
        ({"shape": [5], "source": BPMS}, "4 PVs for shape [5]: the list must name exactly 5 PVs"),
        ({"shape": [2, 2], "source": BPMS}, "gathered into a vector [n], not an image [2, 2]"),
        ({"shape": [1], "source": []}, "inputs[0].source: an empty list"),
        ({"shape": [2], "source": ["ca://A", "http://B"]}, "inputs[0].source[1]: unknown protocol 'http'"),
        ({"dtype": "float32"}, "only an array (with 'shape') has a dtype"),
        ({"shape": [3], "dtype": "int16"}, "expected float64 (FTVL DOUBLE) or float32 (FTVL FLOAT)"),
        ({"shape": [3], "mdel": 0.1}, "inputs[0].mdel: an array posts on every change"),
        ({"shape": [3], "source": "ca://W", "initial": 1}, "drop 'initial'"),
    ],
)
def test_array_inputs_refused(tmp_path, inp, expected):
    assert expected in _problems(tmp_path, model("A:", inputs=[{"name": "x", **inp}]))


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ({"alarm": {"high": 1}}, "outputs[0].alarm: arrays have no limit alarms"),
        ({"truth": "ca://T"}, "outputs[0].truth: ground-truth errors (MAE/RMSE) are scored for scalar outputs only"),
        ({"adel": 1}, "outputs[0].adel: an array posts on every change"),
        ({"action": {"target": "ca://SP", "min": 0, "max": 1, "max_step": 0.1}}, "an action drives one scalar"),
    ],
)
def test_array_outputs_refused(tmp_path, out, expected):
    assert expected in _problems(tmp_path, model("A:", outputs=[{"name": "p", "shape": [8], **out}]))


def test_drift_recording_and_scalar_truth_of_array_models_are_accepted(tmp_path):
    path = write_config(tmp_path / "c.yaml", model(
        "A:", inputs=[{"name": "x", "shape": [8]}],
        outputs=[{"name": "y", "truth": "ca://T"}, {"name": "p", "shape": [4]}], drift={"rate_hz": 10},
        record={"dir": "rec", "targets": {"y": "ca://T", "p": "ca://PROFILE"}}))
    m = load_config(path).models[0]
    assert m.drift is not None and m.outputs[0].truth.name == "T"
    assert dict((k, v.name) for k, v in m.record.targets) == {"y": "T", "p": "PROFILE"}


def test_problems_carry_file_and_line(tmp_path):
    text = _problems(tmp_path, model("A:", inputs=[{"name": "x", "shape": [5], "source": BPMS}]))
    assert f"{tmp_path / 'c.yaml'}:" in text and "models[0].inputs[0].source:" in text


def test_check_refuses_a_shape_the_model_disagrees_with(tmp_path, capsys):
    import numpy as np

    from ioc.cli import main
    from tests.support.models import publish_array_linear

    publish_array_linear(tmp_path / "store", [("orbit", (32,))], [("y", ())], np.ones((1, 32)), [0.0])
    path = write_config(tmp_path / "c.yaml", model("A:", inputs=[{"name": "orbit", "shape": [16]}]))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "shape:" in text)
    assert (f"m: FAIL: {path}:{line}: models[0].inputs[0].shape: m v1: input shape is [32] in the model, "
            f"[16] in the config; fix: set 'shape: [32]' on this input, or push a model trained on [16]") in out
    path = write_config(tmp_path / "c.yaml", model("A:", inputs=[{"name": "orbit", "shape": [32]}]))
    assert main(["check", str(path)]) == 0
