"""Builders for the booking, bay, plate and gate tests (imported by name:
test folders have no __init__.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from edge.parts.site.bookings import Bay, BookingBook
from units import rfc3339

SECRET = b"site-secret-for-tests"
NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def booking_item(bid: str, start: datetime, minutes: int = 60, *, ctype: str = "CCS", side: str = "left",
                 plates: list | None = None, length: float | None = None, **extra) -> dict:
    item = {
        "id": bid,
        "slot_start": rfc3339(start),
        "slot_end": rfc3339(start + timedelta(minutes=minutes)),
        "connector_type": ctype,
        "side": side,
        "customer_id": "fleet-1",
        "plates": plates if plates is not None else [f"NL-{bid.upper()}-01"],
    }
    if length is not None:
        item["vehicle_length_m"] = length
    item.update(extra)
    return item


def bays_of(n: int, ctype: str = "CCS", side: str = "left", length: float | None = 25.0, prefix: str = "") -> list[Bay]:
    p = prefix or f"{ctype}{side[0].upper()}"
    return [Bay(f"{p}{i}", ctype, side, length) for i in range(1, n + 1)]



def make_book(bays: list[Bay], *items: dict, at: datetime = NOW) -> BookingBook:
    book = BookingBook(bays, SECRET)
    for it in items:
        res = book.upsert(it, at)
        assert res.accepted, res
    return book
