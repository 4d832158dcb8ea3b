"""Property tests: random booking sets never overbook (R-B5) and assignment
never double-books a bay (R-B2, R-B3)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from hypothesis import given, settings, strategies as st

from booking_builders import NOW, SECRET, booking_item
from edge.parts.site.bay_assignment import (AssignmentSettings, BayAssigned, BayReassigned, NoBayAvailable, apply_decisions,
                                 review)
from edge.parts.site.bookings import Bay, BookingBook
from state_machines import booking as lifecycle

Q = timedelta(minutes=15)
GROUPS = [("CCS", "left"), ("CCS", "right"), ("MCS", "left")]

bays_strategy = st.lists(
    st.tuples(st.sampled_from(GROUPS), st.sampled_from([16.5, 18.75, 25.25, None])), min_size=1, max_size=6)
bookings_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 8), st.sampled_from(GROUPS),
              st.sampled_from([None, 12.0, 16.5, 18.75, 25.0])), min_size=0, max_size=30)


def build(bays_spec, bookings_spec):
    bays = [Bay(f"B{i}", g[0], g[1], length) for i, (g, length) in enumerate(bays_spec)]
    book = BookingBook(bays, SECRET)
    accepted = []
    for i, (start_q, len_q, (ctype, side), vlen) in enumerate(bookings_spec):
        item = booking_item(f"k{i}", NOW + start_q * Q, len_q * 15, ctype=ctype, side=side, length=vlen)
        if book.upsert(item, NOW).accepted:
            accepted.append(f"k{i}")
    return bays, book, accepted


def no_overlaps(intervals):
    intervals = sorted(intervals)
    return all(a[1] <= b[0] for a, b in zip(intervals, intervals[1:]))


@settings(max_examples=300, deadline=None)
@given(bays_strategy, bookings_strategy)
def test_r_b5_property_accepted_bookings_never_exceed_bays_per_type_and_side(bays_spec, bookings_spec):
    bays, book, accepted = build(bays_spec, bookings_spec)
    per_group = defaultdict(int)
    for b in bays:
        per_group[(b.connector_type, b.side)] += 1
    for t in range(0, 50):
        at = NOW + t * Q + timedelta(minutes=1)
        counts = defaultdict(int)
        for bid in accepted:
            b = book.get(bid)
            if b.slot_start <= at < b.slot_end:
                counts[b.group] += 1
        for group, n in counts.items():
            assert n <= per_group[group]


def simulate(book, accepted, by_id, *, expect_all_placed):
    """Reviews every 15 minutes over the whole period; trucks come on time
    and leave at slot end. Checks the holds after every step."""
    rules = AssignmentSettings(lead_time=timedelta(hours=1))
    unplaced = set()
    for step in range(0, 60):
        at = NOW - timedelta(hours=1) + step * Q
        decisions = review(book, {}, at, rules)
        unplaced |= {d.booking_id for d in decisions if isinstance(d, NoBayAvailable)}
        if expect_all_placed:
            assert not unplaced, decisions
            assert not [d for d in decisions if isinstance(d, BayReassigned)]  # all known up front: no churn
        apply_decisions(book, decisions, at)
        holds = defaultdict(list)
        for b in book.holding():
            bay = by_id[b.bay_id]
            assert (bay.connector_type, bay.side) == b.group and bay.fits(b.vehicle_length_m)
            holds[b.bay_id].append((b.slot_start, b.slot_end))
        assert all(no_overlaps(v) for v in holds.values())
        for bid in accepted:
            b = book.get(bid)
            if b.status == lifecycle.ASSIGNED and b.slot_start <= at:
                book.mark_arrived(bid, at)
            elif b.status == lifecycle.ARRIVED and b.slot_end <= at:
                book.mark_fulfilled(bid, at)
    for bid in accepted:  # every booking got a bay, or was reported unplaced
        assert book.get(bid).status == lifecycle.FULFILLED or bid in unplaced


uniform_bays = st.lists(st.sampled_from(GROUPS), min_size=1, max_size=6).flatmap(
    lambda groups: st.sampled_from([16.5, 25.25, None]).map(lambda length: [(g, length) for g in groups]))


@settings(max_examples=300, deadline=None)
@given(uniform_bays, bookings_strategy)
def test_r_b2_property_same_length_bays_every_accepted_booking_gets_a_bay_and_none_is_double_booked(
        bays_spec, bookings_spec):
    bays, book, accepted = build(bays_spec, bookings_spec)
    simulate(book, accepted, {b.id: b for b in bays}, expect_all_placed=True)


@settings(max_examples=300, deadline=None)
@given(bays_strategy, bookings_strategy)
def test_r_b2_property_mixed_lengths_never_double_book_and_never_drop_a_booking_silently(bays_spec, bookings_spec):
    bays, book, accepted = build(bays_spec, bookings_spec)
    simulate(book, accepted, {b.id: b for b in bays}, expect_all_placed=False)


@settings(max_examples=300, deadline=None)
@given(bays_strategy, bookings_strategy)
def test_r_b2_property_one_pass_over_the_whole_horizon_never_double_books(bays_spec, bookings_spec):
    bays, book, accepted = build(bays_spec, bookings_spec)
    decisions = review(book, {}, NOW, AssignmentSettings(lead_time=timedelta(days=2)))
    placed = {d.booking_id: d.bay_id for d in decisions if isinstance(d, BayAssigned)}
    placed.update({d.booking_id: d.to_bay_id for d in decisions if isinstance(d, BayReassigned)})
    unplaced = {d.booking_id for d in decisions if isinstance(d, NoBayAvailable)}
    assert set(placed) | unplaced == set(accepted) and not set(placed) & unplaced
    holds = defaultdict(list)
    for bid, bay_id in placed.items():
        b = book.get(bid)
        holds[bay_id].append((b.slot_start, b.slot_end))
    assert all(no_overlaps(v) for v in holds.values())
