"""The chaos run's invariant checks (bench/chaos.py), fed constructed records:
each must pass a clean run and catch the fault it exists for."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from bench.chaos import (
    ExitPassage,
    Visit,
    check_events,
    check_exits,
    check_health,
    check_holds,
    check_sessions,
    expected_settlement,
    plate_forms,
    scan_for_leaks,
)

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
TARIFF = {"id": "site-default", "currency": "EUR", "price_per_kwh": "0.399", "vat_rate": "0.21"}


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def session(sid, connector="C1", start=1.0, status="stopped", method="own_card", token="04C40001", **kw):
    return {"id": sid, "connector": connector, "started_at": at(start).isoformat(), "status": status,
            "method": method, "token": token, **kw}


def visits():
    return [Visit("t1", "C1", "own_card", at(0), at(10), token="04C40001", session_seen="s1"),
            Visit("t2", "C1", "own_card", at(11), at(20), token="04C40001", session_seen="s2")]


# ------------------------------------------------------------------ sessions
def test_r_c9_clean_sessions_pass():
    chk = check_sessions(visits(), [session("s1", start=1), session("s2", start=12)])
    assert chk.ok, chk.violations
    assert chk.counts["with_session"] == 2


def test_r_c9_two_sessions_for_one_plug_and_authorise_are_caught():
    chk = check_sessions(visits(), [session("s1", start=1), session("s1b", start=5), session("s2", start=12)])
    assert not chk.ok
    assert any("truck t1" in v and "2 sessions" in v for v in chk.violations)


def test_r_c9_a_session_recorded_twice_is_caught():
    chk = check_sessions(visits(), [session("s1", start=1), session("s1", start=1), session("s2", start=12)])
    assert any("recorded 2 times" in v for v in chk.violations)


def test_r_c9_a_session_announced_twice_to_the_cloud_is_caught():
    started = [{"id": "e1", "type": "session.started", "data": {"session": "s1"}},
               {"id": "e1", "type": "session.started", "data": {"session": "s1"}},  # a resend: same id, fine
               {"id": "e9", "type": "session.started", "data": {"session": "s1"}}]
    chk = check_sessions(visits(), [session("s1", start=1), session("s2", start=12)], started)
    assert [v for v in chk.violations if "announced started 2 times" in v]


def test_r_c9_a_session_left_open_after_the_truck_left_is_caught():
    chk = check_sessions(visits(), [session("s1", start=1, status="active"), session("s2", start=12)])
    assert any("still active" in v for v in chk.violations)


def test_r_c9_a_session_the_driver_saw_but_the_ledger_lost_is_caught():
    chk = check_sessions(visits(), [session("s2", start=12)])
    assert any("ledger lost" in v for v in chk.violations)


def test_r_c9_a_session_for_nobody_and_one_on_another_card_are_caught():
    chk = check_sessions(visits(), [session("s1", start=1), session("s2", start=12, token="04C4FFFF"),
                                    session("ghost", connector="C2", start=3)])
    assert any("another card" in v for v in chk.violations)
    assert any("belongs to no truck" in v for v in chk.violations)


def test_r_c9_a_failed_start_beside_the_real_session_is_allowed():
    chk = check_sessions(visits(), [session("f1", start=0.5, status="failed"), session("s1", start=3),
                                    session("s2", start=12)])
    assert chk.ok, chk.violations


# --------------------------------------------------------------------- holds
def good_payments():
    energy = 100_000
    amount = expected_settlement(energy, TARIFF, Decimal("240.79"))
    holds = [
        {"id": "p1", "terminal": "T1", "kind": "session", "state": "settled", "receipt_no": 1, "hold": "240.79",
         "settle_amount": str(amount), "session_id": "b1", "tariff": TARIFF},
        {"id": "p2", "terminal": "T1", "kind": "session", "state": "released", "receipt_no": 2, "hold": "240.79",
         "settle_amount": None, "session_id": None, "tariff": TARIFF},
        {"id": "p3", "terminal": "T2", "kind": "session", "state": "declined", "receipt_no": None, "hold": "240.79",
         "settle_amount": None, "session_id": None, "tariff": TARIFF},
    ]
    txs = [{"terminal": "T1", "receipt_no": 1, "amount": Decimal("240.79"), "state": "booked", "booked": amount},
           {"terminal": "T1", "receipt_no": 2, "amount": Decimal("240.79"), "state": "reversed", "booked": None},
           {"terminal": "T2", "receipt_no": None, "amount": Decimal("240.79"), "state": "declined", "booked": None}]
    sessions = [session("b1", connector="C3", method="bank_card", energy_wh=energy, cost_gross=str(amount))]
    events = [{"id": "e1", "type": "payment.settled", "data": {"payment": "p1"}},
              {"id": "e2", "type": "payment.released", "data": {"payment": "p2"}}]
    return holds, txs, sessions, events


def test_r_p3_expected_settlement_rounds_net_then_vat_and_caps_at_the_hold():
    # 100 kWh x 0.399 = 39.90 net, VAT 8.379 -> 8.38, gross 48.28
    assert expected_settlement(100_000, TARIFF, Decimal("240.79")) == Decimal("48.28")
    assert expected_settlement(600_000, TARIFF, Decimal("240.79")) == Decimal("240.79")


def test_r_p4_clean_holds_pass():
    chk = check_holds(*good_payments())
    assert chk.ok, chk.violations


def test_r_p4_a_hold_settled_twice_is_caught():
    holds, txs, sessions, events = good_payments()
    events.append({"id": "e3", "type": "payment.settled", "data": {"payment": "p1"}})
    chk = check_holds(holds, txs, sessions, events)
    assert any("settled or released 2 times" in v for v in chk.violations)
    holds.append({**holds[0], "id": "p1-again"})
    chk = check_holds(holds, txs, sessions, events[:2])
    assert any("settled 2 times in the ledger" in v for v in chk.violations)


def test_r_p3_a_wrong_amount_is_caught():
    holds, txs, sessions, events = good_payments()
    holds[0]["settle_amount"] = "48.29"
    txs[0]["booked"] = Decimal("48.29")
    sessions[0]["cost_gross"] = "48.29"
    chk = check_holds(holds, txs, sessions, events)
    assert any("cost 48.28" in v for v in chk.violations)


def test_r_p3_terminal_booking_other_than_the_ledger_is_caught():
    holds, txs, sessions, events = good_payments()
    txs[0]["booked"] = Decimal("48.00")
    chk = check_holds(holds, txs, sessions, events)
    assert any("terminal shows booked 48.00" in v for v in chk.violations)


def test_r_p4_a_hold_left_open_is_caught_at_the_terminal_and_in_the_ledger():
    holds, txs, sessions, events = good_payments()
    txs.append({"terminal": "T2", "receipt_no": 7, "amount": Decimal("240.79"), "state": "open", "booked": None})
    holds.append({**holds[1], "id": "p4", "state": "releasing", "receipt_no": 3})
    chk = check_holds(holds, txs, sessions, events)
    assert any("still holds receipt 7" in v for v in chk.violations)
    assert any("still releasing" in v for v in chk.violations)


# -------------------------------------------------------------------- events
def env(stream, seq, eid=None, type_="connector.status"):
    return {"v": 1, "id": eid if eid is not None else f"{stream}-{seq}", "hub": "H", "stream": stream, "seq": seq,
            "type": type_, "ts": "2026-11-24T08:00:00.000Z", "offline": False, "data": {}}


def test_r_m2_clean_streams_pass_with_resends():
    events = [env("connector", 1), env("session", 1), env("connector", 2), env("connector", 2), env("connector", 3)]
    chk = check_events(events, {"connector": 3, "session": 1})
    assert chk.ok, chk.violations
    assert chk.counts["duplicates"] == 1


def test_r_m2_a_seq_gap_is_caught():
    chk = check_events([env("connector", 1), env("connector", 3)], {"connector": 3})
    assert any("1 of 3 events never reached" in v and "seq 2" in v for v in chk.violations)


def test_r_m2_an_event_put_but_never_received_is_caught():
    chk = check_events([env("payment", 1)], {"payment": 2})
    assert any("stream payment" in v for v in chk.violations)


def test_r_m2_a_missing_event_id_and_a_changed_id_are_caught():
    chk = check_events([env("gate", 1, eid=""), env("gate", 2, eid="a"), env("gate", 2, eid="b")], {"gate": 2})
    assert any("has no id" in v for v in chk.violations)
    assert any("seq 2 arrived with 2 different ids" in v for v in chk.violations)


def test_r_m2_order_broken_is_caught():
    chk = check_events([env("session", 2), env("session", 1)], {"session": 2})
    assert any("arrived after a later one" in v for v in chk.violations)


def test_r_m2_schema_failures_are_reported():
    def validate(e):
        if e["type"] == "bad.type":
            raise ValueError("no schema for bad.type")

    chk = check_events([env("device", 1, type_="bad.type")], {"device": 1}, validate)
    assert any("fails its schema" in v for v in chk.violations)


# --------------------------------------------------------------- gates, health
def test_r_g6_a_vehicle_at_a_closed_exit_is_caught():
    assert check_exits([ExitPassage("t1", "G-OUT", True, 0.4)]).ok
    chk = check_exits([ExitPassage("t1", "G-OUT", True, 0.4), ExitPassage("t2", "G-OUT", False, 25.0, at(5))])
    assert not chk.ok and "t2" in chk.violations[0] and "never opened" in chk.violations[0]


def test_r_c9_health_needs_ready_no_fault_and_no_crash():
    good = {"ready": True, "devices": [{"device": "CH1", "state": "ok"}], "outbox": {"depth": 0}}
    assert check_health(good, daemon_running=True, unexpected_exits=0).ok
    bad = {"ready": True, "devices": [{"device": "T1", "state": "fault", "last_error": "silent"}], "outbox": {"depth": 3}}
    chk = check_health(bad, daemon_running=True, unexpected_exits=1)
    assert len(chk.violations) == 3
    assert not check_health(None, daemon_running=False, unexpected_exits=0).ok


# ---------------------------------------------------------------------- leaks
def test_r_g8_plate_forms_cover_the_spellings_a_leak_could_take():
    forms = plate_forms("NL-TX-123-K")
    assert {"NL-TX-123-K", "NLTX123K", "TX123K", "tx123k", "NL TX 123 K"} <= forms


def test_r_p6_r_g8_r_m5_leaks_are_found_and_not_repeated_in_the_report():
    pan = "4111111111111111"
    texts = {"log": "payment.approved card=411111******1111 plate=plate#ab12", "cloud": '{"plate": "TX123K"}'}
    forbidden = {"card number": [pan], "plate": plate_forms("NL-TX-123-K"), "secret": ["demo-camera-secret"]}
    chk = scan_for_leaks(texts, forbidden)
    assert len(chk.violations) == 1 and "plate found 1 times in cloud" in chk.violations[0]
    assert "TX123K" not in chk.violations[0]
    texts["log"] += " pan=" + pan + " secret=demo-camera-secret"
    chk = scan_for_leaks(texts, forbidden)
    assert chk.counts["card number_hits"] == 1 and chk.counts["secret_hits"] == 1
