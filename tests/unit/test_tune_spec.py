"""``training.search``: parsing, every refusal with FILE:LINE and the key path, and the pure pieces of
``mlioc tune`` (URL masking, the search values -> training settings, per-trial seeding) — no training."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from training.spec import load_search, load_spec
from training.tune import apply_overrides, make_sampler, mask_url, objective_digest, overrides, suggest

ROOT = Path(__file__).resolve().parents[2]
SPACE_PATH = "models[0].training.search.space"

BASE = """\
ioc: {protocols: [ca], metrics_port: 0}
models:
  - name: beam
    prefix: "T:"
    store: store
    inputs:
      - {name: q1, units: A}
      - {name: q2, units: A}
    outputs:
      - {name: sigma_x, units: mm}
    training:
      kind: KIND
      hidden: [32, 16]
      epochs: 50
      data: {source: simulator, samples: 500}
"""


def _config(tmp_path: Path, search: str, kind: str = "regression"):
    text = BASE.replace("KIND", kind) + textwrap.indent(textwrap.dedent(search), " " * 6)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def _problems(tmp_path: Path, search: str, kind: str = "regression") -> list[str]:
    config = _config(tmp_path, search, kind)
    with pytest.raises(ConfigError) as info:
        load_search(config, "beam")
    return info.value.problems


def _one(tmp_path: Path, search: str, needle: str, kind: str = "regression") -> str:
    problems = _problems(tmp_path, search, kind)
    hits = [p for p in problems if needle in p]
    assert hits, problems
    assert hits[0].startswith(f"{tmp_path / 'c.yaml'}:"), hits[0]  # FILE:LINE
    return hits[0]


def test_the_demo_search_parses():
    config = load_config(ROOT / "config" / "demo.yaml")
    spec, search = load_search(config, "beam")
    assert search.trials == 24 and search.epochs == 60
    assert (search.sampler, search.seed, search.startup_trials) == ("tpe", 0, 8)
    assert (search.pruner, search.pruner_startup_trials, search.warmup_epochs) == ("median", 4, 10)
    lr = search.space["lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 3e-4, 3e-2, True)
    assert search.space["width"].step == 16 and search.space["depth"].kind == "int"
    assert search.space["activation"].choices == ("silu", "relu", "tanh", "gelu")
    assert search.study_name("beam") == "mlioc-beam"
    assert load_spec(config, "beam") == spec  # train ignores the search section but accepts it


def test_forms_of_a_key_and_defaults(tmp_path):
    config = _config(tmp_path, """\
        search:
          space:
            lr: 0.01
            weight_decay: [0, 1.0e-5]
            depth: {low: 1, high: 4}
            batch_size: [64, 128]
          pruner: none
          sampler: random
    """)
    spec, search = load_search(config, "beam")
    assert search.space["lr"].kind == "fixed" and search.space["lr"].value == 0.01
    assert search.space["weight_decay"].choices == (0.0, 1e-5)
    assert search.space["depth"].log is False  # log defaults to true for lr only
    assert (search.trials, search.epochs, search.pruner, search.sampler) == (20, 50, "none", "random")
    assert set(search.searched()) == {"weight_decay", "depth", "batch_size"}


def test_no_search_section_is_named(tmp_path):
    config = _config(tmp_path, "")
    with pytest.raises(ConfigError) as info:
        load_search(config, "beam")
    assert any("models[0].training.search: missing" in p for p in info.value.problems)


@pytest.mark.parametrize(("search", "needle"), [
    ("search: {}", f"{SPACE_PATH}: empty search space"),
    ("search: {space: {}}", f"{SPACE_PATH}: empty search space"),
    ("search:\n  space: {lr: 0.01, width: 64}\n", f"{SPACE_PATH}: nothing to search"),
    ("search:\n  space:\n    lr: {low: 0.1, high: 0.001}\n", f"{SPACE_PATH}.lr: low (0.1) must be < high (0.001)"),
    ("search:\n  space:\n    depth: {low: 3, high: 1}\n", f"{SPACE_PATH}.depth: low (3) must be < high (1)"),
    ("search:\n  space:\n    activation: []\n", f"{SPACE_PATH}.activation: empty list of choices"),
    ("search:\n  space:\n    batch_size: []\n", f"{SPACE_PATH}.batch_size: empty list of choices"),
    ("search:\n  space:\n    activation: [silu, swish]\n", f"{SPACE_PATH}.activation[1]: expected one of"),
    ("search:\n  space:\n    activation: [silu, silu]\n", f"{SPACE_PATH}.activation: duplicate choice"),
    ("search:\n  space:\n    activation: {low: 1, high: 2}\n", f"{SPACE_PATH}.activation: expected a list"),
    ("search:\n  space:\n    widht: [8, 16]\n", f"{SPACE_PATH}.widht: unknown key (did you mean 'width'?)"),
    ("search:\n  space:\n    width: {low: 8.5, high: 64}\n", f"{SPACE_PATH}.width.low: expected an integer"),
    ("search:\n  space:\n    width: {low: 8, high: 60, step: 16}\n", f"{SPACE_PATH}.width.step: high - low"),
    ("search:\n  space:\n    lr: {low: 0, high: 0.1}\n", f"{SPACE_PATH}.lr.low: must be > 0"),
    ("search:\n  space:\n    weight_decay: {low: 0, high: 0.1, log: true}\n",
     f"{SPACE_PATH}.weight_decay.log: a log scale needs low > 0"),
    ("search:\n  space:\n    lr: {low: 0.001, high: 0.1, step: 0.001}\n", f"{SPACE_PATH}.lr: log and step"),
    ("search:\n  space:\n    lr: {high: 0.1}\n", f"{SPACE_PATH}.lr: missing required key 'low'"),
    ("search:\n  space:\n    bottleneck: [1, 2]\n", f"{SPACE_PATH}.bottleneck: only for autoencoder models"),
    ("search:\n  space:\n    conv_channels: [[8, 16], [16, 32]]\n",
     f"{SPACE_PATH}.conv_channels: only for array models with convolutions (kind cnn1d or cnn2d)"),
    ("search:\n  space:\n    conv_channels: [8, 16]\n", f"{SPACE_PATH}.conv_channels: expected a list of choices"),
    ("search:\n  space:\n    conv_channels: [[8, 0]]\n", f"{SPACE_PATH}.conv_channels[0]: expected a list of channel"),
    ("search:\n  trials: 0\n  space: {width: [8, 16]}\n", "models[0].training.search.trials: must be > 0"),
    ("search:\n  study: ''\n  space: {width: [8, 16]}\n", "models[0].training.search.study: must not be empty"),
    ("search:\n  epochs: 10\n  pruner: {warmup_epochs: 10}\n  space: {width: [8, 16]}\n",
     "models[0].training.search.pruner.warmup_epochs: must be < search.epochs (10)"),
    ("search:\n  pruner: {type: successive_halving, min_epochs: 60}\n  space: {width: [8, 16]}\n",
     "models[0].training.search.pruner.min_epochs: must be < search.epochs (50)"),
    ("search:\n  pruner: {type: successive_halving, warmup_epochs: 3}\n  space: {width: [8, 16]}\n",
     "models[0].training.search.pruner.warmup_epochs: not a setting of the successive_halving pruner"),
    ("search:\n  pruner: {type: successive_halving, reduction_factor: 1}\n  space: {width: [8, 16]}\n",
     "models[0].training.search.pruner.reduction_factor: must be >= 2"),
    ("search:\n  pruner: hyperband\n  space: {width: [8, 16]}\n",
     "models[0].training.search.pruner.type: expected one of median, successive_halving, none"),
    ("search:\n  sampler: {type: random, startup_trials: 3}\n  space: {width: [8, 16]}\n",
     "models[0].training.search.sampler.startup_trials: only for the tpe sampler"),
])
def test_bad_search_is_refused_naming_the_key(tmp_path, search, needle):
    _one(tmp_path, search, needle)


def test_train_refuses_a_config_with_a_bad_search_too(tmp_path):
    config = _config(tmp_path, "search:\n  space:\n    lr: {low: 0.1, high: 0.001}\n")
    with pytest.raises(ConfigError):
        load_spec(config, "beam")


def test_autoencoder_bottleneck_is_searchable(tmp_path):
    config = _config(tmp_path, "search:\n  space:\n    bottleneck: {low: 1, high: 2}\n", kind="autoencoder")
    _spec, search = load_search(config, "beam")
    assert search.space["bottleneck"].kind == "int"


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://mlioc:s3cret@db.example.org:5432/optuna", "postgresql://mlioc:***@db.example.org:5432/optuna"),
    ("postgresql+psycopg://u:p%40ss@127.0.0.1/x", "postgresql+psycopg://u:***@127.0.0.1/x"),
    ("postgresql://u@127.0.0.1/x", "postgresql://u@127.0.0.1/x"),
    ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
    ("https://user:tok@mlflow.example.org", "https://user:***@mlflow.example.org"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_search_values_become_training_settings(tmp_path):
    config = _config(tmp_path, "search:\n  epochs: 30\n  space:\n    depth: {low: 1, high: 3}\n    lr: [0.01]\n")
    spec, search = load_search(config, "beam")
    ov = overrides({"depth": 3, "lr": 0.01}, spec, search)
    assert ov == {"epochs": 30, "lr": 0.01, "hidden": [32, 32, 32]}  # width from training.hidden[0]
    trained = apply_overrides(spec, ov)
    assert (trained.hidden, trained.epochs, trained.lr, trained.batch_size) == ((32, 32, 32), 30, 0.01, spec.batch_size)
    assert overrides({"width": 8}, spec, search)["hidden"] == [8, 8]  # depth from len(training.hidden)


def test_objective_digest_follows_the_search_not_the_trial_count(tmp_path):
    a = load_search(_config(tmp_path, "search:\n  trials: 5\n  space: {width: [8, 16]}\n"), "beam")
    b = load_search(_config(tmp_path, "search:\n  trials: 50\n  pruner: none\n  space: {width: [8, 16]}\n"), "beam")
    c = load_search(_config(tmp_path, "search:\n  space: {width: [8, 32]}\n"), "beam")
    assert objective_digest(*a) == objective_digest(*b)
    assert objective_digest(*a) != objective_digest(*c)


def test_trials_are_seeded_by_number_so_workers_do_not_repeat_each_other(tmp_path):
    _spec, search = load_search(_config(tmp_path, """\
        search:
          sampler: {seed: 7}
          space:
            lr: {low: 1.0e-4, high: 1.0e-1}
            width: {low: 8, high: 256}
    """), "beam")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def draws(n: int) -> list[dict]:
        study = optuna.create_study(sampler=make_sampler(search))
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append(suggest(trial, search))
            study.tell(trial, 1.0)
        return out

    first, again = draws(4), draws(4)
    assert first == again  # one worker: reproducible
    assert len({(d["lr"], d["width"]) for d in first}) == 4  # trial numbers draw differently


def test_conv_channels_are_searched_for_a_cnn(tmp_path):
    text = BASE.replace("KIND", "cnn1d").replace("      - {name: q1, units: A}\n      - {name: q2, units: A}\n",
                                                 "      - {name: w, units: mm, shape: [16]}\n")
    path = tmp_path / "c.yaml"
    path.write_text(text + textwrap.indent("search:\n  space:\n    conv_channels: [[4, 8], [8, 16]]\n", " " * 6))
    spec, search = load_search(load_config(path), "beam")
    assert search.space["conv_channels"].choices == ((4, 8), (8, 16))
    ov = overrides({"conv_channels": (8, 16)}, spec, search)
    assert ov["channels"] == [8, 16] and apply_overrides(spec, ov).channels == (8, 16)
