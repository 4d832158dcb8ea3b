"""Bay assignment, reassignment, no-show and overstay (R-B2..R-B7)."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from booking_builders import NOW, SECRET, bays_of, booking_item, make_book
from edge.parts.site.bay_assignment import (AssignmentSettings, BayAssigned, BayCondition, BayReassigned, BayReleased,
                                 NoBayAvailable, NoShow, Overstay, apply_decisions, on_arrival, review)
from edge.parts.site.bookings import Bay, BookingBook
from state_machines import booking as lifecycle

H = timedelta(hours=1)
M = timedelta(minutes=1)
S = AssignmentSettings(lead_time=H, no_show_timeout=30 * M, overstay_after=15 * M)


def assigned(decisions):
    return {d.booking_id: d.bay_id for d in decisions if isinstance(d, BayAssigned)}


def test_r_b7_no_bookings_nothing_changes():
    assert review(BookingBook(bays_of(4), SECRET), {}, NOW, S) == []


def test_r_b2_assigned_only_within_the_lead_time_inclusive():
    book = make_book(bays_of(2), booking_item("k", NOW + H))
    assert review(book, {}, NOW - M, S) == []
    decisions = review(book, {}, NOW, S)
    assert assigned(decisions) == {"k": "CCSL1"}
    assert "CCS, left side" in decisions[0].reason


def test_r_b2_bay_must_fit_type_side_and_length():
    bays = [Bay("MCS-R", "MCS", "right", 25), Bay("CCS-L-short", "CCS", "left", 16.5),
            Bay("CCS-R", "CCS", "right", 25), Bay("CCS-L-long", "CCS", "left", 25.25)]
    book = make_book(bays, booking_item("k", NOW + H, length=18.75))
    assert assigned(review(book, {}, NOW, S)) == {"k": "CCS-L-long"}


def test_r_b2_prefers_the_shortest_bay_that_fits_so_long_bays_stay_free():
    bays = [Bay("L", "CCS", "left", 25.25), Bay("S", "CCS", "left", 18.75)]
    book = make_book(bays, booking_item("short", NOW + H, length=16.0),
                     booking_item("long", NOW + H, length=25.0))
    assert assigned(review(book, {}, NOW, S)) == {"short": "S", "long": "L"}


def test_r_b2_choice_is_stable_and_uses_the_tightest_free_stretch():
    bays = bays_of(3)
    book = make_book(bays, booking_item("first", NOW + 30 * M, 60), booking_item("next", NOW + 90 * M, 60))
    d1 = review(book, {}, NOW, S)
    assert d1 == review(book, {}, NOW, S)  # same inputs, same decisions
    apply_decisions(book, d1, NOW)
    d2 = review(book, {}, NOW + 30 * M, S)
    # "next" follows "first" on the same bay: the other bays keep whole days free.
    assert assigned(d2) == {"next": assigned(d1)["first"]}
    assert "tightest free stretch" in d2[0].reason


def test_r_b2_never_double_books_a_bay_and_skips_faulted_bays():
    book = make_book(bays_of(3), *(booking_item(f"k{i}", NOW + 30 * M) for i in range(2)))
    decisions = review(book, {"CCSL1": BayCondition.FAULTED}, NOW, S)
    bays = assigned(decisions)
    assert len(set(bays.values())) == 2 and "CCSL1" not in bays.values()


def test_r_b4_all_bays_of_a_side_faulted_no_bay_with_a_reason():
    book = make_book(bays_of(2) + bays_of(2, side="right"), booking_item("k", NOW + 30 * M))
    down = {"CCSL1": BayCondition.FAULTED, "CCSL2": BayCondition.UNAVAILABLE}
    (d,) = review(book, down, NOW, S)
    assert isinstance(d, NoBayAvailable) and "contact the customer" in d.reason


def test_r_b4_occupied_bay_used_only_when_the_slot_is_far_enough_off():
    book = make_book(bays_of(1), booking_item("k", NOW + 30 * M))
    occupied = {"CCSL1": BayCondition.OCCUPIED}
    assert isinstance(review(book, occupied, NOW, S)[0], NoBayAvailable)
    far = AssignmentSettings(lead_time=H, occupied_clearance=15 * M)
    (d,) = review(book, occupied, NOW, far)
    assert isinstance(d, BayAssigned) and "should leave before the slot" in d.reason


def test_r_b4_reassign_on_arrival_when_the_assigned_bay_is_occupied():
    book = make_book(bays_of(3), booking_item("k", NOW + 30 * M))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    bay = book.get("k").bay_id
    (d,) = on_arrival(book, "k", {bay: BayCondition.OCCUPIED}, NOW + 25 * M, S)
    assert isinstance(d, BayReassigned) and d.from_bay_id == bay and d.to_bay_id != bay
    assert f"bay {bay} is occupied" in d.reason
    apply_decisions(book, [d], NOW + 25 * M)
    assert book.get("k").bay_id == d.to_bay_id and book.get("k").status == lifecycle.ASSIGNED


def test_r_b4_arrival_at_a_usable_bay_changes_nothing():
    book = make_book(bays_of(2), booking_item("k", NOW + 30 * M))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    assert on_arrival(book, "k", {book.get("k").bay_id: BayCondition.RESERVED}, NOW + 20 * M, S) == []


def test_r_b4_arrival_with_no_free_suitable_bay_says_what_to_do():
    book = make_book(bays_of(1) + bays_of(1, side="right"), booking_item("k", NOW + 30 * M))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    (d,) = on_arrival(book, "k", {"CCSL1": BayCondition.FAULTED}, NOW + 30 * M, S)
    assert isinstance(d, NoBayAvailable) and "faulted" in d.reason and "call" in d.reason


def test_r_b4_early_arrival_before_assignment_gets_a_bay_free_now():
    book = make_book(bays_of(2), booking_item("k", NOW + 3 * H))
    (d,) = on_arrival(book, "k", {"CCSL1": BayCondition.OCCUPIED}, NOW, S)
    assert isinstance(d, BayAssigned) and d.bay_id == "CCSL2"


def test_r_b4_reassign_does_not_take_a_bay_held_for_another_booking():
    book = make_book(bays_of(2), booking_item("a", NOW + 30 * M), booking_item("b", NOW + 30 * M))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    bay_a = book.get("a").bay_id
    (d,) = on_arrival(book, "a", {bay_a: BayCondition.OCCUPIED}, NOW + 30 * M, S)
    assert isinstance(d, NoBayAvailable)


def test_r_b4_assigned_bay_going_faulted_before_the_slot_is_moved_ahead():
    book = make_book(bays_of(2), booking_item("k", NOW + 40 * M))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    old = book.get("k").bay_id
    (d,) = review(book, {old: BayCondition.FAULTED}, NOW + 10 * M, S)
    assert isinstance(d, BayReassigned) and d.from_bay_id == old and "out of service" in d.reason


def test_r_b3_no_show_after_timeout_releases_the_bay():
    book = make_book(bays_of(1), booking_item("k", NOW + 30 * M))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    assert review(book, {}, NOW + 60 * M - timedelta(seconds=1), S) == []
    decisions = review(book, {}, NOW + 60 * M, S)
    assert [type(d) for d in decisions] == [NoShow, BayReleased]
    assert decisions[0].bay_id == "CCSL1" and "book again" in decisions[0].reason
    apply_decisions(book, decisions, NOW + 60 * M)
    assert book.get("k").status == lifecycle.NO_SHOW and not book.get("k").holds_bay


def test_r_b3_arrived_truck_is_never_a_no_show():
    book = make_book(bays_of(1), booking_item("k", NOW + 30 * M))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    book.mark_arrived("k", NOW + 20 * M)
    assert review(book, {}, NOW + 2 * H, S) == []


def test_r_b3_no_show_frees_the_bay_for_the_next_booking():
    book = make_book(bays_of(1), booking_item("a", NOW + 10 * M, 60))
    apply_decisions(book, review(book, {}, NOW, S), NOW)
    assert book.upsert(booking_item("b", NOW + 50 * M, 60), NOW).code == "capacity_full"
    at = NOW + 40 * M
    apply_decisions(book, review(book, {}, at, S), at)
    assert book.get("a").status == lifecycle.NO_SHOW
    assert book.upsert(booking_item("b", NOW + 50 * M, 60), at).accepted
    assert assigned(review(book, {}, at, S)) == {"b": "CCSL1"}


def test_r_b6_overstay_after_slot_end_and_charging_end_reported_once():
    book = make_book(bays_of(1), booking_item("k", NOW, 60))
    apply_decisions(book, review(book, {}, NOW - 10 * M, S), NOW - 10 * M)
    book.mark_arrived("k", NOW)
    book.mark_charging("k", NOW + M)
    book.mark_fulfilled("k", NOW + 70 * M)  # charging ended after the slot
    occupied = {"CCSL1": BayCondition.OCCUPIED}
    assert review(book, occupied, NOW + 84 * M, S) == []  # 14 min after charging ended
    (d,) = review(book, occupied, NOW + 85 * M, S)
    assert isinstance(d, Overstay) and d.overstay == 15 * M and "ask the driver" in d.reason
    apply_decisions(book, [d], NOW + 85 * M)
    assert review(book, occupied, NOW + 95 * M, S) == []
    assert review(BookingBook(bays_of(1), SECRET), occupied, NOW, S) == []


def test_r_b6_truck_gone_is_no_overstay_and_charging_is_not_overstay_yet():
    book = make_book(bays_of(1), booking_item("k", NOW, 60))
    apply_decisions(book, review(book, {}, NOW - 10 * M, S), NOW - 10 * M)
    book.mark_charging("k", NOW)
    assert review(book, {"CCSL1": BayCondition.OCCUPIED}, NOW + 3 * H, S) == []
    book.mark_fulfilled("k", NOW + 50 * M)
    assert review(book, {"CCSL1": BayCondition.FREE}, NOW + 3 * H, S) == []


def test_late_booking_gets_a_bay_by_moving_an_unstarted_assignment():
    """Greedy in start order is always right; a booking made late can break
    the order, and the group's unstarted holds are planned again."""
    bays = [Bay("S", "CCS", "left", 18.75), Bay("L", "CCS", "left", 25.25)]
    book = make_book(bays, booking_item("short", NOW + 50 * M, 60, length=16.0))
    book.assign("short", "L", NOW)  # e.g. chosen while S was faulted
    assert book.upsert(booking_item("long", NOW + 45 * M, 60, length=24.0), NOW).accepted
    decisions = review(book, {}, NOW, S)
    moved = [d for d in decisions if isinstance(d, BayReassigned)]
    assert assigned(decisions) == {"long": "L"}
    assert moved and moved[0].booking_id == "short" and moved[0].to_bay_id == "S"
    assert "make room" in moved[0].reason


