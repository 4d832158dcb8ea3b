"""The terminal's end-of-day (ZVT 06 50), without sockets: when a closing is
due (local time, DST, first start, missed days, "off"), the config check,
retries and giving up, never during a card's transaction, the terminal's
open reservations resolved first (R-P4), the manual run (R-T3), the event
and its schema, and the retry state kept across a restart (R-C9, R-D2).

The hub core of `payment_rig.py`: built from a configuration and never
started, with a scripted terminal T1."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from payment_rig import NOW, REFUSED, Rig, done, hub_config

from drivers.zvt import TerminalUnavailable
from units import FakeClock
from edge.core.config import ConfigError, parse_config
from edge.cloud.envelope import validate_event
from edge.core.hub import Refused
from edge.parts.payments.ledger import Closing, LedgerError
from edge.parts.payments.receipts import (
    END_OF_DAY_ATTEMPTS,
    END_OF_DAY_RETRY,
    closing_slot,
    closing_time,
    end_of_day_due,
    latest_closing_day,
    next_closing_at,
)

BERLIN = ZoneInfo("Europe/Berlin")
AT3 = time(3, 0)
UTC = timezone.utc
TECHNICIAN = SimpleNamespace(user="tech1")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def closing(day: date, outcome: str = "done", attempts: int = 1, next_attempt_at: datetime | None = None) -> Closing:
    return Closing(id=1, terminal="T1", day=day, outcome=outcome, attempts=attempts, at=NOW,
                   next_attempt_at=next_attempt_at)


# ====================================================== when a closing is due
def test_due_only_after_the_local_time_once_a_day():
    last = closing(date(2026, 11, 23))
    # 03:00 in Berlin in November is 02:00 UTC.
    assert end_of_day_due(AT3, BERLIN, last, utc(2026, 11, 24, 1, 59)) is None
    assert end_of_day_due(AT3, BERLIN, last, utc(2026, 11, 24, 2, 0)) == date(2026, 11, 24)
    done = closing(date(2026, 11, 24))
    assert end_of_day_due(AT3, BERLIN, done, utc(2026, 11, 24, 2, 1)) is None
    assert end_of_day_due(AT3, BERLIN, done, utc(2026, 11, 25, 1, 59)) is None
    assert end_of_day_due(AT3, BERLIN, done, utc(2026, 11, 25, 2, 0)) == date(2026, 11, 25)
    assert next_closing_at(AT3, BERLIN, done, utc(2026, 11, 24, 12, 0)) == utc(2026, 11, 25, 2, 0)


def test_first_start_is_a_baseline_not_a_late_closing():
    assert end_of_day_due(AT3, BERLIN, None, NOW) is None  # the caller records a baseline first
    assert latest_closing_day(AT3, BERLIN, NOW) == date(2026, 11, 24)  # started after today's 03:00
    assert latest_closing_day(AT3, BERLIN, utc(2026, 11, 24, 1, 0)) == date(2026, 11, 23)  # started before it
    baseline = closing(date(2026, 11, 24), "baseline", attempts=0)
    assert end_of_day_due(AT3, BERLIN, baseline, NOW) is None
    assert next_closing_at(AT3, BERLIN, None, NOW) == utc(2026, 11, 25, 2, 0)


def test_after_missed_days_one_catch_up_closing_not_one_per_day():
    last = closing(date(2026, 11, 20))
    now = utc(2026, 11, 24, 9, 0)
    assert end_of_day_due(AT3, BERLIN, last, now) == date(2026, 11, 24)
    assert next_closing_at(AT3, BERLIN, last, now) == utc(2026, 11, 24, 2, 0)  # already due
    caught_up = closing(date(2026, 11, 24))
    assert end_of_day_due(AT3, BERLIN, caught_up, now + timedelta(hours=1)) is None


def test_a_refused_closing_is_retried_every_10_minutes_six_times_at_most():
    t = utc(2026, 11, 24, 2, 0)
    refused = closing(date(2026, 11, 24), "refused", attempts=2, next_attempt_at=t + END_OF_DAY_RETRY)
    assert end_of_day_due(AT3, BERLIN, refused, t + timedelta(minutes=9)) is None
    assert end_of_day_due(AT3, BERLIN, refused, t + END_OF_DAY_RETRY) == date(2026, 11, 24)
    assert next_closing_at(AT3, BERLIN, refused, t) == t + END_OF_DAY_RETRY
    spent = closing(date(2026, 11, 24), "refused", attempts=END_OF_DAY_ATTEMPTS, next_attempt_at=t)
    assert end_of_day_due(AT3, BERLIN, spent, t + timedelta(hours=1)) is None
    failed = closing(date(2026, 11, 24), "failed", attempts=END_OF_DAY_ATTEMPTS)
    assert end_of_day_due(AT3, BERLIN, failed, t + timedelta(hours=1)) is None
    assert end_of_day_due(AT3, BERLIN, failed, t + timedelta(days=1)) == date(2026, 11, 25)


def test_dst_spring_forward_in_berlin():
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST. 03:00 is 01:00 UTC that day, 02:00 UTC the day before.
    assert closing_slot(date(2026, 3, 28), AT3, BERLIN) == utc(2026, 3, 28, 2, 0)
    assert closing_slot(date(2026, 3, 29), AT3, BERLIN) == utc(2026, 3, 29, 1, 0)
    last = closing(date(2026, 3, 28))
    assert end_of_day_due(AT3, BERLIN, last, utc(2026, 3, 29, 0, 59)) is None
    assert end_of_day_due(AT3, BERLIN, last, utc(2026, 3, 29, 1, 0)) == date(2026, 3, 29)
    # 02:30 does not exist that day: it comes an hour later, once.
    skipped = time(2, 30)
    assert closing_slot(date(2026, 3, 29), skipped, BERLIN) == utc(2026, 3, 29, 1, 30)
    assert end_of_day_due(skipped, BERLIN, last, utc(2026, 3, 29, 1, 29)) is None
    assert end_of_day_due(skipped, BERLIN, last, utc(2026, 3, 29, 1, 30)) == date(2026, 3, 29)
    assert end_of_day_due(skipped, BERLIN, closing(date(2026, 3, 29)), utc(2026, 3, 29, 23, 0)) is None


def test_dst_fall_back_in_berlin_closes_once_though_the_hour_repeats():
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
    twice = time(2, 30)
    last = closing(date(2026, 10, 24))
    assert end_of_day_due(twice, BERLIN, last, utc(2026, 10, 25, 0, 29)) is None
    assert end_of_day_due(twice, BERLIN, last, utc(2026, 10, 25, 0, 30)) == date(2026, 10, 25)
    done = closing(date(2026, 10, 25))
    assert end_of_day_due(twice, BERLIN, done, utc(2026, 10, 25, 1, 30)) is None  # the second 02:30
    assert next_closing_at(twice, BERLIN, done, utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 26, 1, 30)  # CET now
    # 03:00 is 01:00 UTC before the change, 02:00 UTC on and after that day.
    assert closing_slot(date(2026, 10, 24), AT3, BERLIN) == utc(2026, 10, 24, 1, 0)
    assert closing_slot(date(2026, 10, 25), AT3, BERLIN) == utc(2026, 10, 25, 2, 0)


def test_off_is_never_due():
    assert closing_time("off") is None
    assert closing_time("03:00") == AT3 and closing_time("23:59") == time(23, 59)
    assert end_of_day_due(None, BERLIN, closing(date(2026, 11, 1)), NOW) is None
    assert next_closing_at(None, BERLIN, None, NOW) is None


# ============================================================ configuration

def test_config_end_of_day_default_off_and_toml_time(tmp_path):
    assert parse_config(hub_config(tmp_path, None), tmp_path / "hub.toml").terminals[0].end_of_day == "03:00"
    assert parse_config(hub_config(tmp_path, '"off"'), tmp_path / "hub.toml").terminals[0].end_of_day == "off"
    assert parse_config(hub_config(tmp_path, '"23:45"'), tmp_path / "hub.toml").terminals[0].end_of_day == "23:45"
    assert parse_config(hub_config(tmp_path, "04:30:00"), tmp_path / "hub.toml").terminals[0].end_of_day == "04:30"


@pytest.mark.parametrize("value", ['"25:00"', '"3:00"', '"03:60"', '"noon"', '"OFF"', "3", "04:30:15", '""'])
def test_config_bad_end_of_day_is_a_clear_error(tmp_path, value):
    with pytest.raises(ConfigError) as exc:
        parse_config(hub_config(tmp_path, value), tmp_path / "hub.toml")
    assert len(exc.value.problems) == 1
    problem = exc.value.problems[0]
    assert problem.startswith("terminals[0].end_of_day: expected a local time HH:MM such as 03:00, or off"), problem


# ================================================================ the part
@pytest.fixture
def rig(tmp_path):
    made = Rig(tmp_path, FakeClock(NOW))
    yield made
    made.close()


async def test_first_start_records_a_baseline_and_closes_nothing(rig):
    assert await rig.payments.maybe_end_of_day(rig.lane) is None
    [baseline] = rig.closings()
    assert (baseline.outcome, baseline.day, baseline.attempts) == ("baseline", date(2026, 11, 24), 0)
    assert "end_of_day" not in rig.terminal.calls and rig.of("payment.end_of_day") == []
    view = rig.lane.view(rig.payments.ledger)
    assert view["last_closing"] == "-" and view["next_closing"] == "2026-11-25 03:00 CET"


async def test_due_closing_reconciles_books_what_is_due_then_closes(rig):
    """R-P4: before 06 50 the terminal's open reservations are resolved (one
    the ledger does not know is released) and due bookings are made, so the
    day's money is in the batch; then the closing is recorded and sent."""
    await rig.payments.maybe_end_of_day(rig.lane)  # baseline for the 24th
    pid = rig.settling_hold(1, "12.34")
    rig.terminal.open[7] = Decimal("50.00")  # a hold the ledger does not know
    rig.terminal.closings = [done("12.34")]
    rig.at(utc(2026, 11, 25, 2, 0))
    result = await rig.payments.maybe_end_of_day(rig.lane)
    calls = [c for c in rig.terminal.calls if c != "connect"]
    assert calls.index("open_preauthorizations") < calls.index("release 7") < calls.index("end_of_day")
    assert calls.index("book 1") < calls.index("end_of_day") and calls[-1] == "end_of_day"
    assert rig.payments.ledger.get(pid).state == "settled" and rig.terminal.open == {}
    assert (result.outcome, result.day, result.attempts, result.total, result.transactions) == (
        "done", date(2026, 11, 25), 1, Decimal("12.34"), 1)
    assert rig.closings()[0] == result  # durable, as returned
    [event] = rig.of("payment.end_of_day")
    assert event == {"terminal": "T1", "day": "2026-11-25", "outcome": "done", "attempts": 1, "trigger": "schedule",
                     "total": {"amount": "12.34", "currency": "EUR"}, "transactions": 1}
    [envelope] = rig.envelopes("payment.end_of_day")
    validate_event(envelope)
    assert envelope["stream"] == "payment"
    assert await rig.payments.maybe_end_of_day(rig.lane) is None  # once a day
    assert rig.terminal.calls.count("end_of_day") == 1
    view = rig.lane.view(rig.payments.ledger)
    assert view["last_closing"] == "2026-11-25 done" and view["next_closing"] == "2026-11-26 03:00 CET"


