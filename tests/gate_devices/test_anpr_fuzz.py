"""Property tests: no camera body, however broken, crashes a parser.

Every input either parses or raises PlateReadError (a clean 400 at the
listener); nothing else may escape (R-H1 fault injection: garbage). Request
heads go through the listener's own connection, aiohttp's parser included."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import answered, anpr_exchange
from drivers.anpr import PlateRead, PlateReadError, parse_axis, parse_hikvision

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CONTENT_TYPES = st.sampled_from(
    [
        "application/xml",
        "text/xml",
        "",
        "multipart/form-data; boundary=MIME_boundary_42",
        "multipart/mixed; boundary=x",
        "multipart/form-data",
        "multipart/form-data; boundary=",
    ]
)


def _check(result):
    assert result is None or isinstance(result, PlateRead)
    if result is not None:
        assert 0.0 <= result.confidence <= 1.0
        assert result.ts.tzinfo is not None


@FUZZ
@given(body=st.binary(max_size=2048), ctype=CONTENT_TYPES)
def test_hikvision_random_bytes_only_raise_plate_read_error(body, ctype):
    try:
        _check(parse_hikvision(body, ctype))
    except PlateReadError as exc:
        assert exc.reason


@FUZZ
@given(data=st.data(), ctype=CONTENT_TYPES)
def test_hikvision_mutated_real_notifications_never_crash(hik, mp, jpeg, data, ctype):
    doc = hik()
    if ctype.startswith("multipart"):
        doc, ctype = mp([("anpr.xml", "application/xml", doc), ("pic.jpg", "image/jpeg", jpeg)])
    cut = data.draw(st.integers(0, len(doc)))
    insert = data.draw(st.binary(max_size=16))
    drop = data.draw(st.integers(0, 8))
    mutated = doc[:cut] + insert + doc[cut + drop:]
    try:
        _check(parse_hikvision(mutated, ctype))
    except PlateReadError:
        pass


@FUZZ
@given(body=st.binary(max_size=2048))
def test_axis_random_bytes_only_raise_plate_read_error(body):
    try:
        _check(parse_axis(body))
    except PlateReadError as exc:
        assert exc.reason


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            ["carState", "plateText", "plateUTF8", "plateConfidence", "plateCountry", "vehicleType",
             "carMoveDirection", "capture_timestamp", "datetime", "carID", "packetCounter", "camera_info"]
        ),
        JSON_VALUES,
        max_size=5,
    )
)
def test_axis_events_with_wrong_field_types_never_crash(axis, overrides):
    event = json.loads(axis())
    event.update(overrides)
    try:
        _check(parse_axis(json.dumps(event).encode()))
    except PlateReadError:
        pass


@FUZZ
@given(head=st.binary(max_size=600))
def test_request_heads_are_refused_cleanly(head):
    out, reads = anpr_exchange("axis", head)
    if head:
        assert answered(out), "a request head was left without an answer"
    assert all(400 <= status < 600 for status in answered(out))
    assert reads == []


@FUZZ
@given(data=st.data(), chunk=st.integers(1, 700))
def test_multipart_fed_in_any_pieces_finds_the_same_notification(hik, mp, jpeg, data, chunk):
    """The streaming scan does not depend on where the socket cut the body."""
    from drivers.anpr.multipart import NotificationScan

    body, ctype = mp([("licensePlatePicture.jpg", "image/jpeg", jpeg), ("anpr.xml", "text/xml", hik()),
                      ("detectionPicture.jpg", "image/jpeg", jpeg * data.draw(st.integers(1, 4)))])
    scan = NotificationScan(ctype)
    for i in range(0, len(body), chunk):
        scan.feed(body[i:i + chunk])
    assert scan.close() == hik()
