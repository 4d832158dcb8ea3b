"""The payment ledger and the pure payment decisions, without sockets
(R-P1..R-P4, R-P8): state machine, write-ahead steps, reconciliation plans
(whole and partial answers), what "not open" means, the 24-hour backstop with
an injected clock, amounts, cost cap and tariffs."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from units import FakeClock
from edge.parts.payments.flow import (
    CapWatch,
    choose_tariff,
    cost_cap_reached,
    hold_amount,
    same_card,
    settlement_for,
)
from edge.parts.payments.ledger import LedgerError, PaymentLedger
from edge.parts.payments.reconciliation import (
    BACKSTOP,
    backstop_decision,
    not_open_outcome,
    reconcile_plan,
    retry_delay_s,
)
from edge.parts.payments.pricing import Tariff, energy_cap_wh, session_cost
from edge.core.store import Store
from state_machines.payment import FINAL_STATES, STATES, TRANSITIONS, next_state

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
TARIFF = Tariff("t1", "EUR", Decimal("0.399"), Decimal("0.19"), datetime(2025, 1, 1, tzinfo=timezone.utc))


@pytest.fixture
def ledger(tmp_path):
    store = Store(tmp_path, clock=FakeClock(T0))
    yield PaymentLedger(store)
    store.close()


def held(ledger: PaymentLedger, receipt: int, now=T0, terminal="T1"):
    rec = ledger.create(terminal=terminal, connector="C1", kind="session", currency="EUR", hold=Decimal("236.81"),
                        now=now, tariff=TARIFF)
    return ledger.change(rec, now, "approve", receipt_no=receipt, held_at=now)


# ------------------------------------------------------------ state machine
def test_r_p4_machine_every_path_ends_in_a_final_state():
    assert set(FINAL_STATES) <= set(STATES)
    for state in STATES:
        if state in FINAL_STATES:
            assert not any(next_state(state, t["trigger"]) for t in TRANSITIONS), state
        else:
            assert any(next_state(state, t["trigger"]) for t in TRANSITIONS), f"{state} is a dead end"


def test_r_p4_ledger_refuses_a_transition_the_machine_does_not_have(ledger):
    rec = held(ledger, 7)
    with pytest.raises(LedgerError, match="confirm_settlement is not possible in state held"):
        ledger.change(rec, T0, "confirm_settlement")
    ledger.change(rec, T0, "begin_charging", session_id="S1")
    ledger.change(rec, T0, "bill", settle_amount=Decimal("10.00"))
    ledger.change(rec, T0, "confirm_settlement", receipt_id="r1")
    again = ledger.get(rec.id)
    assert again.state == "settled" and again.closed_at == T0 and again.receipt_id == "r1"
    assert again.tariff_obj == TARIFF and again.hold == Decimal("236.81")


def test_r_p4_a_stale_copy_cannot_overwrite_a_newer_state(ledger):
    rec = held(ledger, 7)
    stale = ledger.get(rec.id)
    ledger.change(rec, T0, "release", reason="x")
    with pytest.raises(LedgerError, match="changed under us"):
        ledger.change(stale, T0, "begin_charging", session_id="S1")


def test_r_p4_write_ahead_steps_say_what_may_have_been_done(ledger):
    rec = held(ledger, 9)
    ledger.change(rec, T0, "release", reason="no session")
    n = ledger.begin_step(rec.id, "release", rec.hold, T0)
    # A crash here leaves the intent without an outcome: it may have been done.
    assert ledger.maybe_done(rec.id, "release")
    ledger.end_step(rec.id, n, "failed", "connection refused", T0)
    assert not ledger.maybe_done(rec.id, "release")
    n2 = ledger.begin_step(rec.id, "release", rec.hold, T0)
    ledger.end_step(rec.id, n2, "unknown", "timeout after sending", T0)
    assert ledger.maybe_done(rec.id, "release")
    assert [s["outcome"] for s in ledger.steps(rec.id)] == ["failed", "unknown"]


def test_ledger_survives_reopening(tmp_path):
    store = Store(tmp_path)
    rec = held(PaymentLedger(store), 3)
    store.close()
    store = Store(tmp_path)
    try:
        again = PaymentLedger(store).get(rec.id)
        assert again.state == "held" and again.receipt_no == 3
        assert PaymentLedger(store).find(rec.id[:8]).id == rec.id
    finally:
        store.close()


# ------------------------------------------------------------ reconciliation
def test_r_p4_reconcile_releases_a_hold_the_ledger_does_not_know(ledger):
    kept = held(ledger, 1)
    plan = reconcile_plan([1, 2], False, ledger.open_records("T1"), ledger.maybe_done)
    assert [(a.kind, a.receipt_no) for a in plan] == [("release_unknown", 2)]
    assert kept.state == "held"


def test_r_p4_reconcile_matches_only_open_holds_receipt_numbers_restart(ledger):
    old = held(ledger, 5)
    ledger.change(old, T0, "release", reason="x")
    ledger.change(old, T0, "confirm_release")
    plan = reconcile_plan([5], False, ledger.open_records("T1"), ledger.maybe_done)
    assert [(a.kind, a.receipt_no) for a in plan] == [("release_unknown", 5)]


def test_r_p4_reconcile_settling_gone_from_terminal_confirmed_only_if_we_asked(ledger):
    asked = held(ledger, 1)
    ledger.change(asked, T0, "bill", session_id="S1", settle_amount=Decimal("3.00"))
    ledger.begin_step(asked.id, "settle", Decimal("3.00"), T0)  # crash during the call
    never = held(ledger, 2)
    ledger.change(never, T0, "bill", session_id="S2", settle_amount=Decimal("4.00"))
    releasing = held(ledger, 3)
    ledger.change(releasing, T0, "release", reason="x")
    charging = held(ledger, 4)
    ledger.change(charging, T0, "begin_charging", session_id="S4")
    plan = {a.payment_id: a.kind for a in reconcile_plan([], True, ledger.open_records("T1"), ledger.maybe_done)}
    assert plan == {asked.id: "confirm_settled", never.id: "lapse", releasing.id: "confirm_released",
                    charging.id: "terminal_lost_hold"}


@pytest.mark.parametrize("outcome", ["done", "superseded"])
def test_r_p4_reconcile_settling_whose_booking_the_terminal_answered_is_confirmed_not_lapsed(ledger, outcome):
    """Found by the full chaos run: a booking answered done (or confirmed by a
    later call) reached the terminal; gone from its open list, the hold was
    settled, whatever state a crash left the hold in."""
    rec = held(ledger, 7)
    ledger.change(rec, T0, "bill", session_id="S7", settle_amount=Decimal("59.28"))
    step = ledger.begin_step(rec.id, "settle", Decimal("59.28"), T0)
    ledger.end_step(rec.id, step, outcome, "settle done by the terminal", T0)
    plan = reconcile_plan([], True, ledger.open_records("T1"), ledger.maybe_done)
    assert [(a.kind, a.payment_id) for a in plan] == [("confirm_settled", rec.id)]


def test_r_p4_reconcile_settling_whose_booking_failed_before_the_terminal_lapses(ledger):
    rec = held(ledger, 8)
    ledger.change(rec, T0, "bill", session_id="S8", settle_amount=Decimal("5.00"))
    for outcome in ("failed", "refused"):
        step = ledger.begin_step(rec.id, "settle", Decimal("5.00"), T0)
        ledger.end_step(rec.id, step, outcome, "not sent", T0)
    plan = reconcile_plan([], True, ledger.open_records("T1"), ledger.maybe_done)
    assert [(a.kind, a.payment_id) for a in plan] == [("lapse", rec.id)]


def test_r_p4_reconcile_leaves_other_terminals_alone(ledger):
    held(ledger, 1, terminal="T2")
    assert reconcile_plan([], True, ledger.open_records("T1"), ledger.maybe_done) == []


def test_r_p4_a_partial_answer_concludes_nothing_about_the_holds_it_does_not_name(ledger):
    """Issue 15, finding 0: a Feig terminal names only its first open
    reservation. Holds it does not name are asked about one by one (the call
    the ledger owes on each); none is taken for lapsed, settled or released,
    and a hold whose session runs is left alone."""
    never_sent = held(ledger, 12)
    ledger.change(never_sent, T0, "bill", session_id="S12", settle_amount=Decimal("9.51"))
    lost = held(ledger, 17)
    ledger.change(lost, T0, "bill", session_id="S17", settle_amount=Decimal("59.28"))
    ledger.end_step(lost.id, ledger.begin_step(lost.id, "settle", Decimal("59.28"), T0), "unknown", "T4", T0)
    releasing = held(ledger, 4)
    ledger.change(releasing, T0, "release", reason="no energy")
    charging = held(ledger, 5)
    ledger.change(charging, T0, "begin_charging", session_id="S5")
    plan = reconcile_plan([3], False, ledger.open_records("T1"), ledger.maybe_done)
    assert [(a.kind, a.receipt_no) for a in plan] == [
        ("release_unknown", 3), ("ask", 12), ("ask", 17), ("ask", 4)]
    # Named open, a call owed: asked now; named open while charging: nothing to do.
    plan = reconcile_plan([17, 5], False, ledger.open_records("T1"), ledger.maybe_done)
    assert [(a.kind, a.receipt_no) for a in plan] == [("ask", 12), ("ask", 17), ("ask", 4)]


def test_r_p4_a_whole_answer_concludes_with_what_the_ledger_knows(ledger):
    review = held(ledger, 21)
    ledger.change(review, T0, "bill", session_id="S21", settle_amount=Decimal("5.00"))
    ledger.begin_step(review.id, "settle", Decimal("5.00"), T0)
    ledger.change(review, T0, "doubt")
    plan = reconcile_plan([], True, ledger.open_records("T1"), ledger.maybe_done)
    assert [(a.kind, a.receipt_no) for a in plan] == [("confirm_settled", 21)]
    assert reconcile_plan([21], True, ledger.open_records("T1"), ledger.maybe_done)[0].kind == "ask"


@pytest.mark.parametrize("action, reached, outcome", [
    ("settle", True, "settled"), ("settle", False, "lapsed"),
    ("release", False, "released"), ("release", True, "review"),
])
def test_r_p4_what_not_open_means(action, reached, outcome):
    assert not_open_outcome(action, booking_may_have_reached=reached) == outcome


def test_r_p4_write_ahead_steps_before_a_step_are_the_earlier_calls(ledger):
    rec = held(ledger, 30)
    ledger.change(rec, T0, "bill", session_id="S30", settle_amount=Decimal("1.00"))
    first = ledger.begin_step(rec.id, "settle", Decimal("1.00"), T0)
    assert not ledger.maybe_done(rec.id, "settle", before=first)  # the call being answered is not an earlier one
    ledger.end_step(rec.id, first, "refused", "busy", T0)
    second = ledger.begin_step(rec.id, "settle", Decimal("1.00"), T0)
    assert not ledger.maybe_done(rec.id, "settle", before=second) and ledger.refused(rec.id, "settle")


# ------------------------------------------------------------ backstop
def _backstop(state, held_at, now, *, trusted=True, session=False, reached=False, refused=False):
    return backstop_decision(state, held_at, now, clock_trusted=trusted, session_open=session,
                             booking_may_have_reached=reached, booking_refused=refused)


def test_r_p4_backstop_releases_after_24_hours_with_injected_clock(ledger):
    clock = FakeClock(T0)
    rec = held(ledger, 1, now=clock.now())
    clock.advance(BACKSTOP.total_seconds() - 1)
    assert _backstop(rec.state, rec.held_at, clock.now()) == "none"
    clock.advance(1)
    assert _backstop(rec.state, rec.held_at, clock.now()) == "release"
    for state in ("held", "charging", "found"):
        assert _backstop(state, T0, clock.now()) == "release"
    for state in ("requested", "releasing", "settled", "released", "declined", "lapsed"):
        assert _backstop(state, T0, clock.now()) == "none"
    assert _backstop("held", None, clock.now()) == "none"


def test_r_p4_backstop_never_releases_under_a_session_still_charging():
    """Issue 15, finding 12: the stop is sent (again, until it takes) and the
    hold kept; the session's end then bills it."""
    late = T0 + BACKSTOP
    assert _backstop("charging", T0, late, session=True) == "stop_session"
    assert _backstop("held", T0, late, session=True) == "stop_session"


