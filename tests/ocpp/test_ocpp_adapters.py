"""The version adapters both ways (R-O2..R-O5): station messages into the
hub's vocabulary, the hub's commands into calls that pass the official
schema (R-O7), and the station's answers into typed outcomes."""

from dataclasses import asdict
from datetime import timedelta

import pytest
from ocpp_units import NOW, make
from ocpp.messages import Call as LibCall, _validate_payload
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case

from drivers.ocpp import IdTokenDecision, PowerLimit, rpc
from drivers.ocpp.adapter import HubBug
from drivers.ocpp.events import (AuthoriseRequest, ConnectorStatus, MeterValues, Notification, StationBooted,
                                 TransactionEnded, TransactionStarted, TransactionUpdated)
from drivers.ocpp.v201 import ConnectorView, SeqTracker

T = "2026-03-02T11:59:50Z"


async def handle(adapter, action, payload):
    """As the connection does: the schema first, then the adapter, then our answer's schema."""
    checked = rpc.check_call(adapter.version, rpc.Call("m1", action, payload))
    assert not isinstance(checked, rpc.Refusal), checked
    answer = await adapter.answer(action, checked.payload)
    assert rpc.check_answer(adapter.version, action, answer) is None, answer
    return answer


def wire(version, payload_dataclass) -> dict:
    """A command as it goes on the wire, checked against the official schema."""
    payload = remove_nones(snake_to_camel_case(serialize_as_dict(payload_dataclass)))
    _validate_payload(LibCall("x", type(payload_dataclass).__name__, payload), version[4:])
    return payload


# ------------------------------------------------------------------ station -> hub, 1.6
async def test_r_o2_1_6_boot_is_accepted_with_the_heartbeat_interval(a16):
    adapter, rec = a16
    answer = await handle(adapter, "BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "MCS-1",
                                                         "chargeBoxSerialNumber": "SN9", "firmwareVersion": "4.2"})
    assert answer == {"status": "Accepted", "currentTime": "2026-03-02T12:00:00.000Z", "interval": 120}
    assert rec.of(StationBooted)[0] == StationBooted("CS-1", "ACME", "MCS-1", "SN9", "4.2", None, NOW, None, None)


async def test_r_o2_1_6_status_notification_keeps_the_r_c1_name_and_the_error(a16):
    adapter, rec = a16
    await handle(adapter, "StatusNotification", {"connectorId": 2, "errorCode": "GroundFailure", "status": "Faulted",
                                                 "timestamp": T, "info": "RCD tripped"})
    await handle(adapter, "StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"})
    first, station = rec.of(ConnectorStatus)
    assert (first.evse, first.connector, first.status, first.error_code, first.info) == (2, 1, "Faulted",
                                                                                         "GroundFailure", "RCD tripped")
    assert first.at == NOW - timedelta(seconds=10)
    assert (station.evse, station.connector, station.error_code, station.at) == (0, 0, None, NOW)


async def test_r_o2_1_6_authorise_gets_the_hubs_decision(a16):
    adapter, rec = a16
    assert (await handle(adapter, "Authorize", {"idTag": "CARD-OK"}))["idTagInfo"] == {"status": "Accepted"}
    assert (await handle(adapter, "Authorize", {"idTag": "CARD-BLOCKED"}))["idTagInfo"]["status"] == "Blocked"
    rec.cards["CARD-NC"] = "NoCredit"  # a 2.0.1 word is sent to a 1.6 station as Invalid
    assert (await handle(adapter, "Authorize", {"idTag": "CARD-NC"}))["idTagInfo"]["status"] == "Invalid"
    assert rec.of(AuthoriseRequest)[0].token_type == "IdTag"


