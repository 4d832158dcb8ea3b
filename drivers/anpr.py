"""ANPR cameras: number-plate reads pushed to us over HTTP.

The camera is the client: it POSTs each read to a small HTTP/1.1 listener on
the hub. Two wire formats are understood:

* Hikvision ISAPI ``EventNotificationAlert`` XML (eventType ``ANPR``), sent
  bare or as one part of a multipart body next to JPEG pictures.
* Axis License Plate Verifier push JSON (``carState`` new / update / lost).

The parsers are pure functions from bytes to a ``PlateRead`` (or ``None`` for
a well-formed event that carries no plate decision, such as a heartbeat or an
Axis LOST); anything malformed raises ``PlateReadError``. The listener is the
I/O edge: it authenticates the camera, bounds every read, answers 4xx to
anything it does not like and calls ``emit`` once per accepted read.

Who may enter is not decided here (that is the gate policy's job); this module
only says what the camera saw. Plates are personal data (R-G8): nothing here
logs a plate, and ``PlateRead``'s repr shows only a masked form.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.parser import BytesParser
from email.policy import compat32
from typing import Iterable, Literal

from drivers.device import DeviceHealth, Emit, utcnow
from edge.plates import mask_plate

log = logging.getLogger("hubedge.anpr")

VehicleClass = Literal["truck", "car", "van", "bus", "motorcycle", "other", "unknown"]
Direction = Literal["approach", "leave", "unknown"]
Vendor = Literal["hikvision", "axis"]

MAX_PLATE_CHARS = 20


class PlateReadError(ValueError):
    """A camera body that cannot be turned into a plate read.

    ``reason`` is meant for a person (a technician reading the log or the
    camera's HTTP client); it never contains the plate itself.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PlateRead:
    """One number-plate read as the camera reported it.

    ``plate_raw`` is the camera's text, not normalised (matching belongs to the
    gate policy, R-G4). An empty ``plate_raw`` is a no-read: the camera saw a
    vehicle but no legible plate; its confidence is 0 so it never opens by
    itself. ``ts`` is the camera's time when it sent a zone, else the time we
    received the read; ``received_at`` is always ours.
    """

    camera_id: str
    plate_raw: str = field(repr=False)
    country: str | None
    confidence: float
    vehicle_class: VehicleClass
    direction: Direction
    ts: datetime
    vendor: Vendor
    event_id: str
    received_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if not (0.0 <= self.confidence <= 1.0):
            raise ValueError(f"confidence {self.confidence} outside 0..1")
        if self.ts.tzinfo is None or self.received_at.tzinfo is None:
            raise ValueError("PlateRead times must be timezone-aware UTC")

    @property
    def is_no_read(self) -> bool:
        return not self.plate_raw

    @property
    def plate_masked(self) -> str:
        return mask_plate(self.plate_raw, self.country)

    def __repr__(self) -> str:  # the dataclass repr would be fine, but say the mask
        return (
            f"PlateRead(camera_id={self.camera_id!r}, plate={self.plate_masked!r}, "
            f"country={self.country!r}, confidence={self.confidence:.2f}, "
            f"vehicle_class={self.vehicle_class!r}, direction={self.direction!r}, "
            f"ts={self.ts.isoformat()}, vendor={self.vendor!r}, event_id={self.event_id!r})"
        )


# --------------------------------------------------------------------------
# Normalising vendor vocabularies

_VEHICLE_CLASSES: dict[str, VehicleClass] = {
    # Hikvision ISAPI vehicleType values, and Axis vehicleType (upper case on
    # the wire; compared lower-cased with separators removed).
    "truck": "truck",
    "heavytruck": "truck",
    "lighttruck": "truck",
    "mediumtruck": "truck",
    "lorry": "truck",
    "tractor": "truck",
    "semitrailer": "truck",
    "hgv": "truck",
    # A pickup is a light vehicle, not an electric heavy truck (R-G1).
    "pickuptruck": "van",
    "pickup": "van",
    "van": "van",
    "minivan": "van",
    "buggy": "van",
    "bus": "bus",
    "largebus": "bus",
    "mediumbus": "bus",
    "smallbus": "bus",
    "coach": "bus",
    "car": "car",
    "smallcar": "car",
    "minicar": "car",
    "sedan": "car",
    "suv": "car",
    "suvmpv": "car",
    "mpv": "car",
    "motorcycle": "motorcycle",
    "motorbike": "motorcycle",
    "twowheelvehicle": "motorcycle",
    "scooter": "motorcycle",
    "vehicle": "unknown",
    "motorvehicle": "unknown",
    "unknown": "unknown",
    "": "unknown",
}


def vehicle_class_of(text: str | None) -> VehicleClass:
    """Map a vendor's vehicle type to truck|car|van|bus|motorcycle|other|unknown."""
    if text is None:
        return "unknown"
    key = re.sub(r"[\s_\-/]", "", text).lower()
    return _VEHICLE_CLASSES.get(key, "other")


_DIRECTIONS: dict[str, Direction] = {
    # Hikvision: forward = the vehicle drives towards the camera, which at a
    # gate is mounted facing arriving traffic.
    "forward": "approach",
    "reverse": "leave",
    "approach": "approach",
    "approaching": "approach",
    "toward": "approach",
    "towards": "approach",
    "in": "approach",
    "leave": "leave",
    "leaving": "leave",
    "away": "leave",
    "out": "leave",
}


def direction_of(text: str | None) -> Direction:
    if text is None:
        return "unknown"
    return _DIRECTIONS.get(text.strip().lower(), "unknown")


def _clean_plate(text: str | None) -> str:
    plate = (text or "").strip()
    if plate.lower() in ("unknown", "noplate", "no plate", "none", "null"):
        return ""
    if len(plate) > MAX_PLATE_CHARS:
        raise PlateReadError(
            f"plate text is {len(plate)} characters long (more than {MAX_PLATE_CHARS}): "
            "check the camera's plate-recognition settings"
        )
    if any(ch.isspace() and ch != " " for ch in plate) or any(
        not ch.isprintable() for ch in plate
    ):
        raise PlateReadError("plate text contains control characters: the camera sent garbage")
    return plate


def _confidence(value: object, *, scale: float | None) -> float:
    """Confidence as 0..1. ``scale`` 100 for percent; None = guess (values
    above 1 are percent, as some Axis firmware sends 95.5)."""
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        raise PlateReadError(f"confidence {str(value)[:20]!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise PlateReadError("confidence is negative or not finite")
    if scale is None:
        scale = 100.0 if number > 1.0 else 1.0
    number /= scale
    if number > 1.0:
        raise PlateReadError(
            f"confidence {number * scale:g} is above the {scale:g} maximum of the format"
        )
    return number


def _aware_utc(text: str | None) -> datetime | None:
    """An RFC 3339 / ISO time with a zone, as UTC; None for a missing or
    zone-less time (a camera's local time cannot be placed on the timeline)."""
    if not text:
        return None
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if ts.tzinfo is None:
            return None
        return ts.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # year 1 at +01:00 overflows on the way to UTC
        return None


def _event_id(prefix: str, payload: bytes) -> str:
    # Derived from the event's own bytes so that a camera re-sending the same
    # event (it retries when our answer is lost) produces the same id.
    return f"{prefix}-{hashlib.sha256(payload).hexdigest()[:20]}"


# --------------------------------------------------------------------------
# Hikvision ISAPI


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


def _scan_parts(message) -> tuple[bytes | None, bytes | None]:
    """(the part declared as XML, else a part that looks like the notification)."""
    fallback: bytes | None = None
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        ctype = part.get_content_type()
        filename = part.get_filename() or part.get_param("name", header="content-disposition") or ""
        if not isinstance(filename, str):
            filename = ""
        if ctype.endswith("/xml") or filename.lower().endswith(".xml"):
            return payload, None
        if fallback is None and payload.lstrip()[:1] == b"<" and b"EventNotificationAlert" in payload[:4096]:
            fallback = payload
    return None, fallback


def _find_xml_part(body: bytes, content_type: str) -> bytes:
    """The XML document inside a multipart body (Hikvision sends the
    notification next to licensePlatePicture.jpg and detectionPicture.jpg)."""
    if not re.search(r"boundary=", content_type, re.IGNORECASE):
        raise PlateReadError("multipart body without a boundary in its Content-Type")
    header = b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    try:
        message = BytesParser(policy=compat32).parsebytes(header + body)
    except Exception as exc:  # the email parser is lenient; this is a belt
        raise PlateReadError(f"multipart body cannot be parsed ({type(exc).__name__})") from None
    if not message.is_multipart():
        raise PlateReadError("multipart body has no parts: check the boundary")
    try:
        xml_part, fallback = _scan_parts(message)
    except PlateReadError:
        raise
    except Exception as exc:  # malformed MIME must stay a refusal, never a crash
        raise PlateReadError(f"multipart body cannot be parsed ({type(exc).__name__})") from None
    if xml_part is not None:
        return xml_part
    if fallback is not None:
        return fallback
    raise PlateReadError("multipart body has no XML part: expected the EventNotificationAlert document")


def parse_hikvision(
    body: bytes,
    content_type: str,
    *,
    camera_id: str = "",
    received_at: datetime | None = None,
) -> PlateRead | None:
    """Parse an ISAPI ``EventNotificationAlert``.

    Returns None for well-formed notifications that are not plate reads
    (heartbeats, video loss, an ANPR event in state ``inactive``).
    """
    received = received_at or utcnow()
    ctype = (content_type or "").strip()
    if ctype.lower().startswith("multipart/"):
        xml = _find_xml_part(body, ctype)
    else:
        xml = body
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
    plate = _clean_plate(plate_text)
    raw_conf = _text(anpr, "confidenceLevel")
    if plate and raw_conf is None:
        raise PlateReadError("ANPR event without <confidenceLevel>")
    confidence = _confidence(raw_conf, scale=100.0) if plate else 0.0
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
        ts=_aware_utc(_text(root, "dateTime")) or received,
        vendor="hikvision",
        event_id=_event_id("hik", xml),
        received_at=received,
    )


# --------------------------------------------------------------------------
# Axis License Plate Verifier

_AXIS_ACT = ("new", "update")
_AXIS_IGNORE = ("lost",)


def _axis_time(event: dict, received: datetime) -> datetime:
    capture = event.get("capture_timestamp")
    if capture is not None:
        try:
            millis = int(str(capture))
            ts = datetime.fromtimestamp(millis / 1000, timezone.utc)
            # A camera clock years off is not a time to reason with.
            if abs(ts - received) < timedelta(days=365):
                return ts
        except (ValueError, OverflowError, OSError):
            pass
    iso = event.get("datetime")
    if isinstance(iso, str):
        # "YYYYMMDD HHMMSSmmm" is the camera's local time with no zone: only
        # an ISO time with a zone is taken.
        return _aware_utc(iso) or received
    return received


def parse_axis(
    body: bytes,
    *,
    camera_id: str = "",
    received_at: datetime | None = None,
) -> PlateRead | None:
    """Parse an Axis LPV push event. NEW and UPDATE are reads; LOST is None.

    A JSON array (a batch) is accepted: the last NEW or UPDATE wins.
    """
    received = received_at or utcnow()
    if not body.strip():
        raise PlateReadError("empty body: expected an Axis LPV event (JSON)")
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise PlateReadError("body is not UTF-8: expected an Axis LPV event (JSON)") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a number too long to convert
        raise PlateReadError(f"body is not JSON ({type(exc).__name__})") from None
    events = doc if isinstance(doc, list) else [doc]
    if not events or not all(isinstance(e, dict) for e in events):
        raise PlateReadError("expected a JSON object (or a list of objects) per Axis LPV event")
    chosen: dict | None = None
    for event in events:
        state = event.get("carState", event.get("eventType", event.get("type")))
        if not isinstance(state, str):
            raise PlateReadError("Axis event without carState (new, update or lost)")
        state = state.strip().lower()
        if state in _AXIS_ACT:
            chosen = event
        elif state not in _AXIS_IGNORE:
            raise PlateReadError(f"Axis carState {state[:20]!r} is not new, update or lost")
    if chosen is None:
        return None
    plate_value = None
    for key in ("plateUTF8", "plateText", "plateUnicode", "plateASCII", "text"):
        if key in chosen:
            plate_value = chosen[key]
            break
    if plate_value is None:
        raise PlateReadError("Axis event without plate text (plateText or plateUTF8)")
    if not isinstance(plate_value, str):
        raise PlateReadError("Axis plate text is not a string")
    plate = _clean_plate(plate_value)
    conf_value = chosen.get("plateConfidence", chosen.get("lpConfidence", chosen.get("confidence")))
    if plate and conf_value is None:
        raise PlateReadError("Axis event without plateConfidence")
    if isinstance(conf_value, (bool, dict, list)):
        raise PlateReadError("Axis plateConfidence is not a number")
    confidence = _confidence(conf_value, scale=None) if plate else 0.0
    country = chosen.get("plateCountry", chosen.get("country"))
    if country is not None and not isinstance(country, str):
        raise PlateReadError("Axis plateCountry is not a string")
    vehicle = chosen.get("vehicleType", chosen.get("carType"))
    if vehicle is not None and not isinstance(vehicle, str):
        raise PlateReadError("Axis vehicleType is not a string")
    direction = chosen.get("carMoveDirection")
    if direction is not None and not isinstance(direction, str):
        raise PlateReadError("Axis carMoveDirection is not a string")
    camera = camera_id
    if not camera:
        info = chosen.get("camera_info")
        serial = info.get("SerialNumber") if isinstance(info, dict) else chosen.get("cameraId")
        camera = str(serial)[:40] if serial else "axis"
    car, counter = chosen.get("carID"), chosen.get("packetCounter")
    if car is not None and counter is not None and isinstance(car, (str, int)) and isinstance(counter, (str, int)):
        event_id = f"axis-{str(car)[:20]}-{str(counter)[:20]}"
    else:
        event_id = _event_id("axis", json.dumps(chosen, sort_keys=True).encode())
    return PlateRead(
        camera_id=camera,
        plate_raw=plate,
        country=(country.strip()[:40] or None) if country else None,
        confidence=confidence,
        vehicle_class=vehicle_class_of(vehicle),
        direction=direction_of(direction),
        ts=_axis_time(chosen, received),
        vendor="axis",
        event_id=event_id,
        received_at=received,
    )


# --------------------------------------------------------------------------
# The HTTP listener (I/O edge)

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # used with fullmatch: "$" would let a trailing newline in


class _Refusal(Exception):
    """Answer ``status`` with ``message`` and close the connection."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-cased names; repeated names refused


def parse_request_head(head: bytes) -> _Request:
    """Parse the request line and headers (up to, not including, the blank
    line). Pure; raises ``_Refusal`` with the status to answer."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes anything; kept for clarity
        raise _Refusal(400, "request head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _Refusal(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise _Refusal(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _Refusal(505, "only HTTP/1.1 and HTTP/1.0 are served")
    if not target.startswith("/"):
        raise _Refusal(400, "request target must be an absolute path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise _Refusal(400, "folded header lines are not accepted")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _Refusal(400, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            if key == "content-length" and headers[key] == value:
                continue
            raise _Refusal(400, f"header {name} given twice")
        headers[key] = value
    return _Request(method, target, version, headers)


def _networks(allow: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] | None):
    if allow is None:
        return None
    return [ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n for n in allow]


class AnprListener:
    """HTTP/1.1 endpoint one camera posts its reads to.

    ``emit`` is called on the loop with each accepted ``PlateRead``. A
    request that is not authenticated (secret and/or source address), not
    well-formed, too big or too slow gets a 4xx and emits nothing.
    """

    def __init__(
        self,
        camera_id: str,
        host: str,
        port: int,
        vendor: Vendor,
        emit: Emit,
        *,
        secret: str | None = None,
        allow: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
        max_body: int = 1024 * 1024,
        path: str = "/anpr",
        max_header: int = 16 * 1024,
        head_timeout_s: float = 5.0,
        body_timeout_s: float = 10.0,
        idle_timeout_s: float = 30.0,
        max_connections: int = 8,
    ):
        if vendor not in ("hikvision", "axis"):
            raise ValueError(f"camera {camera_id}: vendor {vendor!r} unknown; use 'hikvision' or 'axis'")
        if not secret and allow is None:
            raise ValueError(
                f"camera {camera_id}: the plate listener needs a shared secret or an allow list "
                "of camera addresses, else anyone on the network could post plates; set one"
            )
        self.camera_id = camera_id
        self.host = host
        self.port = port
        self.vendor: Vendor = vendor
        self._emit = emit
        self._secret = secret.encode("utf-8") if secret else None
        self._allow = _networks(allow)
        self.max_body = max_body
        self.path = path
        self.max_header = max_header
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.last_seen: datetime | None = None
        self.reads = 0
        self.rejected = 0
        # A quiet camera is not a fault (nights are quiet): health is "ok"
        # once listening; last_seen tells the technician how quiet it is.
        self.health = DeviceHealth(camera_id, "camera")

    # -- lifecycle

    async def start(self) -> int:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=self.max_header + 2
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"camera {self.camera_id}: cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                "free the port or change the gate's camera listen address",
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self.health.mark_ok()
        log.info("anpr.listening camera=%s host=%s port=%d vendor=%s", self.camera_id, self.host, self.port, self.vendor)
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        log.info("anpr.stopped camera=%s", self.camera_id)

    def quiet_for(self, now: datetime | None = None) -> timedelta | None:
        """How long since the camera last posted anything authenticated."""
        if self.last_seen is None:
            return None
        return (now or utcnow()) - self.last_seen

    def status(self) -> dict:
        detail = {
            "last_seen": self.last_seen.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if self.last_seen
            else None,
            "reads": self.reads,
            "rejected": self.rejected,
        }
        self.health.detail = detail
        return self.health.as_dict()

    # -- one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_ip = peer[0] if isinstance(peer, tuple) else "?"
        try:
            if len(self._connections) > self.max_connections:
                await self._answer(writer, 503, "too many connections, retry shortly", close=True)
                return
            if not self._source_allowed(peer_ip):
                self.rejected += 1
                log.warning("anpr.refused camera=%s peer=%s status=403 reason=source_not_allowed", self.camera_id, peer_ip)
                await self._answer(writer, 403, "source address not allowed", close=True)
                return
            first = True
            while True:
                keep = await self._one_request(reader, writer, peer_ip, first)
                first = False
                if not keep:
                    return
        except asyncio.CancelledError:
            pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # never let one camera's request take the listener down
            log.exception("anpr.internal_error camera=%s peer=%s", self.camera_id, peer_ip)
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):
                pass

    def _source_allowed(self, ip: str) -> bool:
        if self._allow is None:
            return True
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self._allow)

    def _authenticated(self, headers: dict[str, str]) -> bool:
        if self._secret is None:
            return True
        offered: bytes | None = None
        if "x-hub-secret" in headers:
            offered = headers["x-hub-secret"].encode("latin-1")
        elif headers.get("authorization", "").lower().startswith("basic "):
            try:
                decoded = base64.b64decode(headers["authorization"][6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            _, _, offered = decoded.partition(b":")
        if offered is None:
            return False
        return hmac.compare_digest(offered, self._secret)

    async def _one_request(self, reader, writer, peer_ip: str, first: bool) -> bool:
        """Serve one request; True to keep the connection for another."""
        try:
            # The first head gets the short timeout; waiting for a next request
            # on a kept-alive connection may idle longer, but once its first
            # byte arrives the whole head must follow within head_timeout_s.
            if not first:
                try:
                    start = await asyncio.wait_for(reader.read(1), self.idle_timeout_s)
                except asyncio.TimeoutError:
                    return False
                if not start:
                    return False
            else:
                start = b""
            async with asyncio.timeout(self.head_timeout_s):
                try:
                    head = start + await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    raise _Refusal(431, f"request head larger than {self.max_header} bytes") from None
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial and not start:
                        return False  # the camera closed an idle connection
                    raise _Refusal(400, "connection closed inside the request head") from None
            if len(head) > self.max_header:
                raise _Refusal(431, f"request head larger than {self.max_header} bytes")
            request = parse_request_head(head[:-4])
            path = request.target.split("?", 1)[0]
            if path != self.path:
                raise _Refusal(404, f"post plate events to {self.path}")
            if request.method != "POST":
                raise _Refusal(405, "only POST is accepted", headers={"Allow": "POST"})
            if not self._authenticated(request.headers):
                raise _Refusal(
                    401,
                    "missing or wrong secret: configure the camera's HTTP credentials as set for this gate",
                    headers={"WWW-Authenticate": 'Basic realm="hub-edge anpr"'},
                )
            if "transfer-encoding" in request.headers:
                raise _Refusal(411, "chunked bodies are not accepted: send Content-Length")
            length_text = request.headers.get("content-length")
            if length_text is None:
                raise _Refusal(411, "Content-Length is required")
            if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 12:
                raise _Refusal(400, "Content-Length is not a number")
            length = int(length_text)
            if length > self.max_body:
                raise _Refusal(413, f"body of {length} bytes is over the {self.max_body}-byte limit")
            if request.headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            async with asyncio.timeout(self.body_timeout_s):
                try:
                    body = await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    raise _Refusal(400, "connection closed before the whole body arrived") from None
        except TimeoutError:
            self.rejected += 1
            log.warning("anpr.refused camera=%s peer=%s status=408 reason=too_slow", self.camera_id, peer_ip)
            await self._answer(writer, 408, "request too slow", close=True)
            return False
        except _Refusal as refusal:
            self.rejected += 1
            log.warning(
                "anpr.refused camera=%s peer=%s status=%d reason=%r",
                self.camera_id, peer_ip, refusal.status, refusal.message,
            )
            await self._answer(writer, refusal.status, refusal.message, close=True, headers=refusal.headers)
            return False

        received = utcnow()
        self.last_seen = received
        try:
            if self.vendor == "hikvision":
                read = parse_hikvision(
                    body, request.headers.get("content-type", ""), camera_id=self.camera_id, received_at=received
                )
            else:
                read = parse_axis(body, camera_id=self.camera_id, received_at=received)
        except PlateReadError as exc:
            self.rejected += 1
            log.warning("anpr.bad_event camera=%s peer=%s status=400 reason=%r", self.camera_id, peer_ip, exc.reason)
            await self._answer(writer, 400, exc.reason, close=True)
            return False
        keep = request.version == "HTTP/1.1" and request.headers.get("connection", "").lower() != "close"
        if read is None:
            log.debug("anpr.ignored camera=%s", self.camera_id)
            await self._answer(writer, 200, "ignored", close=not keep)
            return keep
        try:
            self._emit(read)
        except Exception:
            log.exception("anpr.emit_failed camera=%s event=%s", self.camera_id, read.event_id)
            await self._answer(writer, 500, "hub could not take the read; retry", close=True)
            return False
        self.reads += 1
        log.info(
            "anpr.read camera=%s event=%s plate=%s confidence=%.2f class=%s direction=%s",
            self.camera_id, read.event_id, read.plate_masked, read.confidence, read.vehicle_class, read.direction,
        )
        await self._answer(writer, 200, "ok", close=not keep)
        return keep

    async def _answer(self, writer, status: int, message: str, *, close: bool, headers: dict[str, str] | None = None) -> None:
        body = (message + "\n").encode("utf-8")
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            await asyncio.wait_for(writer.drain(), 2.0)
        except (ConnectionError, asyncio.TimeoutError):
            pass