def test_r_p4_backstop_never_releases_a_booking_that_may_have_been_made():
    """Issue 15, finding 4: the terminal had booked 59.28 EUR whose answer
    never came; the backstop released it. Such a hold goes to review; one in
    review is kept; a booking that never reached a dead terminal is kept for
    it; only one the terminal refused is released (R-P4)."""
    late = T0 + BACKSTOP
    assert _backstop("settling", T0, late, reached=True) == "doubt"
    assert _backstop("settling", T0, late, reached=True, refused=True) == "doubt"
    assert _backstop("review", T0, late, reached=True) == "keep"
    assert _backstop("settling", T0, late) == "keep"
    assert _backstop("settling", T0, late, refused=True) == "release"


def test_r_p4_backstop_waits_for_a_clock_that_never_synced():
    """Issue 15, finding 12: a Pi without a real-time clock; no release for
    a hold's age on a clock that has not synced."""
    late = T0 + BACKSTOP
    for state in ("held", "charging", "settling", "found"):
        assert _backstop(state, T0, late, trusted=False) == "wait_for_clock"
    assert _backstop("held", T0, T0, trusted=False) == "none"


def test_r_p4_backoff_grows_and_is_bounded():
    delays = [retry_delay_s(n) for n in range(1, 12)]
    assert delays[0] == 5 and delays == sorted(delays) and max(delays) == 300


