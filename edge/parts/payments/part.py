"""Payment at the arch terminal (R-P1..R-P9, R-S1): pre-authorisation, cost
cap, settlement, release, receipts, and the payment ledger.

The flow, as a driver sees it: plug the truck in, pick the connector on the
arch screen (control command ``arch_select``), present a card; the terminal
pre-authorises the site's amount and, when approved, the session starts. The
session stops at the arch (``arch_stop``, same card only), by the truck, by a
technician or by its cost cap; the energy times the tariff in force at the
start, plus VAT, is booked at once (never above the hold) and the session
gets its receipt link. A hold whose session never started is released.

The ledger (R-P4) is write-ahead: the intent of every terminal call is
committed before the call, and its outcome after it, so after a SIGKILL at
any instant the hub knows what it asked and what is left. Settlements and
releases that fail are retried with backoff; a booking whose answer never
came sits in review (never released) until the terminal says what became of
it; a hold open for 24 hours is released once its session has stopped; at
start-up and periodically each terminal's open reservations are compared
with the ledger: one the ledger does not know is released, and each hold
the terminal's answer does not name (a terminal may name only the first
open one) is asked about on its own, by the call the ledger owes on it.

Each terminal has its own lane (a task and a lock): a dead terminal delays
only its own arch. Card numbers never reach this module: the driver gives the
terminal's card token and at most BIN + last four (R-P6).

Once a day, at its configured local time, each terminal runs its end-of-day
(ZVT 06 50): the day's bookings go to the acquirer (until then the operator
is not paid, and a terminal whose memory fills refuses cards). Its open
reservations are resolved first; a refused or failed closing is tried again
every 10 minutes, six times at most, and each closing is kept durably.

Pure decisions (amounts, caps, reconciliation plans, backstop, backoff, when
a closing is due) are plain functions at the top and are unit-tested without
sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta, timezone
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo

from units import parse_rfc3339, rfc3339
from edge.core.hub import Capability, NotFound, Refused
from edge.parts.payments.pricing import (
    Cost,
    Tariff,
    energy_cap_wh,
    preauthorization_amount,
    round_money,
    session_cost,
    settlement_amount,
)
from state_machines.payment import (
    CHARGING,
    FINAL_STATES,
    FOUND,
    HELD,
    PENDING_STATES,
    RELEASING,
    REQUESTED,
    REVIEW,
    SETTLING,
    next_state,
)

log = logging.getLogger("hubedge.payments")

# R-P4 (FAQ): a hold is never left open longer than this.
BACKSTOP = timedelta(hours=24)
# Retries of a failed settlement or release: 5 s, 10 s, 20 s ... at most 5 min.
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0
# How often a terminal's open reservations are compared with the ledger.
RECONCILE_EVERY_S = 600.0
# Questions of one reconciliation at most: a terminal that names one open
# reservation at a time is asked again after each one the hub closes.
RECONCILE_ROUNDS = 20
# Time a charger takes to stop drawing power once told to stop.
STOP_ALLOWANCE_S = 1.0
# How long the driver may take to present the card at arch_stop.
READ_CARD_TIMEOUT_S = 30
# Smallest authorisation used to identify a card on terminals that cannot read
# one without paying (the hold is released at once).
CARD_CHECK_AMOUNT = Decimal("1.00")
# ZVT result codes meaning "that reservation is not open (any more)".
NOT_OPEN_CODES = frozenset({0xB8, 0xB4})
DEFAULT_TARIFF_FROM = datetime(2000, 1, 1, tzinfo=timezone.utc)


# =========================================================== pure decisions
def money(amount: Decimal | None, currency: str) -> dict | None:
    """The contract's amount shape: {"amount": "49.77", "currency": "EUR"}."""
    if amount is None:
        return None
    return {"amount": str(round_money(amount, currency)), "currency": currency}


def hold_amount(net_or_gross: Decimal, vat_rate: Decimal, currency: str, includes_vat: bool) -> Decimal:
    """R-P1: what is asked of the card. The site's amount is excluding VAT
    unless the site says it includes VAT; the hold covers the VAT either way."""
    return preauthorization_amount(net_or_gross, vat_rate, currency, include_vat=not includes_vat)


def tariff_from_document(doc: Mapping) -> Tariff:
    return Tariff(
        id=str(doc["id"]),
        currency=str(doc["currency"]),
        price_per_kwh=Decimal(str(doc["price_per_kwh"])),
        vat_rate=Decimal(str(doc["vat_rate"])),
        effective_from=parse_rfc3339(doc["effective_from"]),
    )


def tariff_to_document(t: Tariff) -> dict:
    return {"id": t.id, "currency": t.currency, "price_per_kwh": str(t.price_per_kwh),
            "vat_rate": str(t.vat_rate), "effective_from": rfc3339(t.effective_from)}


def choose_tariff(synced: Iterable[Mapping], now: datetime, *, currency: str, price_per_kwh: Decimal,
                  vat_rate: Decimal) -> Tariff:
    """R-P8: the synced tariff in force at ``now`` in the site's currency, or
    the site's configured default when the cloud has sent none yet."""
    from edge.parts.payments.tariffs import tariff_in_force

    doc = tariff_in_force(list(synced), now, currency=currency)
    if doc is not None:
        return tariff_from_document(doc)
    return Tariff("site-default", currency, price_per_kwh, vat_rate, DEFAULT_TARIFF_FROM)


@dataclass(frozen=True)
class Settlement:
    amount: Decimal  # what the terminal books
    cost: Cost  # what the session cost at the tariff; amount == cost.gross unless capped
    capped: bool


def settlement_for(energy_wh: int, tariff: Tariff, hold: Decimal) -> Settlement:
    """R-P3: energy times the tariff at start plus VAT, in the minor unit,
    never above the hold. When capped, the cost shown is the hold split into
    net and VAT, so the receipt adds up to what was booked."""
    cost = session_cost(energy_wh, tariff)
    amount = settlement_amount(cost.gross, hold)
    if amount == cost.gross:
        return Settlement(amount, cost, False)
    net = round_money(amount / (1 + tariff.vat_rate), tariff.currency)
    return Settlement(amount, Cost(net=net, vat=amount - net, gross=amount, currency=tariff.currency), True)


