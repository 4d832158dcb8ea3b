"""Fuzzing the OCPP-J face (R-O6, R-O7): station frames of both versions,
mutated as JSON and as text, frame-shape faults and garbage, fed through a
real connection as if read from its websocket. Every frame gets at most one
answer, a valid OCPP-J frame (a CALLRESULT passing the response schema, or
a CALLERROR with a code the version names), never an InternalError.

The last tests are what the fuzzer found, each kept as the test of its fix."""

import json

import pytest
from fuzz_settings import CI
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import OcppFuzzRig, gen_ocpp
from drivers.ocpp import rpc


@pytest.fixture(scope="module")
def ocpp_rig():
    rig = OcppFuzzRig()
    yield rig
    rig.close()


@CI(600)
@given(st.randoms(use_true_random=False))
def test_r_o6_mutated_station_frames_get_one_valid_answer(ocpp_rig, rnd):
    ocpp_rig.check(gen_ocpp(rnd))


@CI(300)
@given(st.sampled_from(["ocpp1.6", "ocpp2.0.1"]), st.booleans(), st.text(max_size=300))
def test_r_o6_any_text_frame_gets_one_valid_answer_or_none(ocpp_rig, version, lenient, text):
    ocpp_rig.check((version, lenient, text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode()))


# ---- what the fuzzer found in drivers/ocpp, each kept as the test of its fix


def test_r_o7_a_date_before_the_first_utc_instant_is_refused_not_a_crash(ocpp_rig):
    """0001-01-01T00:00:00+01:00 overflowed when turned into UTC (OverflowError in parse_time)."""
    frame = json.dumps([2, "m1", "NotifyReport", {"requestId": 1, "generatedAt": "0001-01-01T00:00:00+01:00",
                                                  "seqNo": 0}])
    assert ocpp_rig.check(("ocpp2.0.1", False, frame.encode())) == "refused"
    with pytest.raises(ValueError, match="outside the range"):
        rpc.parse_time("9999-12-31T23:59:59-01:00")


@pytest.mark.parametrize("multiplier", [400, 308, -400])
def test_r_o4_a_unit_multiplier_out_of_range_skips_the_value_not_the_frame(ocpp_rig, multiplier):
    """10.0 ** 400 raised OverflowError in the 2.0.1 meter reading (found in a TransactionEvent Ended)."""
    event = {"eventType": "Ended", "timestamp": "2026-03-02T12:00:00Z", "triggerReason": "StopAuthorized",
             "seqNo": 4, "transactionInfo": {"transactionId": "T1"}, "meterValue": [{
                 "timestamp": "2026-03-02T12:00:00Z", "sampledValue": [
                     {"value": 12, "unitOfMeasure": {"unit": "kWh", "multiplier": multiplier}},
                     {"value": 5, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}}]}]}
    assert ocpp_rig.check(("ocpp2.0.1", False, json.dumps([2, "m1", "TransactionEvent", event]).encode())) == \
        "accepted"
