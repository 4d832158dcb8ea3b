"""Hikvision ISAPI ANPR notifications -> PlateRead (drivers.anpr.parse_hikvision)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from drivers.anpr import PlateRead, PlateReadError, mask_plate, parse_hikvision

RECEIVED = datetime(2026, 3, 2, 13, 52, 0, tzinfo=timezone.utc)


def parse(body, ctype="application/xml"):
    return parse_hikvision(body, ctype, camera_id="gate-in-cam", received_at=RECEIVED)


def test_plain_xml_with_hikvision_namespace_gives_every_field(hik):
    read = parse(hik())
    assert isinstance(read, PlateRead)
    assert read.camera_id == "gate-in-cam"
    assert read.plate_raw == "NL-12-ABC"
    assert read.country == "NL"
    assert read.confidence == pytest.approx(0.91)
    assert read.vehicle_class == "truck"
    assert read.direction == "approach"
    assert read.vendor == "hikvision"
    # 14:51:24+01:00 is 13:51:24 UTC: the camera's zone is honoured.
    assert read.ts == datetime(2026, 3, 2, 13, 51, 24, tzinfo=timezone.utc)
    assert read.ts.tzinfo is not None
    assert read.received_at == RECEIVED
    assert read.event_id.startswith("hik-")


@pytest.mark.parametrize(
    "root_open, root_close",
    [
        ('<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">', "</EventNotificationAlert>"),
        ("<EventNotificationAlert>", "</EventNotificationAlert>"),
        (
            '<hik:EventNotificationAlert xmlns:hik="http://www.hikvision.com/ver20/XMLSchema">'.replace(
                "hik:EventNotificationAlert", "EventNotificationAlert"
            ),
            "</EventNotificationAlert>",
        ),
    ],
    ids=["isapi-namespace", "no-namespace", "declared-unused-prefix"],
)
def test_namespace_variants_parse_the_same(hik, root_open, root_close):
    read = parse(hik(root_open=root_open, root_close=root_close))
    assert read.plate_raw == "NL-12-ABC" and read.confidence == pytest.approx(0.91)


def test_prefixed_elements_parse_by_local_name():
    body = (
        b'<?xml version="1.0"?><h:EventNotificationAlert xmlns:h="http://www.hikvision.com/ver20/XMLSchema">'
        b"<h:channelID>2</h:channelID><h:dateTime>2026-03-02T13:51:24Z</h:dateTime>"
        b"<h:eventType>ANPR</h:eventType><h:eventState>active</h:eventState>"
        b"<h:ANPR><h:licensePlate>AB123CD</h:licensePlate><h:confidenceLevel>88</h:confidenceLevel>"
        b"<h:direction>reverse</h:direction><h:vehicleType>largeBus</h:vehicleType></h:ANPR>"
        b"</h:EventNotificationAlert>"
    )
    read = parse(body)
    assert (read.plate_raw, read.direction, read.vehicle_class) == ("AB123CD", "leave", "bus")


def test_multipart_form_data_with_jpegs_finds_the_xml_part(hik, mp, jpeg):
    body, ctype = mp(
        [
            ("anpr.xml", 'application/xml; charset="UTF-8"', hik(plate="D-AB-1234")),
            ("licensePlatePicture.jpg", "image/jpeg", jpeg),
            ("detectionPicture.jpg", "image/jpeg", jpeg),
        ]
    )
    read = parse(body, ctype)
    assert read.plate_raw == "D-AB-1234" and read.vehicle_class == "truck"


def test_multipart_mixed_with_xml_after_the_pictures(hik, mp, jpeg):
    body, ctype = mp(
        [("licensePlatePicture.jpg", "image/jpeg", jpeg), ("anpr.xml", "text/xml", hik(plate="PL-WX-777"))],
        boundary="----=_Part_1_abc",
        kind="mixed",
    )
    assert parse(body, ctype).plate_raw == "PL-WX-777"


def test_multipart_xml_part_found_by_content_even_with_a_generic_type(hik, mp, jpeg):
    body, ctype = mp([("event", "application/octet-stream", hik()), ("pic", "image/jpeg", jpeg)])
    assert parse(body, ctype).plate_raw == "NL-12-ABC"


def test_multipart_without_xml_part_is_refused(mp, jpeg):
    body, ctype = mp([("licensePlatePicture.jpg", "image/jpeg", jpeg)])
    with pytest.raises(PlateReadError, match="no XML part"):
        parse(body, ctype)


def test_multipart_without_boundary_is_refused(hik):
    with pytest.raises(PlateReadError, match="boundary"):
        parse(hik(), "multipart/form-data")


def test_heartbeat_and_inactive_events_are_not_reads(hik):
    assert parse(hik(event_type="videoloss", state="inactive")) is None
    assert parse(hik(state="inactive")) is None


def test_zone_less_camera_time_falls_back_to_receipt_time(hik):
    read = parse(hik(when="2026-03-02T14:51:24"))
    assert read.ts == RECEIVED


def test_no_read_is_a_zero_confidence_read_that_can_never_open_by_itself(hik):
    """R-G4: a read below any threshold never opens by itself; a no-read
    carries confidence 0 so the gate policy can raise it for remote handling."""
    read = parse(hik(plate="unknown", confidence=""))
    assert read.is_no_read and read.confidence == 0.0


@pytest.mark.parametrize(
    "camera_value, expected",
    [("truck", "truck"), ("heavyTruck", "truck"), ("SUVMPV", "car"), ("smallCar", "car"), ("van", "van"),
     ("pickupTruck", "van"), ("largeBus", "bus"), ("twoWheelVehicle", "motorcycle"), ("vehicle", "unknown"),
     ("unknown", "unknown"), ("tank", "other")],
)
def test_vehicle_types_are_normalised_for_the_truck_only_rule(hik, camera_value, expected):
    """R-G1 needs the vehicle class; every vendor word maps onto one vocabulary."""
    assert parse(hik(vehicle=camera_value)).vehicle_class == expected


def test_vehicle_type_inside_vehicle_info(hik):
    body = hik().replace(b"<vehicleType>truck</vehicleType>", b"<vehicleInfo><vehicleType>bus</vehicleType></vehicleInfo>")
    assert parse(body).vehicle_class == "bus"


def test_same_event_bytes_give_the_same_event_id(hik):
    assert parse(hik()).event_id == parse(hik()).event_id
    assert parse(hik()).event_id != parse(hik(plate="OTHER1")).event_id


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "empty body"),
        (b"<EventNotificationAlert><eventType>ANPR", "not well-formed"),
        (b"<html><body>hello</body></html>", "expected EventNotificationAlert"),
        (b"<EventNotificationAlert><eventType>ANPR</eventType></EventNotificationAlert>", "without an <ANPR>"),
        (
            b"<EventNotificationAlert><eventType>ANPR</eventType><ANPR><confidenceLevel>9</confidenceLevel></ANPR>"
            b"</EventNotificationAlert>",
            "without <licensePlate>",
        ),
    ],
)
def test_malformed_notifications_raise_with_a_reason(body, reason):
    with pytest.raises(PlateReadError, match=reason):
        parse(body)


def test_confidence_out_of_range_is_refused(hik):
    with pytest.raises(PlateReadError, match="above the 100 maximum"):
        parse(hik(confidence="150"))
    with pytest.raises(PlateReadError, match="not a number"):
        parse(hik(confidence="high"))


def test_doctype_is_refused_to_guard_against_entity_expansion():
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b"<EventNotificationAlert><eventType>ANPR</eventType><ANPR><licensePlate>&lol2;</licensePlate>"
        b"<confidenceLevel>99</confidenceLevel></ANPR></EventNotificationAlert>"
    )
    with pytest.raises(PlateReadError, match="DOCTYPE"):
        parse(bomb)


def test_overlong_or_control_character_plates_are_refused(hik):
    with pytest.raises(PlateReadError, match="characters long"):
        parse(hik(plate="A" * 40))
    with pytest.raises(PlateReadError, match="control characters"):
        parse(hik(plate="AB&#9;12"))


def test_plate_read_repr_never_shows_the_plate(hik):
    """R-G8: plates are personal data; the repr (what ends up in logs) masks it."""
    read = parse(hik(plate="NL-12-ABC"))
    assert "NL-12-ABC" not in repr(read) and "NL12ABC" not in repr(read)
    assert "1***C" in repr(read)  # the hub's mask: country sign dropped, ends only


def test_mask_plate_is_the_hub_wide_mask():
    """R-G8: the driver's mask is the hub's one rule (first and last character
    of the canonical form), the very function edge.parts.site.plates gives the hub."""
    from edge.parts.site import plates

    assert mask_plate is plates.mask_plate
    assert mask_plate("AB-123-12") == "A***2"
    assert mask_plate("AB 1") == "***"
