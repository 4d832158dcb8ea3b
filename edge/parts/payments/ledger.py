"""The payment ledger (R-P4, R-S1): the payments part's store.

Every hold (``payment_holds``), every terminal call about it
(``payment_steps``) and every end-of-day of each terminal
(``terminal_closings``), in the hub's SQLite. The ledger is write-ahead:
the intent of every terminal call is committed before the call, and its
outcome after it, so after a SIGKILL at any instant the hub knows what it
asked and what is left. A hold moves only along the payment machine
(``state_machines/payment.py``).

Card numbers never reach it: a hold keeps the terminal's card token and at
most BIN + last four (R-P6).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Iterable, Mapping

from units import parse_rfc3339, rfc3339
from edge.parts.payments.pricing import Tariff, round_money
from state_machines.payment import FINAL_STATES, FOUND, PENDING_STATES, REQUESTED, next_state

log = logging.getLogger("hubedge.payments")


def money(amount: Decimal | None, currency: str) -> dict | None:
    """The contract's amount shape: {"amount": "49.77", "currency": "EUR"}."""
    if amount is None:
        return None
    return {"amount": str(round_money(amount, currency)), "currency": currency}


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


# ============================================================ end-of-day rows
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
