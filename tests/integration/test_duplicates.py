"""A second IOC for the same PV names, state directory or recording directory refuses to start, with a
message that names what is taken and by whom (issue 19.4)."""

from __future__ import annotations

import pytest

from tests.support.configs import model, write_config
from tests.support.models import publish_linear

pytestmark = pytest.mark.integration


def _config(directory, prefix, *, protocols=("ca", "pva"), state_dir=None, record=None):
    directory.mkdir(exist_ok=True)
    publish_linear(directory / "store", ["a"], ["y"], [[2.0]], [0.0])
    extra = {"record": {"dir": str(record), "flush_s": 0.2}} if record else {}
    return write_config(directory / "ioc.yaml", model(prefix, inputs=[{"name": "a", "initial": 1.0}], **extra),
                        ioc={"metrics_port": 0, **({"state_dir": str(state_dir)} if state_dir else {})},
                        protocols=protocols)


def _refused(proc) -> str:
    assert proc.proc.wait(60) == 1, proc.output()
    return proc.output()


@pytest.mark.parametrize("protocol", ["ca", "pva"])
def test_a_second_ioc_serving_the_same_pv_names_refuses_to_start(tmp_path, launch, prefix, protocol):
    first = launch.ioc(_config(tmp_path / "first", prefix, protocols=(protocol,)))
    # The second finds the first as any client would: over its address list (here: loopback, its ports).
    reach = {"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{first.ports.pva_broadcast}"}
    second = launch.ioc(_config(tmp_path / "second", prefix), sources=[first], env=reach, wait=False,
                        name="second")
    (error,) = [line for line in _refused(second).splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: {prefix}STATUS is already served over {protocol.upper()} by ")
    assert f":{first.ports.ca}: " in error if protocol == "ca" else "by another server" in error  # host:port
    assert "--allow-duplicates" in error and "Traceback" not in second.output()
    forced = launch.ioc(_config(tmp_path / "second", prefix), sources=[first], env=reach, name="forced",
                        extra_args=["--allow-duplicates"])
    assert forced.proc.poll() is None and first.proc.poll() is None


def test_the_state_and_recording_directories_take_one_ioc_each(tmp_path, launch, prefix):
    records = tmp_path / "rec"
    first = launch.ioc(_config(tmp_path / "first", f"{prefix}A:", record=records))
    pid = first.proc.pid
    # Another IOC, other PV names, the same state directory (the default one beside the config file):
    shared_state = launch.ioc(_config(tmp_path / "first", f"{prefix}B:"), wait=False, name="same-state")
    out = _refused(shared_state)
    assert f"error: state directory {tmp_path / 'first' / '.mlioc-state'} is in use by pid {pid} on " in out
    # ... its own state directory, but the first one's recording directory:
    shared_rec = launch.ioc(_config(tmp_path / "third", f"{prefix}C:", record=records), wait=False,
                            name="same-rec")
    assert f"error: recording directory {records} is in use by pid {pid} on " in _refused(shared_rec)
    first.stop()  # the locks end with the process that held them
    launch.ioc(_config(tmp_path / "third", f"{prefix}C:", record=records), name="after")