async def test_r_o3_1_6_start_gets_the_hubs_transaction_id_and_an_old_start_is_marked_offline(a16):
    adapter, rec = a16
    answer = await handle(adapter, "StartTransaction", {"connectorId": 1, "idTag": "CARD-OK", "meterStart": 1000,
                                                        "timestamp": T, "reservationId": 4})
    assert answer == {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
    old = "2026-03-02T09:00:00Z"
    again = await handle(adapter, "StartTransaction", {"connectorId": 1, "idTag": "CARD-OK", "meterStart": 1000,
                                                       "timestamp": T, "reservationId": 4})
    assert again["transactionId"] == 1  # a replayed start: the same id (the hub keyed it on content)
    await handle(adapter, "StartTransaction", {"connectorId": 2, "idTag": "X", "meterStart": 5, "timestamp": old})
    started = rec.of(TransactionStarted)
    assert (started[0].evse, started[0].meter_start_wh, started[0].reservation_id, started[0].offline) == (1, 1000, 4,
                                                                                                       False)
    assert started[0].key == started[1].key
    assert started[2].offline is True


async def test_r_o3_1_6_a_hub_that_gives_no_valid_id_is_a_bug_not_an_answer(a16):
    adapter, rec = a16
    for bad in (None, 0, 2**31, "7"):
        async def give(event, bad=bad):
            from drivers.ocpp import StartAnswer
            return StartAnswer(IdTokenDecision("Accepted"), bad)
        rec.transaction_started = give
        with pytest.raises(HubBug):
            await adapter.answer("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0,
                                                      "timestamp": T})


async def test_r_o4_1_6_stop_with_signed_transaction_data_kept_verbatim(a16):
    adapter, rec = a16
    ocmf = 'OCMF|{"FV":"1.0","RD":[{"TX":"E","RV":12.5}]}|{"SD":"00"}'
    oca = '{"signedMeterData":"T0NNRnx7fQ==","signingMethod":"","encodingMethod":"OCMF","publicKey":""}'
    answer = await handle(adapter, "StopTransaction", {
        "transactionId": 99, "meterStop": 12500, "timestamp": T, "idTag": "CARD-OK",
        "transactionData": [{"timestamp": T, "sampledValue": [
            {"value": ocmf, "format": "SignedData", "context": "Transaction.End"},
            {"value": oca, "format": "SignedData", "context": "Transaction.Begin"},
            {"value": "12.5", "unit": "kWh", "context": "Transaction.End"}]}]})
    assert answer == {"idTagInfo": {"status": "Accepted"}}
    ended = rec.of(TransactionEnded)[0]
    assert (ended.transaction_id, ended.meter_stop_wh, ended.reason) == ("99", 12500, "Local")
    reading = ended.readings[0]
    assert [s.data for s in reading.signed] == [ocmf, oca]
    assert [s.encoding for s in reading.signed] == ["OCMF", "OCMF"]
    assert reading.energy_wh == 12500.0


async def test_r_o3_1_6_stop_of_an_unknown_transaction_is_recorded_and_answered(a16):
    adapter, rec = a16
    answer = await handle(adapter, "StopTransaction", {"transactionId": 0, "meterStop": 5, "timestamp": T,
                                                       "reason": "PowerLoss"})
    assert answer == {}
    assert rec.of(TransactionEnded)[0].transaction_id == "0"


