"""Arrays and images end to end: a running IOC, real clients (pyepics' libca, the p4p client), a real
EPICS C-core IOC serving a waveform record as a source, and a p4p server publishing NTNDArray frames.

The model store holds linear models over the flat input vector (tests/support/models.py), so every
prediction is checked against numpy."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from p4p import Value
from p4p.nt import NTNDArray

from tests.support.configs import model, write_config
from tests.support.models import publish_array_linear
from tests.support.procs import ServerProcess, server_env

H, W = 4, 6  # the screen image: 4 rows of 6 pixels
ORBIT = 8


def _frame(image: np.ndarray, codec: str = "", dims: list[int] | None = None) -> Value:
    """An NTNDArray as an areaDetector IOC publishes it (dimension[0] = width)."""
    v = NTNDArray().wrap(image)
    if dims is not None:
        v["dimension"] = [{"size": n, "offset": 0, "fullSize": n, "binning": 1, "reverse": False} for n in dims]
    v["codec.name"] = codec  # marked changed even when empty: a monitor merges only changed fields
    return v


def _vd_setup(tmp_path, prefix):
    """A model with a waveform and an image in, a profile, an image and a scalar out; all writable."""
    inputs = [("orbit", (ORBIT,)), ("screen", (H, W))]
    outputs = [("profile", (5,)), ("image", (H, W)), ("s", ())]
    n_in, n_out = ORBIT + H * W, 5 + H * W + 1
    w = np.random.default_rng(7).normal(size=(n_out, n_in)) / n_in
    b = np.linspace(0, 1, n_out)
    publish_array_linear(tmp_path / "store", inputs, outputs, w, b)
    config = write_config(
        tmp_path / "ioc.yaml",
        model(prefix, inputs=[{"name": "orbit", "shape": [ORBIT], "units": "mm", "prec": 2, "range": [-50, 50],
                               "description": "BPM orbit"},
                              {"name": "screen", "shape": [H, W], "dtype": "float32"}],
              outputs=[{"name": "profile", "shape": [5], "units": "mm", "prec": 4, "display": [-2, 2],
                        "description": "predicted profile"},
                       {"name": "image", "shape": [H, W], "dtype": "float32"}, "s"]),
        ioc={"metrics_port": 0})
    return config, w, b


def _serve_vd(tmp_path, prefix, launch, pva):
    """The IOC of :func:`_vd_setup` running, and a PVA client of it."""
    config, w, b = _vd_setup(tmp_path, prefix)
    ioc = launch.ioc(config)
    return ioc, pva(ioc), w, b


def test_waveform_and_image_in_and_out_on_both_protocols(tmp_path, prefix, launch, ca, pva):
    p, (ioc, client, w, b) = prefix, _serve_vd(tmp_path, prefix, launch, pva)
    profile_ca = ca.monitor(f"{p}OUT:profile")
    image_pva = client.monitor(f"{p}OUT:image")
    message = ca.monitor(f"{p}MESSAGE")
    message.wait_for(lambda u: u.value == "orbit: no value yet")

    orbit = np.linspace(-3, 3, ORBIT)
    screen = np.arange(H * W, dtype=np.float32).reshape(H, W) / 10
    ca.put(f"{p}IN:orbit", orbit)  # caput of a waveform
    client.put(f"{p}IN:screen", _frame(screen))  # pvput of an NTNDArray
    y = w @ np.concatenate([orbit, screen.reshape(-1)]) + b

    # CA: the profile waveform and its record fields
    got = profile_ca.wait_for(lambda u: u.severity == 0 and np.allclose(u.value, y[:5], atol=1e-4))
    assert len(got.value) == 5
    fields = {f: ca.get(f"{p}OUT:profile.{f}", as_string=True) for f in
              ("NELM", "NORD", "FTVL", "EGU", "PREC", "DESC", "RTYP")}
    assert fields == {"NELM": "5", "NORD": "5", "FTVL": "DOUBLE", "EGU": "mm", "PREC": "4",
                      "DESC": "predicted profile", "RTYP": "waveform"}
    assert (ca.get(f"{p}OUT:profile.HOPR"), ca.get(f"{p}OUT:profile.LOPR")) == (2.0, -2.0)
    ctrl = ca.ctrl(f"{p}OUT:profile")  # DBR_CTRL of the waveform itself, as a display tool reads it
    assert (ctrl["units"], ctrl["precision"], ctrl["upper_disp_limit"]) == ("mm", 4, 2.0)
    assert ca.get(f"{p}OUT:image.FTVL", as_string=True) == "FLOAT"
    assert int(ca.get(f"{p}OUT:image.NELM")) == H * W
    # CA: the image is a waveform of h*w elements, row-major; SHAPE says [h w]
    np.testing.assert_allclose(ca.get(f"{p}OUT:image"), y[5:5 + H * W], atol=1e-4)
    assert ca.get(f"{p}OUT:image:SHAPE").tolist() == [H, W]
    assert ca.get(f"{p}IN:orbit.EGU") == "mm" and ca.get(f"{p}IN:orbit").tolist() == orbit.tolist()

    # PVA: the profile is an NTScalarArray with the model version; the image an NTNDArray
    v = client.get(f"{p}OUT:profile")
    assert v.getID() == "epics:nt/NTScalarArray:1.0" and np.allclose(v["value"], y[:5], atol=1e-4)
    assert v["version"] == "1" and v["display.units"] == "mm" and v["display.precision"] == 4
    assert v["alarm.severity"] == 0 and v["timeStamp.secondsPastEpoch"] > 1e9
    img = client.get(f"{p}OUT:image")
    assert img.getID() == "epics:nt/NTNDArray:1.0"
    assert [d["size"] for d in img["dimension"]] == [W, H]  # areaDetector order: width first
    assert img["value"].dtype == np.float32
    np.testing.assert_allclose(img["value"].reshape(H, W), y[5:5 + H * W].reshape(H, W), atol=1e-4)
    attrs = {a["name"]: a["value"] for a in img["attribute"]}
    assert attrs == {"ColorMode": 0, "ModelVersion": "1"} and img["version"] == "1"
    assert img["timeStamp.secondsPastEpoch"] == img["dataTimeStamp.secondsPastEpoch"] > 1e9
    assert img["codec.name"] == "" and img["uncompressedSize"] == H * W * 4
    shape = client.get(f"{p}OUT:image:SHAPE")
    assert shape.getID() == "epics:nt/NTScalarArray:1.0" and shape["value"].tolist() == [H, W]
    inp = client.get(f"{p}IN:screen")
    assert np.array_equal(inp["value"].reshape(H, W), screen)

    # a PVA monitor of the image gets each new frame, and uniqueId counts frames
    image_pva.wait_for(lambda u: u.severity == 0 and u.version == "1")
    mark = image_pva.mark()
    ca.put(f"{p}IN:orbit", orbit + 1)
    y2 = w @ np.concatenate([orbit + 1, screen.reshape(-1)]) + b
    image_pva.wait_for(lambda u: np.allclose(u.value, y2[5:5 + H * W], atol=1e-4), since=mark)
    later = client.get(f"{p}OUT:image")
    assert later["uniqueId"] == img["uniqueId"] + 1
    # pvput of an NTScalarArray
    client.put(f"{p}IN:orbit", {"value": orbit - 1})
    y3 = w @ np.concatenate([orbit - 1, screen.reshape(-1)]) + b
    profile_ca.wait_for(lambda u: np.allclose(u.value, y3[:5], atol=1e-4))
    assert "Traceback" not in ioc.output()


def test_bad_frames_make_outputs_invalid_with_the_reason(tmp_path, prefix, launch, ca, pva):
    p, (ioc, client, _, _) = prefix, _serve_vd(tmp_path, prefix, launch, pva)
    profile = ca.monitor(f"{p}OUT:profile")
    status = ca.monitor(f"{p}STATUS")
    orbit = np.zeros(ORBIT)
    screen = np.ones((H, W), dtype=np.float32)
    ca.put(f"{p}IN:orbit", orbit)
    client.put(f"{p}IN:screen", _frame(screen))
    profile.wait_for(lambda u: u.severity == 0)

    def invalid(text: str) -> None:
        profile.wait_for(lambda u: u.severity == 3, since=mark)
        assert ca.get(f"{p}MESSAGE") == text
        assert ca.get(f"{p}STATUS", as_string=True) == "INPUT_INVALID"
        v = client.get(f"{p}OUT:image")  # every output, on both protocols, says why
        assert v["alarm.severity"] == 3 and v["alarm.message"] == f"LINK: {text}"

    def valid_again() -> None:
        profile.wait_for(lambda u: u.severity == 0, since=mark)

    bad = orbit.copy()
    bad[5] = math.nan
    mark = profile.mark()
    ca.put(f"{p}IN:orbit", bad)
    invalid("orbit[5]: NaN")
    assert ca.get_full(f"{p}IN:orbit").severity == 3
    ca.put(f"{p}IN:orbit", orbit)
    valid_again()

    mark = profile.mark()
    client.put(f"{p}IN:screen", _frame(screen.T.copy()))  # the dimension order turned: 6 rows of 4
    invalid(f"screen: {W}x{H}, expected {H}x{W}")
    assert client.get(f"{p}IN:screen:SHAPE")["value"].tolist() == [W, H]
    client.put(f"{p}IN:screen", _frame(screen))
    valid_again()

    mark = profile.mark()
    ca.put(f"{p}IN:orbit", np.full(ORBIT - 2, 1.0))  # a shorter waveform (NORD 6)
    invalid(f"orbit: {ORBIT - 2} elements, expected {ORBIT}")
    assert int(ca.get(f"{p}IN:orbit.NORD")) == ORBIT - 2
    ca.put(f"{p}IN:orbit", orbit)
    valid_again()

    # a compressed frame is refused with the reason; the IOC keeps serving the last good one
    with pytest.raises(Exception, match="codec 'lz4' not decoded"):
        client.put(f"{p}IN:screen", _frame(screen, codec="lz4"))
    assert ca.get(f"{p}STATUS", as_string=True) == "OK" and status.last.value == 0
    assert ioc.proc.poll() is None and "Traceback" not in ioc.output()


WAVEFORM_DB = """\
record(waveform, "$(P)WF") {
    field(FTVL, "DOUBLE")
    field(NELM, "16")
}
"""


def test_c_core_waveform_source_and_a_pva_ndarray_source(tmp_path, prefix, launch, ca, pva, port_pool):
    """CA waveform from a real EPICS IOC (dbCore + RSRV) and NTNDArray frames from a p4p server feed one
    model; a scalar model in the same IOC keeps updating whatever the arrays do."""
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    p, c = prefix, f"C{prefix}"
    (tmp_path / "wf.db").write_text(WAVEFORM_DB)
    ports = port_pool.take()
    cioc = ServerProcess([str(tmp_path / "wf.db"), f"P={c}"], server_env(ports), "cioc", module="tests.support.cioc")
    cioc.ports = ports
    launch.started.append(cioc)
    cioc.start()
    cioc.wait_for_line("CIOC READY", timeout=30)

    camera = SharedPV(initial=_frame(np.zeros((H, W), dtype=np.uint16)))  # posts whole NTNDArray Values
    server = Server(providers=[{f"{c}CAM": camera}], conf={"EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
                                                           "EPICS_PVAS_SERVER_PORT": "0",
                                                           "EPICS_PVAS_BROADCAST_PORT": "0"}, useenv=False)
    try:
        bcast = server.conf()["EPICS_PVAS_BROADCAST_PORT"]
        publish_array_linear(tmp_path / "store", [("orbit", (16,)), ("screen", (H, W))], [("x", ()), ("y", ())],
                             np.vstack([np.r_[np.ones(16), np.zeros(H * W)], np.r_[np.zeros(16), np.ones(H * W)]]),
                             [0.0, 0.0])
        publish_array_linear(tmp_path / "other", [("a", ())], [("z", ())], [[2.0]], [0.0])
        config = write_config(
            tmp_path / "ioc.yaml",
            model(p, inputs=[{"name": "orbit", "shape": [16], "source": f"ca://{c}WF"},
                             {"name": "screen", "shape": [H, W], "source": f"pva://{c}CAM"}],
                  outputs=["x", "y"]),
            model(f"{p}O:", name="other", store="other", inputs=["a"], outputs=["z"]),
            ioc={"metrics_port": 0})
        ioc = launch.ioc(config, sources=[cioc], env={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{bcast}"})
        client = pva(ioc)
        x_ca, y_pva = ca.monitor(f"{p}OUT:x"), client.monitor(f"{p}OUT:y")
        z = ca.monitor(f"{p}O:OUT:z")
        message = ca.monitor(f"{p}MESSAGE")

        orbit = np.arange(16.0)
        ca.put(f"{c}WF", orbit)  # into the C IOC's waveform record
        frame = (np.arange(H * W) % 7).astype(np.uint16).reshape(H, W)  # a 16-bit camera
        camera.post(_frame(frame))
        x_ca.wait_for(lambda u: u.severity == 0 and abs(u.value - orbit.sum()) < 1e-3, timeout=15)
        y_pva.wait_for(lambda u: u.severity == 0 and abs(u.value - frame.sum()) < 1e-3, timeout=15)
        assert ca.get(f"{p}IN:orbit").tolist() == orbit.tolist()
        assert client.get(f"{p}IN:screen")["value"].reshape(H, W).tolist() == frame.tolist()

        puts = iter(range(1, 100))

        def still_updating() -> None:  # the other model answers while the arrays are bad
            k = float(next(puts))
            client.put(f"{p}O:IN:a", k)
            z.wait_for(lambda u: u.severity == 0 and abs(u.value - 2 * k) < 1e-6)

        def invalid(text: str) -> None:
            message.wait_for(lambda u: u.value == text)
            assert ca.get_full(f"{p}OUT:x").severity == 3 and client.get(f"{p}OUT:y")["alarm.severity"] == 3
            still_updating()

        ca.put(f"{c}WF", orbit[:12])  # the source changes its size (NORD 12)
        invalid("orbit: 12 elements, expected 16")
        bad = orbit.copy()
        bad[9] = math.inf
        ca.put(f"{c}WF", bad)
        invalid("orbit[9]: inf")
        ca.put(f"{c}WF", orbit)
        x_ca.wait_for(lambda u: u.severity == 0, since=x_ca.mark() - 1)

        camera.post(_frame(frame, codec="lz4"))
        invalid("screen: codec 'lz4' not decoded")
        camera.post(_frame(np.ones((W, H), dtype=np.float32)))  # dimensions swapped
        invalid(f"screen: {W}x{H}, expected {H}x{W}")
        camera.post(_frame(frame))
        y_pva.wait_for(lambda u: u.severity == 0, since=y_pva.mark() - 1)
        assert ioc.proc.poll() is None and "Traceback" not in ioc.output()
    finally:
        server.stop()


def test_array_model_hot_reload_challenger_and_rollback(tmp_path, prefix, launch, ca, pva):
    p, (ioc, client, w, b) = prefix, _serve_vd(tmp_path, prefix, launch, pva)
    image = client.monitor(f"{p}OUT:image")
    ca.put(f"{p}IN:orbit", np.ones(ORBIT))
    client.put(f"{p}IN:screen", _frame(np.ones((H, W), dtype=np.float32)))
    x = np.concatenate([np.ones(ORBIT), np.ones(H * W)])
    image.wait_for(lambda u: u.severity == 0 and u.version == "1")

    # v2 (twice the weights) as challenger: shadowed on the same snapshot, then promoted
    inputs = [("orbit", (ORBIT,)), ("screen", (H, W))]
    outputs = [("profile", (5,)), ("image", (H, W)), ("s", ())]
    store, v2 = publish_array_linear(tmp_path / "store", inputs, outputs, 2 * w, b, pointer="challenger")
    y2 = 2 * w @ x + b
    challenger = ca.monitor(f"{p}CHALLENGER:OUT:profile")
    challenger.wait_for(lambda u: u.severity == 0 and np.allclose(u.value, y2[:5], atol=1e-4), timeout=15)
    ca.put(f"{p}PROMOTE", 1)
    got = image.wait_for(lambda u: u.version == str(v2) and u.severity == 0, timeout=15)
    np.testing.assert_allclose(got.value, y2[5:5 + H * W], atol=1e-4)
    assert {a["name"]: a["value"] for a in client.get(f"{p}OUT:image")["attribute"]}["ModelVersion"] == str(v2)

    ca.put(f"{p}ROLLBACK", 1)
    got = image.wait_for(lambda u: u.version == "1" and u.severity == 0, since=image.mark() - 1, timeout=15)
    np.testing.assert_allclose(got.value, (w @ x + b)[5:5 + H * W], atol=1e-4)
    assert store.champion() == 1 and "Traceback" not in ioc.output()


async def test_ca_keeps_a_bounded_backlog_of_large_frames(port_pool, ca, prefix):
    """caproto kept each subscription's last 1000 updates, sent or not: with 1 MB frames the IOC grew by
    a frame per post (seen failing then: 30 MB kept). Our server keeps nothing once sent, and at most the
    transport's high-water mark plus one frame per subscription for a client that falls behind
    (tests/integration/test_ca_server.py drives a client that stops reading)."""
    import asyncio

    from ioc.core.pvmodel import Kind, PVDatabase, PVSpec
    from ioc.protocols.ca.server import HIGH_WATER
    from ioc.protocols.ca_server import CaServer

    db = PVDatabase()
    n = 1 << 17  # 1 MB of float64
    pv = db.add(PVSpec(name=f"{prefix}BIG", kind=Kind.WAVEFORM, shape=(n,), initial=0.0))
    server = CaServer(db, port=port_pool.take().ca, interfaces=["127.0.0.1"])
    await server.start()
    try:
        monitor = await asyncio.to_thread(ca.monitor, f"{prefix}BIG")
        worst = 0
        for k in range(30):
            pv.post(np.full(n, float(k + 1)), time.time())
            await asyncio.sleep(0.005)
            worst = max(worst, sum(c.queued_bytes() for c in server.circuits))
        await asyncio.to_thread(monitor.wait_for, lambda u: u.value[0] == 30.0)
        assert worst <= HIGH_WATER + 8 * n + 64
        assert sum(c.queued_bytes() for c in server.circuits) == 0  # nothing kept once delivered
    finally:
        await server.stop()


def test_a_ca_waveform_source_larger_than_16_kb_arrives_whole(tmp_path, prefix, launch, ca, port_pool):
    """EPICS_CA_MAX_ARRAY_BYTES defaults to 16 kB (2048 doubles); a 4096-element orbit from a C IOC (whose RSRV
    is configured for it) still reaches an IOC started with that default: the IOC's libca takes large arrays."""
    p, c = prefix, f"C{prefix}"
    (tmp_path / "big.db").write_text('record(waveform, "$(P)BIG") {\n    field(FTVL, "DOUBLE")\n'
                                     '    field(NELM, "4096")\n}\n')
    ports = port_pool.take()
    cioc = ServerProcess([str(tmp_path / "big.db"), f"P={c}"], server_env(ports), "cioc", module="tests.support.cioc")
    cioc.ports = ports
    launch.started.append(cioc)
    cioc.start()
    cioc.wait_for_line("CIOC READY", timeout=30)
    publish_array_linear(tmp_path / "store", [("orbit", (4096,))], [("x", ())], np.ones((1, 4096)) / 4096, [0.0])
    config = write_config(tmp_path / "ioc.yaml", model(p, inputs=[{"name": "orbit", "shape": [4096],
                                                                    "source": f"ca://{c}BIG"}], outputs=["x"]),
                          ioc={"metrics_port": 0})
    launch.ioc(config, sources=[cioc], env={"EPICS_CA_MAX_ARRAY_BYTES": "16384"})  # the default of most hosts
    out = ca.monitor(f"{p}OUT:x")
    orbit = np.arange(4096.0) / 100
    ca.put(f"{c}BIG", orbit)
    out.wait_for(lambda u: u.severity == 0 and abs(u.value - orbit.mean()) < 1e-4, timeout=15)  # float32 graph
    assert ca.get(f"{p}IN:orbit.NORD") == 4096 and ca.get(f"{p}IN:orbit")[-1] == orbit[-1]
