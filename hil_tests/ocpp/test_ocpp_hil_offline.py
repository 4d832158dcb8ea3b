"""Offline and restarts over real websockets (R-O3, R-O5): what a station
queued while the link or the hub was down is accepted on reconnection and
recorded once; a transaction the hub did not start is recorded, then
decided; the offline clock runs on every frame."""

import asyncio

import pytest
from ocpp_rig import until

from drivers.ocpp import ListenerSettings, OcppListener, StationConfig, password_check
from drivers.ocpp.events import (ConnectorStatus, MeterValues, StationBooted, StationConnected, StationDisconnected,
                                 TransactionEnded, TransactionStarted, TransactionUpdated)
from ocpp_rig import PASSWORD

pytestmark = [pytest.mark.hil, pytest.mark.charger]
VERSIONS = ["ocpp1.6", "ocpp2.0.1"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o3_queued_while_offline_replayed_in_order_and_recorded_once(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version, time_scale=60, meter_interval_s=0)
    await sim.connect()
    rec = ocpp_rig.recorder
    sim.plug(0, soc=20)
    await sim.tap("CARD-OK")
    started = (await rec.wait_for(TransactionStarted))[0]
    await sim.drop()  # the network goes; the station charges on
    await rec.wait_for(StationDisconnected)
    sim.advance(600)
    await sim.send_meter_values(0)
    sim.advance(600)
    await sim.send_meter_values(0)
    await sim.stop(0, "Local")
    assert len(sim.queue) == 3 and not rec.of(TransactionEnded)
    await sim.connect(boot=False)  # a real station does not boot again
    await until(lambda: not sim.queue)
    assert len(rec.of(StationBooted)) == 1 and len(rec.of(StationConnected)) == 2
    ended = rec.transactions(TransactionEnded)
    assert len(ended) == 1 and len(rec.transactions(TransactionStarted)) == 1
    if version == "ocpp1.6":
        meters = [m for m in rec.of(MeterValues) if m.transaction_id == "1"]
        first, second = (m.readings[0] for m in meters)
        assert len(meters) == 2 and first.energy_wh < second.energy_wh <= ended[0].meter_stop_wh
        assert first.at <= second.at <= ended[0].at
        assert ended[0].transaction_id == "1"
    else:
        updates = rec.transactions(TransactionUpdated)
        assert [u.seq_no for u in updates] == [1, 2] and all(u.offline for u in updates)
        assert ended[0].offline and ended[0].seq_no == 3 and ended[0].missing_seq_nos == ()
        assert ended[0].transaction_id == started.transaction_id
    assert ended[0].meter_stop_wh > started.meter_start_wh
    # the same frames again (a station retrying after a lost answer): still recorded once
    for action, build in [("StopTransaction", None)] if version == "ocpp1.6" else []:
        payload = {"transactionId": 1, "meterStop": int(ended[0].meter_stop_wh),
                   "timestamp": ended[0].at.isoformat().replace("+00:00", "Z"), "reason": "Local", "idTag": "CARD-OK"}
        await sim.call(action, payload)
    assert len(rec.transactions(TransactionEnded)) == 1
    assert sim.violations == []


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o3_a_hub_restart_loses_nothing_the_station_queued(ocpp_rig, version):
    """The hub goes away mid-session (its listener stops, as at SIGKILL the
    socket closes); the station queues its stop; a new hub on the same
    port with the same records accepts it once."""
    listener = await ocpp_rig.start([StationConfig("CS-1", version)])
    port = listener.port
    sim = ocpp_rig.station("CS-1", version, time_scale=60, meter_interval_s=0)
    await sim.connect()
    rec = ocpp_rig.recorder
    sim.plug(0, soc=20)
    await sim.tap("CARD-OK")
    await rec.wait_for(TransactionStarted)
    await listener.stop()
    await until(lambda: not sim.connected)
    sim.advance(300)
    await sim.stop(0, "Local")
    assert len(sim.queue) == 1
    ocpp_rig.listener = OcppListener(ListenerSettings(host="127.0.0.1", port=port, ping_interval_s=None),
                                     [StationConfig("CS-1", version)], rec,
                                     password_check({"CS-1": PASSWORD.encode()}))
    await ocpp_rig.listener.start()
    await sim.connect(boot=False)
    await until(lambda: not sim.queue)
    assert len(rec.transactions(TransactionEnded)) == 1 and len(rec.transactions(TransactionStarted)) == 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o3_a_message_the_hub_failed_to_record_is_retried_and_recorded_once(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version, meter_interval_s=0)
    sim.retry_interval_s = 0.2
    await sim.connect()
    rec = ocpp_rig.recorder
    sim.plug(0)
    await sim.tap("CARD-OK")
    await rec.wait_for(TransactionStarted)
    rec.fail_next = 1  # the hub's disk fails once: InternalError, the station keeps the stop
    await sim.stop(0, "Local")
    assert any(a == "CALLERROR" and f[2] == "InternalError" for a, f in sim.answers)
    await until(lambda: not sim.queue)
    assert len(rec.transactions(TransactionEnded)) == 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o3_a_start_the_hub_did_not_make_is_recorded_then_decided(ocpp_rig, version):
    """The hub is down; the station's own list (stale) accepts a card the
    hub has since blocked; on reconnection the start is recorded, the
    hub's answer says Blocked and the station stops the transaction."""
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version, local_list={"CARD-BLOCKED": "Accepted"}, meter_interval_s=0)
    await sim.connect()
    await sim.disconnect()
    sim.plug(0)
    assert await sim.tap("CARD-BLOCKED") == "Accepted"  # the station's list decided
    assert sim.connectors[0].tx is not None and len(sim.queue) == 1
    await sim.connect(boot=False)
    rec = ocpp_rig.recorder
    started = (await rec.wait_for(TransactionStarted))[0]
    assert started.id_token == "CARD-BLOCKED"
    if version == "ocpp2.0.1":
        assert started.offline
    ended = (await rec.wait_for(TransactionEnded))[0]
    assert ended.reason == "DeAuthorized"


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o5_the_offline_clock_and_status_asked_again_after_reconnection(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)], offline_after_s=0.3)
    station = ocpp_rig.listener.station("CS-1")
    assert station.silent_for() is None and station.offline(0.3)
    sim = ocpp_rig.station("CS-1", version, meter_interval_s=0)
    await sim.connect()
    assert station.silent_for() < 0.3 and not station.offline(0.3)
    assert ocpp_rig.listener.offline() == []
    await asyncio.sleep(0.4)  # connected but silent: offline all the same
    assert station.offline(0.3) and station.connected and ocpp_rig.listener.offline() == ["CS-1"]
    await sim.call("Heartbeat", {})
    assert not station.offline(0.3)
    await sim.drop()
    await ocpp_rig.recorder.wait_for(StationDisconnected)
    await asyncio.sleep(0.4)
    assert station.offline(0.3) and not station.connected
    before = len(ocpp_rig.recorder.of(ConnectorStatus))
    await sim.connect(boot=False)
    assert station.connected and not station.offline(0.3)
    # the hub asks instead of trusting what it saw before (from a task, never from a handler)
    assert (await station.trigger_status()).kind == "Accepted"
    await until(lambda: len(ocpp_rig.recorder.of(ConnectorStatus)) > before + 1)