async def test_r_o4_1_6_meter_values_scaled_to_wh_and_w_with_phases_summed(a16):
    adapter, rec = a16
    await handle(adapter, "MeterValues", {"connectorId": 1, "transactionId": 7, "meterValue": [{
        "timestamp": T, "sampledValue": [
            {"value": "1234.5", "unit": "kWh"},
            {"value": "100", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L1"},
            {"value": "110", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L2"},
            {"value": "120", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L3"},
            {"value": "55.5", "measurand": "SoC", "unit": "Percent", "location": "EV"},
            {"value": "", "measurand": "Voltage", "unit": "V"}]}]})
    event = rec.of(MeterValues)[0]
    assert (event.evse, event.connector, event.transaction_id) == (1, 1, "7")
    r = event.readings[0]
    assert (r.energy_wh, r.power_w, r.soc_percent) == (1234500.0, 330000.0, 55.5)
    assert adapter.problems and "Voltage" in adapter.problems[0]


async def test_r_o2_1_6_data_transfer_is_unknown_vendor_and_notifications_are_typed(a16):
    adapter, rec = a16
    assert await handle(adapter, "DataTransfer", {"vendorId": "com.acme", "data": "x"}) == {"status":
                                                                                           "UnknownVendorId"}
    await handle(adapter, "FirmwareStatusNotification", {"status": "InstallationFailed"})
    await handle(adapter, "DiagnosticsStatusNotification", {"status": "Uploaded"})
    await handle(adapter, "SecurityEventNotification", {"type": "TamperDetectionActivated", "timestamp": T})
    await handle(adapter, "Heartbeat", {})
    kinds = [(n.kind, n.technician) for n in rec.of(Notification)]
    assert kinds == [("data_transfer", False), ("firmware", True), ("diagnostics", False), ("security", True)]


# ------------------------------------------------------------------ station -> hub, 2.0.1
def tx_event(event, seq, *, state=None, offline=False, evse=True, token=None, reason=None, meter=None):
    p = {"eventType": event, "timestamp": T, "triggerReason": "Authorized", "seqNo": seq,
         "transactionInfo": {"transactionId": "TX-1"}}
    if state:
        p["transactionInfo"]["chargingState"] = state
    if reason:
        p["transactionInfo"]["stoppedReason"] = reason
    if offline:
        p["offline"] = True
    if evse:
        p["evse"] = {"id": 1, "connectorId": 1}
    if token:
        p["idToken"] = {"idToken": token, "type": "ISO14443"}
    if meter is not None:
        p["meterValue"] = [{"timestamp": T, "sampledValue": meter}]
    return p


async def test_r_o2_2_0_1_status_built_from_status_notification_and_charging_state(a201):
    adapter, rec = a201
    status = {"timestamp": T, "evseId": 1, "connectorId": 1}
    await handle(adapter, "StatusNotification", dict(status, connectorStatus="Occupied"))
    await handle(adapter, "TransactionEvent", tx_event("Started", 0, state="EVConnected", token="CARD-OK"))
    await handle(adapter, "TransactionEvent", tx_event("Updated", 1, state="Charging", evse=False))
    await handle(adapter, "TransactionEvent", tx_event("Updated", 2, state="SuspendedEV", evse=False))
    await handle(adapter, "TransactionEvent", tx_event("Ended", 3, reason="EVDisconnected", evse=False))
    await handle(adapter, "StatusNotification", dict(status, connectorStatus="Available"))
    states = [(s.status, s.source) for s in rec.of(ConnectorStatus)]
    assert states == [("Preparing", "StatusNotification"), ("Charging", "TransactionEvent"),
                      ("SuspendedEV", "TransactionEvent"), ("Finishing", "TransactionEvent"),
                      ("Available", "StatusNotification")]
    assert all(s.station_status in ("Occupied", "Available") for s in rec.of(ConnectorStatus))


async def test_r_o3_2_0_1_offline_events_are_recorded_but_never_move_the_state(a201):
    adapter, rec = a201
    await handle(adapter, "StatusNotification", {"timestamp": T, "evseId": 1, "connectorId": 1,
                                                 "connectorStatus": "Available"})
    await handle(adapter, "TransactionEvent", tx_event("Started", 0, state="Charging", offline=True))
    await handle(adapter, "TransactionEvent", tx_event("Ended", 1, offline=True, reason="Local"))
    assert [s.status for s in rec.of(ConnectorStatus)] == ["Available"]
    started, ended = rec.of(TransactionStarted)[0], rec.of(TransactionEnded)[0]
    assert started.offline and ended.offline and started.transaction_id == "TX-1"
    assert (ended.evse, ended.connector) == (1, 1)  # taken from the transaction's first event


async def test_r_o3_2_0_1_seq_no_gaps_are_noticed_and_duplicates_share_a_key(a201):
    adapter, rec = a201
    await handle(adapter, "TransactionEvent", tx_event("Started", 0))
    await handle(adapter, "TransactionEvent", tx_event("Updated", 3))
    await handle(adapter, "TransactionEvent", tx_event("Updated", 3))
    first, second = rec.of(TransactionUpdated)
    assert first.missing_seq_nos == (1, 2) and second.missing_seq_nos == ()
    assert first.key == second.key


async def test_r_o4_2_0_1_meter_values_with_multiplier_and_signed_value(a201):
    adapter, rec = a201
    signed = {"signedMeterData": "T0NNRnx7fXx7fQ==", "signingMethod": "ECDSA-secp256r1-SHA256",
              "encodingMethod": "OCMF", "publicKey": "a2V5"}
    answer = await handle(adapter, "TransactionEvent", tx_event("Ended", 4, token="CARD-OK", reason="Local", meter=[
        {"value": 12.345, "unitOfMeasure": {"unit": "kWh"}, "context": "Transaction.End", "signedMeterValue": signed},
        {"value": 35, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 3}}]))
    assert answer == {"idTokenInfo": {"status": "Accepted"}}
    ended = rec.of(TransactionEnded)[0]
    assert ended.meter_stop_wh == pytest.approx(12345.0)
    reading = ended.readings[0]
    assert reading.power_w == 35000.0
    assert reading.signed[0].data == signed["signedMeterData"] and reading.signed[0].public_key == "a2V5"
    await handle(adapter, "MeterValues", {"evseId": 0, "meterValue": [{"timestamp": T, "sampledValue": [
        {"value": 5, "unitOfMeasure": {"unit": "kWh", "multiplier": 0}}]}]})
    assert rec.of(MeterValues)[0].readings[0].energy_wh == 5000.0


async def test_r_o2_2_0_1_notifications_the_hub_does_not_act_on(a201):
    adapter, rec = a201
    await handle(adapter, "NotifyEvent", {"generatedAt": T, "seqNo": 0, "eventData": [{
        "eventId": 1, "timestamp": T, "trigger": "Alerting", "actualValue": "true", "eventNotificationType":
        "HardWiredNotification", "component": {"name": "EVSE"}, "variable": {"name": "Problem"}}]})
    await handle(adapter, "NotifyReport", {"requestId": 3, "generatedAt": T, "seqNo": 0})
    await handle(adapter, "ReservationStatusUpdate", {"reservationId": 8, "reservationUpdateStatus": "Expired"})
    assert await handle(adapter, "DataTransfer", {"vendorId": "x"}) == {"status": "UnknownVendorId"}
    notes = rec.of(Notification)
    assert [(n.kind, n.technician) for n in notes] == [("event", True), ("report", False), ("reservation", False),
                                                       ("data_transfer", False)]
    assert "EVSE.Problem" in notes[0].summary


def test_connector_view_cable_out_clears_finishing():
    view = ConnectorView()
    assert view.status((1, 1), "Occupied") == "Preparing"
    view.transaction((1, 1), "T", "Started", "Charging")
    view.transaction((1, 1), "T", "Ended", None)
    assert view.state((1, 1)) == "Finishing"
    assert view.status((1, 1), "Available") == "Available"
    assert view.status((1, 1), "Occupied") == "Preparing"


def test_seq_tracker_is_bounded():
    seq = SeqTracker()
    for n in range(SeqTracker.MAX_TRANSACTIONS + 50):
        seq.see(f"T{n}", 0)
    assert len(seq._seen) == SeqTracker.MAX_TRANSACTIONS
    assert seq.see("X", 10**9)[:2] == (0, 1) and len(seq.see("Y", 10**9)) == 100


# ------------------------------------------------------------------ hub -> station
@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
def test_r_o7_every_command_passes_the_official_schema(version):
    adapter, _ = make(version)
    until = NOW + timedelta(minutes=30)
    commands = [
        adapter.remote_start(1, "CARD-OK", 42),
        adapter.remote_start(1, "CARD-OK", 42, PowerLimit(150_000)),
        adapter.remote_stop("17"), adapter.unlock(1), adapter.set_available(None, False),
        adapter.set_available(2, True), adapter.reserve(1, 5, "CARD-OK", until), adapter.cancel_reservation(5),
        adapter.set_limit(PowerLimit(400_000, "station_max", 0)),
        adapter.set_limit(PowerLimit(123_456.78, "tx_default", 1)),
        adapter.set_limit(PowerLimit(80_000, "tx", 1, transaction_id="17")),
        adapter.clear_limit("tx_default", 1), adapter.trigger("StatusNotification"),
        adapter.trigger("MeterValues", 1), adapter.configure("heartbeat", 300), adapter.configure("meter", 15)]
    for command in commands:
        wire(version, command)


def test_r_e4_1_6_limits_are_rounded_to_one_decimal_and_start_a_minute_back():
    adapter, _ = make("ocpp1.6")
    p = wire("ocpp1.6", adapter.set_limit(PowerLimit(123_456.78, "tx_default", 1)))
    profile = p["csChargingProfiles"]
    assert profile["chargingProfilePurpose"] == "TxDefaultProfile" and profile["chargingProfileId"] == 101
    schedule = profile["chargingSchedule"]
    assert schedule["chargingRateUnit"] == "W" and schedule["chargingSchedulePeriod"] == [{"startPeriod": 0,
                                                                                             "limit": 123456.8}]
    assert schedule["startSchedule"] == "2026-03-02T11:59:00.000Z"
    tx = wire("ocpp1.6", adapter.set_limit(PowerLimit(80_000, "tx", 2, transaction_id="17")))
    assert tx["csChargingProfiles"]["transactionId"] == 17 and tx["connectorId"] == 2


def test_r_e4_limits_in_amps_from_voltage_and_phases_with_the_smart_charging_leniencies():
    adapter, _ = make("ocpp2.0.1", ["limits_in_amps", "stack_level_zero", "profile_kind_relative"],
                      voltage_v=230, phases=3)
    p = wire("ocpp2.0.1", adapter.set_limit(PowerLimit(22_000, "station_max", 0)))
    profile = p["chargingProfile"]
    schedule = profile["chargingSchedule"][0]
    assert schedule["chargingRateUnit"] == "A"
    assert schedule["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 31.9, "numberPhases": 3}]
    assert profile["stackLevel"] == 0 and profile["chargingProfileKind"] == "Relative"
    assert "startSchedule" not in schedule and profile["chargingProfilePurpose"] == "ChargingStationMaxProfile"
    no_voltage, _ = make("ocpp1.6", ["limits_in_amps"])
    with pytest.raises(ValueError, match="voltage_v and phases"):
        no_voltage.set_limit(PowerLimit(22_000))


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
def test_limits_that_the_station_would_refuse_are_never_sent(version):
    adapter, _ = make(version)
    for bad in (PowerLimit(1000, "station_max", 1), PowerLimit(1000, "tx", 0, transaction_id="1"),
                PowerLimit(1000, "tx", 1), PowerLimit(-5)):
        with pytest.raises(ValueError):
            adapter.set_limit(bad)
    with pytest.raises(ValueError):
        adapter.trigger("DiagnosticsStatusNotification")


def test_2_0_1_commands_name_evse_and_remote_start_id():
    adapter, _ = make("ocpp2.0.1")
    start = wire("ocpp2.0.1", adapter.remote_start(2, "CARD-OK", 42, PowerLimit(50_000)))
    assert start["remoteStartId"] == 42 and start["evseId"] == 2
    assert start["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"
    assert "transactionId" not in start["chargingProfile"]
    assert wire("ocpp2.0.1", adapter.configure("meter", 15))["setVariableData"][0]["variable"] == {
        "name": "TxUpdatedInterval"}
    assert wire("ocpp2.0.1", adapter.set_available(1, False))["evse"] == {"id": 1}
    assert "evse" not in wire("ocpp2.0.1", adapter.set_available(0, False))


class R:  # a library call_result stand-in
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize("version,action,result,kind", [
    ("ocpp1.6", "UnlockConnector", R(status="Unlocked"), "Accepted"),
    ("ocpp1.6", "UnlockConnector", R(status="UnlockFailed"), "Rejected"),
    ("ocpp1.6", "UnlockConnector", R(status="NotSupported"), "NotSupported"),
    ("ocpp1.6", "ChangeAvailability", R(status="Scheduled"), "Accepted"),
    ("ocpp1.6", "TriggerMessage", R(status="NotImplemented"), "NotSupported"),
    ("ocpp1.6", "SetChargingProfile", R(status="Rejected"), "Rejected"),
    ("ocpp1.6", "ClearChargingProfile", R(status="Unknown"), "Accepted"),
    ("ocpp1.6", "ChangeConfiguration", R(status="RebootRequired"), "Accepted"),
    ("ocpp1.6", "ReserveNow", R(status="Occupied"), "Rejected"),
    ("ocpp2.0.1", "SetVariables", R(set_variable_result=[{"attribute_status": "UnknownVariable"}]), "NotSupported"),
    ("ocpp2.0.1", "SetVariables", R(set_variable_result=[{"attribute_status": "Accepted"}]), "Accepted"),
    ("ocpp2.0.1", "UnlockConnector", R(status="OngoingAuthorizedTransaction"), "Rejected"),
    ("ocpp2.0.1", "SetChargingProfile", R(status="Rejected", status_info={"reason_code": "InvalidSchedule"}),
     "Rejected"),
    ("ocpp2.0.1", "RequestStartTransaction", R(), "Error"),
])
def test_station_answers_become_typed_outcomes_with_a_message(version, action, result, kind):
    adapter, _ = make(version)
    outcome = adapter.outcome(action, result)
    assert outcome.kind == kind and "CS-1" in outcome.message and outcome.action == action
    if getattr(result, "status_info", None):
        assert "InvalidSchedule" in outcome.message


def test_events_are_plain_data():
    assert asdict(IdTokenDecision("Accepted"))["status"] == "Accepted"
