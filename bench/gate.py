"""Gate and bay-assignment benchmarks (`python -m bench gate`).

1. Plate read -> gate decision (plate lookup plus the policy) with 10,000
   bookings over six months and 40 bays, p99 in ms; baseline: the same
   decision by a linear scan of every booking comparing raw plate strings.
2. Assigning bays to 10,000 bookings over six months in one pass, seconds;
   baseline: for each booking, check every booking already assigned.

Quick mode uses 2,000 bookings and fewer reads so it runs in a few seconds;
the goals hold for the full size.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

from bench.common import Result, percentile
from edge.bay_assignment import AssignmentSettings, BayAssigned, BayCondition, review
from edge.bookings import Bay, Booking, BookingBook
from edge.gate_policy import Direction, GateRole, GateSettings, PlateRead, SiteView, decide_at_gate

START = datetime(2026, 1, 5, 0, 0, tzinfo=timezone.utc)
SECRET = b"bench-site-secret"
GROUPS = [("CCS", "left"), ("CCS", "right"), ("MCS", "left"), ("MCS", "right")]
LETTERS = "ABCDEFGHJKLMNPRSTVXZ"


def _bays() -> list[Bay]:
    return [Bay(f"bay{i:02d}", *GROUPS[i % 4], 25.25 if i % 3 else 18.75) for i in range(40)]


def _plate(rng: random.Random) -> str:
    return f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}-{rng.randint(100, 999)}-{rng.choice(LETTERS)}"


def _book(n: int, rng: random.Random) -> tuple[BookingBook, list[Booking]]:
    book = BookingBook(_bays(), SECRET)
    slots = 183 * 96  # quarter hours in six months
    i = 0
    while len(book) < n:
        start = START + timedelta(minutes=15 * rng.randrange(slots))
        item = {
            "id": f"bk{i}", "slot_start": start.isoformat(), "customer_id": "fleet",
            "slot_end": (start + timedelta(minutes=rng.choice([45, 60, 90, 120]))).isoformat(),
            "connector_type": rng.choice(("CCS", "MCS")), "side": rng.choice(("left", "right")),
            "plates": [_plate(rng)], "vehicle_length_m": rng.choice([None, 16.5, 18.75, 24.0]),
        }
        book.upsert(item, START)
        i += 1
    return book, book.all()


# ---- naive baselines


def _naive_gate(read: PlateRead, bookings: list[Booking], bays: list[Bay], conditions: dict, now: datetime,
                settings: GateSettings) -> bool:
    for b in bookings:  # raw string comparison, every booking
        if read.plate in b.plates and b.is_active and b.window_open(now, settings.early_arrival_grace):
            return True
    held = sum(1 for b in bookings if b.status in ("confirmed", "assigned")
               and b.slot_start <= now + settings.hold_horizon and b.slot_end > now)
    free = sum(1 for bay in bays if conditions.get(bay.id, BayCondition.FREE) == BayCondition.FREE)
    return free - held >= 1


def _naive_assign(bookings: list[Booking], bays: list[Bay]) -> int:
    placed: list[tuple[Booking, str]] = []
    for b in sorted(bookings, key=lambda x: (x.slot_start, x.seq)):
        busy = {bay for other, bay in placed if other.overlaps(b.slot_start, b.slot_end)}
        for bay in bays:
            if (bay.connector_type, bay.side) == b.group and bay.fits(b.vehicle_length_m) and bay.id not in busy:
                placed.append((b, bay.id))
                break
    return len(placed)


# ---- figures


def _gate_figure(book: BookingBook, bookings: list[Booking], reads: int, rng: random.Random, n: int) -> Result:
    bays = _bays()
    settings = GateSettings()
    cases = []
    for _ in range(reads):
        b = rng.choice(bookings)
        now = b.slot_start - timedelta(minutes=rng.randint(0, 40))
        conditions = {bay.id: rng.choice([BayCondition.FREE, BayCondition.OCCUPIED]) for bay in bays}
        plate = b.plates[0] if rng.random() < 0.7 else _plate(rng)
        cases.append((PlateRead(plate, 0.95, "truck", Direction.IN), conditions, now))

    ours: list[float] = []
    for read, conditions, now in cases:
        t0 = time.perf_counter()
        decide_at_gate(read, GateRole.ENTRY, book, SiteView(tuple(bays), conditions), now, settings)
        ours.append((time.perf_counter() - t0) * 1000)
    naive: list[float] = []
    for read, conditions, now in cases[: max(50, reads // 10)]:
        t0 = time.perf_counter()
        _naive_gate(read, bookings, bays, conditions, now, settings)
        naive.append((time.perf_counter() - t0) * 1000)
    return Result(
        name=f"gate decision p99 ({n} bookings, 40 bays)", value=round(percentile(ours, 99), 4), unit="ms",
        baseline="linear scan of all bookings comparing raw plates", baseline_value=round(percentile(naive, 99), 4),
        goal=20.0, command="python -m bench gate")


def _assign_figure(book: BookingBook, bookings: list[Booking], n: int) -> Result:
    rules = AssignmentSettings(lead_time=timedelta(days=184))
    t0 = time.perf_counter()
    decisions = review(book, {}, START, rules)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_placed = _naive_assign(bookings, _bays())
    naive = time.perf_counter() - t0
    placed = sum(1 for d in decisions if isinstance(d, BayAssigned))
    if placed != len(bookings) or naive_placed != len(bookings):
        raise RuntimeError(f"bench gate: placed {placed} (naive {naive_placed}) of {len(bookings)} bookings")
    return Result(
        name=f"assign bays to {n} bookings over six months", value=round(ours, 4), unit="s",
        baseline="for each booking, check every booking already assigned", baseline_value=round(naive, 4),
        goal=1.0, command="python -m bench gate")


def run(quick: bool) -> list[Result]:
    rng = random.Random(20260105)
    n = 2_000 if quick else 10_000
    book, bookings = _book(n, rng)
    return [
        _gate_figure(book, bookings, 300 if quick else 3_000, rng, n),
        _assign_figure(book, bookings, n),
    ]


if __name__ == "__main__":
    for r in run(quick=False):
        print(f"{r.name}: {r.value} {r.unit} (baseline {r.baseline_value} {r.unit}, {r.baseline}; "
              f"ratio {r.ratio:.3f}; goal {r.goal}: {'ok' if r.ok else 'MISSED'})")
