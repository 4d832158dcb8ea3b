"""Bookings from the cloud: validation (R-B1), capacity (R-B5) and the book.

The cloud sends ``sync/bookings`` messages ``{v, id, upsert: [...], cancel:
[...]}``. Each booking is judged on its own: a malformed one, one outside the
horizon, or one that would overbook a connector type and side is refused with
a reason, and the rest of the batch still applies (R-B1). A message whose
envelope is broken changes nothing.

`BookingBook` is the hub's in-memory view of its bookings; the lead persists
it as documents (`Booking.to_document`). Lifecycle changes go through the
booking state machine's table (`state_machines.booking`). Raw plates live
only in `Booking.plates` and can be purged after the retention period
(R-G8); matching runs on keyed hashes (`edge.parts.site.plates.PlateKeys`).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Iterable, Iterator, Mapping

from units import parse_rfc3339, rfc3339
from edge.parts.site.plates import PlateKeys, log_ref, normalise_plate, plate_keys
from state_machines import booking as lifecycle

log = logging.getLogger("hubedge.bookings")

CONNECTOR_TYPES = ("CCS", "MCS")
SIDES = ("left", "right")
# States that count against capacity and may still use the hub.
ACTIVE_STATES = frozenset({lifecycle.CONFIRMED, lifecycle.ASSIGNED, lifecycle.ARRIVED, lifecycle.CHARGING})
# Longest road train allowed in the EU (European Modular System) plus margin:
# a longer figure is a typo (centimetres, feet), not a truck.
MAX_VEHICLE_LENGTH_M = 30.0
MAX_PLATE_LEN = 12
MAX_ID_LEN = 128


@dataclass(frozen=True)
class Bay:
    """A charging bay as bookings see it (config `[[bays]]`). `length_m` None
    means the bay takes any truck (a drive-through bay)."""

    id: str
    connector_type: str
    side: str
    length_m: float | None = None
    bookable: bool = True
    connector_id: str | None = None

    def fits(self, vehicle_length_m: float | None) -> bool:
        if vehicle_length_m is None or self.length_m is None:
            return True
        return self.length_m >= vehicle_length_m


@dataclass(frozen=True)
class BookingRules:
    horizon: timedelta = timedelta(days=183)  # about six months (FAQ)
    max_slot: timedelta = timedelta(hours=24)
    min_slot: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class Booking:
    id: str
    slot_start: datetime
    slot_end: datetime
    connector_type: str
    side: str
    customer_id: str
    plates: tuple[str, ...]
    plate_keys: tuple[PlateKeys, ...]
    token_uid: str | None = None
    vehicle_length_m: float | None = None
    status: str = lifecycle.CONFIRMED
    bay_id: str | None = None
    seq: int = 0  # order of acceptance: first come, first served (R-B5)
    arrived_at: datetime | None = None
    charging_ended_at: datetime | None = None
    overstay_reported_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def group(self) -> tuple[str, str]:
        return (self.connector_type, self.side)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATES

    @property
    def holds_bay(self) -> bool:
        return self.bay_id is not None and self.status in lifecycle.HOLDING_STATES

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.slot_start < end and start < self.slot_end

    def window_open(self, now: datetime, grace: timedelta) -> bool:
        """R-G2 window: from slot start minus the grace, up to (not
        including) slot end."""
        return self.slot_start - grace <= now < self.slot_end

    def to_document(self) -> dict:
        def t(v: datetime | None) -> str | None:
            return rfc3339(v) if v else None

        return {
            "id": self.id,
            "slot_start": rfc3339(self.slot_start),
            "slot_end": rfc3339(self.slot_end),
            "connector_type": self.connector_type,
            "side": self.side,
            "customer_id": self.customer_id,
            "plates": list(self.plates),
            "plate_keys": [k.to_document() for k in self.plate_keys],
            "token_uid": self.token_uid,
            "vehicle_length_m": self.vehicle_length_m,
            "status": self.status,
            "bay_id": self.bay_id,
            "seq": self.seq,
            "arrived_at": t(self.arrived_at),
            "charging_ended_at": t(self.charging_ended_at),
            "overstay_reported_at": t(self.overstay_reported_at),
            "updated_at": t(self.updated_at),
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> "Booking":
        def t(v: str | None) -> datetime | None:
            return parse_rfc3339(v) if v else None

        return cls(
            id=doc["id"],
            slot_start=parse_rfc3339(doc["slot_start"]),
            slot_end=parse_rfc3339(doc["slot_end"]),
            connector_type=doc["connector_type"],
            side=doc["side"],
            customer_id=doc["customer_id"],
            plates=tuple(doc.get("plates") or ()),
            plate_keys=tuple(PlateKeys.from_document(k) for k in doc["plate_keys"]),
            token_uid=doc.get("token_uid"),
            vehicle_length_m=doc.get("vehicle_length_m"),
            status=doc.get("status", lifecycle.CONFIRMED),
            bay_id=doc.get("bay_id"),
            seq=int(doc.get("seq", 0)),
            arrived_at=t(doc.get("arrived_at")),
            charging_ended_at=t(doc.get("charging_ended_at")),
            overstay_reported_at=t(doc.get("overstay_reported_at")),
            updated_at=t(doc.get("updated_at")),
        )


@dataclass(frozen=True)
class BookingResult:
    """The outcome for one item of a sync message; the lead turns refusals
    into reason events and the reply (R-B1)."""

    booking_id: str | None
    op: str  # upsert | cancel
    accepted: bool
    code: str
    reason: str
    released_bay_id: str | None = None


@dataclass(frozen=True)
class SyncOutcome:
    message_id: str | None
    ok: bool  # False: the envelope was unusable and nothing changed
    code: str
    reason: str
    results: tuple[BookingResult, ...] = ()

    @property
    def refused(self) -> tuple[BookingResult, ...]:
        return tuple(r for r in self.results if not r.accepted)


@dataclass(frozen=True)
class PlateHit:
    booking_id: str
    plate: str  # canonical keyed hash of the plate that matched


@dataclass(frozen=True)
class PlateMatch:
    hits: tuple[PlateHit, ...] = ()
    fuzzy: bool = False  # matched through the confusion classes only
    ambiguous_fold: bool = False  # folded key shared by several plates: no match

    @property
    def booking_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h.booking_id for h in self.hits))


class BookingRefused(ValueError):
    """A booking item that cannot be accepted; `code` and the message go to
    the cloud as the reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class BookingStateError(ValueError):
    pass


