"""Named leniencies: each repairs one known deviation of real stations and
says what it repaired; without it the same frame is refused as the
specification says (R-O6, R-O7)."""

import json

import pytest
from ocpp_units import NOW

from drivers.ocpp import StationConfig, rpc
from drivers.ocpp.leniency import LENIENCIES, check_names, repairs_for

T = "2026-03-02T11:59:50Z"


def check(version, action, payload, leniencies=()):
    frame = rpc.read_frame(json.dumps([2, "m1", action, payload]), version)
    return rpc.check_call(version, frame, repairs_for(frozenset(leniencies), lambda: NOW))


def test_r_o3_overlong_id_tag_in_a_stop_is_cut_instead_of_refused():
    """A station echoing a 20-character idTag with two stray bytes (seen in
    the field): refused, its stop would be retried then discarded."""
    stop = {"transactionId": 5, "meterStop": 10, "timestamp": T, "idTag": "ABCDEFGHIJKLMNOPQRST\x01\x02"}
    assert check("ocpp1.6", "StopTransaction", stop).code == "TypeConstraintViolation"
    ok = check("ocpp1.6", "StopTransaction", stop, ["accept_overlong_strings"])
    assert ok.payload["idTag"] == "ABCDEFGHIJKLMNOPQRST"
    assert ok.repairs == [("accept_overlong_strings", "StopTransaction: idTag cut from 22 to 20 characters")]


def test_unknown_error_code_becomes_other_error():
    status = {"connectorId": 1, "errorCode": "Error", "status": "Faulted"}
    assert check("ocpp1.6", "StatusNotification", status).code == "PropertyConstraintViolation"
    ok = check("ocpp1.6", "StatusNotification", status, ["unknown_enum_as_other"])
    assert ok.payload["errorCode"] == "OtherError" and "taken as OtherError" in ok.repairs[0][1]


def test_r_o4_unknown_measurand_drops_that_sample_and_keeps_the_rest():
    mv = {"connectorId": 1, "meterValue": [{"timestamp": T, "sampledValue": [
        {"value": "5", "measurand": "Request.Energy"}, {"value": "1200", "unit": "Wh"},
        {"value": "50", "unit": "Hz", "measurand": "Frequency"}]}]}
    assert check("ocpp1.6", "MeterValues", mv).code == "PropertyConstraintViolation"
    ok = check("ocpp1.6", "MeterValues", mv, ["unknown_enum_as_other"])
    assert ok.payload["meterValue"][0]["sampledValue"] == [{"value": "1200", "unit": "Wh"}]
    assert len(ok.repairs) == 2


def test_r_o4_numeric_sampled_values_in_1_6():
    mv = {"connectorId": 1, "meterValue": [{"timestamp": T, "sampledValue": [{"value": 1200.5}, {"value": 7}]}]}
    assert check("ocpp1.6", "MeterValues", mv).code == "TypeConstraintViolation"
    ok = check("ocpp1.6", "MeterValues", mv, ["numeric_sampled_values"])
    assert [s["value"] for s in ok.payload["meterValue"][0]["sampledValue"]] == ["1200.5", "7"]


def test_timestamps_without_offset_taken_as_utc_and_unreadable_ones_as_received():
    start = {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "2026-03-02T10:00:00"}
    assert check("ocpp1.6", "StartTransaction", start).code == "PropertyConstraintViolation"
    ok = check("ocpp1.6", "StartTransaction", start, ["lenient_timestamps"])
    assert rpc.parse_time(ok.payload["timestamp"]).hour == 10
    ok = check("ocpp1.6", "StartTransaction", dict(start, timestamp="0"), ["lenient_timestamps"])
    assert ok.payload["timestamp"] == "2026-03-02T12:00:00.000Z" and "time received" in ok.repairs[0][1]


def test_a_leniency_repairs_only_its_own_fault():
    status = {"connectorId": 1, "errorCode": "Error", "status": "Faulted"}
    everything_else = set(LENIENCIES) - {"unknown_enum_as_other"}
    assert check("ocpp1.6", "StatusNotification", status, everything_else).code == "PropertyConstraintViolation"


def test_unknown_leniency_names_are_refused_with_the_known_ones_listed():
    with pytest.raises(ValueError, match="unknown leniency skip_everything; known: assume_subprotocol"):
        check_names(["skip_everything"])
    with pytest.raises(ValueError):
        StationConfig("CS-1", "ocpp1.6", leniencies=frozenset({"typo"}))
    assert StationConfig("CS-1", "ocpp1.6", leniencies=["assume_subprotocol"]).leniencies == {"assume_subprotocol"}


def test_station_config_is_checked():
    for bad in (dict(id="a:b", version="ocpp1.6"), dict(id="", version="ocpp1.6"), dict(id="x" * 49, version="ocpp1.6"),
                dict(id="A", version="ocpp2.1"), dict(id="A", version="ocpp1.6", security_profile=3)):
        with pytest.raises(ValueError):
            StationConfig(**bad)
