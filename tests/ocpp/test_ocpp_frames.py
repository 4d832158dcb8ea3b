"""Frame checks and CALLERROR codes per version (R-O6, R-O7), without sockets.

Each case is a frame a station might send and the code each version's
specification names for it (OCPP-J 1.6 Table 7, OCPP-J 2.0.1 Part 4 Table 8).
The ``ocpp`` library's own answers differ for several of them (NotImplemented
and NotSupported swapped, 2.0.1 spellings on 1.6, enum faults as
FormatViolation, frame faults not answered): the last tests pin those
differences so a library upgrade that changes them is noticed.
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ocpp import rpc
from drivers.ocpp.rpc import CODES, Call, Ignored, Refusal, check_call, read_frame

V16, V201 = "ocpp1.6", "ocpp2.0.1"
STATUS_16 = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
STATUS_201 = {"timestamp": "2026-03-02T12:00:00Z", "connectorStatus": "Available", "evseId": 1, "connectorId": 1}


def answer(version: str, raw: str):
    frame = read_frame(raw, version)
    if isinstance(frame, Call):
        frame = check_call(version, frame)
    return frame


def call(mid, action, payload) -> str:
    return json.dumps([2, mid, action, payload])


# (case, frame, 1.6 code, 2.0.1 code, message id answered)
FRAME_CASES = [
    ("not JSON, no readable id", "not json", "FormationViolation", "RpcFrameworkError", "-1"),
    ("cut JSON keeps a readable id", '[2,"m1","Heartbeat",{}', "FormationViolation", "FormatViolation", "m1"),
    ("empty frame", "", "FormationViolation", "RpcFrameworkError", "-1"),
    ("NaN is not JSON", '[2,"m1","Heartbeat",{"x":NaN}]', "FormationViolation", "FormatViolation", "m1"),
    ("an object, not an array", '{"a":1}', "FormationViolation", "RpcFrameworkError", "-1"),
    ("empty array", "[]", "FormationViolation", "RpcFrameworkError", "-1"),
    ("numeric message id", '[2,1,"Heartbeat",{}]', "FormationViolation", "RpcFrameworkError", "-1"),
    ("message id over 36 characters", call("x" * 37, "Heartbeat", {}), "FormationViolation", "RpcFrameworkError",
     "-1"),
    ("empty message id", call("", "Heartbeat", {}), "FormationViolation", "RpcFrameworkError", "-1"),
    ("CALL with 3 elements", '[2,"m1","Heartbeat"]', "FormationViolation", "RpcFrameworkError", "m1"),
    ("CALL with 5 elements", '[2,"m1","Heartbeat",{},{}]', "FormationViolation", "RpcFrameworkError", "m1"),
    ("action not a string", '[2,"m1",7,{}]', "FormationViolation", "RpcFrameworkError", "m1"),
    ("unknown action", call("m1", "FooBar", {}), "NotImplemented", "NotImplemented", "m1"),
    ("payload an array", call("m1", "Heartbeat", []), "FormationViolation", "FormatViolation", "m1"),
]


@pytest.mark.parametrize("case,raw,code16,code201,mid", FRAME_CASES, ids=[c[0] for c in FRAME_CASES])
def test_r_o6_malformed_frames_get_the_code_each_version_names(case, raw, code16, code201, mid):
    for version, code in ((V16, code16), (V201, code201)):
        got = answer(version, raw)
        assert isinstance(got, Refusal), (version, got)
        assert (got.code, got.message_id) == (code, mid), (version, got)
        sent = json.loads(got.frame())
        assert sent[0] == 4 and sent[1] == mid and sent[2] == code and isinstance(sent[4], dict)
        assert 0 < len(sent[3]) <= 255


PAYLOAD_CASES = [
    # (case, action 1.6, payload 1.6, action 2.0.1, payload 2.0.1, 1.6 code, 2.0.1 code)
    ("extra property", "Heartbeat", {"x": 1}, "Heartbeat", {"x": 1}, "FormationViolation", "FormatViolation"),
    ("missing required property", "StatusNotification", {"connectorId": 1, "status": "Available"},
     "StatusNotification", {k: v for k, v in STATUS_201.items() if k != "evseId"},
     "OccurenceConstraintViolation", "OccurrenceConstraintViolation"),
    ("wrong JSON type", "StatusNotification", dict(STATUS_16, connectorId="1"), "StatusNotification",
     dict(STATUS_201, evseId="1"), "TypeConstraintViolation", "TypeConstraintViolation"),
    ("value outside the enumeration", "StatusNotification", dict(STATUS_16, status="Occupied"),
     "StatusNotification", dict(STATUS_201, connectorStatus="Charging"),
     "PropertyConstraintViolation", "PropertyConstraintViolation"),
    ("string too long", "Authorize", {"idTag": "A" * 21}, "Authorize",
     {"idToken": {"idToken": "A" * 37, "type": "ISO14443"}}, "TypeConstraintViolation", "TypeConstraintViolation"),
    ("timestamp not a date-time", "StatusNotification", dict(STATUS_16, timestamp="yesterday"),
     "StatusNotification", dict(STATUS_201, timestamp="yesterday"),
     "PropertyConstraintViolation", "PropertyConstraintViolation"),
    ("timestamp without offset", "StatusNotification", dict(STATUS_16, timestamp="2026-03-02T12:00:00"),
     "StatusNotification", dict(STATUS_201, timestamp="2026-03-02T12:00:00"),
     "PropertyConstraintViolation", "PropertyConstraintViolation"),
    ("empty list where items are required", "MeterValues", {"connectorId": 1, "meterValue": []},
     "MeterValues", {"evseId": 1, "meterValue": []}, "OccurenceConstraintViolation", "OccurrenceConstraintViolation"),
    ("known action the central system does not take", "RemoteStartTransaction", {"idTag": "A"},
     "RequestStartTransaction", {"idToken": {"idToken": "A", "type": "Central"}, "remoteStartId": 1},
     "NotSupported", "NotSupported"),
    ("action of the other version", "TransactionEvent", {}, "StartTransaction", {}, "NotImplemented",
     "NotImplemented"),
]


@pytest.mark.parametrize("case,a16,p16,a201,p201,code16,code201", PAYLOAD_CASES, ids=[c[0] for c in PAYLOAD_CASES])
def test_r_o7_payloads_are_checked_against_the_official_schemas(case, a16, p16, a201, p201, code16, code201):
    for version, action, payload, code in ((V16, a16, p16, code16), (V201, a201, p201, code201)):
        got = answer(version, call("m7", action, payload))
        assert isinstance(got, Refusal), (version, got)
        assert got.code == code, (version, got)
        assert got.message_id == "m7"


def test_r_o7_2_0_1_custom_data_needs_a_vendor_id():
    got = answer(V201, call("m1", "Heartbeat", {"customData": {"x": 1}}))
    assert got.code == "OccurrenceConstraintViolation"
    assert answer(V201, call("m1", "Heartbeat", {"customData": {"vendorId": "acme", "x": 1}})).payload


def test_r_o6_null_payload_is_empty_in_1_6_and_a_format_violation_in_2_0_1():
    """OCPP-J 1.6 §4.2.1 allows null for an empty payload; 2.0.1 wants an object."""
    ok = answer(V16, call("m1", "Heartbeat", None))
    assert ok.payload == {} and ok.repairs == []
    assert answer(V201, call("m1", "Heartbeat", None)).code == "FormatViolation"
    lenient = check_call(V201, read_frame(call("m1", "Heartbeat", None), V201), null_as_empty=True)
    assert lenient.payload == {} and lenient.repairs[0][0] == "null_payload_as_empty"


def test_r_o6_unknown_message_type_ignored_in_1_6_and_answered_in_2_0_1():
    """1.6 §4.1.3: ignore; 2.0.1 names MessageTypeNotSupported for it."""
    for raw in ('[5,"m1","Heartbeat",{}]', '["2","m1","Heartbeat",{}]', '[true,"m1"]'):
        assert isinstance(answer(V16, raw), Ignored)
        got = answer(V201, raw)
        assert got.code == "MessageTypeNotSupported" and got.message_id == "m1"


def test_r_o6_answers_that_break_the_frame_are_dropped_not_answered():
    for raw in ('[3,"m1"]', '[3,1,{}]', '[4,"m1","GenericError"]', '[4,"m1",5,"x",{}]'):
        for version in (V16, V201):
            assert isinstance(answer(version, raw), Ignored)
    assert isinstance(read_frame('[3,"m1",{"currentTime":"x"}]', V16), rpc.Result)
    error = read_frame('[4,"m1","NotSupported","no",{}]', V201)
    assert isinstance(error, rpc.Error) and error.code == "NotSupported"


def test_r_o6_description_is_bounded_and_does_not_echo_the_frame():
    huge = "Z" * 5000
    got = answer(V201, call("m1", "DataTransfer", {"vendorId": huge}))
    assert got.code == "TypeConstraintViolation"
    assert len(got.description) <= 255 and huge not in got.frame()
    assert answer(V16, "[" * 100000).description.startswith("The frame is not valid JSON")


def test_r_o7_every_action_we_handle_has_a_schema_both_ways():
    for version, actions in rpc.HANDLED.items():
        for action in actions:
            assert rpc.validator(version, action, 2).schema["type"] == "object"
            assert rpc.validator(version, action, 3).schema["type"] == "object"
            assert action in rpc.KNOWN[version]


def test_r_o7_our_own_answers_are_checked():
    assert rpc.check_answer(V16, "BootNotification", {"status": "Accepted"}) is not None
    assert rpc.check_answer(V16, "Heartbeat", {"currentTime": "2026-03-02T12:00:00.000Z"}) is None


def test_rfc3339_parse_and_print():
    assert rpc.parse_time("2026-03-02T13:00:00.123456789+01:00").isoformat() == "2026-03-02T12:00:00.123456+00:00"
    assert rpc.rfc3339(rpc.parse_time("2026-03-02T12:00:00Z")) == "2026-03-02T12:00:00.000Z"
    for bad in ("2026-03-02", "2026-03-02T12:00:00", "2026-02-30T00:00:00Z", "", "2026-03-02 12:00:00Z"):
        with pytest.raises(ValueError):
            rpc.parse_time(bad)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.text(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20).map(json.dumps)), st.sampled_from([V16, V201]))
def test_r_o6_any_text_gives_a_call_an_answer_or_an_ignore_never_an_exception(raw, version):
    frame = read_frame(raw, version)
    if isinstance(frame, Call):
        frame = check_call(version, frame)
    if isinstance(frame, Refusal):
        sent = json.loads(frame.frame())
        assert len(sent) == 5 and sent[2] in CODES[version].values()
        assert isinstance(sent[1], str) and len(sent[1]) <= 36 and len(sent[3]) <= 255


# ---- where the pinned library answers otherwise (why the checks are ours)


def test_library_2_1_0_swaps_not_implemented_and_not_supported():
    from ocpp.charge_point import _raise_key_error
    from ocpp.exceptions import NotImplementedError as LibNotImplemented, NotSupportedError
    with pytest.raises(NotSupportedError):
        _raise_key_error("FooBar", "1.6")  # the spec: NotImplemented (unknown action)
    with pytest.raises(LibNotImplemented):
        _raise_key_error("DataTransfer", "1.6")  # the spec: NotSupported (known, not supported)
    assert answer(V16, call("m", "FooBar", {})).code == "NotImplemented"
    assert answer(V16, call("m", "RemoteStartTransaction", {"idTag": "A"})).code == "NotSupported"


def test_library_2_1_0_uses_format_violation_for_enum_faults():
    from ocpp.exceptions import FormatViolationError
    from ocpp.messages import Call as LibCall, _validate_payload
    with pytest.raises(FormatViolationError):
        _validate_payload(LibCall("m", "StatusNotification", dict(STATUS_16, status="Occupied")), "1.6")
    assert answer(V16, call("m", "StatusNotification", dict(STATUS_16, status="Occupied"))).code == \
        "PropertyConstraintViolation"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.randoms(use_true_random=False))
def test_r_o7_inlined_schemas_judge_exactly_as_the_official_ones(rnd):
    """rpc.validator inlines #/definitions references for speed; on mutated
    station messages it finds the same faults as the schema as shipped."""
    from jsonschema import Draft4Validator
    from ocpp.messages import get_validator

    from bench.fuzz import OCPP_MESSAGES, mutate_json
    version = rnd.choice(["ocpp1.6", "ocpp2.0.1"])
    action, payload = rnd.choice(OCPP_MESSAGES[version])
    if action not in rpc.HANDLED[version]:
        return
    payload = mutate_json(rnd, payload, keys=["evse", "idToken", "type", "value", "unitOfMeasure", "multiplier"])
    shipped = Draft4Validator(get_validator(2, action, rpc.LIBRARY_VERSION[version]).schema,
                              format_checker=rpc._FORMATS)
    ours = rpc.validator(version, action)
    expected = sorted((tuple(e.absolute_path), e.validator) for e in shipped.iter_errors(payload))
    assert sorted((tuple(e.absolute_path), e.validator) for e in ours.iter_errors(payload)) == expected