async def test_refused_closing_retries_every_10_minutes_then_fails_with_an_event(rig):
    await rig.payments.maybe_end_of_day(rig.lane)
    rig.terminal.closings = [REFUSED] * (END_OF_DAY_ATTEMPTS - 1) + [TerminalUnavailable("terminal tcp://192.0.2.1:20007: not answering")]
    start = utc(2026, 11, 25, 2, 0)
    rig.at(start)
    for n in range(1, END_OF_DAY_ATTEMPTS):
        c = await rig.payments.maybe_end_of_day(rig.lane)
        assert (c.outcome, c.attempts, c.result_code) == ("refused", n, 0x77)
        assert c.next_attempt_at == rig.clock.now() + END_OF_DAY_RETRY
        rig.clock.advance(9 * 60)
        assert await rig.payments.maybe_end_of_day(rig.lane) is None  # not before its 10 minutes
        assert rig.terminal.calls.count("end_of_day") == n
        assert rig.of("payment.end_of_day") == []  # nothing for the cloud while it retries
        rig.clock.advance(60)
    last = await rig.payments.maybe_end_of_day(rig.lane)
    assert (last.outcome, last.attempts, last.day) == ("failed", END_OF_DAY_ATTEMPTS, date(2026, 11, 25))
    assert rig.terminal.calls.count("end_of_day") == END_OF_DAY_ATTEMPTS
    assert len([c for c in rig.closings() if c.day == date(2026, 11, 25)]) == 1  # one row, retried in place
    [event] = rig.of("payment.end_of_day")
    assert event["outcome"] == "failed" and event["attempts"] == END_OF_DAY_ATTEMPTS and event["total"] is None
    assert "not answering" in event["reason"]
    assert "hubctl terminal end-of-day T1" in event["message"] and "not yet submitted" in event["message"]
    validate_event(rig.envelopes("payment.end_of_day")[0])
    rig.clock.advance(3600)
    assert await rig.payments.maybe_end_of_day(rig.lane) is None  # given up for that day
    rig.at(utc(2026, 11, 26, 2, 0))
    assert (await rig.payments.maybe_end_of_day(rig.lane)).outcome == "done"  # the next day closes again


