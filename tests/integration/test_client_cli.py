"""``mlioc get|put|monitor`` against a running IOC, over CA and PVA, as a user runs them: a subprocess
with the standard EPICS environment pointed at the IOC. What they print is checked against a real
client's reading; refused writes and PVs that do not connect must exit 1 (issue 19.2)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.configs import model, write_config
from tests.support.models import publish_linear

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ME = __import__("getpass").getuser()


def mlioc_env(ioc) -> dict[str, str]:
    """A user's environment, pointed at this test's IOC only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=f"127.0.0.1:{ioc.ports.ca}",
               EPICS_PVA_AUTO_ADDR_LIST="NO", EPICS_PVA_ADDR_LIST=f"127.0.0.1:{ioc.ports.pva_broadcast}")
    return env


def mlioc(ioc, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ioc", *args], cwd=ROOT, env=mlioc_env(ioc), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def ioc(tmp_path, launch, prefix):
    publish_linear(tmp_path / "store", ["a"], ["y"], [[2.0]], [0.0])
    cfg = write_config(tmp_path / "ioc.yaml",
                       model(prefix, inputs=[{"name": "a", "initial": 1.0, "units": "A", "range": [0, 10]}],
                             outputs=[{"name": "y", "units": "mm", "prec": 3, "alarm": {"high": 5, "hihi": 8}}]),
                       access={"control": {"hosts": ["10.99.99.99"]}})  # nobody here may write ENABLE
    return launch.ioc(cfg)


def test_get_shows_value_units_severity_status_and_time_on_both_protocols(ioc, ca, prefix):
    ca.monitor(f"{prefix}OUT:y").wait_for(lambda u: u.value == pytest.approx(2.0))
    ca.put(f"{prefix}IN:a", 4.5)  # y = 9: above HIHI
    reading = ca.monitor(f"{prefix}OUT:y").wait_for(lambda u: u.value == pytest.approx(9.0))
    assert reading.severity == 2
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(reading.timestamp))
    for args in ([f"{prefix}OUT:y"], ["--pva", f"{prefix}OUT:y"], [f"pva://{prefix}OUT:y"]):
        r = mlioc(ioc, "get", *args)
        assert r.returncode == 0, r.stderr
        line = r.stdout.strip()
        assert line.startswith(f"{prefix}OUT:y  9.000 mm  MAJOR HIHI")  # PVA: the condition, then why
        assert stamp in line
    r = mlioc(ioc, "get", f"{prefix}STATUS", f"pva://{prefix}ENABLE", f"{prefix}IN:a", f"{prefix}OUT:y.SEVR")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [[f"{prefix}STATUS", "OK"], [f"{prefix}ENABLE", "Enabled"],
                                               [f"{prefix}IN:a", "4.500"], [f"{prefix}OUT:y.SEVR", "MAJOR"]]
    assert " A  NO_ALARM " in lines[2]


