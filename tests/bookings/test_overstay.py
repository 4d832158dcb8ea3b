"""R-B6 (a booking does not extend the stay): when an overstay is reported,
from which moment it is counted, and when it is not, decided without sockets
by edge.parts.site.bay_assignment.review."""

from __future__ import annotations

from datetime import timedelta

import pytest

from booking_builders import NOW, bays_of, booking_item, make_book
from edge.parts.site.bay_assignment import AssignmentSettings, BayCondition, Overstay, apply_decisions, review

M = timedelta(minutes=1)
S = AssignmentSettings(lead_time=timedelta(hours=1), no_show_timeout=30 * M, overstay_after=15 * M)
OCCUPIED = {"CCSL1": BayCondition.OCCUPIED}


def _overstays(book, conditions, at):
    return [d for d in review(book, conditions, at, S) if isinstance(d, Overstay)]


def _booked(minutes: int = 60):
    """A booking from NOW for ``minutes``, its bay assigned, its truck arrived."""
    book = make_book(bays_of(1), booking_item("k", NOW, minutes))
    apply_decisions(book, review(book, {}, NOW - 10 * M, S), NOW - 10 * M)
    book.mark_arrived("k", NOW)
    return book


def test_r_b6_charging_done_before_the_slot_ends_counts_from_the_slot_end():
    """A truck may stay until its slot ends: the clock starts there, not when charging finished."""
    book = _booked(60)
    book.mark_charging("k", NOW + M)
    book.mark_fulfilled("k", NOW + 20 * M)  # full 40 min before the slot ends
    assert _overstays(book, OCCUPIED, NOW + 74 * M) == []
    (d,) = _overstays(book, OCCUPIED, NOW + 75 * M)
    assert d.booking_id == "k" and d.bay_id == "CCSL1" and d.overstay == 15 * M


def test_r_b6_parked_without_charging_is_reported_after_the_slot_end():
    """Arrived but never plugged in: the bay is still blocked once the slot is over."""
    book = _booked(60)
    assert _overstays(book, OCCUPIED, NOW + 74 * M + timedelta(seconds=59)) == []
    (d,) = _overstays(book, OCCUPIED, NOW + 75 * M)
    assert d.overstay == 15 * M
    assert "bay CCSL1" in d.reason and "ask the driver to leave" in d.reason


@pytest.mark.parametrize("condition", [BayCondition.FREE, BayCondition.RESERVED, BayCondition.FAULTED,
                                       BayCondition.UNAVAILABLE])
def test_r_b6_a_bay_not_occupied_is_no_overstay(condition):
    book = _booked(60)
    book.mark_charging("k", NOW + M)
    book.mark_fulfilled("k", NOW + 70 * M)
    assert _overstays(book, {"CCSL1": condition}, NOW + 3 * 60 * M) == []


def test_r_b6_reported_once_even_when_the_truck_stays_on():
    book = _booked(60)
    book.mark_charging("k", NOW + M)
    book.mark_fulfilled("k", NOW + 70 * M)
    first = _overstays(book, OCCUPIED, NOW + 85 * M)
    assert len(first) == 1
    apply_decisions(book, first, NOW + 85 * M)
    assert book.get("k").overstay_reported_at == NOW + 85 * M
    for later in (86, 120, 600):
        assert _overstays(book, OCCUPIED, NOW + later * M) == []


def test_r_b6_overstay_after_is_the_configured_time():
    book = _booked(60)
    book.mark_charging("k", NOW + M)
    book.mark_fulfilled("k", NOW + 60 * M)
    quick = AssignmentSettings(lead_time=timedelta(hours=1), overstay_after=timedelta(seconds=30))
    assert [d for d in review(book, OCCUPIED, NOW + 60 * M + timedelta(seconds=29), quick) if isinstance(d, Overstay)] == []
    (d,) = [d for d in review(book, OCCUPIED, NOW + 60 * M + timedelta(seconds=30), quick) if isinstance(d, Overstay)]
    assert d.overstay == timedelta(seconds=30)