async def test_never_during_a_pre_authorisation_at_the_arch(rig):
    await rig.payments.maybe_end_of_day(rig.lane)
    c = rig.hub.connectors["C1"]
    prev = c.state
    c.trigger("plug_in")
    rig.hub._changed(c, prev)
    rig.terminal.preauth_gate = asyncio.Event()
    rig.at(utc(2026, 11, 25, 2, 0))  # the closing is due
    select = asyncio.create_task(rig.payments._arch_select({"terminal": "T1", "connector": "C1"}, TECHNICIAN, _quiet))
    while "preauthorize" not in rig.terminal.calls:
        await asyncio.sleep(0)
    # A driver at the terminal: the closing waits for a later round, at once.
    assert await asyncio.wait_for(rig.payments.maybe_end_of_day(rig.lane), 1.0) is None
    assert rig.payments.next_due_in(rig.lane) == 1.0  # and looks again in a second
    with pytest.raises(Refused, match="busy .*try again in a few minutes") as busy:
        await rig.payments._terminal_end_of_day({"id": "T1"}, TECHNICIAN, _quiet)
    assert busy.value.code == "busy"
    assert "end_of_day" not in rig.terminal.calls
    rig.terminal.preauth_gate.set()
    answer = await select
    assert answer["started"], answer
    closed = await rig.payments.maybe_end_of_day(rig.lane)
    assert closed.outcome == "done"
    calls = rig.terminal.calls
    assert calls.index("preauthorize_done") < calls.index("end_of_day")
    assert rig.terminal.open  # the running session's hold stays open across the closing
    assert rig.payments.ledger.open_records("T1")[0].state == "charging"


