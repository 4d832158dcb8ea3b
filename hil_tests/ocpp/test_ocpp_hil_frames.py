"""Bad input over real websockets (R-O6): oversize frames close only that
station's connection (1009), garbage and floods are answered with the
CALLERROR each version names, and another station keeps working meanwhile."""

import asyncio
import json
import logging
import time

import pytest
from ocpp_rig import RawStation

from drivers.ocpp import StationConfig
from drivers.ocpp.events import Heartbeat, StationDisconnected

pytestmark = [pytest.mark.hil, pytest.mark.charger]


async def test_r_o6_oversize_frame_closes_only_that_station_with_1009(ocpp_rig):
    await ocpp_rig.start([StationConfig("CS-BIG", "ocpp1.6"), StationConfig("CS-OK", "ocpp2.0.1")],
                         max_frame_bytes=4096)
    big, ok = ocpp_rig.station("CS-BIG", "ocpp1.6"), ocpp_rig.station("CS-OK", "ocpp2.0.1")
    await big.connect()
    await ok.connect()
    await big.send_raw(json.dumps([2, "m1", "DataTransfer", {"vendorId": "x", "data": "A" * 5000}]))
    gone = await ocpp_rig.recorder.wait_for(StationDisconnected, where=lambda e: e.station == "CS-BIG")
    assert "4096 bytes" in gone[0].reason and "1009" in gone[0].reason
    await asyncio.sleep(0.05)
    assert big._ws.close_code == 1009
    assert (await ok.call("Heartbeat", {}))["currentTime"]
    assert ocpp_rig.listener.station("CS-OK").connected and not ocpp_rig.listener.station("CS-BIG").connected
    await big.connect(boot=False)  # and it may come back
    assert (await big.call("Heartbeat", {}))["currentTime"]


@pytest.mark.parametrize("version,codes", [
    ("ocpp1.6", ["FormationViolation", "FormationViolation", "FormationViolation", "FormationViolation",
                 "NotImplemented", "OccurenceConstraintViolation", "TypeConstraintViolation", "PropertyConstraintViolation",
                 "FormationViolation", "NotSupported"]),
    ("ocpp2.0.1", ["FormatViolation", "RpcFrameworkError", "RpcFrameworkError", "RpcFrameworkError",
                   "NotImplemented", "OccurrenceConstraintViolation", "TypeConstraintViolation", "PropertyConstraintViolation",
                   "FormatViolation", "NotSupported"]),
])
async def test_r_o6_garbage_is_answered_with_the_code_the_version_names(ocpp_rig, version, codes):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    status = ({"connectorId": 1, "errorCode": "NoError", "status": "Occupied"} if version == "ocpp1.6" else
              {"timestamp": "2026-03-02T12:00:00Z", "connectorStatus": "Charging", "evseId": 1, "connectorId": 1})
    bad_type = ({"connectorId": "1", "errorCode": "NoError", "status": "Available"} if version == "ocpp1.6" else
                {"timestamp": "2026-03-02T12:00:00Z", "connectorStatus": "Available", "evseId": "1", "connectorId": 1})
    reset = {"type": "Hard"} if version == "ocpp1.6" else {"type": "Immediate"}
    frames = [('[2,"g1","Heartbeat",{}', "g1"), ("garbage!", "-1"), ('{"hello":1}', "-1"), ('[2,7,"Heartbeat",{}]', "-1"),
              ('[2,"g4","FooBar",{}]', "g4"), ('[2,"g5","Authorize",{}]', "g5"),
              (json.dumps([2, "g6", "StatusNotification", bad_type]), "g6"),
              (json.dumps([2, "g7", "StatusNotification", status]), "g7"),
              ('[2,"g8","Heartbeat",{"extra":true}]', "g8"), (json.dumps([2, "g9", "Reset", reset]), "g9")]
    async with RawStation(ocpp_rig, "CS-1", version) as raw:
        got = []
        for text, mid in frames:
            reply = await raw.exchange(text)
            assert reply[0] == 4 and reply[1] == mid and isinstance(reply[4], dict) and len(reply[3]) <= 255
            got.append(reply[2])
        assert got == codes
        assert ocpp_rig.listener.station("CS-1").connected
        assert (await raw.exchange('[2,"ok","Heartbeat",{}]'))[:2] == [3, "ok"]


async def test_r_o6_a_flood_of_garbage_never_stalls_another_station(ocpp_rig, caplog):
    caplog.set_level(logging.WARNING, logger="hubedge.ocpp")
    await ocpp_rig.start([StationConfig("CS-FLOOD", "ocpp2.0.1"), StationConfig("CS-OK", "ocpp1.6")])
    ok = ocpp_rig.station("CS-OK", "ocpp1.6")
    await ok.connect()
    async with RawStation(ocpp_rig, "CS-FLOOD", "ocpp2.0.1") as flood:
        answered = 0

        async def count_answers():
            nonlocal answered
            while answered < 3000:
                if (await flood.reply(timeout=20))[0] == 4:
                    answered += 1

        counter = asyncio.create_task(count_answers())

        async def send_flood():
            for n in range(3000):
                await flood.send(["garbage", '[2,"x","FooBar",{}]', "[]", '[2,"y","Heartbeat",7]'][n % 4])
                if n % 200 == 0:
                    await asyncio.sleep(0)

        sender = asyncio.create_task(send_flood())
        worst = 0.0
        for _ in range(20):
            t0 = time.monotonic()
            await ok.call("Heartbeat", {})
            worst = max(worst, time.monotonic() - t0)
        await sender
        await asyncio.wait_for(counter, 30)
        assert answered == 3000  # every garbage frame answered, none dropped
        assert worst < 2.0
        assert len(ocpp_rig.recorder.of(Heartbeat)) >= 20
        assert ocpp_rig.listener.station("CS-FLOOD").connected
    # the log is not flooded either: a few lines per code, then quiet
    assert caplog.text.count("ocpp_callerror station=CS-FLOOD") <= 12
