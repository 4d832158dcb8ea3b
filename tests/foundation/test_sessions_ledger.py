"""The session ledger (R-S1, R-S2, R-C9)."""

import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from edge.core.sessions import Session, SessionLedger

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def ledger() -> SessionLedger:
    db = sqlite3.connect(":memory:", isolation_level=None)
    return SessionLedger(db, "H1")


def make(ledger, i, **kw) -> Session:
    s = Session(
        id=f"s{i}", hub="H1", connector=kw.pop("connector", f"C{i % 3}"), method="own_card",
        status=kw.pop("status", "stopped"), started_at=T0 + timedelta(hours=i), token=f"tok{i % 2}", **kw,
    )
    ledger.insert(s, T0)
    return s


def test_r_s1_a_session_round_trips_with_money_and_times_exact():
    lg = ledger()
    s = make(lg, 1, cost_gross=Decimal("49.77"), vat_rate=Decimal("0.21"), price_per_kwh=Decimal("0.399"),
             currency="EUR", meter_start_wh=1000, meter_stop_wh=2000, energy_wh=1000, signed_start="OCMF|{}|{}")
    back = lg.get("s1")
    assert back == s
    assert back.cost_gross == Decimal("49.77") and back.started_at.tzinfo is not None


def test_r_s2_filters_filter():
    lg = ledger()
    for i in range(12):
        make(lg, i, status="active" if i == 11 else "stopped")
    assert [s.id for s in lg.query(session="s4")] == ["s4"]
    assert {s.token for s in lg.query(token="tok1")} == {"tok1"}
    assert {s.connector for s in lg.query(connector="C2")} == {"C2"}
    assert [s.id for s in lg.query(status="active")] == ["s11"]
    got = lg.query(since=T0 + timedelta(hours=3), until=T0 + timedelta(hours=5))
    assert [s.id for s in got] == ["s4", "s3"]  # newest first
    assert lg.query(location="elsewhere") == []
    assert len(lg.query(limit=5)) == 5


def test_r_c9_open_sessions_are_found_after_a_restart():
    db = sqlite3.connect(":memory:", isolation_level=None)
    lg = SessionLedger(db, "H1")
    make(lg, 1, status="starting", connector="C1")
    make(lg, 2, status="active", connector="C2")
    make(lg, 3, status="stopped", connector="C3")
    again = SessionLedger(db, "H1")
    assert [s.id for s in again.open_sessions()] == ["s1", "s2"]
    assert again.open_for_connector("C2").id == "s2"
    assert again.open_for_connector("C3") is None


def test_update_of_an_unknown_session_is_an_error():
    lg = ledger()
    s = Session(id="ghost", hub="H1", connector="C1", method="x", status="active", started_at=T0)
    try:
        lg.update(s, T0)
    except KeyError as exc:
        assert "ghost" in str(exc)
    else:
        raise AssertionError("update of a missing session must fail")