async def test_a_closing_waits_for_a_terminal_call_in_progress(rig):
    """A settlement holds the lane's lock: 06 50 goes after it, never in between."""
    await rig.payments.maybe_end_of_day(rig.lane)
    rig.at(utc(2026, 11, 25, 2, 0))
    async with rig.lane.lock:
        closing = asyncio.create_task(rig.payments.maybe_end_of_day(rig.lane))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not closing.done() and "end_of_day" not in rig.terminal.calls
    assert (await closing).outcome == "done"


async def _quiet(_progress):
    pass


async def test_hubctl_end_of_day_done_refused_failed_and_audited(rig):
    await rig.payments.maybe_end_of_day(rig.lane)
    rig.clock.advance(60)
    rig.settling_hold(1, "40.00")
    rig.terminal.closings = [REFUSED, TerminalUnavailable("terminal tcp://192.0.2.1:20007: not answering"), done("40.00")]
    refused = await rig.payments._terminal_end_of_day({"id": "T1"}, TECHNICIAN, _quiet)
    assert refused["outcome"] == "refused" and refused["result_code"] == 0x77
    assert "nothing was closed" in refused["message"] and "try again in a few minutes" in refused["message"]
    failed = await rig.payments._terminal_end_of_day({"id": "T1"}, TECHNICIAN, _quiet)
    assert failed["outcome"] == "failed" and "not answering" in failed["message"]
    assert [c.outcome for c in rig.closings()] == ["baseline"]  # nothing recorded as done
    ok = await rig.payments._terminal_end_of_day({"id": "T1"}, TECHNICIAN, _quiet)
    assert ok["outcome"] == "done" and ok["day"] == "2026-11-24" and ok["total"] == {"amount": "40.00", "currency": "EUR"}
    assert ok["message"] == "terminal T1 closed the day 2026-11-24: 1 transaction, 40.00 EUR booked, submitted to the acquirer"
    assert rig.closings()[0].trigger == "hubctl"
    assert [a["result"] for a in rig.of("audit.action") if a["action"] == "terminal.end_of_day"] == ["refused", "failed", "done"]
    [event] = rig.of("payment.end_of_day")
    assert event["trigger"] == "hubctl" and event["transactions"] == 1
    # A manual closing counts for its day: today's scheduled one is not run again.
    assert await rig.payments.maybe_end_of_day(rig.lane) is None
    with pytest.raises(Refused, match="no terminal 'T9'"):
        await rig.payments._terminal_end_of_day({"id": "T9"}, TECHNICIAN, _quiet)


