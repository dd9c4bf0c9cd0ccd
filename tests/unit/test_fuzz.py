"""Property-based tests: whatever a config file, a manifest or a client throws at the IOC, it answers
with a clear refusal (ConfigError / ManifestError / PutRejected) or a valid state — never a crash,
and never OK outputs from unusable inputs."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioc.core.config import ConfigError, InferenceConfig, InputConfig, ModelConfig, OutputConfig, TriggerConfig
from ioc.core.configfile import parse_config
from ioc.core.engine import load_champion
from ioc.core.layout import ModelStatus
from ioc.core.manifest import ManifestError, parse_manifest
from ioc.core.pvmodel import ClientInfo, PutRejected, PVDatabase, Severity
from ioc.runtime.runner import ModelRunner
from tests.support.models import publish_linear

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
json_like = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                         max_leaves=20)
KEYS = ["name", "prefix", "store", "trigger", "inputs", "outputs", "source", "range", "units", "alarm", "high",
        "hihi", "low", "lolo", "scan_hz", "on_change", "pv", "prec", "display", "max_age_s", "description", "initial"]
plausible = st.recursive(
    scalars | st.sampled_from(["ca://X:Y", "pva://A", "models:/m@champion", "P:", "a"]),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(json_like, st.fixed_dictionaries({"models": st.lists(plausible, max_size=3)},
                                                       optional={"ioc": plausible})))
def test_any_config_document_is_parsed_or_refused_clearly(doc):
    try:
        cfg = parse_config(doc, Path("/tmp/fuzz.yaml"))
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("/tmp/fuzz.yaml") for p in exc.problems)
    else:
        assert cfg.models


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(json_like, st.fixed_dictionaries(
    {"sha256": st.one_of(st.just("a" * 64), st.text(max_size=70)),
     "inputs": st.lists(st.dictionaries(st.sampled_from(["name", "units", "mean", "std"]), scalars), max_size=3),
     "outputs": st.lists(st.dictionaries(st.sampled_from(["name", "units", "mean", "std"]), scalars), max_size=3)},
    optional={"test_vectors": json_like, "reference": json_like, "kind": scalars, "format": scalars})))
def test_any_manifest_document_is_parsed_or_refused_clearly(doc):
    try:
        m = parse_manifest(doc)
    except ManifestError as exc:
        assert str(exc)
    else:
        assert m.inputs and m.outputs and all(s.std > 0 and math.isfinite(s.mean) for s in m.inputs + m.outputs)


client_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9),
                          st.text(max_size=10), st.binary(max_size=6), st.none(), st.lists(st.floats(), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.sampled_from(["P:IN:a", "P:IN:b", "P:ENABLE"]), client_values), max_size=12))
def test_the_input_path_never_crashes_and_never_serves_ok_from_bad_inputs(tmp_path_factory, writes):
    root = tmp_path_factory.mktemp("fuzz") / "s"
    publish_linear(root, ["a", "b"], ["y"], [[1.0, 1.0]], [0.0])
    config = ModelConfig(name="m", prefix="P:", store=str(root), trigger=TriggerConfig("on_change"),
                         inputs=(InputConfig("a", range=(-5.0, 5.0)), InputConfig("b")),
                         outputs=(OutputConfig("y"),))

    async def run():
        db = PVDatabase()
        runner = ModelRunner(config, db, InferenceConfig(provider="cpu"), asyncio.get_running_loop())
        runner.run_on_input_change = True  # trigger: {on_change: true}
        runner.start()
        runner.set_model(load_champion(config, InferenceConfig(provider="cpu")))
        who = ClientInfo("fuzz", "h", "ca")
        for name, value in writes:
            try:
                db.put(name, value, who)
            except PutRejected:
                pass
            await asyncio.sleep(0)
            a, b = runner.inputs
            usable = all(s.defined and math.isfinite(s.value) for s in (a, b)) and -5 <= a.value <= 5
            out = db["P:OUT:y"].reading
            if runner.status is ModelStatus.OK:
                assert usable and runner.enabled
                assert out.severity != Severity.INVALID
                assert out.value == a.value + b.value or abs(out.value - (a.value + b.value)) < 1e-3 * (
                    1 + abs(a.value) + abs(b.value))
            else:
                assert out.severity == Severity.INVALID
                if runner.status is ModelStatus.INPUT_INVALID:
                    assert not usable
                elif runner.status is ModelStatus.DISABLED:
                    assert not runner.enabled
                else:  # FAULT: e.g. a finite input beyond float32 makes the model's output infinite
                    assert runner.status is ModelStatus.FAULT
        runner.close()

    asyncio.run(run())