# ------------------------------------------------------------ amounts
def test_r_p1_hold_is_the_site_amount_plus_vat_unless_it_includes_vat():
    assert hold_amount(Decimal("199.00"), Decimal("0.19"), "EUR", includes_vat=False) == Decimal("236.81")
    assert hold_amount(Decimal("199.00"), Decimal("0.21"), "EUR", includes_vat=False) == Decimal("240.79")
    assert hold_amount(Decimal("199.00"), Decimal("0.19"), "EUR", includes_vat=True) == Decimal("199.00")


def test_r_p3_settlement_is_cost_never_above_the_hold():
    bill = settlement_for(12_345, TARIFF, Decimal("236.81"))
    assert bill.amount == session_cost(12_345, TARIFF).gross == Decimal("5.87") and not bill.capped
    capped = settlement_for(600_000, TARIFF, Decimal("236.81"))
    assert capped.capped and capped.amount == Decimal("236.81")
    assert capped.cost.net + capped.cost.vat == capped.cost.gross == Decimal("236.81")


@pytest.mark.parametrize("hold", ["9.52", "236.81", "240.79", "0.01"])
def test_r_p2_stopping_at_the_cap_never_costs_more_than_the_hold(hold):
    cap = energy_cap_wh(Decimal(hold), TARIFF)
    assert session_cost(cap, TARIFF).gross <= Decimal(hold)
    assert cost_cap_reached(cap, 0.0, cap, 2.0)
    # With energy flowing, the stop comes early enough for what flows meanwhile.
    rate = 100.0  # Wh per second
    stop_at = next(e for e in range(0, cap + 1, 10) if cost_cap_reached(e, rate, cap, 2.0))
    delivered_by_the_stop = min(int(stop_at + rate * 2.0), cap)
    assert session_cost(delivered_by_the_stop, TARIFF).gross <= Decimal(hold)
    assert not cost_cap_reached(stop_at - 10, rate, cap, 2.0) if stop_at >= 10 else True
    assert not cost_cap_reached(0, 0.0, None, 2.0)  # a free tariff has no cap