async def test_hubctl_end_of_day_closes_the_day_still_being_retried(rig):
    await rig.payments.maybe_end_of_day(rig.lane)
    rig.terminal.closings = [REFUSED, done("0.00")]
    rig.at(utc(2026, 11, 25, 2, 0))
    pending = await rig.payments.maybe_end_of_day(rig.lane)
    assert pending.outcome == "refused"
    ok = await rig.payments._terminal_end_of_day({"id": "T1"}, TECHNICIAN, _quiet)
    assert ok["outcome"] == "done" and ok["day"] == "2026-11-25"
    [row] = [c for c in rig.closings() if c.day == date(2026, 11, 25)]
    assert (row.id, row.outcome, row.attempts, row.trigger) == (pending.id, "done", 2, "hubctl")
    rig.clock.advance(END_OF_DAY_RETRY.total_seconds())
    assert await rig.payments.maybe_end_of_day(rig.lane) is None


async def test_retry_state_survives_a_restart_and_missed_days_close_once(tmp_path):
    clock = FakeClock(NOW)
    first = Rig(tmp_path, clock)
    await first.payments.maybe_end_of_day(first.lane)
    first.terminal.closings = [REFUSED]
    first.at(utc(2026, 11, 25, 2, 0))
    pending = await first.payments.maybe_end_of_day(first.lane)
    first.close()  # the power goes

    second = Rig(tmp_path, clock)
    try:
        clock.advance(5 * 60)
        assert await second.payments.maybe_end_of_day(second.lane) is None  # its 10 minutes still run
        clock.advance(5 * 60)
        again = await second.payments.maybe_end_of_day(second.lane)
        assert (again.id, again.outcome, again.attempts) == (pending.id, "done", 2)
        second.at(utc(2026, 11, 29, 9, 0))  # four days without the hub's loop
        caught_up = await second.payments.maybe_end_of_day(second.lane)
        assert caught_up.day == date(2026, 11, 29)
        assert await second.payments.maybe_end_of_day(second.lane) is None
        assert second.terminal.calls.count("end_of_day") == 2
        assert [c.outcome for c in second.closings()] == ["done", "done", "baseline"]
    finally:
        second.close()


async def test_a_day_still_retried_when_the_next_falls_due_is_superseded_not_left_open(rig):
    """The hub is off from a refused closing until past the next day's time:
    the next closing submits both days' bookings, and the older row is
    finished (superseded, its tries kept), never left waiting for a retry."""
    await rig.payments.maybe_end_of_day(rig.lane)
    rig.terminal.closings = [REFUSED, done("42.50")]
    rig.at(utc(2026, 11, 25, 2, 0))
    stale = await rig.payments.maybe_end_of_day(rig.lane)
    assert (stale.outcome, stale.attempts) == ("refused", 1)
    rig.at(utc(2026, 11, 26, 2, 30))  # down past the 26th's 03:00 CET
    closed = await rig.payments.maybe_end_of_day(rig.lane)
    assert (closed.day, closed.outcome, closed.attempts, closed.total) == (date(2026, 11, 26), "done", 1, Decimal("42.50"))
    newest, older, _baseline = rig.closings()
    assert newest.id == closed.id
    assert (older.id, older.day, older.outcome, older.attempts) == (stale.id, date(2026, 11, 25), "superseded", 1)
    assert older.result_code == 0x77 and "go with the closing of 2026-11-26" in older.reason
    assert rig.terminal.calls.count("end_of_day") == 2
    assert [e["day"] for e in rig.of("payment.end_of_day")] == ["2026-11-26"]
    rig.clock.advance(3600)
    assert await rig.payments.maybe_end_of_day(rig.lane) is None  # nothing left to retry
    assert rig.lane.view(rig.payments.ledger)["last_closing"] == "2026-11-26 done"


async def test_off_runs_no_closing_and_records_nothing(tmp_path):
    rig = Rig(tmp_path, FakeClock(NOW), end_of_day='"off"')
    try:
        rig.at(utc(2026, 11, 30, 9, 0))
        assert await rig.payments.maybe_end_of_day(rig.lane) is None
        assert rig.closings() == [] and "end_of_day" not in rig.terminal.calls
        assert rig.lane.view(rig.payments.ledger)["next_closing"] == "off"
        assert rig.payments.next_due_in(rig.lane) == 30.0
    finally:
        rig.close()


def test_ledger_refuses_an_unknown_outcome_and_a_closed_row(rig):
    ledger = rig.payments.ledger
    with pytest.raises(LedgerError, match="unknown closing outcome"):
        ledger.record_closing("T1", date(2026, 11, 24), "maybe", NOW)
    done_row = ledger.record_closing("T1", date(2026, 11, 24), "done", NOW, attempts=1)
    with pytest.raises(LedgerError, match="no longer being retried"):
        ledger.record_closing("T1", date(2026, 11, 24), "done", NOW, attempts=2, closing_id=done_row.id)
