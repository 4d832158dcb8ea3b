"""R-T2 (status at a glance): `hubctl status` renders, from the daemon's
status answer, every connector with its bay and state, the session in
progress on it, upcoming bookings, gates, terminals, readers, the cloud link,
the outbox depth and device health. Pure rendering, no daemon."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from units import rfc3339
from edge.hubctl_render import Style, render_status

NOW = datetime.now(timezone.utc)


def _status(**over) -> dict:
    st = {
        "hub": "GLANCE-01", "version": "1.0", "ts": rfc3339(NOW), "uptime_s": 4000, "ready": True,
        "connectors": [
            {"connector": "C1", "bay": "B1", "status": "Charging", "since": rfc3339(NOW - timedelta(minutes=12)),
             "session": "5e551011-aaaa-bbbb-cccc-000000000001", "session_energy_wh": 48_300,
             "session_method": "bank_card", "power_w": 287_000, "reserved_for": None, "fault": None,
             "unavailable_reason": None},
            {"connector": "C2", "bay": "B2", "status": "Reserved", "since": rfc3339(NOW), "session": None,
             "reserved_for": "BK-77", "power_w": None, "fault": None, "unavailable_reason": None},
            {"connector": "C3", "bay": None, "status": "Faulted", "since": rfc3339(NOW), "session": None,
             "reserved_for": None, "power_w": None, "fault": "charger CH2 not answering", "unavailable_reason": None},
        ],
        "devices": [
            {"device": "CH1", "class": "charger", "state": "ok", "since": rfc3339(NOW), "last_error": None},
            {"device": "CH2", "class": "charger", "state": "fault", "since": rfc3339(NOW - timedelta(minutes=3)),
             "last_error": "no answer to 3 polls"},
        ],
        "cloud": {"configured": True, "connected": True, "broker": "mqtts://cloud.example:8883"},
        "outbox": {"depth": 17, "oldest_age_s": 42, "quota": {"state": "ok"}},
        "bookings": [{"booking": "BK-77", "slot_start": rfc3339(NOW + timedelta(minutes=40)),
                      "slot_end": rfc3339(NOW + timedelta(minutes=100)), "type": "MCS", "side": "right",
                      "bay": "B2", "connector": "C2", "state": "assigned"}],
        "gates": [{"gate": "G-IN", "role": "entry", "barrier": "closed", "presence": False, "hold_open": False,
                   "last_decision": "open:booking", "decided_ago_s": 30}],
        "terminals": [{"terminal": "T1", "state": "idle", "connectors": "C1", "open_holds": 1, "last_result": "ok"}],
        "readers": [{"reader": "R1", "connector": "C2", "state": "ok", "last_tap_age_s": 5, "taps": 3}],
    }
    st.update(over)
    return st


def _row(text: str, first: str) -> str:
    return next(line for line in text.splitlines() if line.split() and line.split()[0] == first)


def test_r_t2_every_part_of_the_hub_at_a_glance():
    text = render_status(_status(), Style(False))
    assert text.splitlines()[0].startswith("hub GLANCE-01")
    c1, c2, c3 = _row(text, "C1"), _row(text, "C2"), _row(text, "C3")
    # Connectors with their bays and states; the session in progress with its energy.
    assert "B1" in c1 and "Charging" in c1 and "session 5e551011 48.3 kWh (bank card)" in c1 and "287 kW" in c1
    assert "B2" in c2 and "Reserved" in c2 and "reserved for booking BK-77" in c2
    assert "Faulted" in c3 and "charger CH2 not answering" in c3
    # Upcoming bookings, gates, terminals, readers: each its own section.
    for section, first in (("bookings", "BK-77"), ("gates", "G-IN"), ("terminals", "T1"), ("readers", "R1")):
        assert section in text.splitlines(), f"no {section} section"
        _row(text, first)
    assert "assigned" in _row(text, "BK-77") and "open, booking" in _row(text, "G-IN")
    assert _row(text, "T1").split()[:2] == ["T1", "idle"]
    # Device health, the cloud link and the outbox.
    assert "devices in fault" in text and "no answer to 3 polls" in _row(text, "CH2")
    assert "cloud: connected mqtts://cloud.example:8883; outbox 17 waiting, oldest 42s, quota ok" in text


def test_r_t2_a_healthy_hub_says_so_and_a_lost_link_shows():
    st = _status(devices=[{"device": "CH1", "class": "charger", "state": "ok", "since": rfc3339(NOW), "last_error": None}],
                 cloud={"configured": True, "connected": False, "broker": "mqtts://cloud.example:8883"},
                 outbox={"depth": 0, "oldest_age_s": None, "quota": {"state": "ok"}})
    text = render_status(st, Style(False))
    assert "devices: 1 all answering" in text and "devices in fault" not in text
    assert "cloud: fault disconnected mqtts://cloud.example:8883; outbox 0 waiting" in text


def test_r_t2_a_hub_without_cloud_or_parts_shows_only_what_it_has():
    st = _status(cloud={"configured": False, "connected": False}, bookings=[], gates=[], terminals=[], readers=[])
    text = render_status(st, Style(False))
    assert "cloud: not configured (events kept in the outbox)" in text
    for section in ("bookings", "gates", "terminals", "readers"):
        assert section not in text.splitlines()