def retry_delay_s(attempts: int) -> float:
    """Backoff after the ``attempts``-th failed try (1, 2, ...)."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * (2 ** max(0, attempts - 1)))


def backstop_decision(state: str, held_at: datetime | None, now: datetime, *, clock_trusted: bool,
                      session_open: bool, booking_may_have_reached: bool, booking_refused: bool) -> str:
    """R-P4: what to do with a hold 24 hours after its approval.

    - none: not open that long (or nothing held);
    - wait_for_clock: it looks due, but the hub's clock never synced (a Pi
      without a real-time clock starts in the past and jumps): no time-based
      decision on such a clock;
    - stop_session: its session still charges: stop it and keep the hold
      until the session has really stopped (it is then billed), retrying
      the stop; never release under a session still drawing energy;
    - release: no session (or it has ended and was never billed), a found
      hold, or a booking the terminal answered with a refusal;
    - doubt: a booking may have reached the terminal: review, never release;
    - keep: a booking never reached the terminal (it is down) or one in
      review: book it when the terminal answers; releasing needs the same
      terminal anyway."""
    if state not in (HELD, CHARGING, SETTLING, REVIEW, FOUND) or held_at is None or now - held_at < BACKSTOP:
        return "none"
    if not clock_trusted:
        return "wait_for_clock"
    if state in (HELD, CHARGING):
        return "stop_session" if session_open else "release"
    if state == FOUND:
        return "release"
    if state == REVIEW:
        return "keep"
    if booking_may_have_reached:
        return "doubt"
    return "release" if booking_refused else "keep"


def not_open_outcome(action: str, booking_may_have_reached: bool) -> str:
    """What the terminal's definite word that a reservation is no longer
    open (B8/B4 to a call about it, or "nothing open") means for a hold
    whose ``action`` (settle | release) is owed: settled (a booking of ours
    reached it), lapsed (closed before any booking of ours), released, or
    review (a release owed on a hold a booking may have reached: booked or
    not, only the acquirer's records can tell)."""
    if action == "settle":
        return "settled" if booking_may_have_reached else "lapsed"
    return "review" if booking_may_have_reached else "released"


def cost_cap_reached(energy_wh: int, rate_wh_per_s: float, cap_wh: int | None, lead_s: float) -> bool:
    """R-P2: stop now if the energy the charger will have delivered by the
    time a stop can take effect (``lead_s`` at the current rate) would cost
    more than the hold."""
    if cap_wh is None:
        return False
    return energy_wh + max(0.0, rate_wh_per_s) * lead_s >= cap_wh


@dataclass(frozen=True)
class ReconcileAction:
    # release_unknown | ask | confirm_settled | lapse | confirm_released | doubt | terminal_lost_hold
    kind: str
    receipt_no: int | None = None
    payment_id: str | None = None


_CONCLUDED = {"settled": "confirm_settled", "lapsed": "lapse", "released": "confirm_released", "review": "doubt"}


def reconcile_plan(named: Iterable[int], complete: bool, records: Iterable["PaymentRecord"],
                   maybe_done) -> list[ReconcileAction]:
    """Compare a terminal's answer about its open reservations with the
    ledger's open holds on that terminal (R-P4).

    ``named`` are receipts the terminal said are open; ``complete`` is True
    only when it said nothing else is open (receipt FF FF). A terminal may
    name only the first open reservation (Feig cVEND), so a hold it does not
    name is concluded about only on a complete answer; otherwise it is asked
    about on its own (``ask``: the call the ledger owes on it, which the
    terminal takes only while the reservation is open). ``maybe_done(id,
    action)`` says whether a call for that action may have reached the
    terminal.

    - named, no open hold in the ledger: release it (a crash between the
      approval and the ledger's write, an approval whose answer was lost);
    - named, a call owed on it (settling, review, releasing, found): ask;
    - not open (complete answer): see ``not_open_outcome``; a hold still
      held or charging is reported (its settlement will tell);
    - not named in a partial answer: ask when a call is owed; a hold whose
      session runs is left alone, concluding nothing.
    Receipt numbers restart on terminals, so only open holds are matched."""
    named = set(named)
    live = [r for r in records if r.state not in FINAL_STATES and r.receipt_no is not None]
    known = {r.receipt_no for r in live}
    plan = [ReconcileAction("release_unknown", receipt_no=n) for n in sorted(named - known)]
    for r in live:
        owed = r.state in PENDING_STATES or r.state == FOUND
        if r.receipt_no in named or not complete:
            if owed:
                plan.append(ReconcileAction("ask", receipt_no=r.receipt_no, payment_id=r.id))
            continue
        if owed:
            action = "settle" if r.state in (SETTLING, REVIEW) else "release"
            kind = _CONCLUDED[not_open_outcome(action, maybe_done(r.id, "settle"))]
        else:
            kind = "terminal_lost_hold"
        plan.append(ReconcileAction(kind, receipt_no=r.receipt_no, payment_id=r.id))
    return plan


def _no_clear_answer(error: Exception) -> str:
    """For the driver at the arch: how a pre-authorisation went unanswered."""
    from drivers.zvt import TerminalTimeout

    if isinstance(error, TerminalTimeout):
        return f"did not answer in time ({type(error).__name__})"
    return f"gave no clear answer ({type(error).__name__})"


def same_card(started: "PaymentRecord", token: str | None, masked: str | None) -> bool:
    """R-P1: the card at the arch is the one that started the session. The
    terminal's card token decides; a terminal that gives no token on either
    read falls back to BIN + last four (never the card number)."""
    if started.card_token and token:
        return started.card_token == token
    if not started.card_token and not token and started.card_masked and masked:
        return started.card_masked == masked
    return False


# ================================================== end-of-day (ZVT 06 50)
# A closing refused by the terminal (77: not possible now) or failed is tried
# again this often, at most this many times for one day, then reported.
END_OF_DAY_RETRY = timedelta(minutes=10)
END_OF_DAY_ATTEMPTS = 6
# done; refused (tries left, next_attempt_at says when); failed (given up
# for that day); baseline (the hub's first start: nothing to close before it);
# superseded (still refused when the next day's closing fell due, which
# carries its bookings).
CLOSING_OUTCOMES = ("done", "refused", "failed", "baseline", "superseded")


@dataclass(frozen=True)
class Closing:
    """One end-of-day of one terminal, as the ledger keeps it."""

    id: int
    terminal: str
    day: date  # the local day (hub's time zone) whose closing this is
    outcome: str
    attempts: int
    at: datetime  # UTC, last change
    trigger: str = "schedule"  # schedule | hubctl
    total: Decimal | None = None  # what the terminal reported submitting
    currency: str | None = None
    transactions: int | None = None  # payments the hub settled on it since its previous closing
    reason: str | None = None
    result_code: int | None = None
    next_attempt_at: datetime | None = None


def closing_time(setting: str) -> time_of_day | None:
    """``[[terminals]] end_of_day``: "HH:MM" (checked by the config), or "off"."""
    if setting == "off":
        return None
    hours, minutes = setting.split(":")
    return time_of_day(int(hours), int(minutes))


def closing_slot(day: date, at: time_of_day, tz: ZoneInfo) -> datetime:
    """When ``day``'s closing is due, in UTC. On the spring-forward day a time
    the clock skips (02:30 in Europe/Berlin) comes an hour later; on the
    fall-back day a time that happens twice is its first occurrence."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(timezone.utc)


def latest_closing_day(at: time_of_day, tz: ZoneInfo, now: datetime) -> date:
    """The local day of the latest closing time at or before ``now``."""
    today = now.astimezone(tz).date()
    return today if closing_slot(today, at, tz) <= now else today - timedelta(days=1)


def _retry_pending(last: Closing | None, day: date) -> bool:
    return last is not None and last.day == day and last.outcome == "refused" and last.attempts < END_OF_DAY_ATTEMPTS


def end_of_day_due(at: time_of_day | None, tz: ZoneInfo, last: Closing | None, now: datetime) -> date | None:
    """The local day whose closing is due at ``now``, or None.

    ``last`` is the terminal's latest closing record. Without one nothing is
    due: the caller records a baseline first, so the days before the hub ran
    are not closed late. After days without the hub only the latest day is
    due: one closing submits everything booked since the previous one."""
    if at is None or last is None:
        return None
    day = latest_closing_day(at, tz, now)
    if last.day < day:
        return day
    if _retry_pending(last, day) and (last.next_attempt_at is None or last.next_attempt_at <= now):
        return day
    return None


def next_closing_at(at: time_of_day | None, tz: ZoneInfo, last: Closing | None, now: datetime) -> datetime | None:
    """When the terminal's next closing (or retry) is due, UTC; None when off."""
    if at is None:
        return None
    day = latest_closing_day(at, tz, now)
    if last is not None and last.day < day:
        return closing_slot(day, at, tz)
    if _retry_pending(last, day):
        return last.next_attempt_at or now
    return closing_slot(max(day, last.day if last else day) + timedelta(days=1), at, tz)


# =================================================================== ledger
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS payment_holds (
    id TEXT PRIMARY KEY,
    terminal TEXT NOT NULL,
    connector TEXT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    currency TEXT NOT NULL,
    hold TEXT,
    receipt_no INTEGER,
    trace_no INTEGER,
    card_token TEXT,
    card_masked TEXT,
    card_name TEXT,
    session_id TEXT,
    tariff TEXT,
    energy_wh INTEGER,
    settle_amount TEXT,
    cost_net TEXT,
    cost_vat TEXT,
    cost_gross TEXT,
    reason TEXT,
    result_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error TEXT,
    receipt_id TEXT,
    created_at TEXT NOT NULL,
    held_at TEXT,
    closed_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS payment_holds_state ON payment_holds(state, terminal);
CREATE INDEX IF NOT EXISTS payment_holds_session ON payment_holds(session_id);
CREATE INDEX IF NOT EXISTS payment_holds_created ON payment_holds(created_at);
CREATE TABLE IF NOT EXISTS payment_steps (
    payment_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    action TEXT NOT NULL,
    amount TEXT,
    asked_at TEXT NOT NULL,
    outcome TEXT,
    detail TEXT,
    finished_at TEXT,
    PRIMARY KEY (payment_id, n)
);
CREATE TABLE IF NOT EXISTS terminal_closings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal TEXT NOT NULL,
    day TEXT NOT NULL,
    outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    trigger TEXT NOT NULL,
    total TEXT,
    currency TEXT,
    transactions INTEGER,
    reason TEXT,
    result_code INTEGER,
    next_attempt_at TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS terminal_closings_terminal ON terminal_closings(terminal, id);
"""

KINDS = ("session", "card_check", "unknown_hold")


@dataclass
class PaymentRecord:
    id: str
    terminal: str
    kind: str
    state: str
    currency: str
    created_at: datetime
    updated_at: datetime
    connector: str | None = None
    hold: Decimal | None = None
    receipt_no: int | None = None
    trace_no: int | None = None
    card_token: str | None = None
    card_masked: str | None = None
    card_name: str | None = None
    session_id: str | None = None
    tariff: dict | None = None
    energy_wh: int | None = None
    settle_amount: Decimal | None = None
    cost_net: Decimal | None = None
    cost_vat: Decimal | None = None
    cost_gross: Decimal | None = None
    reason: str | None = None
    result_code: int | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    receipt_id: str | None = None
    held_at: datetime | None = None
    closed_at: datetime | None = None

    @property
    def tariff_obj(self) -> Tariff | None:
        return tariff_from_document(self.tariff) if self.tariff else None

    def view(self) -> dict:
        """For people (hubctl): no card token."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "card_token":
                continue
            v = getattr(self, f.name)
            if isinstance(v, datetime):
                v = rfc3339(v)
            elif isinstance(v, Decimal):
                v = str(v)
            out[f.name] = v
        return out


_DEC = {"hold", "settle_amount", "cost_net", "cost_vat", "cost_gross"}
_TIME = {"created_at", "updated_at", "next_attempt_at", "held_at", "closed_at"}
_COLS = [f.name for f in fields(PaymentRecord)]


def _to_db(name: str, v: Any) -> Any:
    if v is None:
        return None
    if name in _TIME:
        return rfc3339(v)
    if name in _DEC:
        return str(v)
    if name == "tariff":
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return v


def _from_row(row: sqlite3.Row) -> PaymentRecord:
    kw = {}
    for k in _COLS:
        v = row[k]
        if v is not None:
            if k in _TIME:
                v = parse_rfc3339(v)
            elif k in _DEC:
                v = Decimal(v)
            elif k == "tariff":
                v = json.loads(v)
        kw[k] = v
    return PaymentRecord(**kw)


class LedgerError(Exception):
    pass


class PaymentLedger:
    """Every hold and every terminal call, in the hub's SQLite (WAL, full
    sync). Writes go through ``store.transaction()`` so a caller can put its
    outbox event in the same commit as the state change."""

    def __init__(self, store):
        self.store = store
        self.db = store.db
        self.db.executescript(LEDGER_SCHEMA)

    # -- reading
    def _rows(self, sql: str, args: tuple = ()) -> list[PaymentRecord]:
        cur = self.db.execute(sql, args)
        cur.row_factory = sqlite3.Row
        return [_from_row(r) for r in cur.fetchall()]

    def get(self, payment_id: str) -> PaymentRecord | None:
        rows = self._rows("SELECT * FROM payment_holds WHERE id=?", (payment_id,))
        return rows[0] if rows else None

    def find(self, ref: str) -> PaymentRecord | None:
        """A payment by its id or a unique prefix of it (hubctl shows 8 characters)."""
        exact = self.get(ref)
        if exact or len(ref) < 6:
            return exact
        rows = self._rows("SELECT * FROM payment_holds WHERE id LIKE ? LIMIT 2", (ref.replace("%", "") + "%",))
        return rows[0] if len(rows) == 1 else None

    def open_records(self, terminal: str | None = None) -> list[PaymentRecord]:
        marks = ",".join("?" for _ in FINAL_STATES)
        sql = f"SELECT * FROM payment_holds WHERE state NOT IN ({marks})"
        args: tuple = tuple(sorted(FINAL_STATES))
        if terminal is not None:
            sql += " AND terminal=?"
            args += (terminal,)
        return self._rows(sql + " ORDER BY created_at", args)

    def due(self, terminal: str, now: datetime) -> list[PaymentRecord]:
        return [r for r in self.open_records(terminal)
                if r.state in PENDING_STATES and (r.next_attempt_at is None or r.next_attempt_at <= now)]

    def recent(self, limit: int = 50, include_closed: bool = True) -> list[PaymentRecord]:
        if not include_closed:
            return self.open_records()
        return self._rows("SELECT * FROM payment_holds ORDER BY created_at DESC LIMIT ?", (int(limit),))

    def counts(self) -> dict[str, int]:
        return {state: n for state, n in self.db.execute("SELECT state, COUNT(*) FROM payment_holds GROUP BY state")}

    def steps(self, payment_id: str) -> list[dict]:
        cur = self.db.execute("SELECT n, action, amount, asked_at, outcome, detail, finished_at FROM payment_steps "
                              "WHERE payment_id=? ORDER BY n", (payment_id,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def maybe_done(self, payment_id: str, action: str, before: int | None = None) -> bool:
        """Whether a call for ``action`` may have reached the terminal: one
        was written as asked and never came back with a clear answer, or one
        the terminal answered as done (or a later call confirmed). ``before``:
        only calls made before that step (the one being answered now)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM payment_steps WHERE payment_id=? AND action=? AND n < ? "
            "AND (outcome IS NULL OR outcome IN ('unknown', 'done', 'superseded'))",
            (payment_id, action, before if before is not None else 1 << 62),
        ).fetchone()
        return row[0] > 0

    def refused(self, payment_id: str, action: str) -> bool:
        """Whether the terminal answered a call for ``action`` with a refusal."""
        row = self.db.execute("SELECT COUNT(*) FROM payment_steps WHERE payment_id=? AND action=? AND outcome='refused'",
                              (payment_id, action)).fetchone()
        return row[0] > 0

    # -- writing
    def create(self, *, terminal: str, connector: str | None, kind: str, currency: str, hold: Decimal | None,
               now: datetime, state: str = REQUESTED, tariff: Tariff | None = None,
               receipt_no: int | None = None, reason: str | None = None) -> PaymentRecord:
        if kind not in KINDS:
            raise LedgerError(f"unknown payment kind {kind!r}")
        if state not in (REQUESTED, FOUND):
            raise LedgerError(f"a payment starts as requested or found, not {state}")
        rec = PaymentRecord(
            id=str(uuid.uuid4()), terminal=terminal, kind=kind, state=state, currency=currency,
            created_at=now, updated_at=now, connector=connector, hold=hold,
            tariff=tariff_to_document(tariff) if tariff else None, receipt_no=receipt_no, reason=reason,
            held_at=now if state == FOUND else None,
        )
        row = {k: _to_db(k, getattr(rec, k)) for k in _COLS}
        with self.store.transaction() as db:
            db.execute(f"INSERT INTO payment_holds ({','.join(row)}) VALUES ({','.join(':' + k for k in row)})", row)
        return rec

    def change(self, rec: PaymentRecord, now: datetime, trigger: str | None = None, **values: Any) -> PaymentRecord:
        """Move ``rec`` along the payment machine (when ``trigger`` is given)
        and set ``values``; refuses a transition the machine does not have."""
        if trigger is not None:
            dest = next_state(rec.state, trigger)
            if dest is None:
                raise LedgerError(f"payment {rec.id}: {trigger} is not possible in state {rec.state}")
            values["state"] = dest
            if dest in FINAL_STATES:
                values.setdefault("closed_at", now)
        for k in values:
            if k not in _COLS or k in ("id", "created_at"):
                raise LedgerError(f"payment field {k!r} cannot be set")
        values["updated_at"] = now
        sets = ",".join(f"{k}=:{k}" for k in values)
        row = {k: _to_db(k, v) for k, v in values.items()}
        row["id"] = rec.id
        expected = rec.state
        row["expected"] = expected
        with self.store.transaction() as db:
            cur = db.execute(f"UPDATE payment_holds SET {sets} WHERE id=:id AND state=:expected", row)
            if cur.rowcount != 1:
                raise LedgerError(f"payment {rec.id} changed under us (expected state {expected})")
        for k, v in values.items():
            setattr(rec, k, v)
        return rec

    def begin_step(self, payment_id: str, action: str, amount: Decimal | None, now: datetime) -> int:
        """Write-ahead: the call about to be made, committed before it is made."""
        with self.store.transaction() as db:
            n = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM payment_steps WHERE payment_id=?", (payment_id,)).fetchone()[0]
            db.execute("INSERT INTO payment_steps (payment_id, n, action, amount, asked_at) VALUES (?,?,?,?,?)",
                       (payment_id, n, action, str(amount) if amount is not None else None, rfc3339(now)))
        return n

    def end_step(self, payment_id: str, n: int, outcome: str, detail: str | None, now: datetime) -> None:
        """outcome: done | refused | failed (never reached the terminal) |
        unknown (reached it, answer lost)."""
        with self.store.transaction() as db:
            db.execute("UPDATE payment_steps SET outcome=?, detail=?, finished_at=? WHERE payment_id=? AND n=?",
                       (outcome, (detail or "")[:500], rfc3339(now), payment_id, n))

    def settle_open_steps(self, payment_id: str, outcome: str, detail: str, now: datetime) -> None:
        """Close steps left without an outcome by a crash, once their fate is known."""
        with self.store.transaction() as db:
            db.execute("UPDATE payment_steps SET outcome=?, detail=?, finished_at=? WHERE payment_id=? AND outcome IS NULL",
                       (outcome, detail[:500], rfc3339(now), payment_id))

    # -- end-of-day
    def closings(self, terminal: str, limit: int = 20, outcomes: Iterable[str] = CLOSING_OUTCOMES) -> list[Closing]:
        """The terminal's closings, newest first."""
        wanted = tuple(outcomes)
        marks = ",".join("?" for _ in wanted)
        cur = self.db.execute(f"SELECT * FROM terminal_closings WHERE terminal=? AND outcome IN ({marks}) "
                              f"ORDER BY id DESC LIMIT ?", (terminal, *wanted, int(limit)))
        cur.row_factory = sqlite3.Row
        return [_closing_from_row(r) for r in cur.fetchall()]

    def last_closing(self, terminal: str, outcomes: Iterable[str] = CLOSING_OUTCOMES) -> Closing | None:
        rows = self.closings(terminal, 1, outcomes)
        return rows[0] if rows else None

    def record_closing(self, terminal: str, day: date, outcome: str, now: datetime, *, attempts: int = 0,
                       trigger: str = "schedule", total: Decimal | None = None, currency: str | None = None,
                       transactions: int | None = None, reason: str | None = None, result_code: int | None = None,
                       next_attempt_at: datetime | None = None, closing_id: int | None = None) -> Closing:
        """A new closing, or (``closing_id``) the next try of one still refused."""
        if outcome not in CLOSING_OUTCOMES:
            raise LedgerError(f"unknown closing outcome {outcome!r}")
        row = {"terminal": terminal, "day": day.isoformat(), "outcome": outcome, "attempts": attempts,
               "trigger": trigger, "total": str(total) if total is not None else None, "currency": currency,
               "transactions": transactions, "reason": reason[:500] if reason else None, "result_code": result_code,
               "next_attempt_at": rfc3339(next_attempt_at) if next_attempt_at else None, "at": rfc3339(now)}
        with self.store.transaction() as db:
            if closing_id is None:
                cur = db.execute(f"INSERT INTO terminal_closings ({','.join(row)}) VALUES ({','.join(':' + k for k in row)})", row)
                closing_id = cur.lastrowid
            else:
                cur = db.execute(f"UPDATE terminal_closings SET {','.join(f'{k}=:{k}' for k in row)} "
                                 f"WHERE id=:id AND terminal=:terminal AND outcome='refused'", {**row, "id": closing_id})
                if cur.rowcount != 1:
                    raise LedgerError(f"closing {closing_id} of terminal {terminal} is no longer being retried")
        return Closing(id=closing_id, terminal=terminal, day=day, outcome=outcome, attempts=attempts, at=now,
                       trigger=trigger, total=total, currency=currency, transactions=transactions, reason=row["reason"],
                       result_code=result_code, next_attempt_at=next_attempt_at)

    def settled_since(self, terminal: str, since: datetime | None) -> int:
        """Payments settled on the terminal after ``since``: what its next closing submits."""
        row = self.db.execute("SELECT COUNT(*) FROM payment_holds WHERE terminal=? AND state='settled' AND closed_at > ?",
                              (terminal, rfc3339(since) if since else "")).fetchone()
        return row[0]


def _closing_from_row(r: sqlite3.Row) -> Closing:
    return Closing(
        id=r["id"], terminal=r["terminal"], day=date.fromisoformat(r["day"]), outcome=r["outcome"],
        attempts=r["attempts"], at=parse_rfc3339(r["at"]), trigger=r["trigger"],
        total=Decimal(r["total"]) if r["total"] is not None else None, currency=r["currency"],
        transactions=r["transactions"], reason=r["reason"], result_code=r["result_code"],
        next_attempt_at=parse_rfc3339(r["next_attempt_at"]) if r["next_attempt_at"] else None,
    )


# ============================================================ terminal lane
class TerminalLane:
    """One arch terminal: its ZVT client, its lock (one card at a time) and
    its worker task (connect, reconcile, retries). A dead terminal stalls
    only its own lane."""

    def __init__(self, payments: "Payments", tcfg):
        from drivers.zvt import Timers, ZvtClient

        hub = payments.hub
        self.payments = payments
        self.cfg = tcfg
        self.id = tcfg.id
        self.connectors = list(tcfg.connectors)
        timers = Timers(
            t3_command=float(tcfg.t3_command_s),
            t4_completion=float(tcfg.t4_completion_s),
        )
        self.client = ZvtClient.from_url(
            tcfg.port, password=tcfg.password, currency=hub.cfg.hub.currency, on_status=self._on_text,
            on_health=hub.device_event, clock=hub.clock, device_id=tcfg.id, timers=timers,
        )
        hub.devices[tcfg.id] = self.client.health
        self.lock = asyncio.Lock()
        self.connected = False
        self.needs_reconnect = False
        self.reconcile_due = True
        self.last_reconcile = 0.0
        self.last_result: str | None = None
        self.activity = "starting"
        self._wake: asyncio.Event | None = None
        self._texts = None  # where the terminal's screen texts go during an exchange
        self.serving: str | None = None  # the connector whose driver is at the terminal now
        self.closing = False  # its end-of-day is running
        # Its last answer about open reservations named some, not all: a
        # reservation behind them may be named once one of them is closed.
        self.listing_partial = False
        self.open_query_refused = False  # alarmed once: R-P4 cannot be checked on it

    def _on_text(self, text: str):
        if self._texts is not None:
            return self._texts(text)
        return None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def failed(self, exc: Exception) -> None:
        from drivers.zvt import TerminalUnavailable

        if isinstance(exc, TerminalUnavailable):
            self.connected = False
            self.needs_reconnect = True
        if getattr(exc, "maybe_done", False):
            self.reconcile_due = True
        self.last_result = f"error: {exc}"

    async def ensure_connected(self) -> bool:
        """Under the lane's lock: open the link and register (06 00)."""
        from drivers.zvt import TerminalError

        if self.connected:
            return True
        try:
            if self.needs_reconnect:
                await self.client.close()
            await self.client.connect()
            reg = await self.client.register()
            if not reg.ok:
                log.warning("terminal.registration_refused terminal=%s reason=%s", self.id, reg.reason)
        except TerminalError as exc:
            self.needs_reconnect = True
            self.last_result = f"not answering: {exc}"
            self.activity = "down"
            return False
        self.connected = True
        self.needs_reconnect = False
        self.reconcile_due = True
        self.activity = "idle"
        log.info("terminal.connected terminal=%s", self.id)
        return True

    async def run(self) -> None:
        self._wake = asyncio.Event()
        backoff = 1.0
        while not self.payments.hub.stopping:
            try:
                if not self.connected:
                    async with self.lock:
                        ok = await self.ensure_connected()
                    if not ok:
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                    backoff = 1.0
                if self.reconcile_due or time.monotonic() - self.last_reconcile > RECONCILE_EVERY_S:
                    await self.payments.reconcile(self)
                await self.payments.run_due(self)
                await self.payments.maybe_end_of_day(self)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("terminal.lane_failed terminal=%s", self.id)
            await self._sleep(self.payments.next_due_in(self))

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.05, seconds))
        except asyncio.TimeoutError:
            pass

    def view(self, ledger: PaymentLedger) -> dict:
        holds = [r for r in ledger.open_records(self.id) if r.state != REQUESTED]
        return {
            "terminal": self.id,
            "state": "fault" if self.client.health.state == "fault" else self.activity,
            "connectors": ",".join(self.connectors),
            "open_holds": len(holds),
            "last_result": self.last_result or "-",
            **self.payments.closing_view(self),
        }


@dataclass
class CapWatch:
    """What the cost-cap watch knows of one bank-card session."""

    cap_wh: int | None
    meter_start_wh: int | None = None
    last_energy: int | None = None
    last_mono: float | None = None
    rate: float = 0.0  # Wh per second, from the last two meter changes
    stop_sent_at: float | None = None

    def observe(self, energy_wh: int, mono: float) -> None:
        if self.last_energy is not None and energy_wh != self.last_energy and self.last_mono is not None and mono > self.last_mono:
            self.rate = (energy_wh - self.last_energy) / (mono - self.last_mono)
        if energy_wh != self.last_energy:
            self.last_energy, self.last_mono = energy_wh, mono


# ================================================================ the part
class Payments(Capability):
    name = "payments"

    def __init__(self, hub):
        super().__init__(hub)
        self.ledger = PaymentLedger(hub.store)
        self.tz = ZoneInfo(hub.cfg.hub.timezone)  # end-of-day times are local
        self.lanes: dict[str, TerminalLane] = {t.id: TerminalLane(self, t) for t in hub.cfg.terminals}
        self._watch: dict[str, CapWatch] = {}  # payment id -> cost-cap watch of a charging hold
        self._selecting: set[str] = set()  # connectors with a pre-authorisation running
        self._last_backstop = 0.0
        self._backstop_stops: set[str] = set()  # sessions with a backstop stop on its way
        hub.session_ended_hooks.append(self._on_session_ended)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if not self.lanes and not self.ledger.open_records():
            return
        self._recover()
        for lane in self.lanes.values():
            self._last_closing(lane)
            self.spawn_loop(f"terminal {lane.id}", lane.run)
        self.spawn_loop("cost watch", self._watch_costs)

    async def stop(self) -> None:
        for lane in self.lanes.values():
            try:
                await lane.client.close()
            except Exception:
                pass

    def _now(self) -> datetime:
        return self.hub.clock.now()

    def _recover(self) -> None:
        """After a start (or a crash): bring every open hold to a state the
        lanes and the watch can carry on from."""
        now = self._now()
        open_sessions = {s.payment_id: s for s in self.hub.sessions.open_sessions() if s.payment_id}
        for rec in self.ledger.open_records():
            if rec.terminal in self.lanes:
                self.lanes[rec.terminal].reconcile_due = True
            if rec.state == REQUESTED:
                with self.hub.store.transaction():
                    self.ledger.settle_open_steps(rec.id, "unknown", "controller restarted during the call", now)
                    self.ledger.change(rec, now, "decline", reason="interrupted: the controller restarted during the pre-authorisation")
                    if rec.kind == "session":
                        self._emit("payment.declined", rec)
                log.info("payment.recovered payment=%s action=declined", rec.id)
            elif rec.state == HELD:
                s = open_sessions.get(rec.id) or self._ended_session_of(rec)
                if s is not None and s.is_open:
                    self._link(rec, s.id)
                elif s is not None:
                    self._session_over(rec, s)
                else:
                    self._begin_release(rec, "the controller restarted before the session started")
            elif rec.state == CHARGING:
                s = self.hub.sessions.get(rec.session_id) if rec.session_id else None
                if s is None or not s.is_open:
                    self._session_over(rec, s)
                else:
                    self._watch[rec.id] = CapWatch(self._cap_wh(rec))
            elif rec.state == FOUND:
                self._begin_release(rec, rec.reason or "a hold the ledger did not know")
            elif rec.state == SETTLING and any(st["action"] == "settle" and st["outcome"] is None
                                               for st in self.ledger.steps(rec.id)):
                self._doubt(rec, None, "the controller restarted during the booking")

    def _ended_session_of(self, rec: PaymentRecord):
        if not rec.connector:
            return None
        for s in self.hub.sessions.query(connector=rec.connector, since=rec.created_at - timedelta(seconds=1), limit=20):
            if s.payment_id == rec.id:
                return s
        return None

    # --------------------------------------------------------------- events
    def _event(self, rec: PaymentRecord, **extra) -> dict:
        d = {
            "payment": rec.id,
            "session": rec.session_id,
            "terminal": rec.terminal,
            "connector": rec.connector,
            "hold": money(rec.hold, rec.currency),
        }
        if rec.receipt_no is not None:
            d["terminal_receipt"] = rec.receipt_no
        if rec.card_masked:
            d["card"] = rec.card_masked
        d.update(extra)
        return d

    def _emit(self, type_: str, rec: PaymentRecord, **extra) -> None:
        if type_ == "payment.declined":
            extra.setdefault("reason", rec.reason or "declined")
            if rec.result_code is not None:
                extra.setdefault("result_code", rec.result_code)
        self.hub.emit(type_, self._event(rec, **extra))

    def sync_handlers(self) -> dict:
        """R-P8: the cloud's tariffs, kept in the site's currency only."""
        from edge.parts.payments.tariffs import apply_tariffs

        currency = self.hub.cfg.hub.currency
        return {"tariffs": lambda m: apply_tariffs(self.hub.store, m, currency=currency)}

    # ---------------------------------------------------- arch: pick connector
    def control_handlers(self) -> dict:
        return {
            "arch_select": self._arch_select,
            "arch_stop": self._arch_stop,
            "arch_receipt": self._arch_receipt,
            "payments": self._list,
            "payment_retry": self._retry,
            "payment_resolve": self._resolve,
            "terminal_end_of_day": self._terminal_end_of_day,
        }

    def _lane_for(self, args: dict) -> tuple[TerminalLane, str]:
        from edge.core.control import ControlError

        terminal, connector = args.get("terminal"), args.get("connector")
        if not isinstance(terminal, str) or not isinstance(connector, str) or not terminal or not connector:
            raise ControlError("bad_request", "give the terminal and the connector, e.g. {\"terminal\": \"T1\", \"connector\": \"C3\"}")
        lane = self.lanes.get(terminal)
        if lane is None:
            raise NotFound(f"no terminal {terminal!r} at this hub; configured: {', '.join(self.lanes) or 'none'}")
        if connector not in lane.connectors:
            raise Refused(
                f"terminal {terminal} does not serve connector {connector} (R-P7): pick one of {', '.join(lane.connectors)} "
                f"or pay at the arch of {connector}", code="not_served")
        if connector not in self.hub.connectors:
            raise NotFound(f"no connector {connector!r} at this hub")
        return lane, connector

    async def _arch_receipt(self, args: dict, caller, progress) -> dict:
        """R-P5: what the arch screen shows at the end of a bank-card session:
        the settled amount and the receipt link (and its QR code), only for
        a session that ended successfully; the latest one on the connector."""
        lane, connector = self._lane_for(args)
        for rec in self.ledger.recent(200):
            if rec.kind != "session" or rec.connector != connector or rec.terminal != lane.id:
                continue
            if rec.state != "settled" or not rec.receipt_id:
                break  # the latest hold on this connector has no receipt (declined, released, still open)
            s = self.hub.sessions.get(rec.session_id) if rec.session_id else None
            if s is None or not s.receipt_url:
                break
            import io

            import segno

            qr = io.StringIO()
            segno.make(s.receipt_url, error="m").terminal(out=qr, compact=True)
            return {"connector": connector, "session": s.id, "amount": money(rec.settle_amount, rec.currency),
                    "energy_wh": int(s.energy_wh or 0), "receipt_url": s.receipt_url, "qr": qr.getvalue()}
        raise NotFound(f"no receipt for connector {connector}: a receipt exists only for a bank-card session that ended "
                       f"and was settled (R-P5); for help call the number on the charger")

    async def _arch_select(self, args: dict, caller, progress) -> dict:
        """R-P1/R-P2/R-C2: the driver picks a connector on the arch screen."""
        lane, connector = self._lane_for(args)
        c = self.hub.connectors[connector]
        if c.session_id:
            raise Refused(f"connector {connector} is already charging (session {c.session_id[:8]}): to stop it, choose stop "
                          f"and present the card that started it", code="busy")
        if c.state != "Preparing":
            raise Refused(f"connector {connector} is {c.state}: plug the cable into the truck first, then pick the connector "
                          f"again (R-C2)", code="not_plugged")
        if connector in self._selecting or lane.serving is not None:
            raise Refused(f"terminal {lane.id} is busy with another card: wait until its screen is free, then pick again",
                          code="busy")
        self._selecting.add(connector)
        lane.serving = connector
        try:
            return await self._preauthorize_and_start(lane, connector, progress)
        finally:
            lane.serving = None
            self._selecting.discard(connector)

    async def _preauthorize_and_start(self, lane: TerminalLane, connector: str, progress) -> dict:
        hubcfg = self.hub.cfg.hub
        now = self._now()
        tariff = self.tariff_at(now)
        hold = hold_amount(hubcfg.preauth_amount, tariff.vat_rate, tariff.currency, hubcfg.preauth_amount_includes_vat)
        async with lane.lock:
            if not await lane.ensure_connected():
                raise Refused(f"terminal {lane.id} is not answering ({lane.last_result}): use another arch or call the "
                              f"operator; nothing was charged", code="device_unavailable")
            rec = self.ledger.create(terminal=lane.id, connector=connector, kind="session", currency=tariff.currency,
                                     hold=hold, now=now, tariff=tariff)
            step = self.ledger.begin_step(rec.id, "preauthorize", hold, now)
            await self.hub.store.durable()
            log.info("payment.requested payment=%s terminal=%s connector=%s hold=%s", rec.id, lane.id, connector, hold)
            result, error = await self._with_screen(lane, progress, lane.client.preauthorize(hold, tariff.currency))
            now = self._now()
            error = error or self._foreign_approval(lane, rec, result)
            if error is not None:
                lane.failed(error)
                lane.reconcile_due = True  # a reservation may exist that the ledger cannot name
                reason = f"the terminal {_no_clear_answer(error)}: try again, or use another arch"
                with self.hub.store.transaction():
                    self.ledger.end_step(rec.id, step, "unknown" if error.maybe_done else "failed", str(error), now)
                    self.ledger.change(rec, now, "decline", reason=reason)
                    self._emit("payment.declined", rec, reason=reason)
                lane.wake()
                return {"approved": False, "payment": rec.id, "reason": reason}
            lane.last_result = result.reason
            if not result.ok:
                with self.hub.store.transaction():
                    self.ledger.end_step(rec.id, step, "refused", result.reason, now)
                    self.ledger.change(rec, now, "decline", reason=result.reason, result_code=result.result_code)
                    self._emit("payment.declined", rec)
                log.info("payment.declined payment=%s connector=%s code=%s", rec.id, connector, result.result_code)
                return {"approved": False, "payment": rec.id, "reason": result.reason}
            with self.hub.store.transaction():
                self.ledger.end_step(rec.id, step, "done", "approved", now)
                self.ledger.change(
                    rec, now, "approve", receipt_no=result.receipt_no, trace_no=result.trace_no,
                    card_token=result.card_token, card_masked=result.masked_pan, card_name=result.card_name,
                    held_at=now, hold=result.amount if result.amount is not None else hold,
                )
            log.info("payment.approved payment=%s connector=%s receipt=%s hold=%s", rec.id, connector, rec.receipt_no, rec.hold)
        return await self._start_paid_session(rec, tariff)

    def _foreign_approval(self, lane: TerminalLane, rec: PaymentRecord, result):
        """An approval without a receipt number, or naming a reservation the
        ledger already holds open on this terminal, is no answer to this
        pre-authorisation (a terminal never gives two open reservations one
        number): its outcome is unknown, and reconciliation finds what the
        terminal really holds."""
        from drivers.zvt import TerminalProtocolError

        if result is None or not result.ok:
            return None
        n = result.receipt_no
        if n is not None and not any(r.receipt_no == n and r.id != rec.id for r in self.ledger.open_records(lane.id)):
            return None
        what = f"names receipt {n}, which an open hold already has" if n is not None else "has no receipt number"
        log.warning("payment.foreign_approval payment=%s terminal=%s receipt=%s", rec.id, lane.id, n)
        err = TerminalProtocolError(f"the terminal's approval {what}: it answers another call")
        err.maybe_done = True
        return err

    async def _with_screen(self, lane: TerminalLane, progress, call):
        """Run a terminal call, passing the terminal's screen texts and a
        heartbeat to the caller, so the arch screen (and its socket) knows
        the card holder is still at it."""
        from drivers.zvt import TerminalError

        async def show(text: str) -> None:
            try:
                await progress({"terminal": lane.id, "screen": text})
            except Exception:
                pass

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(2.0)
                await show("waiting for the card holder")

        lane._texts = show
        lane.activity = "busy"
        beat = asyncio.get_running_loop().create_task(heartbeat())
        try:
            return await call, None
        except TerminalError as exc:
            return None, exc
        finally:
            beat.cancel()
            lane._texts = None
            lane.activity = "idle" if lane.connected else "down"

    async def _start_paid_session(self, rec: PaymentRecord, tariff: Tariff) -> dict:
        connector = rec.connector
        c = self.hub.connectors[connector]
        answer = {"approved": True, "payment": rec.id, "hold": money(rec.hold, rec.currency)}
        if c.state != "Preparing" or c.session_id:
            reason = f"the truck was unplugged during the pre-authorisation (connector {connector} is {c.state})"
            self._begin_release(rec, reason)
            return {**answer, "started": False, "reason": reason + ": the hold is released; plug in and pick the connector again"}
        try:
            s = await self.hub.start_session(
                connector, method="bank_card", token=rec.card_token or f"terminal:{rec.terminal}:{rec.receipt_no}",
                token_masked=rec.card_masked or rec.card_name, payment_id=rec.id, tariff=tariff,
            )
        except Refused as exc:
            fresh = self.ledger.get(rec.id)
            if fresh and fresh.state == HELD:
                self._begin_release(fresh, f"the session could not start: {exc}")
            return {**answer, "started": False, "reason": f"{exc}; the hold is released"}
        fresh = self.ledger.get(rec.id)
        if fresh is None or fresh.state != HELD:
            # The session ended while its start was being sent (truck unplugged):
            # the end-of-session hook has already released or billed the hold.
            return {**answer, "started": False, "session": s.id, "reason": "the session ended as it started; the hold is released"}
        self._link(fresh, s.id)
        return {**answer, "started": True, "session": s.id,
                "message": f"approved: charging starts on {connector}; stop it here with the same card"}

    def _link(self, rec: PaymentRecord, session_id: str) -> None:
        now = self._now()
        with self.hub.store.transaction():
            self.ledger.change(rec, now, "begin_charging", session_id=session_id)
            self._emit("payment.preauthorized", rec)
        self._watch[rec.id] = CapWatch(self._cap_wh(rec))
        log.info("payment.charging payment=%s session=%s", rec.id, session_id)

    # ------------------------------------------------------ arch: stop session
    async def _arch_stop(self, args: dict, caller, progress) -> dict:
        """R-P1: the driver re-selects the connector at the arch, sees the
        session and chooses stop; only the card that started it may."""
        lane, connector = self._lane_for(args)
        c = self.hub.connectors[connector]
        if not c.session_id:
            raise Refused(f"connector {connector} has no session running: nothing to stop", code="not_open")
        s = self.hub.sessions.get(c.session_id)
        rec = self.ledger.get(s.payment_id) if s and s.payment_id else None
        if s is None or rec is None or s.method != "bank_card":
            raise Refused(f"the session on {connector} was not paid at the arch: stop it with the card you tapped at the "
                          f"charger's reader, or ask the operator", code="not_bank_card")
        if lane.serving is not None:
            raise Refused(f"terminal {lane.id} is busy with another card: wait until its screen is free", code="busy")
        overview = self._overview(rec, s)
        lane.serving = connector
        try:
            async with lane.lock:
                if not await lane.ensure_connected():
                    raise Refused(f"terminal {lane.id} is not answering: the session goes on; stop it at another arch "
                                  f"terminal or ask the operator", code="device_unavailable")
                token, masked, why = await self._identify_card(lane, progress)
        finally:
            lane.serving = None
        if why is not None:
            return {"stopped": False, "session": s.id, "reason": why, **overview}
        if not same_card(rec, token, masked):
            log.info("payment.stop_refused payment=%s reason=other_card", rec.id)
            return {"stopped": False, "session": s.id, **overview,
                    "reason": "this is not the card that started the session: present the card you paid with"}
        await self.hub.stop_session(s.id, "arch_stop")
        return {"stopped": True, "session": s.id, **overview,
                "message": "stopping: the final amount is booked when the charger confirms, and the receipt link follows"}

    def _overview(self, rec: PaymentRecord, s) -> dict:
        reading = self.hub.readings.get(s.connector)
        energy = max(0, reading.energy_wh - (s.meter_start_wh or 0)) if reading and reading.energy_wh is not None and s.meter_start_wh is not None else 0
        tariff = rec.tariff_obj
        cost = session_cost(int(energy), tariff) if tariff else None
        return {"energy_wh": int(energy), "cost_so_far": money(cost.gross, rec.currency) if cost else None,
                "hold": money(rec.hold, rec.currency)}

    async def _identify_card(self, lane: TerminalLane, progress) -> tuple[str | None, str | None, str | None]:
        """(card token, masked card, why not). Reads the card (06 C0); a
        terminal that cannot read without paying gets the smallest
        authorisation instead, released at once and kept in the ledger."""
        result, error = await self._with_screen(lane, progress, lane.client.read_card(READ_CARD_TIMEOUT_S))
        if error is not None:
            lane.failed(error)
            return None, None, f"the terminal could not read the card ({type(error).__name__}): try again"
        lane.last_result = result.reason
        if result.ok:
            return result.card_token, result.masked_pan, None
        if result.result_code != 0x83:
            return None, None, result.reason
        return await self._card_check(lane, progress)

    async def _card_check(self, lane: TerminalLane, progress) -> tuple[str | None, str | None, str | None]:
        now = self._now()
        cur = self.hub.cfg.hub.currency
        rec = self.ledger.create(terminal=lane.id, connector=None, kind="card_check", currency=cur,
                                 hold=CARD_CHECK_AMOUNT, now=now)
        step = self.ledger.begin_step(rec.id, "preauthorize", CARD_CHECK_AMOUNT, now)
        await self.hub.store.durable()
        result, error = await self._with_screen(lane, progress, lane.client.preauthorize(CARD_CHECK_AMOUNT, cur))
        now = self._now()
        error = error or self._foreign_approval(lane, rec, result)
        if error is not None or not result.ok:
            if error is not None:
                lane.failed(error)
                lane.reconcile_due = True
            reason = f"the terminal {_no_clear_answer(error)}: try again" if error is not None else result.reason
            with self.hub.store.transaction():
                self.ledger.end_step(rec.id, step, "unknown" if error is not None else "refused", reason, now)
                self.ledger.change(rec, now, "decline", reason=reason)
            return None, None, reason
        with self.hub.store.transaction():
            self.ledger.end_step(rec.id, step, "done", "approved", now)
            self.ledger.change(rec, now, "approve", receipt_no=result.receipt_no, trace_no=result.trace_no,
                               card_token=result.card_token, card_masked=result.masked_pan, held_at=now)
            self.ledger.change(rec, now, "release", reason="card check at the arch", next_attempt_at=now)
        await self._attempt(lane, rec)  # lock held by the caller
        return result.card_token, result.masked_pan, None

    # ------------------------------------------------------ session ends
    def _on_session_ended(self, s) -> None:
        if not s.payment_id:
            return
        rec = self.ledger.get(s.payment_id)
        if rec is None:
            return
        self._watch.pop(rec.id, None)
        self._session_over(rec, s)

    def _session_over(self, rec: PaymentRecord, s) -> None:
        """The session of a hold has ended (or never began): bill or release."""
        if rec.state not in (HELD, CHARGING):
            return
        if s is None or s.status == "failed" or not s.energy_wh:
            why = (s.stop_reason if s is not None and s.status == "failed" else None) or "no energy was delivered"
            self._begin_release(rec, f"session did not charge: {why}", session=s)
            return
        tariff = rec.tariff_obj or self.tariff_at(s.started_at)
        bill = settlement_for(int(s.energy_wh), tariff, rec.hold)
        if bill.amount <= 0:
            self._begin_release(rec, "the energy delivered costs less than the smallest amount", session=s)
            return
        now = self._now()
        with self.hub.store.transaction():
            if rec.state == HELD:
                rec.session_id = s.id
                self._emit("payment.preauthorized", rec)
            self.ledger.change(
                rec, now, "bill", session_id=s.id, energy_wh=int(s.energy_wh), settle_amount=bill.amount,
                cost_net=bill.cost.net, cost_vat=bill.cost.vat, cost_gross=bill.cost.gross, next_attempt_at=now,
            )
            self._write_session_cost(s.id, tariff, bill.cost)  # the session's cost with the amount to book
        log.info("payment.settling payment=%s session=%s energy_wh=%s amount=%s capped=%s",
                 rec.id, s.id, s.energy_wh, bill.amount, bill.capped)
        self._wake(rec.terminal)

    def _write_session_cost(self, session_id: str, tariff: Tariff, cost: Cost, receipt_id: str | None = None) -> None:
        """R-S1: the session keeps its tariff, VAT, cost and receipt."""
        s = self.hub.sessions.get(session_id)
        if s is None:
            return
        s.tariff_id, s.price_per_kwh, s.vat_rate, s.currency = tariff.id, tariff.price_per_kwh, tariff.vat_rate, tariff.currency
        s.cost_net, s.cost_vat, s.cost_gross = cost.net, cost.vat, cost.gross
        if receipt_id is not None:
            s.receipt_id = receipt_id
            s.receipt_url = self.hub.cfg.hub.receipt_base_url + receipt_id
        self.hub.sessions.update(s, self._now())

    def _begin_release(self, rec: PaymentRecord, reason: str, session=None) -> None:
        now = self._now()
        with self.hub.store.transaction():
            if rec.state == HELD:
                if session is not None:
                    rec.session_id = session.id
                if rec.kind == "session":
                    self._emit("payment.preauthorized", rec)
            self.ledger.change(rec, now, "release", reason=reason, next_attempt_at=now,
                               session_id=session.id if session is not None else rec.session_id)
        log.info("payment.releasing payment=%s reason=%s", rec.id, reason)
        self._watch.pop(rec.id, None)
        self._wake(rec.terminal)

    def _wake(self, terminal: str) -> None:
        lane = self.lanes.get(terminal)
        if lane is not None:
            lane.wake()

    # ------------------------------------------------- settle and release
    def next_due_in(self, lane: TerminalLane) -> float:
        now = self._now()
        waits = [max(0.0, (r.next_attempt_at - now).total_seconds()) if r.next_attempt_at else 0.0
                 for r in self.ledger.open_records(lane.id) if r.state in PENDING_STATES]
        until_reconcile = max(1.0, RECONCILE_EVERY_S - (time.monotonic() - lane.last_reconcile))
        closing = next_closing_at(closing_time(lane.cfg.end_of_day), self.tz, self.ledger.last_closing(lane.id), now)
        if closing is not None:
            # Due while a driver is at the terminal: look again each second.
            waits.append(max(1.0, (closing - now).total_seconds()))
        return min([until_reconcile, 30.0] + waits)

    async def run_due(self, lane: TerminalLane) -> None:
        for rec in self.ledger.due(lane.id, self._now()):
            if not lane.connected:
                return
            async with lane.lock:
                await self._attempt(lane, rec)

    async def _attempt(self, lane: TerminalLane, rec: PaymentRecord) -> None:
        """One settlement or release call, write-ahead. The lane's lock is held.

        It is also how the hub asks the terminal about one reservation: the
        terminal takes the call only while the reservation is open, and
        answers B8/B4 when it is not (``not_open_outcome``). A booking whose
        answer is lost sends the hold to review; never released from there."""
        from drivers.zvt import TerminalError

        fresh = self.ledger.get(rec.id)
        if fresh is None or fresh.state not in PENDING_STATES:
            return
        rec = fresh
        settle = rec.state in (SETTLING, REVIEW)
        action = "settle" if settle else "release"
        amount = rec.settle_amount if settle else rec.hold
        now = self._now()
        step = self.ledger.begin_step(rec.id, action, amount, now)
        await self.hub.store.durable()
        lane.activity = "busy"
        try:
            if settle:
                result = await lane.client.book_preauth(rec.receipt_no, rec.settle_amount, preauthorized=rec.hold,
                                                        currency=rec.currency)
            else:
                result = await lane.client.reverse_preauth(rec.receipt_no, rec.currency)
        except TerminalError as exc:
            lane.failed(exc)
            if settle and exc.maybe_done:
                self._doubt(rec, step, str(exc))
            else:
                self._retry_later(rec, step, "unknown" if exc.maybe_done else "failed", str(exc))
            return
        finally:
            lane.activity = "idle" if lane.connected else "down"
        lane.last_result = f"{action}: {result.reason}"
        if result.ok and result.receipt_no != rec.receipt_no:
            # Another reservation's answer (the driver matches them; this is the ledger's own check).
            detail = f"the terminal answered about receipt {result.receipt_no}, not {rec.receipt_no}"
            if settle:
                self._doubt(rec, step, detail)
            else:
                self._retry_later(rec, step, "unknown", detail)
        elif result.ok:
            self._finish(rec, step, action, "done", f"{action} done by the terminal")
        elif result.result_code in NOT_OPEN_CODES:
            outcome = not_open_outcome(action, self.ledger.maybe_done(rec.id, "settle", before=step))
            detail = f"terminal: reservation no longer open ({result.reason})"
            if outcome == "settled":
                self._finish(rec, step, action, "done", detail + " after our earlier booking reached it")
            elif outcome == "released":
                self._finish(rec, step, action, "done", detail)
            elif outcome == "lapsed":
                self._lapse(rec, step, result.reason)
            else:
                self._doubt(rec, step, detail + ", but a booking may have reached it before")
        else:
            self._retry_later(rec, step, "refused", result.reason)

    def _retry_later(self, rec: PaymentRecord, step: int, outcome: str, detail: str) -> None:
        now = self._now()
        attempts = rec.attempts + 1
        delay = retry_delay_s(attempts)
        with self.hub.store.transaction():
            self.ledger.end_step(rec.id, step, outcome, detail, now)
            self.ledger.change(rec, now, attempts=attempts, last_error=detail[:300],
                               next_attempt_at=now + timedelta(seconds=delay))
        log.warning("payment.retry_scheduled payment=%s state=%s attempts=%d in_s=%.0f outcome=%s",
                    rec.id, rec.state, attempts, delay, outcome)

    def _finish(self, rec: PaymentRecord, step: int | None, action: str, outcome: str, detail: str) -> None:
        """The hold is settled or released: the step's outcome, earlier calls
        left open by a crash, the hold's state and its event in one commit. A
        kill between them must not leave the call closed and the hold still
        settling: the restart would no longer know the booking was sent, and
        would take the terminal's empty list for a lapse."""
        now = self._now()
        with self.hub.store.transaction():
            if step is not None:
                self.ledger.end_step(rec.id, step, outcome, detail, now)
                self.ledger.settle_open_steps(rec.id, "superseded", f"{action} confirmed by a later call", now)
            else:
                self.ledger.settle_open_steps(rec.id, outcome, detail, now)
            if action == "settle":
                receipt_id = uuid.uuid4().hex
                self.ledger.change(rec, now, "confirm_settlement", receipt_id=receipt_id, last_error=None)
                cost = Cost(rec.cost_net, rec.cost_vat, rec.cost_gross, rec.currency)
                url = self.hub.cfg.hub.receipt_base_url + receipt_id
                self._emit(
                    "payment.settled", rec, amount=money(rec.settle_amount, rec.currency),
                    cost={"net": str(cost.net), "vat": str(cost.vat), "gross": str(cost.gross), "currency": rec.currency},
                    energy_wh=rec.energy_wh or 0, tariff=rec.tariff, receipt={"id": receipt_id, "url": url},
                    receipt_url=url,
                )
                if rec.session_id and rec.tariff_obj is not None:
                    # R-P5: the receipt link exists once the money is booked, and in the
                    # same commit: a kill in between must not leave it settled without one.
                    self._write_session_cost(rec.session_id, rec.tariff_obj, cost, receipt_id)
            else:
                self.ledger.change(rec, now, "confirm_release", last_error=None)
                if rec.kind != "card_check":
                    self._emit("payment.released", rec, reason=rec.reason or "released")
        self._terminal_changed(rec.terminal)
        log.info("payment.%s payment=%s", "settled" if action == "settle" else "released", rec.id)

    def _lapse(self, rec: PaymentRecord, step: int | None, detail: str,
               reason: str | None = None) -> None:
        now = self._now()
        with self.hub.store.transaction():
            if step is not None:
                self.ledger.end_step(rec.id, step, "refused", detail, now)
            self.ledger.change(rec, now, "lapse", last_error=None,
                               reason=reason or f"the terminal no longer held the reservation: {detail}")
            self._emit("payment.lapsed", rec, amount=money(rec.settle_amount, rec.currency), reason=rec.reason)
        self._terminal_changed(rec.terminal)
        log.warning("payment.lapsed payment=%s session=%s", rec.id, rec.session_id)

    def _doubt(self, rec: PaymentRecord, step: int | None, detail: str) -> None:
        """A booking may have reached the terminal and its answer never came:
        the hold goes to review (once, with its event) and the terminal is
        asked again with backoff; never released from here."""
        now = self._now()
        attempts = rec.attempts + 1
        delay = retry_delay_s(attempts)
        amount = money(rec.settle_amount, rec.currency)
        booking = f"{amount['amount']} {amount['currency']}" if amount else "the amount"
        message = (f"the booking of {booking} on receipt {rec.receipt_no} at terminal {rec.terminal} may have gone "
                   f"through, but the terminal did not confirm it ({detail}). The hub keeps asking the terminal; "
                   f"`hubctl payment retry {rec.id[:8]}` asks now. If the terminal can no longer tell (replaced, "
                   f"reset, broken), look up receipt {rec.receipt_no} of terminal {rec.terminal} in the acquirer's "
                   f"records and record it with `hubctl payment resolve {rec.id[:8]} --booked` or `--not-booked`")
        with self.hub.store.transaction():
            if step is not None:
                self.ledger.end_step(rec.id, step, "unknown", detail, now)
            else:
                self.ledger.settle_open_steps(rec.id, "unknown", detail, now)
            fresh = rec.state != REVIEW
            self.ledger.change(rec, now, "doubt" if fresh else None, attempts=attempts, last_error=detail[:300],
                               next_attempt_at=now + timedelta(seconds=delay))
            if fresh:
                self._emit("payment.manual_review", rec, amount=amount, reason=detail[:500], message=message)
        log.warning("payment.review payment=%s receipt=%s attempts=%d in_s=%.0f reason=%s",
                    rec.id, rec.receipt_no, attempts, delay, detail)

    def _terminal_changed(self, terminal: str) -> None:
        """A reservation was closed: on a terminal that names only its first
        open one, the next one may be named now."""
        lane = self.lanes.get(terminal)
        if lane is not None and lane.listing_partial:
            lane.reconcile_due = True

    # ---------------------------------------------------------- reconcile
    async def reconcile(self, lane: TerminalLane) -> None:
        """R-P4: the terminal's open reservations against the ledger, until
        every hold of the ledger on it has a definite answer or is left
        with its running session. The terminal is asked for its open
        reservations; each hold the answer does not settle is asked about on
        its own; after each reservation closed the list is asked for again,
        as a terminal that names one at a time then names the next."""
        from drivers.zvt import TerminalError, TerminalRefused

        async with lane.lock:
            asked: set[str] = set()
            complete = False
            for _round in range(RECONCILE_ROUNDS):
                try:
                    listing = await lane.client.open_preauthorizations()
                    named, complete = listing.named, listing.complete
                except TerminalRefused as exc:
                    self._open_query_refused(lane, exc)
                    named, complete = frozenset(), False
                except TerminalError as exc:
                    lane.failed(exc)
                    return
                plan = reconcile_plan(named, complete, self.ledger.open_records(lane.id), self.ledger.maybe_done)
                closed_any = False
                for action in plan:
                    if action.kind == "ask":
                        if action.payment_id in asked:
                            continue
                        asked.add(action.payment_id)
                    closed_any |= await self._apply(lane, action)
                    if not lane.connected:
                        return  # the next round of the lane reconnects and reconciles again
                if not closed_any or not named:
                    break
            lane.listing_partial = not complete
            lane.reconcile_due = False
            lane.last_reconcile = time.monotonic()

    def _open_query_refused(self, lane: TerminalLane, exc: Exception) -> None:
        if lane.open_query_refused:
            return
        lane.open_query_refused = True
        message = (f"terminal {lane.id} refused the query for open reservations ({exc}): the hub cannot check that "
                   f"no reservation is left open on it (R-P4). The holds the hub recorded are still booked or "
                   f"released one by one, but a reservation it never recorded (power lost during a payment) cannot "
                   f"be found. Enable the open pre-authorisation query (06 23) in the terminal's ZVT settings; until "
                   f"then check its journal for open reservations after each outage and reverse them at the terminal")
        log.warning("terminal.open_query_refused terminal=%s reason=%s", lane.id, exc)
        self.hub.emit("device.alarm", {"alarm": "terminal_open_query_refused", "message": message})

    async def _apply(self, lane: TerminalLane, action: ReconcileAction) -> bool:
        """Carry out one step of a reconciliation plan; True when a
        reservation at the terminal was closed by it."""
        now = self._now()
        if action.kind == "release_unknown":
            rec = self.ledger.create(terminal=lane.id, connector=None, kind="unknown_hold", currency=self.hub.cfg.hub.currency,
                                     hold=None, now=now, state=FOUND,
                                     receipt_no=action.receipt_no, reason="a hold at the terminal the ledger did not know")
            with self.hub.store.transaction():
                self.ledger.change(rec, now, "release", next_attempt_at=now)
            log.warning("payment.unknown_hold terminal=%s receipt=%s action=release", lane.id, action.receipt_no)
            await self._attempt(lane, rec)
            return True
        rec = self.ledger.get(action.payment_id)
        if rec is None:
            return False
        if action.kind == "ask":
            await self._attempt(lane, rec)
            fresh = self.ledger.get(rec.id)
            return fresh is not None and fresh.state in FINAL_STATES
        if action.kind == "confirm_settled":
            self._finish(rec, None, "settle", "done", "confirmed: the terminal holds nothing open after our booking")
        elif action.kind == "confirm_released":
            self._finish(rec, None, "release", "done", "confirmed: the terminal holds nothing open")
        elif action.kind == "lapse":
            self._lapse(rec, None, "reservation closed at the terminal before any booking")
        elif action.kind == "doubt":
            self._doubt(rec, None, "the terminal holds nothing open, but a booking may have reached it before")
        elif action.kind == "terminal_lost_hold":
            log.warning("payment.terminal_lost_hold payment=%s state=%s receipt=%s", rec.id, rec.state, rec.receipt_no)
        return False

    # ---------------------------------------------------------- end-of-day
    def _last_closing(self, lane: TerminalLane) -> Closing | None:
        """The terminal's latest closing. On its very first start a baseline
        for the latest closing time, so days before the hub ran are not
        closed late."""
        last = self.ledger.last_closing(lane.id)
        at = closing_time(lane.cfg.end_of_day)
        if last is None and at is not None:
            now = self._now()
            last = self.ledger.record_closing(lane.id, latest_closing_day(at, self.tz, now), "baseline", now)
            log.info("terminal.end_of_day_baseline terminal=%s day=%s", lane.id, last.day)
        return last

    async def maybe_end_of_day(self, lane: TerminalLane) -> Closing | None:
        """From the lane's loop: the scheduled end-of-day, when due and no
        driver is at the terminal (else it waits for the next round)."""
        at = closing_time(lane.cfg.end_of_day)
        last = self._last_closing(lane)
        day = end_of_day_due(at, self.tz, last, self._now())
        if day is None or lane.serving is not None or lane.closing:
            return None
        if last.outcome == "refused" and last.day < day:
            self._supersede(lane, last, day)
        pending = last if last.day == day and last.outcome == "refused" else None
        attempts = (pending.attempts if pending else 0) + 1
        result, error = await self._end_of_day_call(lane)
        now = self._now()
        if result is not None and result.ok:
            return self._closed(lane, day, result, attempts, "schedule", pending)
        reason = result.reason if result is not None else error
        code = result.result_code if result is not None else None
        if attempts < END_OF_DAY_ATTEMPTS:
            closing = self.ledger.record_closing(
                lane.id, day, "refused", now, attempts=attempts, reason=reason, result_code=code,
                next_attempt_at=now + END_OF_DAY_RETRY, closing_id=pending.id if pending else None)
            log.warning("terminal.end_of_day_retry terminal=%s day=%s attempts=%d in_s=%.0f reason=%s",
                        lane.id, day, attempts, END_OF_DAY_RETRY.total_seconds(), reason)
            return closing
        message = (f"terminal {lane.id} did not close the day {day} after {attempts} tries ({reason}): its bookings are "
                   f"not yet submitted to the acquirer; run `hubctl terminal end-of-day {lane.id}` when it is free, "
                   f"and check it with `hubctl devices`")
        with self.hub.store.transaction():
            closing = self.ledger.record_closing(lane.id, day, "failed", now, attempts=attempts, reason=reason,
                                                 result_code=code, closing_id=pending.id if pending else None)
            self._emit_closing(closing, message)
        log.error("terminal.end_of_day_failed terminal=%s day=%s attempts=%d reason=%s", lane.id, day, attempts, reason)
        return closing

    def _supersede(self, lane: TerminalLane, stale: Closing, day: date) -> None:
        """A day still being retried when the next day's closing falls due (the
        hub was off past it): that closing submits everything booked since the
        last one, so the older day is finished as ``superseded``, not left
        waiting for a retry that never comes."""
        reason = f"{stale.reason or 'refused'}; its bookings go with the closing of {day}"
        self.ledger.record_closing(lane.id, stale.day, "superseded", self._now(), attempts=stale.attempts,
                                   trigger=stale.trigger, reason=reason, result_code=stale.result_code,
                                   closing_id=stale.id)
        log.warning("terminal.end_of_day_superseded terminal=%s day=%s by=%s attempts=%d",
                    lane.id, stale.day, day, stale.attempts)

    async def _end_of_day_call(self, lane: TerminalLane):
        """(result, None) or (None, why). R-P4 first: the terminal's open
        reservations are resolved and due bookings and releases made, so the
        day's bookings are in the batch; holds of sessions still charging stay
        open. Then 06 50 under the lane's lock: never during a card's
        transaction."""
        from drivers.zvt import TerminalError

        lane.closing = True
        try:
            if lane.connected:
                await self.reconcile(lane)
                await self.run_due(lane)
            async with lane.lock:
                if not await lane.ensure_connected():
                    return None, f"the terminal is not answering: {lane.last_result}"
                lane.activity = "busy"
                try:
                    result = await lane.client.end_of_day()
                except TerminalError as exc:
                    lane.failed(exc)
                    return None, str(exc)
                finally:
                    lane.activity = "idle" if lane.connected else "down"
                lane.last_result = f"end-of-day: {result.reason}"
                return result, None
        finally:
            lane.closing = False

    def _closed(self, lane: TerminalLane, day: date, result, attempts: int, trigger: str,
                pending: Closing | None) -> Closing:
        now = self._now()
        previous = self.ledger.last_closing(lane.id, ("done", "baseline"))
        count = self.ledger.settled_since(lane.id, previous.at if previous else None)
        with self.hub.store.transaction():
            closing = self.ledger.record_closing(
                lane.id, day, "done", now, attempts=attempts, trigger=trigger, total=result.amount,
                currency=result.currency if result.amount is not None else None, transactions=count,
                closing_id=pending.id if pending else None)
            self._emit_closing(closing)
        log.info("terminal.end_of_day terminal=%s day=%s transactions=%d total=%s trigger=%s",
                 lane.id, day, count, result.amount, trigger)
        return closing

    def _emit_closing(self, c: Closing, message: str | None = None) -> None:
        data: dict[str, Any] = {
            "terminal": c.terminal, "day": c.day.isoformat(), "outcome": c.outcome, "attempts": c.attempts,
            "trigger": c.trigger, "total": money(c.total, c.currency or self.hub.cfg.hub.currency),
            "transactions": c.transactions,
        }
        if c.reason:
            data["reason"] = c.reason
        if c.result_code is not None:
            data["result_code"] = c.result_code
        if message:
            data["message"] = message
        self.hub.emit("payment.end_of_day", data)

    async def _terminal_end_of_day(self, args: dict, caller, progress) -> dict:
        """R-T3: a technician closes a terminal's day now. A closing still
        being retried is the one closed; otherwise today's (local)."""
        from edge.core.control import ControlError

        ref = args.get("id")
        if not isinstance(ref, str) or not ref:
            raise ControlError("bad_request", "give the terminal id from [[terminals]], e.g. {\"id\": \"T1\"}")
        lane = self.lanes.get(ref)
        if lane is None:
            raise NotFound(f"no terminal {ref!r} at this hub; configured: {', '.join(self.lanes) or 'none'}")
        if lane.serving is not None or lane.closing:
            why = "a driver is paying at it" if lane.serving is not None else "its end-of-day is already running"
            raise Refused(f"terminal {lane.id} is busy ({why}): nothing was closed; try again in a few minutes",
                          code="busy")
        last = self.ledger.last_closing(lane.id)
        pending = last if last is not None and last.outcome == "refused" else None
        day = pending.day if pending else self._now().astimezone(self.tz).date()
        result, error = await self._end_of_day_call(lane)
        answer: dict[str, Any] = {"terminal": lane.id, "day": day.isoformat(), "total": None, "transactions": None,
                                  "result_code": result.result_code if result is not None else None}
        if result is not None and result.ok:
            closing = self._closed(lane, day, result, (pending.attempts if pending else 0) + 1, "hubctl", pending)
            total = money(closing.total, closing.currency)
            n = closing.transactions
            booked = f"{total['amount']} {total['currency']}" if total else "an amount the terminal did not report"
            answer.update(outcome="done", total=total, transactions=n,
                          message=f"terminal {lane.id} closed the day {day}: {n} transaction{'' if n == 1 else 's'}, "
                                  f"{booked} booked, submitted to the acquirer")
        elif result is not None:
            answer.update(outcome="refused",
                          message=f"terminal {lane.id} refused the end-of-day ({result.reason}): nothing was closed; "
                                  f"try again in a few minutes")
        else:
            answer.update(outcome="failed",
                          message=f"terminal {lane.id} did not complete the end-of-day ({error}): nothing was recorded "
                                  f"as closed; check it with `hubctl devices`, then try again")
        self.hub.audit(caller.user, "terminal.end_of_day", lane.id, "", answer["outcome"])
        log.info("terminal.end_of_day_by_hand terminal=%s user=%s outcome=%s", lane.id, caller.user, answer["outcome"])
        return answer

    def closing_view(self, lane: TerminalLane) -> dict:
        """For `hubctl status`: the last closing and when the next is due (local time)."""
        last = self.ledger.last_closing(lane.id)
        due = next_closing_at(closing_time(lane.cfg.end_of_day), self.tz, last, self._now())
        shown = "-"
        if last is not None and last.outcome != "baseline":
            shown = f"{last.day} {last.outcome}" + (f" ({last.attempts} of {END_OF_DAY_ATTEMPTS} tries)"
                                                    if last.outcome == "refused" else "")
        return {"last_closing": shown,
                "next_closing": due.astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z") if due else "off"}

    # ------------------------------------------------------------ cost cap
    def _cap_wh(self, rec: PaymentRecord) -> int | None:
        tariff = rec.tariff_obj
        if tariff is None or rec.hold is None:
            return None
        return energy_cap_wh(rec.hold, tariff)

    async def _watch_costs(self) -> None:
        interval = min(0.5, self.hub.cfg.charging.poll_interval_s)
        lead = self.hub.cfg.charging.poll_interval_s + interval + STOP_ALLOWANCE_S
        while not self.hub.stopping:
            try:
                self._check_costs(lead)
            except Exception:
                log.exception("payment.cost_watch_failed")
            await asyncio.sleep(interval)

    def _check_costs(self, lead_s: float) -> None:
        mono = time.monotonic()
        for pid, w in list(self._watch.items()):
            rec = self.ledger.get(pid)
            if rec is None or rec.state != CHARGING:
                self._watch.pop(pid, None)
                continue
            if w.meter_start_wh is None:
                s = self.hub.sessions.get(rec.session_id)
                if s is None or s.meter_start_wh is None:
                    continue
                w.meter_start_wh = s.meter_start_wh
            reading = self.hub.readings.get(rec.connector)
            if reading is None or reading.energy_wh is None:
                continue  # no energy figure yet (an OCPP station sends it with its meter values)
            w.observe(reading.energy_wh, mono)
            energy = reading.energy_wh - w.meter_start_wh
            if not cost_cap_reached(energy, w.rate, w.cap_wh, lead_s):
                continue
            if w.stop_sent_at is not None and mono - w.stop_sent_at < 5.0:
                continue
            w.stop_sent_at = mono
            log.info("payment.cost_cap payment=%s session=%s energy_wh=%d cap_wh=%s rate_wh_s=%.0f",
                     pid, rec.session_id, energy, w.cap_wh, w.rate)
            self.hub.spawn(self._stop_for_cap(rec.session_id))

    async def _stop_for_cap(self, session_id: str) -> None:
        try:
            await self.hub.stop_session(session_id, "cost_cap")
        except Refused as exc:
            log.warning("payment.cost_cap_stop_failed session=%s reason=%s", session_id, exc)

    # ------------------------------------------------------- ticks: backstop
    def tick(self, now: datetime) -> None:
        mono = time.monotonic()
        if mono - self._last_backstop < 30.0:
            return
        self._last_backstop = mono
        self.apply_backstop(now)

    def apply_backstop(self, now: datetime) -> list[str]:
        """R-P4: a hold open 24 hours is released once its session has
        really stopped (the stop is sent, and sent again, until it has);
        a booking that may have been made is never released, it goes to
        review. Nothing is decided on a clock that never synced. Returns
        the payments released."""
        trusted = self.hub.clock.synced
        released, untrusted = [], 0
        for rec in self.ledger.open_records():
            session = self._open_session_of(rec)
            decision = backstop_decision(
                rec.state, rec.held_at, now, clock_trusted=trusted, session_open=session is not None,
                booking_may_have_reached=self.ledger.maybe_done(rec.id, "settle"),
                booking_refused=self.ledger.refused(rec.id, "settle"))
            if decision == "wait_for_clock":
                untrusted += 1
            elif decision == "stop_session":
                if session.id not in self._backstop_stops:
                    log.warning("payment.backstop_stop payment=%s session=%s: the hold is 24 hours old; it is kept "
                                "until the session has stopped", rec.id, session.id)
                    self._backstop_stops.add(session.id)
                    self.hub.spawn(self._stop_for_backstop(session.id))
            elif decision == "release":
                why = "the hold was open for 24 hours (backstop)"
                if rec.state == SETTLING:
                    why += f" and the terminal refused its booking ({rec.last_error}): the session is not billed here"
                self._begin_release(rec, why)
                released.append(rec.id)
            elif decision == "doubt":
                self._doubt(rec, None, "open for 24 hours with a booking that may have been made")
        if untrusted:
            log.warning("payment.backstop_skipped holds=%d: the hub's clock has not synced, so no hold is released for "
                        "its age; check the time source (NTP) with `hubctl status`", untrusted)
        return released

    def _open_session_of(self, rec: PaymentRecord):
        """The session still running on this hold, if any."""
        if rec.state not in (HELD, CHARGING):
            return None
        if rec.session_id:
            s = self.hub.sessions.get(rec.session_id)
            return s if s is not None and s.is_open else None
        return next((s for s in self.hub.sessions.open_sessions() if s.payment_id == rec.id), None)

    async def _stop_for_backstop(self, session_id: str) -> None:
        try:
            await self.hub.stop_session(session_id, "payment_hold_expired")
        except Refused as exc:
            log.warning("payment.backstop_stop_failed session=%s reason=%s: the hold stays until the session stops; "
                        "the stop is sent again", session_id, exc)
        finally:
            self._backstop_stops.discard(session_id)

    # ------------------------------------------------------------ tariffs
    def tariff_at(self, now: datetime) -> Tariff:
        hubcfg = self.hub.cfg.hub
        try:
            synced = self.hub.store.documents("tariffs").all()
        except Exception:
            synced = []
        return choose_tariff(synced, now, currency=hubcfg.currency, price_per_kwh=hubcfg.price_per_kwh,
                             vat_rate=hubcfg.vat_rate)

    # ------------------------------------------------------------ hubctl
    async def _list(self, args: dict, caller, progress) -> list:
        limit = args.get("limit", 50)
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            from edge.core.control import ControlError

            raise ControlError("bad_request", "limit must be a whole number from 1 to 10000")
        records = self.ledger.recent(limit, include_closed=bool(args.get("all", True)))
        return [r.view() for r in records]

    def _payment_arg(self, args: dict) -> PaymentRecord:
        from edge.core.control import ControlError

        ref = args.get("id")
        if not isinstance(ref, str) or not ref:
            raise ControlError("bad_request", "give the payment id (or its first 8 characters) from `hubctl payments`")
        rec = self.ledger.find(ref)
        if rec is None:
            raise NotFound(f"no payment {ref!r}: `hubctl payments` lists them")
        if rec.state in FINAL_STATES:
            raise Refused(f"payment {rec.id[:8]} is already {rec.state}: nothing to do", code="not_open")
        return rec

    async def _retry(self, args: dict, caller, progress) -> dict:
        """R-T3: a technician asks for a settlement or release now; for a
        hold in review, the terminal is asked about its booking again."""
        rec = self._payment_arg(args)
        if rec.state not in PENDING_STATES:
            raise Refused(f"payment {rec.id[:8]} is {rec.state}: it is settled when its session ends; nothing to retry now",
                          code="not_due")
        lane = self.lanes.get(rec.terminal)
        if lane is None:
            raise Refused(f"terminal {rec.terminal} is no longer configured: add it back to [[terminals]] to resolve "
                          f"this hold", code="device_unavailable")
        now = self._now()
        self.ledger.change(rec, now, next_attempt_at=now)
        lane.reconcile_due = True
        lane.wake()
        deadline = time.monotonic() + float(args.get("timeout", 30))
        while time.monotonic() < deadline:
            fresh = self.ledger.get(rec.id)
            if fresh.state in FINAL_STATES:
                break
            await progress({"payment": rec.id, "state": fresh.state, "terminal": lane.last_result})
            await asyncio.sleep(0.5)
        fresh = self.ledger.get(rec.id)
        result = fresh.state if fresh.state in FINAL_STATES else f"still {fresh.state}: {fresh.last_error or 'waiting for the terminal'}"
        self.hub.audit(caller.user, "payment.retry", rec.id, "", result)
        if fresh.state in FINAL_STATES:
            message = f"payment {rec.id[:8]} is now {fresh.state}"
        elif fresh.state == REVIEW:
            message = (f"payment {rec.id[:8]} is still in review: terminal {rec.terminal} has not said whether the "
                       f"booking on its receipt {rec.receipt_no} went through (last: {fresh.last_error or 'no answer yet'}). "
                       f"The hub keeps asking; check the terminal with `hubctl devices`. If it can no longer tell, "
                       f"look up that receipt in the acquirer's records and run `hubctl payment resolve {rec.id[:8]} "
                       f"--booked` or `--not-booked` with --reason")
        else:
            message = (f"payment {rec.id[:8]} is still {fresh.state}: the terminal said {fresh.last_error or 'nothing yet'}; "
                       f"the hub keeps retrying (check `hubctl devices` for terminal {rec.terminal})")
        return {"payment": rec.id, "state": fresh.state, "message": message}

    async def _resolve(self, args: dict, caller, progress) -> dict:
        """R-T3: a technician records what became of a booking in review,
        from the acquirer's records, when the terminal cannot tell: booked
        settles it (receipt link, payment.settled), not booked lapses it
        (payment.lapsed: the cloud bills the session another way)."""
        from edge.core.control import ControlError

        rec = self._payment_arg(args)
        outcome, reason = args.get("outcome"), args.get("reason")
        if outcome not in ("booked", "not_booked"):
            raise ControlError("bad_request", "say what the acquirer's records show: outcome \"booked\" or \"not_booked\"")
        if not isinstance(reason, str) or not reason.strip():
            raise ControlError("bad_request", "give a reason: where you saw it, e.g. --reason \"acquirer portal, 2026-11-24\"")
        if rec.state != REVIEW:
            raise Refused(f"payment {rec.id[:8]} is {rec.state}, not in review: the hub resolves it with the terminal; "
                          f"`hubctl payment retry {rec.id[:8]}` tries now", code="not_in_review")
        note = f"recorded by {caller.user} as {outcome.replace('_', ' ')}: {reason.strip()[:200]}"
        lane = self.lanes.get(rec.terminal)
        async with lane.lock if lane is not None else contextlib.nullcontext():  # not during a call about it
            fresh = self.ledger.get(rec.id)
            if fresh is None or fresh.state != REVIEW:
                raise Refused(f"payment {rec.id[:8]} was resolved by the terminal meanwhile: it is "
                              f"{fresh.state if fresh else 'gone'}", code="not_in_review")
            if outcome == "booked":
                self._finish(fresh, None, "settle", "done", note)
            else:
                self._lapse(fresh, None, note, reason=note)
        state = self.ledger.get(rec.id).state
        self.hub.audit(caller.user, "payment.resolve", rec.id, reason.strip()[:200], state)
        log.warning("payment.resolved_by_hand payment=%s user=%s outcome=%s", rec.id, caller.user, outcome)
        return {"payment": rec.id, "state": state,
                "message": f"payment {rec.id[:8]} is now {state} ({note})"}

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        if not self.lanes:
            return {}
        return {"terminals": [lane.view(self.ledger) for lane in self.lanes.values()], "payments": self.ledger.counts()}