# --------------------------------------------------------------------------
# Validation of one upsert item (R-B1, R-B2)


def _text(item: Mapping[str, Any], key: str, required: bool = True) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            raise BookingRefused("missing_field", f"booking has no {key}: send the booking again with {key} set")
        return None
    if not isinstance(value, str) or not value.strip():
        raise BookingRefused("malformed_field", f"booking {key} must be a non-empty string: correct {key} and send it again")
    return value.strip()


def _time(item: Mapping[str, Any], key: str) -> datetime:
    value = _text(item, key)
    try:
        return parse_rfc3339(value)
    except (ValueError, TypeError):
        raise BookingRefused(
            "malformed_time",
            f"booking {key} {value!r} is not an RFC 3339 time with a zone: send UTC such as 2026-03-01T08:00:00Z",
        ) from None


@dataclass(frozen=True)
class _BookingFields:
    id: str
    slot_start: datetime
    slot_end: datetime
    connector_type: str
    side: str
    customer_id: str
    plates: tuple[str, ...]
    plate_countries: tuple[str | None, ...]
    token_uid: str | None
    vehicle_length_m: float | None
    status: str | None


def parse_booking_item(item: Any, now: datetime, rules: BookingRules) -> _BookingFields:
    """Check one upsert item; raises `BookingRefused` with the reason."""
    if not isinstance(item, Mapping):
        raise BookingRefused("malformed_booking", "booking item is not an object: send each booking as a JSON object")
    booking_id = _text(item, "id")
    if len(booking_id) > MAX_ID_LEN:
        raise BookingRefused("malformed_field", f"booking id longer than {MAX_ID_LEN} characters: use a shorter id")
    start = _time(item, "slot_start")
    end = _time(item, "slot_end")
    if end <= start:
        raise BookingRefused("slot_order", "booking slot ends before it starts: send a slot_end after slot_start")
    if end - start < rules.min_slot:
        raise BookingRefused("slot_too_short", f"booking slot is shorter than {rules.min_slot}: book a longer slot")
    if end - start > rules.max_slot:
        raise BookingRefused("slot_too_long", f"booking slot is longer than {rules.max_slot}: split it into shorter slots")
    if end <= now:
        raise BookingRefused("slot_over", "booking slot is already over: book a slot in the future")
    if start > now + rules.horizon:
        raise BookingRefused(
            "beyond_horizon",
            f"booking slot starts more than {rules.horizon.days} days ahead: book it closer to the date",
        )
    ctype = (_text(item, "connector_type") or "").upper()
    if ctype not in CONNECTOR_TYPES:
        raise BookingRefused("malformed_field", "booking connector_type must be CCS or MCS: correct it and send it again")
    side = (_text(item, "side") or "").lower()
    if side not in SIDES:
        raise BookingRefused("malformed_field", "booking side must be left or right (the truck's inlet side): correct it and send it again")
    # docs/cloud-contract.md names the field `customer` (optional); customer_id and
    # fleet_id are accepted too.
    customer = (_text(item, "customer", required=False) or _text(item, "customer_id", required=False)
                or _text(item, "fleet_id", required=False) or "")
    raw_plates = item.get("plates")
    if not isinstance(raw_plates, list) or not raw_plates:
        raise BookingRefused(
            "missing_plate",
            "booking has no plates: the gate could not recognise the truck; add its number plate and send it again",
        )
    plates: list[str] = []
    countries: list[str | None] = []
    for p in raw_plates:
        country = None
        if isinstance(p, Mapping):
            country = p.get("country") if isinstance(p.get("country"), str) else None
            p = p.get("plate")
        if not isinstance(p, str) or not (2 <= len(normalise_plate(p, country)) <= MAX_PLATE_LEN):
            raise BookingRefused(
                "malformed_plate",
                f"booking has a plate that is not 2 to {MAX_PLATE_LEN} letters or digits: correct the plate and send it again",
            )
        plates.append(p)
        countries.append(country)
    token = _text(item, "token", required=False) or _text(item, "token_uid", required=False)
    length = item.get("vehicle_length_m")
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, (int, float)) or not math.isfinite(length) \
                or not 0 < length <= MAX_VEHICLE_LENGTH_M:
            raise BookingRefused(
                "malformed_field",
                f"booking vehicle_length_m must be a number of metres between 0 and {MAX_VEHICLE_LENGTH_M:g}: correct it",
            )
        length = float(length)
    status = item.get("status")
    if status is not None and (not isinstance(status, str) or status not in lifecycle.STATES):
        raise BookingRefused("malformed_field", f"booking status {status!r} is unknown: send confirmed or cancelled")
    return _BookingFields(booking_id, start, end, ctype, side, customer, tuple(plates), tuple(countries),
                          token, length, status)