def test_put_waits_for_the_ioc_and_exits_1_when_a_write_is_refused(ioc, ca, prefix):
    r = mlioc(ioc, "put", f"{prefix}IN:a", "2.5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(f"Old : {prefix}IN:a  1.000 A")
    assert r.stdout.splitlines()[1].startswith(f"New : {prefix}IN:a  2.500 A")
    assert ca.get(f"{prefix}IN:a") == pytest.approx(2.5)
    r = mlioc(ioc, "put", "--pva", f"{prefix}IN:a", "3.5")
    assert r.returncode == 0, r.stderr
    assert ca.get(f"{prefix}IN:a") == pytest.approx(3.5)
    refusals = [  # (protocol, name, value, what stderr says)
        ("ca", f"{prefix}ENABLE", "0", "write refused: the IOC's access list"),  # not a control host
        ("pva", f"{prefix}ENABLE", "0", "write refused by the IOC: root@127.0.0.1 may not write"),
        ("ca", f"{prefix}OUT:y", "1", "write refused: the IOC's access list"),  # CA: no write right either way
        ("pva", f"{prefix}OUT:y", "1", f"write refused by the IOC: {prefix}OUT:y is read-only"),
        ("ca", f"{prefix}IN:a", "abc", "write refused by the IOC (Channel write request failed)"),
        ("pva", f"{prefix}IN:a", "abc", "cannot write 'abc'"),
    ]
    for protocol, name, value, why in refusals:
        r = mlioc(ioc, "put", f"{protocol}://{name}", value)
        assert r.returncode == 1, (protocol, name, r.stdout)
        assert f"mlioc put: {name}: {why}".replace("root", ME) in r.stderr, r.stderr
    assert ca.get(f"{prefix}ENABLE") == 1 and ca.get(f"{prefix}IN:a") == pytest.approx(3.5)
    r = mlioc(ioc, "put", f"{prefix}IN:a", "7")  # an accepted write after refusals still works
    assert r.returncode == 0, r.stderr


def test_a_pv_that_does_not_connect_exits_1_within_the_timeout(ioc, prefix):
    for args in (["get", f"{prefix}NOPE"], ["get", "--pva", f"{prefix}NOPE"], ["put", f"{prefix}NOPE", "1"],
                 ["monitor", f"pva://{prefix}NOPE", f"{prefix}STATUS"]):
        t = time.monotonic()
        r = mlioc(ioc, *args, "-w", "0.5")
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "not connected within 0.5 s" in r.stderr and f"{prefix}NOPE" in r.stderr
        assert time.monotonic() - t < 20  # the timeout, plus starting Python


def test_monitor_prints_each_update_until_its_count(ioc, ca, prefix):
    env_names = [f"{prefix}IN:a", f"pva://{prefix}IN:a"]
    proc = subprocess.Popen([sys.executable, "-m", "ioc", "monitor", "-n", "4", *env_names], cwd=ROOT,
                            env=mlioc_env(ioc), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = [proc.stdout.readline(), proc.stdout.readline()]  # the current value on each protocol
        assert all(line.startswith(f"{prefix}IN:a  1.000 A  NO_ALARM") for line in first), first
        ca.put(f"{prefix}IN:a", 12.0)  # outside the input's range: INVALID
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    later = out.splitlines()
    assert proc.returncode == 0, err
    assert len(later) == 2 and all(line.startswith(f"{prefix}IN:a  12.000 A  INVALID HWLIMIT") for line in later)



def test_clients_coming_and_going_leave_nothing_in_the_ioc_log(tmp_path, launch, prefix):
    """Issue 19.3: a normal disconnect logs nothing above DEBUG, nor does a Ctrl-C of the IOC after it."""
    import signal

    publish_linear(tmp_path / "store", ["a"], ["y"], [[2.0]], [0.0])
    ioc = launch.ioc(write_config(tmp_path / "ioc.yaml", model(prefix, trigger={"scan_hz": 50},
                                                                 inputs=[{"name": "a", "initial": 1.0}],
                                                                 outputs=[{"name": "y", "mdel": -1}])))
    start = len(ioc.lines)
    env = mlioc_env(ioc)
    bin_dir = Path(sys.executable).parent
    for _ in range(3):
        for args in (["get", f"{prefix}OUT:y", f"pva://{prefix}STATUS"], ["put", f"{prefix}OUT:y", "1"],
                     ["put", f"pva://{prefix}OUT:y", "1"], ["put", f"{prefix}IN:a", "3"],
                     ["monitor", "-n", "20", f"{prefix}OUT:y", f"pva://{prefix}COUNT"]):
            subprocess.run([sys.executable, "-m", "ioc", *args], cwd=ROOT, env=env, capture_output=True, timeout=60)
        # caproto's own tools: a refused put that closes at once; a monitor stopped with Ctrl-C. No repeater
        # daemon: one spawned here would inherit the captured pipe and hold it open.
        subprocess.run([bin_dir / "caproto-put", "--no-repeater", f"{prefix}OUT:y", "1"], env=env,
                       capture_output=True, timeout=60)
        mon = subprocess.Popen([bin_dir / "caproto-monitor", "--no-repeater", f"{prefix}OUT:y", f"{prefix}COUNT"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(5):
            mon.stdout.readline()
        mon.send_signal(signal.SIGINT)
        mon.wait(30)
    ioc.signal(signal.SIGINT)  # Ctrl-C
    assert ioc.proc.wait(10) == 0
    log = ioc.lines[start:]
    bad = [line for line in log if " ERROR " in line or "Traceback" in line or "WARN pvxs" in line
           or "Task was destroyed" in line or "exception was never retrieved" in line]
    assert bad == [], "\n".join(log)
