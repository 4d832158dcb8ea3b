"""Calls to stations that answer badly, slowly or not at all (R-O2, R-E4):
every call ends in a typed outcome with a message, the hub carries on; a
station's reconnection replaces its old connection; leniencies are logged
once per connection."""

import asyncio
import json
import logging

import pytest

from drivers.ocpp import PowerLimit, StationConfig
from drivers.ocpp.events import Heartbeat, MeterValues, StationConnected, StationDisconnected
from ocpp_rig import RawStation

pytestmark = [pytest.mark.hil, pytest.mark.charger]
VERSIONS = ["ocpp1.6", "ocpp2.0.1"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o2_a_refused_remote_start_is_a_clear_outcome(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version)
    await sim.connect()
    sim.plug(0)
    sim.reject_remote_start = True
    outcome = await ocpp_rig.listener.station("CS-1").remote_start(1, "CARD-OK")
    assert outcome.kind == "Rejected" and outcome.status == "Rejected"
    assert outcome.message.startswith("CS-1 refused Request" if version == "ocpp2.0.1" else "CS-1 refused Remote")


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_e4_a_slow_station_times_out_and_its_late_answer_is_ignored(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version)
    await sim.connect()
    station = ocpp_rig.listener.station("CS-1")
    sim.slow_answers_s = 0.5
    timed_out = await station.set_power_limit(PowerLimit(100_000, "tx_default", 1), timeout_s=0.1)
    assert timed_out.kind == "Timeout" and "did not answer SetChargingProfile within 0.1 s" in timed_out.message
    sim.slow_answers_s = 0.0
    await asyncio.sleep(0.6)  # the late answer arrives and is dropped
    ok = await station.trigger_status()
    assert ok.kind == "Accepted" and ok.action == "TriggerMessage"


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o2_unsupported_calls_and_disconnected_stations(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    station = ocpp_rig.listener.station("CS-1")
    offline = await station.unlock(1)
    assert offline.kind == "Error" and "not connected" in offline.message
    sim = ocpp_rig.station("CS-1", version)
    await sim.connect()
    sim.unsupported = {"UnlockConnector", "SetChargingProfile"}  # a CALLERROR NotSupported
    unsupported = await station.unlock(1)
    assert unsupported.kind == "NotSupported" and "carries on" in unsupported.message
    assert (await station.set_power_limit(PowerLimit(1000, "station_max"))).kind == "NotSupported"
    sim.unsupported = set()
    assert (await station.unlock(1)).kind == "Accepted"


async def test_calling_a_station_from_inside_its_own_handler_is_refused_not_deadlocked(ocpp_rig):
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6")])
    errors = []

    async def heartbeat(event):
        try:
            await ocpp_rig.listener.station("CS-1").trigger_status()
        except RuntimeError as exc:
            errors.append(str(exc))
    ocpp_rig.recorder.heartbeat = heartbeat
    sim = ocpp_rig.station("CS-1", "ocpp1.6")
    await sim.connect()
    answer = await asyncio.wait_for(sim.call("Heartbeat", {}), 2)
    assert answer["currentTime"] and "schedule it in a task" in errors[0]


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o1_a_new_connection_of_the_same_station_replaces_the_old(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    old = ocpp_rig.station("CS-1", version)
    await old.connect()
    new = ocpp_rig.station("CS-1", version)
    await new.connect(boot=False)
    gone = await ocpp_rig.recorder.wait_for(StationDisconnected)
    assert "replaced by a new connection" in gone[0].reason
    events = [type(e) for e in ocpp_rig.recorder.events if isinstance(e, (StationConnected, StationDisconnected))]
    assert events == [StationConnected, StationDisconnected, StationConnected]
    assert (await ocpp_rig.listener.station("CS-1").trigger_status()).kind == "Accepted"
    await asyncio.sleep(0.05)
    assert old._ws is None or old._ws.closed


async def test_r_o6_leniency_repairs_are_logged_once_per_connection(ocpp_rig, caplog):
    caplog.set_level(logging.INFO, logger="hubedge.ocpp")
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6", leniencies=frozenset({"numeric_sampled_values"}))])
    frame = json.dumps([2, "m{}", "MeterValues", {"connectorId": 1, "meterValue": [
        {"timestamp": "2026-03-02T12:00:00Z", "sampledValue": [{"value": 1200.5, "unit": "Wh"}]}]}])
    for _connection in range(2):
        async with RawStation(ocpp_rig, "CS-1", "ocpp1.6") as raw:
            for n in range(3):
                reply = await raw.exchange(frame.replace("m{}", f"m{n}"))
                assert reply == [3, f"m{n}", {}]
        await ocpp_rig.recorder.wait_for(StationDisconnected, _connection + 1)
    repaired = [r.getMessage() for r in caplog.records if "ocpp_leniency" in r.getMessage()]
    assert len(repaired) == 2 and "numeric_sampled_values" in repaired[0] and "1200.5" in repaired[0]
    assert "repairs={'numeric_sampled_values': 3}" in caplog.text  # the summary at the connection's end
    assert [m.readings[0].energy_wh for m in ocpp_rig.recorder.of(MeterValues)] == [1200.5] * 6


async def test_r_o6_binary_frames_get_a_callerror_and_the_connection_stays(ocpp_rig):
    await ocpp_rig.start([StationConfig("CS-1", "ocpp2.0.1")])
    async with RawStation(ocpp_rig, "CS-1", "ocpp2.0.1") as raw:
        await raw.ws.send_bytes(b'[2,"m1","Heartbeat",{}]')
        assert (await raw.reply())[:3] == [4, "-1", "RpcFrameworkError"]
        assert (await raw.exchange('[2,"m2","Heartbeat",{}]'))[:2] == [3, "m2"]
    assert len(ocpp_rig.recorder.of(Heartbeat)) == 1


async def test_r_o6_empty_frames_answered_unless_the_station_has_ignore_empty_frames(ocpp_rig):
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6"),
                          StationConfig("CS-2", "ocpp1.6", leniencies=frozenset({"ignore_empty_frames"}))])
    async with RawStation(ocpp_rig, "CS-1", "ocpp1.6") as raw:
        assert (await raw.exchange(""))[:3] == [4, "-1", "FormationViolation"]  # 2.0.1 would say RpcFrameworkError
    async with RawStation(ocpp_rig, "CS-2", "ocpp1.6") as raw:
        await raw.send("")
        assert (await raw.exchange('[2,"m1","Heartbeat",{}]'))[:2] == [3, "m1"]  # the empty frame got nothing


async def test_r_e4_smart_charging_leniencies_are_logged_once_per_connection(ocpp_rig, caplog):
    caplog.set_level(logging.WARNING, logger="hubedge.ocpp")
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6", voltage_v=400, phases=3,
                                        leniencies=frozenset({"limits_in_amps", "stack_level_zero"}))])
    sim = ocpp_rig.station("CS-1", "ocpp1.6")
    await sim.connect()
    station = ocpp_rig.listener.station("CS-1")
    for watts in (48_000, 24_000):
        assert (await station.set_power_limit(PowerLimit(watts, "station_max"))).kind == "Accepted"
    profile = [p for a, p in sim.received if a == "SetChargingProfile"][-1]["csChargingProfiles"]
    assert profile["chargingSchedule"]["chargingSchedulePeriod"][0] == {"startPeriod": 0, "limit": 20.0,
                                                                        "numberPhases": 3}
    assert sim.connectors[0].limit_w == 24_000
    lines = [r.getMessage() for r in caplog.records if "ocpp_leniency" in r.getMessage()]
    assert len(lines) == 2 and "48000 W sent as 40 A at 400 V x 3 phases" in " ".join(lines)


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o7_a_request_that_breaks_the_schema_is_never_sent(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version)
    await sim.connect()
    station = ocpp_rig.listener.station("CS-1")
    from datetime import datetime, timezone
    outcome = await station.reserve(1, "not-a-number", "CARD-OK", datetime.now(timezone.utc))
    assert outcome.kind == "Error" and "not sent, the request breaks the OCPP schema" in outcome.message
    await asyncio.sleep(0.05)
    assert not sim.received
    assert (await station.trigger_status()).kind == "Accepted"


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o7_an_answer_that_breaks_the_schema_is_an_error_outcome(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version)
    await sim.connect()
    sim._on_TriggerMessage = lambda payload: {"status": "Maybe"}
    outcome = await ocpp_rig.listener.station("CS-1").trigger_status()
    assert outcome.kind == "Error" and "answer breaks the OCPP schema" in outcome.message
