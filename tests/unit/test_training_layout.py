"""Array models on the training side without training: the tensor layout (flatten/unflatten, tensor shapes,
manifest normalisation entries), the `training:` keys of the array kinds and their FILE:LINE errors, network
shapes, and array datasets from files (Parquet list columns, .npz) and from the simulator."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `train` extra

import pandas as pd  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ioc.core.config import ConfigError  # noqa: E402
from ioc.core.configfile import load_config  # noqa: E402
from tests.support.configs import model, write_config  # noqa: E402
from training.dataset import DatasetError, Normalisation, build_dataset, dataset_from_frame  # noqa: E402
from training.layout import Layout, Signal, pca_summary  # noqa: E402
from training.models import architecture, build_model  # noqa: E402
from training.spec import load_spec  # noqa: E402


def _config(tmp_path, inputs, outputs, training=None):
    entry = model("T:", inputs=inputs, outputs=outputs, **({"training": training} if training is not None else {}))
    return load_config(write_config(tmp_path / "c.yaml", entry))


def _spec_errors(tmp_path, inputs, outputs, training) -> list[str]:
    config = _config(tmp_path, inputs, outputs, training)
    with pytest.raises(ConfigError) as err:
        load_spec(config, "m")
    return err.value.problems


# ----------------------------------------------------------------------------- layout

shapes = st.lists(st.one_of(st.just(()), st.tuples(st.integers(1, 6)), st.tuples(st.integers(1, 4), st.integers(1, 4))),
                  min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(1, 5))
def test_flatten_and_unflatten_are_inverse(sig_shapes, batch):
    signals = tuple(Signal(f"s{i}", sh) for i, sh in enumerate(sig_shapes))
    rng = np.random.default_rng(0)
    values = {s.name: rng.normal(size=(batch, *s.shape)) for s in signals}
    flat = Layout.flatten(signals, values)
    assert flat.shape == (batch, sum(s.size for s in signals))
    back = Layout.unflatten(signals, flat)
    for s in signals:
        assert back[s.name].shape == (batch, *s.shape) and np.array_equal(back[s.name], values[s.name])
    # Row-major: an image's first row comes first.
    first = signals[0]
    assert np.array_equal(flat[:, : first.size], values[first.name].reshape(batch, -1))


def test_the_input_tensor_shape_follows_the_contract():
    img, wave, scalar = Signal("img", (8, 6)), Signal("w", (10,)), Signal("a")
    out = (Signal("y"),)
    assert Layout.build((img,), out, "regression").input_tensor == (1, 8, 6)  # a single image: [b, 1, h, w]
    assert Layout.build((img,), out, "cnn2d").input_tensor == (1, 8, 6)
    assert Layout.build((wave,), out, "cnn1d").input_tensor == (1, 10)  # cnn1d's waveform: [b, 1, n]
    assert Layout.build((wave,), out, "regression").input_tensor == (10,)  # an MLP's: flattened
    assert Layout.build((scalar, wave, img), out, "regression").input_tensor == (1 + 10 + 48,)
    lay = Layout.build((scalar, wave), (Signal("p", (5,)), Signal("q")), "regression")
    assert lay.output_tensor == (6,) and lay.n_in == 11 and not lay.is_scalar
    assert Layout.from_dict(lay.to_dict()) == lay


def test_manifest_normalisation_is_one_number_per_channel_or_one_per_element():
    signals = (Signal("a", units="A"), Signal("w", (3,), "mm"), Signal("e", (2,)))
    mean = np.array([1.0, 2.0, 2.0, 2.0, 5.0, 6.0])
    std = np.array([0.5, 3.0, 3.0, 3.0, 1.0, 2.0])
    entries = Layout.manifest_entries(signals, mean, std)
    assert entries[0] == {"name": "a", "units": "A", "mean": 1.0, "std": 0.5}  # a scalar: as it always was
    assert entries[1] == {"name": "w", "units": "mm", "shape": [3], "mean": 2.0, "std": 3.0}  # per channel
    assert entries[2]["mean"] == [5.0, 6.0] and entries[2]["std"] == [1.0, 2.0]  # per element
    assert np.array_equal(Layout.expand(signals, entries, "mean"), mean)
    assert np.array_equal(Layout.expand(signals, entries, "std"), std)


def test_per_channel_and_per_element_normalisation_fit(tmp_path):
    config = _config(tmp_path, [{"name": "w", "shape": [3]}], ["y"])
    rng = np.random.default_rng(1)
    w = rng.normal([0.0, 10.0, 20.0], [1.0, 2.0, 3.0], size=(500, 3))
    ds = dataset_from_frame(pd.DataFrame({"time": np.arange(500.0), "w": list(w), "target.y": w.sum(axis=1)}),
                            {"kind": "test"}, {"w": (3,)})
    channel = Normalisation.fit(ds)
    assert np.all(channel.x_mean == channel.x_mean[0]) and channel.x_mean[0] == pytest.approx(w.mean())
    element = Normalisation.fit(ds, per_element=True)
    assert element.x_mean == pytest.approx(w.mean(axis=0)) and element.x_std == pytest.approx(w.std(axis=0))
    assert config.model("m").inputs[0].shape == (3,)


def test_the_pca_summary_captures_the_leading_directions():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=50)
    direction /= np.linalg.norm(direction)
    values = rng.normal(size=(2000, 1)) * 5.0 * direction + 0.1 * rng.normal(size=(2000, 50))
    summary = pca_summary(values, k=2)
    assert abs(np.dot(summary["components"][0], direction)) > 0.99
    assert summary["explained_variance_ratio"][0] > 0.9
    assert summary["scores"]["pc1"]["std"] == pytest.approx(5.0, rel=0.1)


# ----------------------------------------------------------------------------- the training: keys


def test_array_kinds_and_their_keys_parse(tmp_path):
    config = _config(tmp_path, [{"name": "img", "shape": [16, 16]}], ["y"],
                     {"kind": "cnn2d", "channels": [4, 8], "kernel": 5, "stride": 2, "normalise": "element"})
    spec = load_spec(config, "m")
    assert (spec.kind, spec.channels, spec.kernel, spec.stride, spec.normalise) == ("cnn2d", (4, 8), 5, 2, "element")
    assert spec.hidden == (64,)  # the conv kinds' default dense head


def test_array_key_errors_name_the_file_line_and_the_fix(tmp_path):
    wave = [{"name": "w", "shape": [32]}]
    problems = _spec_errors(tmp_path, wave, ["y"], {"kind": "cnn1d", "channels": [8, 0], "kernel": 4})
    assert any("c.yaml:" in p and "training.channels: expected a non-empty list of positive channel counts" in p
               for p in problems)
    assert any("training.kernel: must be odd" in p for p in problems)
    problems = _spec_errors(tmp_path, ["a", "b"], ["y"], {"kind": "cnn1d"})
    assert any("training.kind: cnn1d needs exactly one waveform input (shape: [n]); this model has a scalar, b scalar"
               in p for p in problems)
    problems = _spec_errors(tmp_path, wave, ["y"], {"kind": "cnn2d"})
    assert any("cnn2d needs exactly one image input (shape: [h, w])" in p for p in problems)
    problems = _spec_errors(tmp_path, wave, ["y"], {"kind": "regression", "channels": [4]})
    assert any("training.channels: only for kind cnn1d or cnn2d (this model is regression)" in p for p in problems)
    problems = _spec_errors(tmp_path, wave, ["y"], {"decoder": "conv"})
    assert any("training.decoder: conv needs exactly one array output" in p for p in problems)
    problems = _spec_errors(tmp_path, ["a"], [{"name": "p", "shape": [30]}], {"decoder": "conv"})
    assert any("output p [30]: each dimension must be divisible by stride ** len(decoder_channels) = 4" in p
               for p in problems)
    problems = _spec_errors(tmp_path, wave, ["w"], {"kind": "autoencoder"})
    assert any("autoencoder takes scalar inputs only" in p for p in problems)
    problems = _spec_errors(tmp_path, wave, ["y"], {"normalise": "pixel"})
    assert any("training.normalise: expected one of channel, element, got 'pixel'" in p for p in problems)


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize(("inputs", "outputs", "training"), [
    ([{"name": "w", "shape": [20]}], ["a", "b"], {"kind": "cnn1d", "channels": [4, 8], "kernel": 5}),
    ([{"name": "img", "shape": [12, 10]}], ["a", "b", "c"], {"kind": "cnn2d", "channels": [4, 8, 8]}),
    ([{"name": "img", "shape": [12, 10]}], ["a"], {"kind": "regression", "hidden": [16]}),
    (["a", "b", {"name": "w", "shape": [7]}], [{"name": "p", "shape": [9]}, "q"], {"hidden": [16, 16]}),
    (["a", "b"], [{"name": "p", "shape": [24]}], {"decoder": "conv", "decoder_channels": [8, 4], "hidden": [16]}),
    ([{"name": "img", "shape": [8, 8]}], [{"name": "o", "shape": [8, 8]}],
     {"kind": "cnn2d", "decoder": "conv", "decoder_channels": [8, 4]}),
])
def test_each_kind_maps_the_input_tensor_to_the_flattened_outputs(tmp_path, inputs, outputs, training):
    config = _config(tmp_path, inputs, outputs, training)
    spec = load_spec(config, "m")
    layout = Layout.from_model(config.model("m"), spec.kind)
    net = build_model(spec, layout).eval()
    y = net(torch.zeros(3, *layout.input_tensor))
    assert tuple(y.shape) == (3, layout.n_out)
    arch = architecture(spec, layout)
    assert arch["kind"] == spec.kind
    dense = [m for m in net if isinstance(m, torch.nn.Linear)]
    if spec.decoder == "conv":  # the dense layers end at the decoder's seed, the decoder makes the outputs
        assert arch["widths"][-1] == spec.hidden[-1] and arch["output_shape"] == list(layout.outputs[0].shape)
        seed = [d // spec.stride ** len(spec.decoder_channels) for d in layout.outputs[0].shape]
        assert dense[-1].out_features == spec.decoder_channels[0] * int(np.prod(seed))
    else:
        assert arch["widths"] == [dense[0].in_features, *[m.out_features for m in dense]]


def test_a_scalar_mlps_architecture_record_is_unchanged(tmp_path):
    """Champions trained before arrays must still warm-start: their provenance has exactly these keys."""
    config = _config(tmp_path, ["a", "b"], ["y"], {"hidden": [8]})
    spec = load_spec(config, "m")
    layout = Layout.from_model(config.model("m"), spec.kind)
    assert architecture(spec, layout) == {"kind": "regression", "widths": [2, 8, 1], "activation": "silu"}
    assert [k for k in build_model(spec, layout).state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


# ----------------------------------------------------------------------------- datasets


def test_array_columns_from_parquet_and_npz_give_the_same_dataset(tmp_path):
    rng = np.random.default_rng(3)
    n = 50
    img = rng.normal(size=(n, 4, 3))
    wave = rng.normal(size=(n, 5))
    y = rng.normal(size=n)
    t = 1.8e9 + np.arange(n)
    np.savez(tmp_path / "d.npz", time=t, img=img, wave=wave, y=y)
    pd.DataFrame({"time": t, "img": [row.tolist() for row in img], "wave": list(wave), "y": y}).to_parquet(
        tmp_path / "d.parquet")
    config = _config(tmp_path, [{"name": "img", "shape": [4, 3]}, {"name": "wave", "shape": [5]}], ["y"],
                     {"data": {"source": "file"}})
    m, spec = config.model("m"), load_spec(config, "m")
    a = build_dataset(m, spec, str(tmp_path / "d.npz"))
    b = build_dataset(m, spec, str(tmp_path / "d.parquet"))
    assert a.x.shape == (n, 12 + 5) and np.array_equal(a.x[:, :12], img.reshape(n, 12))
    assert a.digest == b.digest and a.shapes == {"img": (4, 3), "wave": (5,)}
    back = dataset_from_frame(a.to_frame(), a.source, a.shapes)
    assert back.digest == a.digest


def test_array_data_errors_name_the_column_and_row(tmp_path):
    rows = [list(range(5))] * 3 + [list(range(4))]
    pd.DataFrame({"wave": rows, "y": np.arange(4.0)}).to_parquet(tmp_path / "d.parquet")
    config = _config(tmp_path, [{"name": "wave", "shape": [5]}], ["y"], {"data": {"source": "file"}})
    with pytest.raises(DatasetError, match=r"column wave row 3 has 4 values, input wave has shape \[5\]"):
        build_dataset(config.model("m"), load_spec(config, "m"), str(tmp_path / "d.parquet"))
    np.savez(tmp_path / "s.npz", wave=np.zeros(4), y=np.zeros(4))
    with pytest.raises(DatasetError, match=r"column wave has 1 value\(s\) a row, input wave has shape \[5\]"):
        build_dataset(config.model("m"), load_spec(config, "m"), str(tmp_path / "s.npz"))


def test_a_nan_element_or_an_element_out_of_range_drops_the_row(tmp_path):
    wave = np.ones((10, 3))
    wave[2, 1] = np.nan
    wave[5, 0] = 50.0
    np.savez(tmp_path / "d.npz", wave=wave, y=np.zeros(10))
    config = _config(tmp_path, [{"name": "wave", "shape": [3], "range": [0, 10]}], ["y"], {"data": {"source": "file"}})
    ds = build_dataset(config.model("m"), load_spec(config, "m"), str(tmp_path / "d.npz"))
    assert len(ds) == 8
    assert ds.filtered == {"non-finite value": 1, "wave outside its valid range": 1}


def test_simulator_array_data_must_match_the_simulators_shapes(tmp_path):
    config = _config(tmp_path, [{"name": "orbit_x", "shape": [32]}], ["dcor1"],
                     {"data": {"source": "simulator", "samples": 50}})
    ds = build_dataset(config.model("m"), load_spec(config, "m"), None)
    assert ds.x.shape == (50, 32) and ds.source["generator"] == "ioc.sim.beamline.generate_array_dataset"
    config = _config(tmp_path, [{"name": "orbit_x", "shape": [16]}], ["dcor1"], {"data": {"source": "simulator"}})
    with pytest.raises(DatasetError, match=r"orbit_x is \[32\] in the simulator but \[16\] in the config"):
        build_dataset(config.model("m"), load_spec(config, "m"), None)
    config = _config(tmp_path, ["screen"], ["dcor1"], {"data": {"source": "simulator"}})
    with pytest.raises(DatasetError, match=r"give it shape: \[64, 64\]"):
        build_dataset(config.model("m"), load_spec(config, "m"), None)


def test_archiver_data_for_an_array_model_is_refused_clearly(tmp_path):
    archiver = {"url": "http://archiver.invalid:17668", "start": 1.8e9, "end": 1.8e9 + 60,
                "pvs": {"w": "X:ORBIT", "y": "X:Y"}}
    config = _config(tmp_path, [{"name": "w", "shape": [4]}], ["y"],
                     {"data": {"source": "archiver", "archiver": archiver}})
    with pytest.raises(DatasetError, match=r"archiver data holds scalars only here; w has shape \[4\]"):
        build_dataset(config.model("m"), load_spec(config, "m"), None)