# --------------------------------------------------------------------------
# Capacity (R-B5)


@dataclass
class _GroupIndex:
    """The active bookings of one connector type and side, by slot start."""

    entries: list[tuple[datetime, int, str]] = field(default_factory=list)  # (start, seq, id)
    longest: timedelta = timedelta(0)

    def add(self, b: Booking) -> None:
        bisect.insort(self.entries, (b.slot_start, b.seq, b.id))
        self.longest = max(self.longest, b.slot_end - b.slot_start)

    def remove(self, b: Booking) -> None:
        i = bisect.bisect_left(self.entries, (b.slot_start, b.seq, b.id))
        if i < len(self.entries) and self.entries[i][2] == b.id:
            del self.entries[i]

    def overlapping(self, start: datetime, end: datetime) -> Iterator[str]:
        lo = bisect.bisect_left(self.entries, (start - self.longest,))
        hi = bisect.bisect_left(self.entries, (end,))
        for _, _, bid in self.entries[lo:hi]:
            yield bid


def _max_concurrent(intervals: list[tuple[datetime, datetime]], start: datetime, end: datetime) -> int:
    """Most of `intervals` running at once within [start, end)."""
    events: list[tuple[datetime, int]] = []
    for s, e in intervals:
        s, e = max(s, start), min(e, end)
        if s < e:
            events.append((s, 1))
            events.append((e, -1))
    events.sort(key=lambda ev: (ev[0], ev[1]))  # an end at t frees before a start at t
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def documents_of(bookings: Iterable[Booking]) -> list[dict]:
    """Stored form of a snapshot, in slot order (see `BookingBook.snapshot`)."""
    return [b.to_document() for b in sorted(bookings, key=lambda b: (b.slot_start, b.seq))]


# --------------------------------------------------------------------------
# The book


