"""The PVA adapter on its own: what a client gets from PVs that changed before the server started."""

from __future__ import annotations

import math

from p4p.client.thread import Context

from ioc.core.pvmodel import AlarmLimits, Kind, PVDatabase, PVSpec, Severity
from ioc.protocols.pva_server import PvaServer


async def test_a_pv_posted_before_the_server_opened_is_served_whole():
    db = PVDatabase()
    out = db.add(PVSpec(name="PA:OUT", kind=Kind.AI, egu="mm", prec=2, alarm=AlarmLimits(high=1.0),
                        version_field=True, initial=math.nan))
    out.post(1.5, 1000.25, tag="7")  # e.g. a model that loaded before the servers were up
    server = PvaServer(db, port=0, broadcast_port=0, interfaces=["127.0.0.1"])
    await server.start()
    conf = server.server.conf()
    ctx = Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{conf['EPICS_PVAS_BROADCAST_PORT']}",
                               "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, useenv=False, nt=False)
    try:
        v = ctx.get("PA:OUT", timeout=5)
        assert v["value"] == 1.5 and v["version"] == "7"
        assert v["alarm.severity"] == Severity.MINOR and v["alarm.message"] == "HIGH"
        assert v["timeStamp.secondsPastEpoch"] + v["timeStamp.nanoseconds"] * 1e-9 == 1000.25
        assert v["display.units"] == "mm" and v["display.precision"] == 2
    finally:
        ctx.close()
        await server.stop()
