"""Sample camera payloads for the gate-device unit tests.

Built by hand from the vendors' published layouts (Hikvision ISAPI
EventNotificationAlert, Axis License Plate Verifier push JSON); plates and
addresses are invented.
"""

from __future__ import annotations

import json

import pytest

HIK_NS = "http://www.hikvision.com/ver20/XMLSchema"
ISAPI_NS = "http://www.isapi.org/ver20/XMLSchema"


def hik_doc(
    *,
    plate: str = "NL-12-ABC",
    confidence: str = "91",
    vehicle: str = "truck",
    direction: str = "forward",
    when: str = "2026-03-02T14:51:24+01:00",
    event_type: str = "ANPR",
    state: str = "active",
    root_open: str = f'<EventNotificationAlert version="2.0" xmlns="{HIK_NS}">',
    root_close: str = "</EventNotificationAlert>",
    anpr_extra: str = "",
) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"{root_open}\n"
        "<ipAddress>192.0.2.20</ipAddress><portNo>80</portNo><protocol>HTTP</protocol>\n"
        "<macAddress>00:00:5e:00:53:01</macAddress><channelID>1</channelID>\n"
        f"<dateTime>{when}</dateTime><activePostCount>7</activePostCount>\n"
        f"<eventType>{event_type}</eventType><eventState>{state}</eventState>\n"
        "<eventDescription>ANPR</eventDescription>\n"
        "<ANPR><country>NL</country>"
        f"<licensePlate>{plate}</licensePlate><line>1</line><direction>{direction}</direction>"
        f"<confidenceLevel>{confidence}</confidenceLevel><plateType>unknown</plateType>"
        f"<plateColor>yellow</plateColor><vehicleType>{vehicle}</vehicleType>{anpr_extra}"
        "</ANPR>\n"
        f"{root_close}\n"
    ).encode("utf-8")


def multipart(parts: list[tuple[str, str, bytes]], boundary: str = "MIME_boundary_42", kind: str = "form-data"):
    chunks = []
    for name, ctype, payload in parts:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
            + b"\r\n"
        )
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/{kind}; boundary={boundary}"


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 3 + b"\xff\xd9"


def axis_event(**overrides) -> bytes:
    event = {
        "packetCounter": "67781",
        "capture_timestamp": "1772459484000",
        "datetime": "20260302 145124000",
        "plateText": "NL12ABC",
        "plateUnicode": "NL12ABC",
        "plateUTF8": "NL12ABC",
        "plateASCII": "NL12ABC",
        "plateCountry": "NLD",
        "plateConfidence": "0.727815",
        "carState": "new",
        "roiID": "1",
        "imageType": "plate",
        "carMoveDirection": "in",
        "vehicleType": "TRUCK",
        "plateCoordinates": [420, 180, 356, 66],
        "carID": "102",
        "camera_info": {"SerialNumber": "ACCC8E000001", "ProdShortName": "AXIS P1445-LE-3"},
    }
    for key, value in overrides.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return json.dumps(event).encode()


@pytest.fixture
def hik():
    return hik_doc


@pytest.fixture
def axis():
    return axis_event


@pytest.fixture
def mp():
    return multipart


@pytest.fixture
def jpeg():
    return JPEG
