"""Which bay a booked truck gets, and what happens around its slot (R-B2..R-B7).

Pure decisions: the functions read the booking book, the bays and their
current condition, and `now`; they return dataclasses. The lead publishes
them (booking.assigned, booking.reassigned, booking.no_show, overstay and
release events), sets connectors Reserved or Available, and records them in
the book with `apply_decisions`.

How a bay is chosen (stable and explainable): among the bookable bays of the
booking's connector type and side that are long enough and free for the
whole slot, prefer

1. a bay that is free now over one with a truck in it (only considered
   when the slot is far enough off for that truck to leave);
2. the shortest bay that fits, so long bays stay for long trucks;
3. the tightest free stretch around the slot (best fit), so long free
   stretches stay for later and longer bookings;
4. the bay id, so the same inputs always give the same bay.

Bookings are placed in slot start order. When the bays of a connector type
and side are all the same length this is interval colouring, and the greedy
order always finds a bay for bookings the capacity rule (R-B5) accepted.
With mixed bay lengths it is a heuristic: when a booking cannot be placed,
the not-yet-started holds of its group are planned again (keeping announced
bays where possible, then longest trucks first) before the booking is
reported as `NoBayAvailable` for the operator. A bay is never double-booked.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from typing import Iterable, Mapping, Union

from edge.parts.site.bookings import Bay, Booking, BookingBook
from state_machines import booking as lifecycle

log = logging.getLogger("hubedge.bays")

__all__ = [
    "Bay", "BayCondition", "AssignmentSettings", "BayAssigned", "BayReassigned", "NoShow",
    "Overstay", "BayReleased", "NoBayAvailable", "BookingDecision", "review", "on_arrival",
    "choose_bay", "apply_decisions",
]


class BayCondition(StrEnum):
    FREE = "free"
    OCCUPIED = "occupied"  # plugged connector, or the bay's occupancy sensor
    RESERVED = "reserved"  # held for a booking (R-B3)
    FAULTED = "faulted"
    UNAVAILABLE = "unavailable"  # maintenance or a technician's command


UNUSABLE = frozenset({BayCondition.FAULTED, BayCondition.UNAVAILABLE})


@dataclass(frozen=True)
class AssignmentSettings:
    lead_time: timedelta = timedelta(hours=1)  # assign this long before the slot (R-B2)
    no_show_timeout: timedelta = timedelta(minutes=30)  # after slot start (R-B3)
    overstay_after: timedelta = timedelta(minutes=15)  # after slot end and charging end (R-B6)
    # An occupied bay is offered only for slots at least this far off: a
    # truck on a 45-minute break will likely have left by then.
    occupied_clearance: timedelta = timedelta(minutes=45)
    # A published assignment is moved (to make room for a late booking) only
    # when the driver still has this much notice.
    min_notice_for_move: timedelta = timedelta(minutes=30)
    # How far back no-shows and overstays are looked for (a hub that was off).
    lookback: timedelta = timedelta(days=2)
    site_timezone: tzinfo = timezone.utc  # for the reasons people read


@dataclass(frozen=True)
class BayAssigned:
    booking_id: str
    bay_id: str
    reason: str
    kind: str = "assigned"


@dataclass(frozen=True)
class BayReassigned:
    booking_id: str
    from_bay_id: str | None
    to_bay_id: str
    reason: str
    kind: str = "reassigned"


@dataclass(frozen=True)
class NoShow:
    booking_id: str
    bay_id: str | None
    reason: str
    kind: str = "no_show"


@dataclass(frozen=True)
class Overstay:
    booking_id: str
    bay_id: str | None
    overstay: timedelta
    reason: str
    kind: str = "overstay"


@dataclass(frozen=True)
class BayReleased:
    booking_id: str
    bay_id: str
    reason: str
    kind: str = "released"


@dataclass(frozen=True)
class NoBayAvailable:
    booking_id: str
    reason: str
    kind: str = "unplaced"


BookingDecision = Union[BayAssigned, BayReassigned, NoShow, Overstay, BayReleased, NoBayAvailable]


def _span(td: timedelta) -> str:
    """A duration as people say it: "30 min", "1 h 30 min", "45 s"."""
    secs = round(td.total_seconds())
    if secs < 60:
        return f"{secs} s"
    hours, minutes = divmod(secs // 60, 60)
    return f"{hours} h {minutes} min" if hours and minutes else f"{hours} h" if hours else f"{minutes} min"


def _local(ts: datetime, settings: AssignmentSettings) -> str:
    return ts.astimezone(settings.site_timezone).strftime("%Y-%m-%d %H:%M %Z")


# --------------------------------------------------------------------------
# Holds: which slots each bay is promised for


@dataclass
class _Holds:
    """Per bay, the promised slots as sorted (start, end, booking id)."""

    by_bay: dict[str, list[tuple[datetime, datetime, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, bookings: Iterable[Booking]) -> "_Holds":
        h = cls()
        for b in bookings:
            if b.holds_bay:
                h.add(b.bay_id, b)
        return h

    def add(self, bay_id: str, b: Booking) -> None:
        bisect.insort(self.by_bay.setdefault(bay_id, []), (b.slot_start, b.slot_end, b.id))

    def remove(self, bay_id: str, booking_id: str) -> None:
        slots = self.by_bay.get(bay_id, [])
        for i, (_, _, bid) in enumerate(slots):
            if bid == booking_id:
                del slots[i]
                return

    def free_stretch(self, bay_id: str, start: datetime, end: datetime,
                     ignore: str) -> tuple[datetime | None, datetime | None] | None:
        """(end of the hold before, start of the hold after) when the bay is
        free for [start, end); None when a hold overlaps. The holds of one
        bay never overlap each other, so their ends are sorted like their
        starts and only the last hold starting before `end` can reach in."""
        slots = self.by_bay.get(bay_id, [])
        i = bisect.bisect_left(slots, (end,))
        j = i - 1
        if j >= 0 and slots[j][2] == ignore:
            j -= 1
        prev_end = None
        if j >= 0:
            if slots[j][1] > start:
                return None
            prev_end = slots[j][1]
        k = i + 1 if i < len(slots) and slots[i][2] == ignore else i
        next_start = slots[k][0] if k < len(slots) else None
        return prev_end, next_start


# --------------------------------------------------------------------------
# Choosing a bay


_FOREVER = timedelta(days=3650)


def _candidates(b: Booking, book: BookingBook, conditions: Mapping[str, BayCondition]) -> list[Bay]:
    return [
        bay for bay in book.bookable_bays(b.group)
        if bay.fits(b.vehicle_length_m) and conditions.get(bay.id, BayCondition.FREE) not in UNUSABLE
    ]


def choose_bay(
    b: Booking,
    book: BookingBook,
    conditions: Mapping[str, BayCondition],
    now: datetime,
    settings: AssignmentSettings,
    holds: _Holds | None = None,
    *,
    free_now_only: bool = False,
    start: datetime | None = None,
    prefer: str | None = None,
    exclude: frozenset[str] = frozenset(),
    by_stretch_end: bool = False,
) -> tuple[Bay, str] | None:
    """The bay for booking `b` and why, or None when no bay fits."""
    holds = holds if holds is not None else _Holds.of(book.holding())
    start = start or b.slot_start
    end = b.slot_end
    best: tuple | None = None
    for bay in _candidates(b, book, conditions):
        if bay.id in exclude:
            continue
        condition = conditions.get(bay.id, BayCondition.FREE)
        occupied = condition == BayCondition.OCCUPIED
        if free_now_only and condition != BayCondition.FREE and not (
                condition == BayCondition.RESERVED and bay.id == b.bay_id):
            continue
        if occupied and b.slot_start - now < settings.occupied_clearance:
            continue
        stretch = holds.free_stretch(bay.id, start, end, ignore=b.id)
        if stretch is None:
            continue
        prev_end, next_start = stretch
        span = ((next_start or end + _FOREVER) - (prev_end or start - _FOREVER))
        length_key = bay.length_m if bay.length_m is not None else float("inf")
        if by_stretch_end:
            # Fill the free stretch that closes soonest; used when planning
            # again with the most constrained trucks already placed.
            key = (0 if bay.id == prefer else 1, 1 if occupied else 0,
                   next_start or end + _FOREVER, length_key, span, bay.id)
        else:
            key = (0 if bay.id == prefer else 1, 1 if occupied else 0, length_key, span, bay.id)
        if best is None or key < best[0]:
            best = (key, bay, prev_end, next_start, occupied)
    if best is None:
        return None
    _, bay, prev_end, next_start, occupied = best
    length = f", {bay.length_m:g} m" if bay.length_m is not None else ""
    truck = f" for a {b.vehicle_length_m:g} m truck" if b.vehicle_length_m else ""
    until = f" until {_local(next_start, settings)}" if next_start else ""
    why = (
        f"bay {bay.id} ({bay.connector_type}, {bay.side} side{length}){truck}: "
        f"free for the slot {_local(start, settings)} to {_local(end, settings)}{until}"
    )
    if bay.id == prefer:
        why += "; it keeps the bay already announced"
    elif occupied:
        why += "; it has a truck in it now that should leave before the slot"
    else:
        why += "; the shortest fitting bay with the tightest free stretch, leaving the others for later bookings"
    return bay, why


# --------------------------------------------------------------------------
# The periodic review


def review(
    book: BookingBook,
    conditions: Mapping[str, BayCondition],
    now: datetime,
    settings: AssignmentSettings | None = None,
) -> list[BookingDecision]:
    """Everything due at `now`: no-shows, overstays, bays for slots within
    the lead time, and new bays for assignments whose bay went out of
    service. With no bookings, nothing (R-B7)."""
    settings = settings or AssignmentSettings()
    if not len(book):
        return []
    decisions: list[BookingDecision] = []
    recent = book.starting_between(now - settings.lookback, now + timedelta(microseconds=1))
    for b in recent:
        if b.status in (lifecycle.CONFIRMED, lifecycle.ASSIGNED) and now >= b.slot_start + settings.no_show_timeout:
            released = b.bay_id if b.holds_bay else None
            decisions.append(NoShow(
                b.id, released,
                f"no truck by {_local(b.slot_start + settings.no_show_timeout, settings)} "
                f"({_span(settings.no_show_timeout)} after the slot start): the booking is a no-show"
                + (f" and bay {released} is free for others" if released else "")
                + "; book again if the truck is still coming"))
            if released:
                decisions.append(BayReleased(b.id, released, "no-show: the hold on the bay ended"))
        elif _overstaying(b, conditions, now, settings):
            since = max(b.slot_end, b.charging_ended_at or b.slot_end)
            over = now - since
            decisions.append(Overstay(
                b.id, b.bay_id, over,
                f"truck still in bay {b.bay_id} {int(over.total_seconds() // 60)} min after its slot ended "
                f"at {_local(b.slot_end, settings)} and charging finished: ask the driver to leave the bay"))

    no_shows = {d.booking_id for d in decisions if isinstance(d, NoShow)}
    holds = _Holds.of(b for b in book.holding() if b.id not in no_shows)
    due = [b for b in book.due_within(now, settings.lead_time) if b.id not in no_shows]
    due.sort(key=lambda b: (b.slot_start, b.seq))
    for b in due:
        if b.status == lifecycle.ASSIGNED:
            if conditions.get(b.bay_id, BayCondition.FREE) in UNUSABLE:
                decisions.extend(_move_out_of_service(b, book, conditions, now, settings, holds))
            continue
        choice = choose_bay(b, book, conditions, now, settings, holds)
        if choice is not None:
            bay, why = choice
            holds.add(bay.id, b)
            decisions.append(BayAssigned(b.id, bay.id, why))
            log.debug("bays.chosen booking=%s bay=%s", b.id, bay.id)
            continue
        decisions.extend(_replan(b, book, conditions, now, settings, holds, decisions))
    return decisions


def _overstaying(b: Booking, conditions: Mapping[str, BayCondition], now: datetime, settings: AssignmentSettings) -> bool:
    if b.overstay_reported_at is not None or b.bay_id is None:
        return False
    if conditions.get(b.bay_id) != BayCondition.OCCUPIED:
        return False
    if b.status == lifecycle.FULFILLED:
        since = max(b.slot_end, b.charging_ended_at or b.slot_end)
    elif b.status == lifecycle.ARRIVED:  # parked without charging
        since = b.slot_end
    else:
        return False  # still charging: the charger's own idle rule (R-C8) applies after
    return now >= since + settings.overstay_after


def _move_out_of_service(b: Booking, book: BookingBook, conditions: Mapping[str, BayCondition], now: datetime,
                         settings: AssignmentSettings, holds: _Holds) -> list[BookingDecision]:
    old = b.bay_id
    choice = choose_bay(b, book, conditions, now, settings, holds, start=max(b.slot_start, now))
    if choice is None:
        return [NoBayAvailable(b.id, f"bay {old} is out of service and no other suitable bay is free for the slot: "
                                     "the operator should find the driver a bay or contact the customer")]
    bay, why = choice
    holds.remove(old, b.id)
    holds.add(bay.id, b)
    return [BayReassigned(b.id, old, bay.id, f"bay {old} is out of service; moved to {why}")]


def _replan(b: Booking, book: BookingBook, conditions: Mapping[str, BayCondition], now: datetime,
            settings: AssignmentSettings, holds: _Holds, decided: list[BookingDecision]) -> list[BookingDecision]:
    """Place a booking the greedy pass could not, by planning again the
    not-yet-started holds of its group (in slot order, the order in which the
    greedy choice is always right), keeping announced bays when possible."""
    just_assigned = {d.booking_id: d.bay_id for d in decided if isinstance(d, BayAssigned)}
    movable: list[Booking] = []
    for bay_id, slots in holds.by_bay.items():
        bay = book.bays.get(bay_id)
        if bay is None or (bay.connector_type, bay.side) != b.group:
            continue
        for s, e, bid in slots:
            other = book.get(bid)
            if other is None:
                continue
            published = other.status == lifecycle.ASSIGNED and s - now >= settings.min_notice_for_move
            if bid in just_assigned or published:
                movable.append(other)
    unplaced_reason = (
        f"no {b.connector_type} {b.side}-side bay that fits is free for the whole slot from "
        f"{_local(b.slot_start, settings)}: faulted or occupied bays leave too few; "
        "the operator should contact the customer or free a bay")
    if not movable:
        return [NoBayAvailable(b.id, unplaced_reason)]
    current = {m.id: just_assigned.get(m.id, m.bay_id) for m in movable}
    in_slot_order = sorted(movable + [b], key=lambda x: (x.slot_start, x.seq))

    def shortest_usable(x: Booking) -> float:
        fits = [bay.length_m if bay.length_m is not None else float("inf")
                for bay in book.bookable_bays(x.group) if bay.fits(x.vehicle_length_m)]
        return min(fits, default=float("inf"))

    # Trucks that need the longest bays first, each into the free stretch
    # closing soonest: this places sets where slot order with mixed bay
    # lengths paints itself into a corner (a short stay took the only long
    # bay a later long truck needs).
    constrained_first = sorted(movable + [b], key=lambda x: (-shortest_usable(x), x.slot_start, x.seq))
    attempts = ((in_slot_order, True, False), (in_slot_order, False, False), (constrained_first, False, True))
    for order, sticky, by_stretch_end in attempts:
        trial = _Holds({k: list(v) for k, v in holds.by_bay.items()})
        for m in movable:
            trial.remove(current[m.id], m.id)
        plan: dict[str, tuple[str, str]] = {}
        for x in order:
            choice = choose_bay(x, book, conditions, now, settings, trial,
                                prefer=current.get(x.id) if sticky else None, by_stretch_end=by_stretch_end)
            if choice is None:
                break
            trial.add(choice[0].id, x)
            plan[x.id] = (choice[0].id, choice[1])
        else:
            holds.by_bay = trial.by_bay
            out: list[BookingDecision] = []
            for x in in_slot_order:
                bay_id, why = plan[x.id]
                if x.id == b.id:
                    out.append(BayAssigned(x.id, bay_id, why))
                elif bay_id != current[x.id]:
                    if x.id in just_assigned:
                        # Not yet published: correct the decision in place.
                        decided[:] = [BayAssigned(x.id, bay_id, why) if (isinstance(d, BayAssigned) and d.booking_id == x.id)
                                      else d for d in decided]
                    else:
                        out.append(BayReassigned(x.id, current[x.id], bay_id,
                                                 f"moved to make room for a later booking: {why}"))
            return out
    return [NoBayAvailable(b.id, unplaced_reason)]


# --------------------------------------------------------------------------
# A booked truck arrives (R-B4)


def on_arrival(
    book: BookingBook,
    booking_id: str,
    conditions: Mapping[str, BayCondition],
    now: datetime,
    settings: AssignmentSettings | None = None,
) -> list[BookingDecision]:
    """The booked truck is on site: keep its bay if usable, otherwise give it
    another suitable bay that is free now and for the rest of the slot."""
    settings = settings or AssignmentSettings()
    b = book.get(booking_id)
    if b is None or b.status in lifecycle.FINAL_STATES:
        return []
    condition = conditions.get(b.bay_id or "", BayCondition.FREE)
    if b.bay_id is not None and condition in (BayCondition.FREE, BayCondition.RESERVED):
        return []
    holds = _Holds.of(x for x in book.holding() if x.id != b.id)
    # The truck is here: only a bay that is free right now will do.
    choice = choose_bay(b, book, conditions, now, settings, holds, free_now_only=True, start=max(now, b.slot_start))
    if choice is None:
        what = f"bay {b.bay_id} is {condition.value}" if b.bay_id else "no bay was assigned yet"
        return [NoBayAvailable(b.id, f"{what} and no other suitable bay is free now: "
                                     "the driver should wait at the arch or call the number on the charger")]
    bay, why = choice
    if b.bay_id is None:
        return [BayAssigned(b.id, bay.id, f"truck arrived before its bay was assigned: {why}")]
    return [BayReassigned(b.id, b.bay_id, bay.id, f"bay {b.bay_id} is {condition.value}; use {why}")]


def apply_decisions(book: BookingBook, decisions: Iterable[BookingDecision], now: datetime) -> None:
    """Record decisions in the book once the lead has acted on them."""
    for d in decisions:
        if isinstance(d, BayAssigned):
            book.assign(d.booking_id, d.bay_id, now)
        elif isinstance(d, BayReassigned):
            book.assign(d.booking_id, d.to_bay_id, now)
        elif isinstance(d, NoShow):
            book.mark_no_show(d.booking_id, now)
        elif isinstance(d, Overstay):
            book.mark_overstay_reported(d.booking_id, now)
