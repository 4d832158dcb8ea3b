"""Axis License Plate Verifier push events (JSON) -> PlateRead.

``carState`` NEW and UPDATE are reads, LOST is not; a JSON array is a batch.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

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
        return aware_utc(iso) or received
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
    plate = clean_plate(plate_value)
    conf_value = chosen.get("plateConfidence", chosen.get("lpConfidence", chosen.get("confidence")))
    if plate and conf_value is None:
        raise PlateReadError("Axis event without plateConfidence")
    if isinstance(conf_value, (bool, dict, list)):
        raise PlateReadError("Axis plateConfidence is not a number")
    confidence = confidence_of(conf_value, scale=None) if plate else 0.0
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
        event_id = event_id_of("axis", json.dumps(chosen, sort_keys=True).encode())
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