def test_reasons_show_the_site_time_zone_across_the_dst_change():
    """Europe/Amsterdam, last Sunday of October 2026: 00:30Z is 02:30 CEST and
    01:30Z is 02:30 CET. A slot given in UTC stays one hour long."""
    from datetime import datetime, timezone
    start = datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)
    book = make_book(bays_of(1), booking_item("k", start, 60), at=start - 2 * H)
    tz = AssignmentSettings(lead_time=H, site_timezone=ZoneInfo("Europe/Amsterdam"))
    (d,) = review(book, {}, start - H, tz)
    assert "2026-10-25 02:30 CEST to 2026-10-25 02:30 CET" in d.reason
    apply_decisions(book, [d], start - H)
    # no-show timeout counts real time: 30 minutes after 00:30Z
    noshow = review(book, {}, start + 30 * M, tz)
    assert isinstance(noshow[0], NoShow) and "03:00 CEST" not in noshow[0].reason and "02:00 CET" in noshow[0].reason


def test_r_b2_mixed_lengths_short_stays_leave_the_long_bay_for_a_long_truck():
    """Found by the property test: three short-truck slots start together and
    slot order alone puts the longest stay on the only long bay, which a long
    truck needs a quarter of an hour later. Planning again places all four."""
    bays = [Bay("S1", "CCS", "left", 16.5), Bay("S2", "CCS", "left", 16.5), Bay("L1", "CCS", "left", 18.75)]
    q = 15 * M
    book = make_book(bays, booking_item("k0", NOW, 15), booking_item("k1", NOW, 15), booking_item("k2", NOW, 30),
                     booking_item("k3", NOW + q, 15, length=18.75))
    decisions = review(book, {}, NOW - H, AssignmentSettings(lead_time=2 * H))
    placed = assigned(decisions)
    assert set(placed) == {"k0", "k1", "k2", "k3"} and placed["k3"] == "L1" and placed["k2"] != "L1"


def test_r_b2_mixed_lengths_a_later_long_stay_does_not_block_the_long_bay():
    bays = [Bay("S", "CCS", "left", 16.5), Bay("L", "CCS", "left", 25.25)]
    book = make_book(bays, booking_item("a", NOW, 10), booking_item("c", NOW + 5 * M, 95),
                     booking_item("d", NOW + 20 * M, 10, length=24.0))
    placed = assigned(review(book, {}, NOW - H, AssignmentSettings(lead_time=3 * H)))
    assert placed == {"a": "L", "c": "S", "d": "L"}
