"""sync/bookings validation (R-B1), capacity (R-B5) and the book's queries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from booking_builders import NOW, SECRET, bays_of, booking_item, make_book
from edge.parts.site.bookings import Bay, Booking, BookingBook, BookingRules, BookingStateError
from state_machines import booking as lifecycle

H = timedelta(hours=1)


def message(*upserts, cancel=()):
    return {"v": 1, "id": "msg-1", "upsert": list(upserts), "cancel": list(cancel)}


def test_r_b1_valid_booking_is_accepted_and_kept():
    book = BookingBook(bays_of(2), SECRET)
    out = book.apply_sync(message(booking_item("k1", NOW + H, length=16.5, token_uid="04A1B2C3")), NOW)
    assert out.ok and out.code == "applied"
    b = book.get("k1")
    assert (b.connector_type, b.side, b.vehicle_length_m, b.token_uid) == ("CCS", "left", 16.5, "04A1B2C3")
    assert b.slot_start == NOW + H and b.slot_start.tzinfo is not None
    assert b.status == lifecycle.CONFIRMED


@pytest.mark.parametrize("change, code", [
    ({"slot_start": "2026-03-02 09:00"}, "malformed_time"),  # no zone
    ({"slot_start": "tomorrow"}, "malformed_time"),
    ({"connector_type": "CHAdeMO"}, "malformed_field"),
    ({"side": "middle"}, "malformed_field"),
    ({"plates": []}, "missing_plate"),
    ({"plates": ["--"]}, "malformed_plate"),
    ({"vehicle_length_m": -3}, "malformed_field"),
    ({"vehicle_length_m": 165}, "malformed_field"),  # centimetres, not metres
    ({"vehicle_length_m": True}, "malformed_field"),
    ({"customer": 12}, "malformed_field"),
    ({"id": ""}, "malformed_field"),
    ({"status": "teleported"}, "malformed_field"),
])
def test_r_b1_malformed_booking_is_refused_with_a_reason_and_the_rest_applies(change, code):
    bad = {**booking_item("bad", NOW + H), **change}
    book = BookingBook(bays_of(2), SECRET)
    out = book.apply_sync(message(bad, booking_item("good", NOW + 2 * H)), NOW)
    assert out.ok and out.code == "partly_applied"
    refused, accepted = out.results
    assert not refused.accepted and refused.code == code
    assert refused.reason and ":" in refused.reason  # what happened: what to do
    assert accepted.accepted and "good" in book and "bad" not in book


def test_r_b1_horizon_six_months_inclusive_and_configurable():
    book = BookingBook(bays_of(2), SECRET)
    edge = NOW + timedelta(days=183)
    assert book.upsert(booking_item("edge", edge), NOW).accepted
    beyond = book.upsert(booking_item("beyond", edge + timedelta(seconds=1)), NOW)
    assert not beyond.accepted and beyond.code == "beyond_horizon"
    short = BookingBook(bays_of(2), SECRET, BookingRules(horizon=timedelta(days=30)))
    assert short.upsert(booking_item("m", NOW + timedelta(days=31)), NOW).code == "beyond_horizon"


def test_r_b1_slot_must_end_after_start_and_not_be_over():
    book = BookingBook(bays_of(2), SECRET)
    reversed_slot = {**booking_item("r", NOW + H), "slot_end": booking_item("x", NOW)["slot_start"]}
    assert book.upsert(reversed_slot, NOW).code == "slot_order"
    assert book.upsert(booking_item("over", NOW - 2 * H, 60), NOW).code == "slot_over"
    # exactly ending now is over; running now is fine
    assert book.upsert(booking_item("ends-now", NOW - H, 60), NOW).code == "slot_over"
    assert book.upsert(booking_item("running", NOW - H, 90), NOW).accepted
    assert book.upsert(booking_item("day", NOW + H, 25 * 60), NOW).code == "slot_too_long"


def test_r_b1_slot_with_an_offset_is_kept_in_utc():
    book = BookingBook(bays_of(2), SECRET)
    item = {**booking_item("k", NOW), "slot_start": "2026-03-02T11:00:00+02:00", "slot_end": "2026-03-02T12:00:00+02:00"}
    assert book.upsert(item, NOW).accepted
    assert book.get("k").slot_start == datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def test_r_b1_broken_envelope_changes_nothing():
    book = BookingBook(bays_of(2), SECRET)
    for msg in ({"v": 2, "id": "m", "upsert": [booking_item("k", NOW + H)]},
                {"v": 1, "upsert": [booking_item("k", NOW + H)]},
                {"v": 1, "id": "m", "upsert": {"id": "k"}},
                ["not", "an", "object"]):
        out = book.apply_sync(msg, NOW)
        assert not out.ok and out.results == () and len(book) == 0 and "nothing applied" in out.reason


def test_r_b5_capacity_per_type_and_side_first_come_first_served():
    book = BookingBook(bays_of(2) + bays_of(1, side="right"), SECRET)
    out = book.apply_sync(message(
        booking_item("a", NOW + H, 60), booking_item("b", NOW + H + timedelta(minutes=30), 60),
        booking_item("c", NOW + H + timedelta(minutes=45), 60),  # third CCS-left at 9:45
        booking_item("d", NOW + H, 60, side="right"),  # other side: own capacity
    ), NOW)
    codes = {r.booking_id: r.code for r in out.results}
    assert codes == {"a": "created", "b": "created", "c": "capacity_full", "d": "created"}
    assert "choose another time or side" in out.results[2].reason
    # back to back is not an overlap: a slot may start when another ends
    assert book.upsert(booking_item("e", NOW + 2 * H + timedelta(minutes=30), 60), NOW).accepted


def test_r_b5_cancelled_booking_frees_capacity():
    book = make_book(bays_of(1), booking_item("a", NOW + H))
    assert book.upsert(booking_item("b", NOW + H), NOW).code == "capacity_full"
    assert book.apply_sync(message(cancel=["a"]), NOW).results[0].code == "cancelled"
    assert book.upsert(booking_item("b", NOW + H), NOW).accepted


def test_r_b5_update_is_checked_without_counting_itself():
    book = make_book(bays_of(1), booking_item("a", NOW + H))
    res = book.upsert(booking_item("a", NOW + H + timedelta(minutes=15)), NOW)
    assert res.accepted and res.code == "updated"
    assert book.get("a").seq == 1  # keeps its place in the queue


def test_r_b5_r_b2_long_trucks_count_only_against_long_bays():
    bays = [Bay("S1", "CCS", "left", 18.75), Bay("L1", "CCS", "left", 25.25)]
    book = BookingBook(bays, SECRET)
    assert book.upsert(booking_item("long1", NOW + H, length=25.0), NOW).accepted
    long2 = book.upsert(booking_item("long2", NOW + H, length=24.0), NOW)
    assert long2.code == "capacity_full" and "25.25 m" in long2.reason
    assert book.upsert(booking_item("short", NOW + H, length=16.0), NOW).accepted
    assert book.upsert(booking_item("third", NOW + H, length=10.0), NOW).code == "capacity_full"
    too_long = book.upsert(booking_item("huge", NOW + 3 * H, length=27.0), NOW)
    assert too_long.code == "vehicle_too_long"


def test_r_b5_short_truck_booked_first_still_leaves_the_long_bay_for_a_long_truck():
    bays = [Bay("S1", "CCS", "left", 18.75), Bay("L1", "CCS", "left", 25.25)]
    book = make_book(bays, booking_item("short", NOW + H, length=16.0))
    assert book.upsert(booking_item("long", NOW + H, length=25.0), NOW).accepted


def test_r_b5_no_bookable_bay_for_a_side():
    bays = bays_of(2) + [Bay("X", "MCS", "right", 25, bookable=False)]
    res = BookingBook(bays, SECRET).upsert(booking_item("m", NOW + H, ctype="MCS", side="right"), NOW)
    assert res.code == "no_bookable_bay"


def test_r_b1_cloud_status_cancelled_in_upsert_cancels():
    book = make_book(bays_of(1), booking_item("a", NOW + H))
    res = book.upsert({**booking_item("a", NOW + H), "status": "cancelled"}, NOW)
    assert res.op == "cancel" and book.get("a").status == lifecycle.CANCELLED


def test_r_b1_changes_to_a_booking_in_progress_are_refused():
    book = make_book(bays_of(1), booking_item("a", NOW + H))
    book.mark_arrived("a", NOW + H)
    res = book.upsert(booking_item("a", NOW + 2 * H), NOW + H)
    assert not res.accepted and res.code == "booking_in_progress"
    book.mark_charging("a", NOW + H)
    assert book.cancel("a", NOW + H).code == "cannot_cancel"


def test_r_b3_update_that_no_longer_fits_the_held_bay_releases_it():
    bays = [Bay("S1", "CCS", "left", 18.75), Bay("L1", "CCS", "left", 25.25)]
    book = make_book(bays, booking_item("a", NOW + H, length=16.0))
    book.assign("a", "S1", NOW)
    same = book.upsert(booking_item("a", NOW + H + timedelta(minutes=10), length=16.0), NOW)
    assert same.code == "updated" and book.get("a").bay_id == "S1"
    longer = book.upsert(booking_item("a", NOW + H, length=24.0), NOW)
    assert longer.code == "updated_bay_released" and longer.released_bay_id == "S1"
    assert book.get("a").status == lifecycle.CONFIRMED and book.get("a").bay_id is None


def test_cancel_of_an_assigned_booking_reports_the_released_bay():
    book = make_book(bays_of(1), booking_item("a", NOW + H))
    book.assign("a", "CCSL1", NOW)
    res = book.cancel("a", NOW)
    assert res.released_bay_id == "CCSL1" and book.get("a").status == lifecycle.CANCELLED
    assert book.cancel("a", NOW).code == "already_cancelled"
    assert book.cancel("nope", NOW).code == "unknown_booking"


def test_queries_due_in_window_and_by_plate_hash():
    book = make_book(bays_of(3),
                     booking_item("soon", NOW + timedelta(minutes=30), plates=["NL-AA-11-B"]),
                     booking_item("later", NOW + 3 * H),
                     booking_item("now", NOW - timedelta(minutes=10)))
    assert [b.id for b in book.due_within(NOW, H)] == ["now", "soon"]
    assert [b.id for b in book.in_window(NOW, timedelta(minutes=30))] == ["now", "soon"]
    assert [b.id for b in book.in_window(NOW, timedelta(minutes=29))] == ["now"]
    h = book.plate_hash_of("aa 11 b", "NL")
    assert [b.id for b in book.by_plate_hash(h)] == ["soon"]


def test_r_g8_raw_plates_purged_after_retention_and_matching_still_works():
    book = make_book(bays_of(2), booking_item("a", NOW + H, plates=["NL-AA-11-B"]))
    assert book.purge_raw_plates(NOW + 3 * H) == 1
    assert book.get("a").plates == ()
    assert book.find_by_plate("AA11B").booking_ids == ("a",)
    assert "AA-11" not in str(book.documents())


def test_documents_round_trip_keeps_state_and_indexes():
    book = make_book(bays_of(2), booking_item("a", NOW + H, length=18.0), booking_item("b", NOW + 2 * H))
    book.assign("a", "CCSL1", NOW)
    copy = BookingBook(bays_of(2), SECRET)
    copy.load(book.documents())
    assert copy.get("a") == book.get("a") and Booking.from_document(book.get("b").to_document()) == book.get("b")
    assert copy.find_by_plate("NL-A-01").booking_ids == ("a",)
    assert copy.upsert(booking_item("c", NOW + H), NOW).code == "created"
    assert copy.get("c").seq == 3


def test_lifecycle_changes_that_the_machine_forbids_raise():
    book = make_book(bays_of(1), booking_item("a", NOW + H))
    book.mark_no_show("a", NOW + 2 * H)
    with pytest.raises(BookingStateError, match="no_show"):
        book.mark_arrived("a", NOW + 2 * H)
    with pytest.raises(BookingStateError, match="resync"):
        book.assign("ghost", "CCSL1", NOW)


def test_r_b1_customer_is_optional_as_interfaces_md_says():
    item = booking_item("anon", NOW + H)
    item.pop("customer_id", None)
    book = BookingBook(bays_of(2), SECRET)
    assert book.apply_sync(message(item), NOW).code == "applied"
    assert "anon" in book