class BookingBook:
    def __init__(self, bays: Iterable[Bay], plate_secret: bytes, rules: BookingRules | None = None):
        self.rules = rules or BookingRules()
        self._secret = plate_secret
        self.bays: dict[str, Bay] = {b.id: b for b in bays}
        self._bookings: dict[str, Booking] = {}
        self._by_start: list[tuple[datetime, int, str]] = []
        self._longest = timedelta(0)
        self._groups: dict[tuple[str, str], _GroupIndex] = {}
        self._exact: dict[str, set[tuple[str, str]]] = {}  # key hash -> {(booking id, canonical)}
        self._folded: dict[str, set[tuple[str, str]]] = {}
        self._seq = 0
        # Bumped on every change, so a writer that saved a snapshot can tell
        # whether the book moved on while it was writing.
        self.version = 0
        # Capacity per (type, side): bookable bay lengths, longest first.
        self._bay_lengths: dict[tuple[str, str], list[float]] = {}
        for b in self.bays.values():
            if b.bookable:
                self._bay_lengths.setdefault((b.connector_type, b.side), []).append(
                    math.inf if b.length_m is None else b.length_m)
        for lengths in self._bay_lengths.values():
            lengths.sort(reverse=True)
        self._bookable_by_group: dict[tuple[str, str], tuple[Bay, ...]] = {}
        for b in sorted(self.bays.values(), key=lambda x: x.id):
            if b.bookable:
                key = (b.connector_type, b.side)
                self._bookable_by_group[key] = self._bookable_by_group.get(key, ()) + (b,)

    # ---- reading

    def __len__(self) -> int:
        return len(self._bookings)

    def __contains__(self, booking_id: str) -> bool:
        return booking_id in self._bookings

    def bookable_bays(self, group: tuple[str, str]) -> tuple[Bay, ...]:
        """Bookable bays of one (connector type, side), by id."""
        return self._bookable_by_group.get(group, ())

    def get(self, booking_id: str) -> Booking | None:
        return self._bookings.get(booking_id)

    def all(self) -> list[Booking]:
        return sorted(self._bookings.values(), key=lambda b: (b.slot_start, b.seq))

    def starting_between(self, start: datetime, end: datetime) -> list[Booking]:
        """Bookings whose slot starts in [start, end), by start then arrival."""
        lo = bisect.bisect_left(self._by_start, (start,))
        hi = bisect.bisect_left(self._by_start, (end,))
        return [self._bookings[bid] for _, _, bid in self._by_start[lo:hi]]

    def running_at(self, start: datetime, end: datetime) -> list[Booking]:
        """Bookings whose slot overlaps [start, end)."""
        return [b for b in self.starting_between(start - self._longest, end) if b.slot_end > start]

    def due_within(self, now: datetime, horizon: timedelta) -> list[Booking]:
        """Active bookings not yet arrived whose slot starts by now +
        horizon (inclusive) and is not over (the ones the hub must keep room for)."""
        return [
            b for b in self.running_at(now, now + horizon + timedelta(microseconds=1))
            if b.status in (lifecycle.CONFIRMED, lifecycle.ASSIGNED)
        ]

    def in_window(self, now: datetime, grace: timedelta) -> list[Booking]:
        """Active bookings whose gate window (R-G2) is open at `now`."""
        return [b for b in self.running_at(now, now + grace + timedelta(microseconds=1))
                if b.is_active and b.window_open(now, grace)]

    def holding(self) -> list[Booking]:
        return [b for b in self._bookings.values() if b.holds_bay]

    def by_plate_hash(self, canonical: str) -> list[Booking]:
        ids = {bid for bid, c in self._exact.get(canonical, ()) if c == canonical}
        return sorted((self._bookings[i] for i in ids), key=lambda b: (b.slot_start, b.seq))

    def find_by_plate(self, text: str, country: str | None = None) -> PlateMatch:
        """Bookings whose plate matches a read (rule in `edge.parts.site.plates`)."""
        try:
            keys = plate_keys(text, country, self._secret)
        except ValueError:
            return PlateMatch()
        hits: set[tuple[str, str]] = set()
        for k in keys.exact:
            hits |= self._exact.get(k, set())
        if hits:
            return PlateMatch(tuple(PlateHit(b, c) for b, c in sorted(hits)))
        for k in keys.folded:
            hits |= self._folded.get(k, set())
        if not hits:
            return PlateMatch()
        if len({c for _, c in hits}) > 1:
            # Several different booked plates fold to this read: opening for
            # any of them could admit the wrong truck.
            return PlateMatch(ambiguous_fold=True)
        return PlateMatch(tuple(PlateHit(b, c) for b, c in sorted(hits)), fuzzy=True)

    def plate_hash_of(self, text: str, country: str | None = None) -> str:
        return plate_keys(text, country, self._secret).canonical

    # ---- capacity (R-B5)

    def capacity_problem(self, candidate: Booking, ignore_id: str | None = None) -> BookingRefused | None:
        """Why `candidate` would overbook its connector type and side, or None.

        Bays are grouped by connector type and side. A truck of length L can
        use only bays at least L long, and those sets are nested, so the
        condition for every booking to get a bay (Hall's condition) is: for
        each bay length threshold, at no moment do more bookings need a bay
        at least that long than there are such bays. The earlier bookings
        stay; the one that would break the condition is refused."""
        lengths = self._bay_lengths.get(candidate.group, [])
        need = candidate.vehicle_length_m or 0.0
        fitting = [x for x in lengths if x >= need]
        if not fitting:
            if not lengths:
                return BookingRefused(
                    "no_bookable_bay",
                    f"this hub has no bookable {candidate.connector_type} bay on the {candidate.side} side: "
                    "book another connector type or side, or another hub")
            return BookingRefused(
                "vehicle_too_long",
                f"no bookable {candidate.connector_type} {candidate.side}-side bay is {need:g} m long: "
                "book another hub or check the vehicle length")
        group = self._groups.get(candidate.group)
        others = [] if group is None else [
            self._bookings[i] for i in group.overlapping(candidate.slot_start, candidate.slot_end)
            if i != candidate.id and i != ignore_id
        ]
        others = [o for o in others if o.overlaps(candidate.slot_start, candidate.slot_end)]
        # The candidate counts against every threshold up to the shortest bay
        # it can use; a shorter threshold covers more bays and more bookings.
        shortest_usable = min(fitting)
        for threshold in sorted({x for x in lengths if x <= shortest_usable}):
            bays_at_least = sum(1 for x in lengths if x >= threshold)
            competing = [
                (o.slot_start, o.slot_end) for o in others
                if self._needs_at_least(o, lengths) >= threshold
            ]
            if _max_concurrent(competing, candidate.slot_start, candidate.slot_end) + 1 > bays_at_least:
                longer = "" if threshold == min(lengths) else f" at least {threshold:g} m long"
                return BookingRefused(
                    "capacity_full",
                    f"all {bays_at_least} bookable {candidate.connector_type} {candidate.side}-side bays{longer} "
                    f"are already booked for part of this slot: choose another time or side",
                )
        return None

    @staticmethod
    def _needs_at_least(b: Booking, lengths: list[float]) -> float:
        """The shortest bay length (of this group) the booking can use."""
        need = b.vehicle_length_m or 0.0
        fitting = [x for x in lengths if x >= need]
        return min(fitting) if fitting else math.inf

    # ---- changes from the cloud

    def apply_sync(self, message: Any, now: datetime) -> SyncOutcome:
        """Apply a `sync/bookings` message item by item (R-B1)."""
        if not isinstance(message, Mapping):
            return SyncOutcome(None, False, "malformed_message", "bookings message is not a JSON object: nothing applied")
        msg_id = message.get("id") if isinstance(message.get("id"), str) else None
        if message.get("v") != 1:
            return SyncOutcome(msg_id, False, "unsupported_version",
                               "bookings message version is not 1: nothing applied; send v=1")
        if msg_id is None or not msg_id:
            return SyncOutcome(None, False, "malformed_message", "bookings message has no id: nothing applied; send an id")
        upserts = message.get("upsert", [])
        cancels = message.get("cancel", [])
        if not isinstance(upserts, list) or not isinstance(cancels, list):
            return SyncOutcome(msg_id, False, "malformed_message",
                               "bookings message upsert and cancel must be lists: nothing applied")
        results: list[BookingResult] = []
        for item in upserts:
            results.append(self.upsert(item, now))
        for item in cancels:
            bid = item.get("id") if isinstance(item, Mapping) else item
            if not isinstance(bid, str) or not bid:
                results.append(BookingResult(None, "cancel", False, "malformed_cancel",
                                             "cancel item is not a booking id: send the id as a string"))
                continue
            results.append(self.cancel(bid, now))
        refused = sum(1 for r in results if not r.accepted)
        reason = f"{len(results) - refused} applied, {refused} refused"
        return SyncOutcome(msg_id, True, "applied" if not refused else "partly_applied", reason, tuple(results))

    def upsert(self, item: Any, now: datetime) -> BookingResult:
        raw_id = item.get("id") if isinstance(item, Mapping) and isinstance(item.get("id"), str) else None
        try:
            f = parse_booking_item(item, now, self.rules)
        except BookingRefused as refusal:
            log.info("booking.refused booking=%s code=%s", raw_id, refusal.code)
            return BookingResult(raw_id, "upsert", False, refusal.code, refusal.reason)
        if f.status == lifecycle.CANCELLED:
            return self.cancel(f.id, now)
        existing = self._bookings.get(f.id)
        if existing is not None and existing.status not in (lifecycle.CONFIRMED, lifecycle.ASSIGNED):
            return BookingResult(f.id, "upsert", False, "booking_in_progress",
                                 f"booking is already {existing.status.replace('_', ' ')}: changes are not applied; "
                                 "make a new booking instead")
        keys = tuple(plate_keys(p, c, self._secret) for p, c in zip(f.plates, f.plate_countries))
        candidate = Booking(
            id=f.id, slot_start=f.slot_start, slot_end=f.slot_end, connector_type=f.connector_type,
            side=f.side, customer_id=f.customer_id, plates=f.plates, plate_keys=keys,
            token_uid=f.token_uid, vehicle_length_m=f.vehicle_length_m,
            status=existing.status if existing else lifecycle.CONFIRMED,
            bay_id=existing.bay_id if existing else None,
            seq=existing.seq if existing else self._seq + 1,
            updated_at=now,
        )
        problem = self.capacity_problem(candidate, ignore_id=f.id)
        if problem is not None:
            log.info("booking.refused booking=%s code=%s", f.id, problem.code)
            return BookingResult(f.id, "upsert", False, problem.code, problem.reason)
        code, reason, released = "created", "booking accepted", None
        if existing is not None:
            code, reason = "updated", "booking updated"
            if existing.holds_bay and not self._bay_still_fits(candidate):
                released = candidate.bay_id
                candidate = replace(candidate, status=self._step(candidate, "release_bay"), bay_id=None)
                code, reason = "updated_bay_released", (
                    "booking updated; its bay no longer fits the new slot or truck, a new bay will be assigned")
            self._unindex(existing)
        else:
            self._seq += 1
        self._index(candidate)
        log.info("booking.accepted booking=%s code=%s type=%s side=%s plates=%s", f.id, code, f.connector_type, f.side,
                 ",".join(log_ref(k.canonical) for k in keys))
        return BookingResult(f.id, "upsert", True, code, reason, released)

    def _bay_still_fits(self, b: Booking) -> bool:
        bay = self.bays.get(b.bay_id or "")
        if bay is None or (bay.connector_type, bay.side) != b.group or not bay.fits(b.vehicle_length_m):
            return False
        return not any(o.bay_id == b.bay_id and o.id != b.id and o.holds_bay
                       for o in self.running_at(b.slot_start, b.slot_end))

    def cancel(self, booking_id: str, now: datetime) -> BookingResult:
        b = self._bookings.get(booking_id)
        if b is None:
            # Cancelling what we never had is harmless: the cloud's intent holds.
            return BookingResult(booking_id, "cancel", True, "unknown_booking", "booking was not on this hub; nothing to cancel")
        if b.status == lifecycle.CANCELLED:
            return BookingResult(booking_id, "cancel", True, "already_cancelled", "booking was already cancelled")
        if lifecycle.next_status(b.status, "cancel_booking") is None:
            return BookingResult(booking_id, "cancel", False, "cannot_cancel",
                                 f"booking is {b.status.replace('_', ' ')} and can no longer be cancelled; "
                                 "a session in progress ends at the charger")
        released = b.bay_id if b.holds_bay else None
        self._replace(b, replace(b, status=lifecycle.CANCELLED, updated_at=now))
        log.info("booking.cancelled booking=%s", booking_id)
        return BookingResult(booking_id, "cancel", True, "cancelled", "booking cancelled", released)

    # ---- lifecycle (driven by bay assignment, the gate and the chargers)

    def _step(self, b: Booking, trigger: str) -> str:
        dest = lifecycle.next_status(b.status, trigger)
        if dest is None:
            raise BookingStateError(f"booking {b.id} is {b.status}: cannot {trigger.replace('_', ' ')}")
        return dest

    def _must(self, booking_id: str) -> Booking:
        b = self._bookings.get(booking_id)
        if b is None:
            raise BookingStateError(f"booking {booking_id} is not on this hub: resync bookings from the cloud")
        return b

    def assign(self, booking_id: str, bay_id: str, now: datetime) -> Booking:
        b = self._must(booking_id)
        trigger = "reassign_bay" if b.holds_bay else "assign_bay"
        return self._replace(b, replace(b, status=self._step(b, trigger), bay_id=bay_id, updated_at=now))

    def mark_arrived(self, booking_id: str, now: datetime) -> Booking:
        b = self._must(booking_id)
        if b.status in (lifecycle.ARRIVED, lifecycle.CHARGING):
            return b  # re-entry: the first arrival counts
        return self._replace(b, replace(b, status=self._step(b, "register_arrival"), arrived_at=now, updated_at=now))

    def mark_charging(self, booking_id: str, now: datetime) -> Booking:
        b = self._must(booking_id)
        if b.status == lifecycle.CHARGING:
            return b
        return self._replace(b, replace(b, status=self._step(b, "begin_charging"),
                                        arrived_at=b.arrived_at or now, updated_at=now))

    def mark_fulfilled(self, booking_id: str, now: datetime) -> Booking:
        """Charging ended (or the truck left): the booking is fulfilled. The
        bay id stays for the overstay check (R-B6)."""
        b = self._must(booking_id)
        return self._replace(b, replace(b, status=self._step(b, "complete_booking"),
                                        charging_ended_at=now, updated_at=now))

    def mark_no_show(self, booking_id: str, now: datetime) -> Booking:
        b = self._must(booking_id)
        return self._replace(b, replace(b, status=self._step(b, "declare_no_show"), updated_at=now))

    def mark_overstay_reported(self, booking_id: str, now: datetime) -> Booking:
        b = self._must(booking_id)
        return self._replace(b, replace(b, overstay_reported_at=now, updated_at=now))

    def purge_raw_plates(self, slot_ended_before: datetime) -> int:
        """Drop raw plates of bookings whose slot ended before the cutoff
        (R-G8 retention); the keyed hashes stay, so matching still works."""
        n = 0
        for b in list(self._bookings.values()):
            if b.plates and b.slot_end < slot_ended_before:
                self._bookings[b.id] = replace(b, plates=())
                n += 1
        if n:
            self.version += 1
        return n

    # ---- persistence

    def documents(self) -> list[dict]:
        return [b.to_document() for b in self.all()]

    def snapshot(self) -> tuple[Booking, ...]:
        """Every booking as it is now, cheaply (bookings are immutable), for
        serialising away from the event loop with `documents_of`."""
        return tuple(self._bookings.values())

    def load(self, documents: Iterable[Mapping[str, Any]]) -> None:
        """Restore from stored documents (no validation: they were accepted)."""
        for doc in documents:
            b = Booking.from_document(doc)
            if b.id in self._bookings:
                self._unindex(self._bookings[b.id])
            self._index(b)
            self._seq = max(self._seq, b.seq)

    # ---- indexes

    def _replace(self, old: Booking, new: Booking) -> Booking:
        self._unindex(old)
        self._index(new)
        return new

    def _index(self, b: Booking) -> None:
        self.version += 1
        self._bookings[b.id] = b
        bisect.insort(self._by_start, (b.slot_start, b.seq, b.id))
        self._longest = max(self._longest, b.slot_end - b.slot_start)
        if b.is_active:
            self._groups.setdefault(b.group, _GroupIndex()).add(b)
        for k in b.plate_keys:
            for e in k.exact:
                self._exact.setdefault(e, set()).add((b.id, k.canonical))
            for fk in k.folded:
                self._folded.setdefault(fk, set()).add((b.id, k.canonical))

    def _unindex(self, b: Booking) -> None:
        self._bookings.pop(b.id, None)
        i = bisect.bisect_left(self._by_start, (b.slot_start, b.seq, b.id))
        if i < len(self._by_start) and self._by_start[i][2] == b.id:
            del self._by_start[i]
        if b.is_active and b.group in self._groups:
            self._groups[b.group].remove(b)
        for k in b.plate_keys:
            for index, keys in ((self._exact, k.exact), (self._folded, k.folded)):
                for e in keys:
                    s = index.get(e)
                    if s is not None:
                        s.discard((b.id, k.canonical))
                        if not s:
                            del index[e]
