"""The share allocation on worked examples (R-E3, R-E4): numbers a person can check."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from edge.parts.power.allocation import ConnectorDemand, Priority, SharePolicy, State, allocate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
BREAK = NOW + timedelta(minutes=45)
OVERNIGHT = NOW + timedelta(hours=14)
POLICY = SharePolicy(buffer_kw=50, buffer_fraction=0.1, departure_slot_s=900)


def truck(cid, priority=Priority.AD_HOC, departure=None, measured=2000.0, rated=1000.0, low=100.0, **kw):
    return ConnectorDemand(cid, kw.pop("state", State.CHARGING), priority, departure, low, rated, measured, **kw)


def shares(limit, *trucks, other=0.0, margin=0.0):
    return allocate(limit, margin, other, list(trucks), now=NOW, policy=POLICY).shares_kw


def test_r_e3_booked_break_then_booked_overnight_then_ad_hoc():
    got = shares(2000, truck("adhoc"), truck("night", Priority.BOOKED, OVERNIGHT), truck("break", Priority.BOOKED, BREAK))
    assert got == {"adhoc": 100, "night": 900, "break": 1000}


def test_r_e3_among_equals_the_truck_leaving_sooner_first_and_an_unknown_departure_last():
    got = shares(1500, truck("night", departure=OVERNIGHT), truck("break", departure=BREAK), truck("unknown"))
    assert got == {"break": 1000, "night": 400, "unknown": 100}


def test_r_e3_two_breaks_earliest_departure_first_and_the_same_quarter_hour_shares():
    early, later = NOW + timedelta(minutes=20), NOW + timedelta(minutes=44)
    assert shares(1400, truck("A", departure=later), truck("B", departure=early)) == {"B": 1000, "A": 400}
    same = NOW + timedelta(minutes=16)  # 12:15-12:30, like 12:20
    assert shares(1400, truck("A", departure=same), truck("B", departure=early)) == {"A": 700, "B": 700}


def test_r_e3_equal_trucks_split_evenly_and_a_truck_taking_little_leaves_the_rest():
    assert shares(1500, truck("A"), truck("B"), truck("C")) == {"A": 500, "B": 500, "C": 500}
    got = shares(1500, truck("A", measured=200), truck("B"), truck("C"))
    assert got == {"A": 250, "B": 625, "C": 625}  # 200 kW measured + 50 kW buffer; the rest to B and C


def test_r_e3_buffer_is_a_share_of_what_a_big_truck_takes():
    got = allocate(3000, 0, 0, [truck("A", measured=800)], now=NOW, policy=SharePolicy(buffer_kw=50, buffer_fraction=0.1))
    assert got.shares_kw == {"A": 880}


def test_r_e3_margin_and_other_load_come_off_first_and_watts_do_not_round_up():
    a = allocate(1000.0, 50.0, 249.9995, [truck("A"), truck("B"), truck("C")], now=NOW)
    assert a.available_kw == 700.0
    assert sum(a.shares_kw.values()) <= 700.0 and a.shares_kw["A"] == pytest.approx(233.334)


def test_r_e4_an_unconfirmed_charger_counts_at_rated_and_keeps_being_told_its_minimum():
    a = allocate(2000, 0, 0, [truck("deaf", confirmed=False), truck("B"), truck("C")], now=NOW, policy=POLICY)
    assert a.shares_kw == {"deaf": 100, "B": 500, "C": 500} and a.counted_kw["deaf"] == 1000


def test_r_e2_a_starting_session_is_held_at_its_minimum_and_idle_connectors_get_nothing():
    a = allocate(2000, 0, 0, [truck("new", state=State.STARTING), truck("B"), truck("idle", state=State.IDLE)], now=NOW)
    assert a.shares_kw == {"new": 100, "B": 1000, "idle": 0}


def test_r_e3_a_truck_just_past_its_departure_is_due_and_goes_before_a_later_one():
    """A truck a few minutes past its departure is about to leave: it is the
    truck leaving soonest, not one to drop to its minimum in its last minutes."""
    due = NOW - timedelta(minutes=5)
    got = shares(1200, truck("due", departure=due), truck("break", departure=BREAK))
    assert got == {"due": 1000, "break": 200}


def test_r_e3_an_overstay_past_the_grace_counts_as_unknown_departure():
    late = NOW - timedelta(minutes=15)  # the grace (15 minutes) is over
    got = shares(1200, truck("late", departure=late), truck("break", departure=BREAK))
    assert got == {"late": 200, "break": 1000}
    strict = allocate(1200, 0, 0, [truck("due", departure=NOW - timedelta(seconds=1)), truck("break", departure=BREAK)],
                      now=NOW, policy=SharePolicy(buffer_kw=50, buffer_fraction=0.1, overdue_grace_s=0)).shares_kw
    assert strict == {"due": 200, "break": 1000}  # no grace: past its departure is an overstay at once


def test_shortage_stops_at_the_first_truck_that_does_not_fit():
    """A smaller minimum further down does not jump the queue: more power must
    never take a share away (monotonic in the limit)."""
    a = allocate(160, 0, 0, [truck("A", Priority.BOOKED, low=100), truck("B", low=100), truck("C", low=20)], now=NOW)
    assert not a.feasible and a.waiting == ("B", "C") and a.shares_kw == {"A": 100, "B": 0, "C": 0}
    assert "B, C wait at 0 kW" in a.reason


@pytest.mark.parametrize("kw, match", [
    (dict(low=200, rated=100), "above its rated"),
    (dict(measured=float("nan")), "finite number"),
    (dict(low=-1), "0 kW or more"),
    (dict(departure=datetime(2026, 6, 1, 13)), "no timezone"),
])
def test_bad_connector_input_is_refused_with_a_sentence(kw, match):
    with pytest.raises(ValueError, match=match):
        truck("A", **kw)


def test_duplicate_connectors_and_naive_now_are_refused():
    with pytest.raises(ValueError, match="unique"):
        allocate(100, 0, 0, [truck("A"), truck("A")], now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        allocate(100, 0, 0, [], now=datetime(2026, 6, 1))