def test_r_p2_cap_watch_measures_the_rate_from_meter_changes():
    w = CapWatch(cap_wh=1000)
    w.observe(100, 10.0)
    w.observe(100, 10.5)  # same reading seen twice: no new rate
    assert w.rate == 0.0
    w.observe(300, 11.0)
    assert w.rate == pytest.approx(200.0)


def test_r_p8_synced_tariff_in_force_wins_over_the_site_default():
    synced = [
        {"id": "2025", "currency": "EUR", "price_per_kwh": "0.45", "vat_rate": "0.19", "effective_from": "2025-01-01T00:00:00Z"},
        {"id": "2026", "currency": "EUR", "price_per_kwh": "0.41", "vat_rate": "0.19", "effective_from": "2026-01-01T00:00:00Z"},
        {"id": "chf", "currency": "CHF", "price_per_kwh": "0.50", "vat_rate": "0.081", "effective_from": "2026-02-01T00:00:00Z"},
    ]
    kw = dict(currency="EUR", price_per_kwh=Decimal("0.399"), vat_rate=Decimal("0.19"))
    assert choose_tariff(synced, T0, **kw).id == "2026"
    assert choose_tariff(synced, datetime(2025, 6, 1, tzinfo=timezone.utc), **kw).price_per_kwh == Decimal("0.45")
    default = choose_tariff([], T0, **kw)
    assert default.id == "site-default" and default.price_per_kwh == Decimal("0.399")


# ------------------------------------------------------------ same card
def test_r_p1_same_card_by_token_never_by_number(ledger):
    rec = held(ledger, 1)
    ledger.change(rec, T0, card_token="aa11", card_masked="411111******1111")
    assert same_card(rec, "aa11", "411111******1111")
    assert not same_card(rec, "bb22", "411111******1111")  # same BIN and last four, another card
    assert not same_card(rec, None, "411111******1111")
    tokenless = held(ledger, 2)
    ledger.change(tokenless, T0, card_masked="411111******1111")
    assert same_card(tokenless, None, "411111******1111")
    assert not same_card(tokenless, None, "555555******4444")
