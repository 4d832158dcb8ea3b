"""Every message both ways, for both versions, over real websockets (R-O2,
R-O4, R-O7): the station simulator checks every CALL the hub sends against
the official schema, the layer checks every CALL the station sends."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from ocpp_rig import until

from drivers.ocpp import PowerLimit, StationConfig
from drivers.ocpp.events import (AuthoriseRequest, ConnectorStatus, MeterValues, Notification, StationBooted,
                                 StationConnected, TransactionEnded, TransactionStarted, TransactionUpdated)

pytestmark = [pytest.mark.hil, pytest.mark.charger]
VERSIONS = ["ocpp1.6", "ocpp2.0.1"]
T = "2026-03-02T12:00:00Z"


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o2_r_o4_a_card_tapped_at_the_station_runs_a_whole_session(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version, time_scale=120, meter_interval_s=30, signed=True)
    await sim.connect()
    rec = ocpp_rig.recorder
    booted = (await rec.wait_for(StationBooted))[0]
    assert (booted.vendor, booted.model, booted.serial, booted.firmware) == ("SimCharge", "SIM-MCS-1200", "SN-CS-1",
                                                                             "1.0.0-sim")
    sim.plug(0, soc=30)
    assert await sim.tap("CARD-OK") == "Accepted"
    started = (await rec.wait_for(TransactionStarted))[0]
    assert (started.evse, started.id_token, started.meter_start_wh) == (1, "CARD-OK", 1_000_000)
    await rec.wait_for(ConnectorStatus, where=lambda s: s.status == "Charging")
    if version == "ocpp1.6":
        readings = await rec.wait_for(MeterValues, 2)
        assert readings[-1].transaction_id == "1"
        reading = readings[-1].readings[0]
    else:
        updates = await rec.wait_for(TransactionUpdated, 2)
        reading = updates[-1].readings[0]
    assert reading.energy_wh > 1_000_000 and reading.power_w > 0
    assert await sim.tap("CARD-OK") == "Stopped"
    ended = (await rec.wait_for(TransactionEnded))[0]
    assert ended.meter_stop_wh > started.meter_start_wh and ended.reason == "Local"
    signed = [s for r in ended.readings for s in r.signed]
    assert signed and signed[0].data.startswith("OCMF|") and signed[0].encoding == "OCMF"
    await rec.wait_for(ConnectorStatus, where=lambda s: s.status == "Finishing")
    sim.unplug(0)
    await rec.wait_for(ConnectorStatus, where=lambda s: s.status == "Available" and s.at > ended.at)
    assert sim.violations == []
    assert [e.id_token for e in rec.of(AuthoriseRequest)] == ["CARD-OK"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o2_a_blocked_card_is_refused_at_the_station(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version)
    await sim.connect()
    sim.plug(0)
    assert await sim.tap("CARD-BLOCKED") == "Blocked"
    assert await sim.tap("CARD-NEVER-SEEN") == "Invalid"
    await asyncio.sleep(0.1)
    assert not ocpp_rig.recorder.of(TransactionStarted) and sim.connectors[0].tx is None


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o2_r_o7_every_hub_command_reaches_the_station_valid(ocpp_rig, version):
    """Remote start with a TxProfile, limits of every purpose, trigger,
    configuration, availability, reservation, unlock and remote stop."""
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version, connectors=2, time_scale=60)
    await sim.connect()
    station = ocpp_rig.listener.station("CS-1")
    rec = ocpp_rig.recorder
    until_ = datetime.now(timezone.utc) + timedelta(minutes=20)
    assert (await station.reserve(2, 77, "CARD-OK", until_)).kind == "Accepted"
    await rec.wait_for(ConnectorStatus, where=lambda s: s.evse == 2 and s.status == "Reserved")
    assert (await station.cancel_reservation(77)).kind == "Accepted"
    assert (await station.cancel_reservation(77)).kind == "Rejected"
    assert (await station.set_power_limit(PowerLimit(600_000, "station_max", 0))).kind == "Accepted"
    assert (await station.set_power_limit(PowerLimit(200_000, "tx_default", 1))).kind == "Accepted"
    sim.plug(0, soc=40)
    start = await station.remote_start(1, "CARD-OK", limit=PowerLimit(150_000))
    assert start.kind == "Accepted"
    started = (await rec.wait_for(TransactionStarted))[0]
    tx = started.transaction_id or "1"
    if version == "ocpp2.0.1":
        assert started.remote_start_id is not None and started.trigger == "RemoteStart"
    await until(lambda: sim.connectors[0].limit_w == 150_000)
    limit = await station.set_power_limit(PowerLimit(80_000, "tx", 1, transaction_id=tx))
    assert limit.kind == "Accepted"
    await until(lambda: 79_000 < sim.connectors[0].power_w <= 80_000)  # followed with a ramp
    assert (await station.trigger_meter_values(1)).kind == "Accepted"
    assert (await station.trigger_status()).kind == "Accepted"
    assert (await station.set_meter_interval(15)).kind == "Accepted" and sim.meter_interval_s == 15
    assert (await station.set_heartbeat_interval(90)).kind == "Accepted" and sim.heartbeat_interval_s == 90
    assert (await station.set_available(2, False)).kind == "Accepted"
    await rec.wait_for(ConnectorStatus, where=lambda s: s.evse == 2 and s.status == "Unavailable")
    assert (await station.set_available(2, True)).kind == "Accepted"
    unlock_busy = await station.unlock(1)
    assert unlock_busy.kind == ("Rejected" if version == "ocpp2.0.1" else "Accepted")
    if version == "ocpp2.0.1":
        assert (await station.remote_stop(tx)).kind == "Accepted"
    ended = (await rec.wait_for(TransactionEnded))[0]
    assert ended.transaction_id == tx
    assert ended.reason == ("UnlockCommand" if version == "ocpp1.6" else "Remote")
    assert (await station.unlock(1)).kind == "Accepted"
    assert (await station.clear_power_limit("tx_default", 1)).kind == "Accepted"
    assert (await station.remote_stop("999" if version == "ocpp1.6" else "nope")).kind == "Rejected"
    assert sim.violations == []
    sent = {action for action, _ in sim.received}
    common = {"ReserveNow", "CancelReservation", "SetChargingProfile", "TriggerMessage", "ChangeAvailability",
              "UnlockConnector", "ClearChargingProfile"}
    assert sent == common | ({"RemoteStartTransaction", "RemoteStopTransaction", "ChangeConfiguration"}
                             if version == "ocpp1.6" else
                             {"RequestStartTransaction", "RequestStopTransaction", "SetVariables"})
    assert rec.of(StationConnected)


@pytest.mark.parametrize("version", VERSIONS)
async def test_r_o2_notifications_and_data_transfer(ocpp_rig, version):
    await ocpp_rig.start([StationConfig("CS-1", version)])
    sim = ocpp_rig.station("CS-1", version)
    await sim.connect()
    assert (await sim.call("DataTransfer", {"vendorId": "com.acme", "messageId": "x"}))["status"] == "UnknownVendorId"
    await sim.call("SecurityEventNotification", {"type": "FirmwareUpdated", "timestamp": T})
    await sim.call("FirmwareStatusNotification", {"status": "Installed"})
    await sim.call("LogStatusNotification", {"status": "Uploaded"} if version == "ocpp1.6" else
                   {"status": "Uploaded", "requestId": 1})
    if version == "ocpp1.6":
        await sim.call("DiagnosticsStatusNotification", {"status": "UploadFailed"})
    else:
        await sim.call("NotifyEvent", {"generatedAt": T, "seqNo": 0, "eventData": [{
            "eventId": 9, "timestamp": T, "trigger": "Delta", "actualValue": "Faulted",
            "eventNotificationType": "HardWiredNotification", "component": {"name": "Connector"},
            "variable": {"name": "AvailabilityState"}}]})
        await sim.call("NotifyReport", {"requestId": 1, "generatedAt": T, "seqNo": 0, "tbc": False})
        await sim.call("ReservationStatusUpdate", {"reservationId": 3, "reservationUpdateStatus": "Removed"})
        await sim.call("MeterValues", {"evseId": 0, "meterValue": [{"timestamp": T, "sampledValue": [{"value": 1.5}]}]})
        assert ocpp_rig.recorder.of(MeterValues)[0].readings[0].energy_wh == 1.5
    kinds = [n.kind for n in ocpp_rig.recorder.of(Notification)]
    assert kinds[:3] == ["data_transfer", "security", "firmware"] and "log" in kinds
    assert all(n.summary for n in ocpp_rig.recorder.of(Notification))
    assert sim.violations == []
