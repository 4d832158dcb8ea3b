"""Axis License Plate Verifier push events -> PlateRead (drivers.anpr.parse_axis)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from drivers.anpr import PlateReadError, parse_axis

RECEIVED = datetime(2026, 3, 2, 13, 51, 30, tzinfo=timezone.utc)


def parse(body):
    return parse_axis(body, camera_id="exit-cam", received_at=RECEIVED)


def test_new_event_gives_every_field(axis):
    read = parse(axis())
    assert read.camera_id == "exit-cam"
    assert read.plate_raw == "NL12ABC"
    assert read.country == "NLD"
    assert read.confidence == pytest.approx(0.727815)
    assert read.vehicle_class == "truck"
    assert read.direction == "approach"
    assert read.vendor == "axis"
    assert read.ts == datetime(2026, 3, 2, 13, 51, 24, tzinfo=timezone.utc)
    assert read.event_id == "axis-102-67781"


def test_update_event_is_acted_on(axis):
    read = parse(axis(carState="update", plateUTF8="NL12ABD", carMoveDirection="out"))
    assert read.plate_raw == "NL12ABD" and read.direction == "leave"


def test_lost_event_is_ignored(axis):
    assert parse(axis(carState="lost")) is None


def test_percent_confidence_is_scaled(axis):
    assert parse(axis(plateConfidence=95.5)).confidence == pytest.approx(0.955)


def test_camera_local_datetime_without_capture_timestamp_uses_receipt_time(axis):
    """The "YYYYMMDD HHMMSSmmm" field has no zone: it cannot be put on the UTC timeline."""
    assert parse(axis(capture_timestamp=None)).ts == RECEIVED


def test_vehicle_without_type_is_unknown_and_missing_direction_unknown(axis):
    read = parse(axis(vehicleType=None, carMoveDirection=None))
    assert (read.vehicle_class, read.direction) == ("unknown", "unknown")


def test_camera_serial_is_the_camera_id_when_none_configured(axis):
    assert parse_axis(axis(), received_at=RECEIVED).camera_id == "ACCC8E000001"


def test_batch_takes_the_last_actionable_event(axis):
    batch = b"[" + axis(carState="new", plateUTF8="FIRST1") + b"," + axis(carState="update", plateUTF8="SECOND2") + b"," + axis(carState="lost") + b"]"
    assert parse(batch).plate_raw == "SECOND2"


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "empty body"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"42", "expected a JSON object"),
        (json.dumps({"plateText": "X"}).encode(), "without carState"),
        (json.dumps({"carState": "parked", "plateText": "X"}).encode(), "not new, update or lost"),
        (json.dumps({"carState": "new"}).encode(), "without plate text"),
        (json.dumps({"carState": "new", "plateText": 12345}).encode(), "not a string"),
        (json.dumps({"carState": "new", "plateText": "AB12CD"}).encode(), "without plateConfidence"),
        (json.dumps({"carState": "new", "plateText": "AB12CD", "plateConfidence": [1]}).encode(), "not a number"),
        (json.dumps({"carState": "new", "plateText": "AB12CD", "plateConfidence": "-1"}).encode(), "negative"),
        (json.dumps({"carState": "new", "plateText": "AB12CD", "plateConfidence": "0.9", "plateCountry": 7}).encode(), "plateCountry"),
    ],
)
def test_malformed_events_raise_with_a_reason(body, reason):
    with pytest.raises(PlateReadError, match=reason):
        parse(body)
