"""Hikvision ISAPI ``EventNotificationAlert`` (eventType ``ANPR``) -> PlateRead.

The camera sends the notification bare (XML) or as one part of a multipart
body next to its JPEG pictures; ``drivers.anpr.multipart`` finds the XML part
as the body streams in. ``parse_isapi`` reads the XML document itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime

from drivers.anpr.multipart import NotificationScan
from drivers.anpr.read import (
    PlateRead,
    PlateReadError,
    aware_utc,
    clean_plate,
    confidence_of,
    direction_of,
    event_id_of,
    vehicle_class_of,
)
from drivers.device import utcnow


def _refuse_doctype(xml: bytes) -> None:
    # Entity-expansion guard ("billion laughs", external entities): an ISAPI
    # notification never carries a DOCTYPE, so any DOCTYPE or ENTITY
    # declaration is refused before the parser sees it.
    lowered = xml.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise PlateReadError("XML with a DOCTYPE or ENTITY declaration is refused (entity expansion guard)")


def _local(tag: object) -> str:
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element | None, name: str) -> ET.Element | None:
    if element is None:
        return None
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _text(element: ET.Element | None, *path: str) -> str | None:
    node = element
    for name in path:
        node = _child(node, name)
        if node is None:
            return None
    return (node.text or "").strip() if node is not None else None


def notification_of(body: bytes, content_type: str) -> bytes:
    """The notification XML of a whole multipart body."""
    scan = NotificationScan(content_type)
    scan.feed(body)
    return scan.close()


def parse_hikvision(
    body: bytes,
    content_type: str,
    *,
    camera_id: str = "",
    received_at: datetime | None = None,
) -> PlateRead | None:
    """Parse a camera's body: the notification bare, or multipart with it.

    Returns None for well-formed notifications that are not plate reads
    (heartbeats, video loss, an ANPR event in state ``inactive``).
    """
    ctype = (content_type or "").strip()
    xml = notification_of(body, ctype) if ctype.lower().startswith("multipart/") else body
    return parse_isapi(xml, camera_id=camera_id, received_at=received_at)


def parse_isapi(xml: bytes, *, camera_id: str = "", received_at: datetime | None = None) -> PlateRead | None:
    """Parse the ``EventNotificationAlert`` XML document itself."""
    received = received_at or utcnow()
    if not xml.strip():
        raise PlateReadError("empty body: expected an EventNotificationAlert XML document")
    # ISAPI sends UTF-8. Anything else is refused before the DOCTYPE check,
    # so that check and the parser see the same characters: a UTF-16 body
    # (with or without a byte-order mark) cannot smuggle a DOCTYPE past it.
    if b"\x00" in xml:
        raise PlateReadError("XML with NUL bytes (UTF-16?) is refused: the camera must send UTF-8")
    try:
        text = xml.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PlateReadError("XML is not UTF-8: set the camera's notification to UTF-8") from None
    _refuse_doctype(text.encode())
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise PlateReadError(f"XML is not well-formed ({exc})") from None
    except (ValueError, LookupError, RecursionError) as exc:
        raise PlateReadError(f"XML cannot be read ({type(exc).__name__})") from None
    if _local(root.tag) != "EventNotificationAlert":
        raise PlateReadError(
            f"root element is {_local(root.tag)[:40]!r}, expected EventNotificationAlert: "
            "set the camera to send ISAPI event notifications"
        )
    event_type = (_text(root, "eventType") or "").lower()
    if event_type != "anpr":
        return None
    if (_text(root, "eventState") or "active").lower() != "active":
        return None
    anpr = _child(root, "ANPR")
    if anpr is None:
        raise PlateReadError("ANPR event without an <ANPR> element")
    plate_text = _text(anpr, "licensePlate")
    if plate_text is None:
        raise PlateReadError("ANPR event without <licensePlate>")
    plate = clean_plate(plate_text)
    raw_conf = _text(anpr, "confidenceLevel")
    if plate and raw_conf is None:
        raise PlateReadError("ANPR event without <confidenceLevel>")
    confidence = confidence_of(raw_conf, scale=100.0) if plate else 0.0
    vehicle = _text(anpr, "vehicleType")
    if vehicle is None:
        vehicle = _text(anpr, "vehicleInfo", "vehicleType")
    country = _text(anpr, "country") or None
    if country is not None and country.lower() in ("unknown", "0", "255"):
        country = None
    channel = _text(root, "channelID") or _text(root, "dynChannelID") or ""
    if channel and not channel.isdigit():
        raise PlateReadError("channelID is not a number")
    return PlateRead(
        camera_id=camera_id or (f"channel-{channel}" if channel else "hikvision"),
        plate_raw=plate,
        country=country[:40] if country else None,
        confidence=confidence,
        vehicle_class=vehicle_class_of(vehicle),
        direction=direction_of(_text(anpr, "direction")),
        ts=aware_utc(_text(root, "dateTime")) or received,
        vendor="hikvision",
        event_id=event_id_of("hik", xml),
        received_at=received,
    )

