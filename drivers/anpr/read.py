"""A number-plate read as a camera reported it, and the vocabularies the
vendor parsers share (vehicle class, direction, confidence, camera time).

Who may enter is not decided here (that is the gate policy's job); a read
only says what the camera saw. Plates are personal data (R-G8): nothing here
logs a plate, and ``PlateRead``'s repr shows only a masked form.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from drivers.anpr.plate_text import mask_plate
from drivers.device import utcnow

VehicleClass = Literal["truck", "car", "van", "bus", "motorcycle", "other", "unknown"]
Direction = Literal["approach", "leave", "unknown"]
Vendor = Literal["hikvision", "axis"]

MAX_PLATE_CHARS = 20
# The largest body a camera may post by default (the gate's camera
# max_body_bytes sets it): a read with a 4K scene picture and its plate picture.
DEFAULT_MAX_BODY = 8 * 1024 * 1024


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


def clean_plate(text: str | None) -> str:
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


def confidence_of(value: object, *, scale: float | None) -> float:
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


def aware_utc(text: str | None) -> datetime | None:
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


def event_id_of(prefix: str, payload: bytes) -> str:
    # Derived from the event's own bytes so that a camera re-sending the same
    # event (it retries when our answer is lost) produces the same id.
    return f"{prefix}-{hashlib.sha256(payload).hexdigest()[:20]}"
