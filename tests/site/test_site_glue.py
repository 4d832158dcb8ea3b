"""Site access glue: the decisions SiteAccess makes itself, around the gate
policy and the bay assignment (issue 6)."""

from datetime import timedelta

from site_builders import NOW, booking

from drivers.anpr import PlateRead as CameraRead
from edge.parts.site.bay_assignment import BayCondition
from edge.parts.site.bookings import Bay, BookingBook
from edge.parts.site.gate_policy import Direction
from edge.parts.site.gates import TrucksOnWay, policy_read
from edge.parts.site.part import (bay_conditions, booking_for_session, missing_holds,
                              stale_holds)

SECRET = b"unit-site-secret"
BAYS = [Bay("B1", "MCS", "left", 25.0, True, "C1"), Bay("B2", "MCS", "right", 25.0, True, "C2")]
CONNECTOR_OF_BAY = {"B1": "C1", "B2": "C2"}
BAY_OF_CONNECTOR = {"C1": "B1", "C2": "B2"}


def _book(*items):
    book = BookingBook(BAYS, SECRET)
    for it in items:
        assert book.upsert(it, NOW).accepted
    return book


def test_r_b4_bay_condition_follows_its_connector():
    states = {"C1": "Preparing", "C2": "Reserved", "C3": "Faulted", "C4": "Unavailable", "C5": "Available",
              "C6": "Finishing"}
    got = bay_conditions({f"B{i}": f"C{i}" for i in range(1, 8)}, states)
    assert got == {"B1": BayCondition.OCCUPIED, "B2": BayCondition.RESERVED, "B3": BayCondition.FAULTED,
                   "B4": BayCondition.UNAVAILABLE, "B5": BayCondition.FREE, "B6": BayCondition.OCCUPIED,
                   # a bay on a connector the hub does not drive is never counted free
                   "B7": BayCondition.UNAVAILABLE}


def test_r_g4_r_g6_camera_read_in_policy_terms():
    read = CameraRead("cam", "NL-AB-123-C", "NL", 0.9, "truck", "leave", NOW, "axis", "e1", NOW)
    p = policy_read(read)
    assert p.plate == "NL-AB-123-C" and p.direction == Direction.OUT and p.vehicle_class == "truck"
    no_read = CameraRead("cam", "", None, 0.0, "unknown", "approach", NOW, "hikvision", "e2", NOW)
    p = policy_read(no_read)
    assert p.plate is None and p.direction == Direction.IN and p.confidence == 0.0


def test_r_b3_holds_without_a_booking_behind_them_are_stale():
    book = _book(booking("K1", NOW + timedelta(minutes=30)), booking("K2", NOW + timedelta(minutes=30), side="right"),
                 booking("K3", NOW + timedelta(hours=3)))
    book.assign("K1", "B1", NOW)
    book.assign("K2", "B2", NOW)
    book.cancel("K3", NOW)
    assert stale_holds({"C1": "K1", "C2": "K2"}, book, BAY_OF_CONNECTOR) == []
    got = {h.connector: h.why for h in stale_holds({"C1": "K3", "C2": "K1", "C9": "GONE", "C8": None}, book,
                                                   {**BAY_OF_CONNECTOR, "C9": "B9"})}
    assert got == {"C1": "cancelled", "C2": "moved", "C9": "unknown"}
    book.mark_no_show("K2", NOW + timedelta(hours=1))
    assert [h.why for h in stale_holds({"C2": "K2"}, book, BAY_OF_CONNECTOR)] == ["no_show"]


def test_r_b3_a_held_bay_whose_connector_lost_the_hold_is_held_again():
    book = _book(booking("K1", NOW + timedelta(minutes=30)))
    book.assign("K1", "B1", NOW)
    assert missing_holds(book, CONNECTOR_OF_BAY, {"C1": None, "C2": None}) == [("C1", "K1")]
    # held for someone else: left alone (the stale check releases it first)
    assert missing_holds(book, CONNECTOR_OF_BAY, {"C1": "OTHER", "C2": None}) == []


def test_r_b3_session_belongs_to_the_booking_holding_the_connector():
    grace = timedelta(minutes=30)
    book = _book(booking("K1", NOW + timedelta(minutes=20), token="04AABBCC"),
                 booking("K2", NOW + timedelta(hours=3), side="right"))
    # named by the card part
    assert booking_for_session("K1", None, None, book, NOW, grace) == "K1"
    # the holder's token, in any case of letters
    assert booking_for_session(None, "04aabbcc", "K1", book, NOW, grace) == "K1"
    # another token the reservation policy let through does not fulfil the booking
    assert booking_for_session(None, "04FFFFFF", "K1", book, NOW, grace) is None
    # no token on the booking: a truck that plugs in before the entry camera
    # saw the booked truck is someone else's ...
    later = NOW + timedelta(hours=2, minutes=40)
    assert booking_for_session(None, None, "K2", book, later, grace) is None
    # ... unless no entry camera reads plates: then a session in the window counts
    assert booking_for_session(None, None, "K2", book, later, grace, plates_read=False) == "K2"
    assert booking_for_session(None, None, "K2", book, NOW, grace, plates_read=False) is None
    book.mark_arrived("K2", later)
    assert booking_for_session(None, None, "K2", book, later, grace) == "K2"
    book.cancel("K1", NOW)
    assert booking_for_session("K1", "04AABBCC", "K1", book, NOW, grace) is None


def test_r_g3_admitted_trucks_count_until_plugged_or_expired():
    way = TrucksOnWay(ttl_s=900)
    way.admit(0)
    way.admit(10)
    assert way.count(20) == 2
    way.plugged()
    assert way.count(20) == 1
    assert way.count(1000) == 0
    way.plugged()  # a plug with nobody on the way is harmless
    assert way.count(1000) == 0
