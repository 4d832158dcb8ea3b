"""Who the barrier opens for (R-G1..R-G7), as a pure decision.

Input: one plate read (or presence without a read), the gate's role, the
booking book, the bays and their condition now, settings and `now`. Output:
a `GateDecision` that always carries a reason code and a sentence a person
can act on (R-G7); the lead pulses OPEN, raises the manual-review event, or
records the refusal, and syncs the decision as a gate event.

Order of the rules at the entry:
1. a read moving out through the entry lane opens: no one is trapped (R-G6);
2. a vehicle the camera classes as not a truck is refused (R-G1);
3. presence without a read, or a read below the confidence threshold,
   never opens by itself: manual review (R-G4);
4. a plate matching a booking whose window is open (slot start minus the
   early-arrival grace, up to slot end) opens at once, ahead of ad hoc
   (R-G2); several different booked plates matching one read go to manual
   review rather than guess;
5. everyone else is ad hoc, a cancelled booking included: admitted only while
   a bay stays free after holding bays for booked trucks due within the hold
   horizon, counted per connector type and side (R-G3).
The exit always opens, read or no read (R-G6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from typing import Mapping

from edge.parts.site.bay_assignment import BayCondition
from edge.parts.site.bookings import Bay, Booking, BookingBook, PlateMatch
from edge.parts.site.plates import log_ref, mask_plate
from state_machines import booking as lifecycle

log = logging.getLogger("hubedge.gate")


class GateRole(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    UNKNOWN = "unknown"


class GateAction(StrEnum):
    OPEN = "open"
    REFUSE = "refuse"
    MANUAL_REVIEW = "manual_review"


class GateReason(StrEnum):
    EXIT = "exit"
    LEAVING_BY_ENTRY = "leaving_by_entry"
    BOOKED = "booked"
    ADHOC_ADMITTED = "adhoc_admitted"
    ADHOC_NO_SPACE = "adhoc_no_space"
    NOT_A_TRUCK = "not_a_truck"
    LOW_CONFIDENCE = "low_confidence"
    NO_PLATE_READ = "no_plate_read"
    AMBIGUOUS_PLATE = "ambiguous_plate"


@dataclass(frozen=True)
class PlateRead:
    """One camera read. `plate` is the text as read (kept in memory only);
    `confidence` 0..1; `vehicle_class` as the camera names it, or None."""

    plate: str | None
    confidence: float
    vehicle_class: str | None = None
    direction: Direction = Direction.UNKNOWN
    country: str | None = None


@dataclass(frozen=True)
class GateSettings:
    confidence_threshold: float = 0.85
    early_arrival_grace: timedelta = timedelta(minutes=30)
    hold_horizon: timedelta = timedelta(minutes=60)
    allowed_vehicle_classes: frozenset[str] = frozenset({"truck", "heavy_truck", "tractor", "lorry"})
    # Words cameras use when they could not tell: treated as "class unknown".
    unknown_vehicle_classes: frozenset[str] = frozenset({"", "unknown", "other", "vehicle", "none"})
    site_timezone: tzinfo = timezone.utc  # for the reasons people read


@dataclass(frozen=True)
class SiteView:
    """The bays and what they look like now. `trucks_on_way` counts trucks
    admitted at the entry that have not reached a bay yet, so two ad-hoc
    trucks a minute apart do not both take the last bay."""

    bays: tuple[Bay, ...]
    conditions: Mapping[str, BayCondition]
    trucks_on_way: int = 0


@dataclass(frozen=True)
class GateDecision:
    open: bool
    action: GateAction
    reason_code: GateReason
    reason: str
    booking_id: str | None = None
    marks_arrival: bool = False  # the booking becomes arrived (lead: book.mark_arrived)
    plate_masked: str | None = None
    detail: dict = field(default_factory=dict)  # figures behind the decision, for the event


def _local(ts: datetime, settings: GateSettings) -> str:
    return ts.astimezone(settings.site_timezone).strftime("%H:%M %Z")


def decide_at_gate(
    read: PlateRead | None,
    role: GateRole,
    book: BookingBook,
    site: SiteView,
    now: datetime,
    settings: GateSettings | None = None,
) -> GateDecision:
    settings = settings or GateSettings()
    masked = mask_plate(read.plate, read.country) if read is not None and read.plate else None

    if role == GateRole.EXIT:
        return _decision(True, GateAction.OPEN, GateReason.EXIT, "vehicle leaving: the exit always opens", masked,
                         booking_id=_leaving_booking(read, book, now, settings))
    if read is not None and read.direction == Direction.OUT:
        return _decision(True, GateAction.OPEN, GateReason.LEAVING_BY_ENTRY,
                         "vehicle leaving through the entry lane: opened so no one is trapped", masked)

    vclass = (read.vehicle_class or "").strip().lower() if read is not None else ""
    if vclass not in settings.unknown_vehicle_classes and vclass not in settings.allowed_vehicle_classes:
        return _decision(False, GateAction.REFUSE, GateReason.NOT_A_TRUCK,
                         f"the camera sees a {vclass}, and this hub is for electric trucks only: "
                         "the vehicle must turn around; if it is a truck, the driver can call the intercom",
                         masked, vehicle_class=vclass)

    if read is None or not read.plate or not read.plate.strip():
        return _decision(False, GateAction.MANUAL_REVIEW, GateReason.NO_PLATE_READ,
                         "a vehicle is at the entry but no plate was read: the operator checks it over the intercom",
                         masked)
    if read.confidence < settings.confidence_threshold:
        return _decision(False, GateAction.MANUAL_REVIEW, GateReason.LOW_CONFIDENCE,
                         f"plate read with confidence {read.confidence:.2f}, below {settings.confidence_threshold:.2f}: "
                         "the operator checks it over the intercom or camera",
                         masked, confidence=round(read.confidence, 3))

    match = book.find_by_plate(read.plate, read.country)
    if match.ambiguous_fold:
        return _decision(False, GateAction.MANUAL_REVIEW, GateReason.AMBIGUOUS_PLATE,
                         "the read could be more than one booked plate (letters and digits the camera confuses): "
                         "the operator checks the plate", masked)
    open_hits, other = _split_by_window(match, book, now, settings)
    if len({h[1] for h in open_hits}) > 1:
        return _decision(False, GateAction.MANUAL_REVIEW, GateReason.AMBIGUOUS_PLATE,
                         "the plate matches bookings of different trucks that are all due now: "
                         "the operator checks which truck this is", masked,
                         booking_ids=sorted({h[0].id for h in open_hits}))
    if open_hits:
        booking = min((h[0] for h in open_hits), key=lambda b: (b.slot_start, b.seq))
        first_time = booking.status in (lifecycle.CONFIRMED, lifecycle.ASSIGNED)
        bay = f"; assigned bay {booking.bay_id}" if booking.bay_id else ""
        fuzzy = " (matched allowing for letters the camera confuses)" if match.fuzzy else ""
        log.debug("gate.booked_match booking=%s plate=%s", booking.id, log_ref(open_hits[0][1]))
        return _decision(True, GateAction.OPEN, GateReason.BOOKED,
                         f"booked slot {_local(booking.slot_start, settings)} to {_local(booking.slot_end, settings)}"
                         f"{bay}{fuzzy}: welcome", masked, booking_id=booking.id, marks_arrival=first_time,
                         fuzzy=match.fuzzy)
    return _ad_hoc(book, site, now, settings, masked, other)


def _split_by_window(match: PlateMatch, book: BookingBook, now: datetime,
                     settings: GateSettings) -> tuple[list[tuple[Booking, str]], list[Booking]]:
    open_hits: list[tuple[Booking, str]] = []
    other: list[Booking] = []
    for hit in match.hits:
        b = book.get(hit.booking_id)
        if b is None:
            continue
        if b.is_active and b.window_open(now, settings.early_arrival_grace):
            open_hits.append((b, hit.plate))
        else:
            other.append(b)
    return open_hits, other


def _ad_hoc(book: BookingBook, site: SiteView, now: datetime, settings: GateSettings,
            masked: str | None, other: list[Booking]) -> GateDecision:
    note = _why_not_booked(other, now, settings)
    free: dict[tuple[str, str], int] = {}
    spare_unbookable = 0
    for bay in site.bays:
        if site.conditions.get(bay.id, BayCondition.FREE) != BayCondition.FREE:
            continue
        if bay.bookable:
            free[(bay.connector_type, bay.side)] = free.get((bay.connector_type, bay.side), 0) + 1
        else:
            spare_unbookable += 1
    held: dict[tuple[str, str], int] = {}
    this_truck = {b.id for b in other}  # an early booked truck is not held for twice
    for b in book.due_within(now, settings.hold_horizon):
        if b.id in this_truck:
            continue
        if b.bay_id and site.conditions.get(b.bay_id) == BayCondition.RESERVED and b.holds_bay:
            continue  # its bay already shows Reserved and is not counted free
        held[b.group] = held.get(b.group, 0) + 1
    # A free MCS bay cannot take a CCS booking: spare bays are counted per
    # connector type and side, and a shortfall in one group is not covered
    # by another group's free bays.
    spare = spare_unbookable + sum(max(0, n - held.get(g, 0)) for g, n in free.items())
    spare -= site.trucks_on_way
    # Bays already showing Reserved are held for bookings too, for the person reading why.
    reserved = sum(1 for bay in site.bays if site.conditions.get(bay.id) == BayCondition.RESERVED)
    detail = {"free_bays": sum(free.values()) + spare_unbookable, "held_for_bookings": sum(held.values()) + reserved,
              "spare_bays": max(spare, 0), "trucks_on_way": site.trucks_on_way}
    if spare >= 1:
        return _decision(True, GateAction.OPEN, GateReason.ADHOC_ADMITTED,
                         f"{note}ad-hoc arrival admitted: {spare} bay(s) free beyond those held for booked trucks",
                         masked, **detail)
    horizon_end = now + settings.hold_horizon
    return _decision(False, GateAction.REFUSE, GateReason.ADHOC_NO_SPACE,
                     f"{note}no bay free for ad-hoc charging: {detail['held_for_bookings']} bay(s) are held for booked trucks "
                     f"due by {_local(horizon_end, settings)} and the rest are in use or out of service; "
                     "try again later or book a slot", masked, **detail)


def _why_not_booked(other: list[Booking], now: datetime, settings: GateSettings) -> str:
    if not other:
        return ""
    b = min(other, key=lambda x: abs(x.slot_start - now))
    if b.status == lifecycle.CANCELLED:
        return "the booking for this plate was cancelled, so "
    if b.status in lifecycle.FINAL_STATES:
        return f"the booking for this plate is {b.status.replace('_', ' ')}, so "
    if b.slot_start - settings.early_arrival_grace > now:
        opens = b.slot_start - settings.early_arrival_grace
        return f"the booking for this plate opens the gate from {_local(opens, settings)}; until then "
    return "the booking for this plate has ended, so "


def _leaving_booking(read: PlateRead | None, book: BookingBook, now: datetime, settings: GateSettings) -> str | None:
    """For the departure record only; the exit opens regardless."""
    if read is None or not read.plate or read.confidence < settings.confidence_threshold:
        return None
    match = book.find_by_plate(read.plate, read.country)
    candidates = [book.get(h.booking_id) for h in match.hits]
    here = [b for b in candidates if b is not None and b.status in (lifecycle.ARRIVED, lifecycle.CHARGING, lifecycle.FULFILLED)
            and b.slot_start - settings.early_arrival_grace <= now]
    return max(here, key=lambda b: b.slot_start).id if here else None


def _decision(is_open: bool, action: GateAction, code: GateReason, reason: str, masked: str | None,
              booking_id: str | None = None, marks_arrival: bool = False, **detail) -> GateDecision:
    return GateDecision(open=is_open, action=action, reason_code=code, reason=reason, booking_id=booking_id,
                        marks_arrival=marks_arrival, plate_masked=masked, detail=detail)
