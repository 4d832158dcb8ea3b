"""The session ledger: every charging session the hub ran (R-S1, R-S2, R-C9).

Kept in SQLite (the store's WAL) because it grows without bound and must
not slow down as it grows: inserts are appends, filters use indexes.
A session is written, and on disk (``Store.durable``), before the charger is
told to start, so that after a crash the hub knows a start was asked for and
never starts a second one. A session row changes in the same transaction as
the connector and the event that report it (edge/core/hub.py).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from decimal import Decimal

from units import parse_rfc3339, rfc3339


def mask(uid: str) -> str:
    """What a log line may show of a token id."""
    return "*" + uid[-4:]


@dataclass(frozen=True)
class TokenVerdict:
    """A decision about a card alone, with no connector in view: a charger's
    own card reader asking (OCPP Authorize, a start the station made from its
    own list). Same rules as a tap at the hub's readers (R-O2)."""

    uid: str
    status: str  # Accepted | Blocked | Expired | Invalid | Unknown (the cloud's words, R-A1)
    code: str  # accepted, or the AuthRejected code (blocked, expired, unknown_offline, cloud_timeout ...)
    reason: str
    method: str | None = None  # own_card | emsp_card
    group: str | None = None
    source: str = "local_list"
    offline: bool = False
    token_type: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"


SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    hub TEXT NOT NULL,
    connector TEXT NOT NULL,
    bay TEXT,
    method TEXT NOT NULL,
    token TEXT,
    token_masked TEXT,
    booking_id TEXT,
    payment_id TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    stopped_at TEXT,
    meter_start_wh INTEGER,
    meter_stop_wh INTEGER,
    energy_wh INTEGER,
    stop_reason TEXT,
    tariff_id TEXT,
    price_per_kwh TEXT,
    vat_rate TEXT,
    cost_net TEXT,
    cost_vat TEXT,
    cost_gross TEXT,
    currency TEXT,
    receipt_id TEXT,
    receipt_url TEXT,
    signed_start TEXT,
    signed_stop TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_at);
CREATE INDEX IF NOT EXISTS sessions_connector ON sessions(connector, started_at);
CREATE INDEX IF NOT EXISTS sessions_token ON sessions(token, started_at);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions(status, started_at);
"""

# starting: the charger was (or is about to be) told to start.
# active: energy flowed at least once. stopped: ended normally.
# failed: never charged (start refused, truck unplugged before energy, ...).
OPEN_STATUSES = ("starting", "active")


@dataclass
class Session:
    id: str
    hub: str
    connector: str
    method: str  # free_vend | own_card | emsp_card | bank_card | remote
    status: str
    started_at: datetime
    bay: str | None = None
    token: str | None = None  # token uid for charge cards; the terminal's card reference for bank cards
    token_masked: str | None = None
    booking_id: str | None = None
    payment_id: str | None = None
    stopped_at: datetime | None = None
    meter_start_wh: int | None = None
    meter_stop_wh: int | None = None
    energy_wh: int | None = None
    stop_reason: str | None = None
    tariff_id: str | None = None
    price_per_kwh: Decimal | None = None
    vat_rate: Decimal | None = None
    cost_net: Decimal | None = None
    cost_vat: Decimal | None = None
    cost_gross: Decimal | None = None
    currency: str | None = None
    receipt_id: str | None = None
    receipt_url: str | None = None
    signed_start: str | None = None
    signed_stop: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def as_dict(self) -> dict:
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, datetime):
                v = rfc3339(v)
            elif isinstance(v, Decimal):
                v = str(v)
            out[k] = v
        return out


_DECIMALS = {"price_per_kwh", "vat_rate", "cost_net", "cost_vat", "cost_gross"}
_TIMES = {"started_at", "stopped_at"}
_COLUMNS = [f.name for f in fields(Session)]


def _to_row(s: Session) -> dict:
    row = {}
    for k in _COLUMNS:
        v = getattr(s, k)
        if k in _TIMES:
            v = rfc3339(v) if v else None
        elif k in _DECIMALS:
            v = str(v) if v is not None else None
        elif k == "extra":
            v = json.dumps(v, separators=(",", ":"))
        row[k] = v
    return row


def _from_row(row: sqlite3.Row) -> Session:
    kw = {}
    for k in _COLUMNS:
        v = row[k]
        if v is not None:
            if k in _TIMES:
                v = parse_rfc3339(v)
            elif k in _DECIMALS:
                v = Decimal(v)
            elif k == "extra":
                v = json.loads(v)
        elif k == "extra":
            v = {}
        kw[k] = v
    return Session(**kw)


class SessionLedger:
    def __init__(self, db: sqlite3.Connection, hub_id: str, *, transaction=None):
        self.db = db
        self.hub_id = hub_id
        # The store's transaction (nestable): a session row and what goes
        # with it (the connector's state, an outbox event) commit together.
        self._transaction = transaction or (lambda: db)
        db.executescript(SCHEMA)

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def insert(self, s: Session, now: datetime) -> None:
        row = _to_row(s)
        row["updated_at"] = rfc3339(now)
        cols = ",".join(row)
        marks = ",".join(f":{k}" for k in row)
        with self._transaction() as db:
            db.execute(f"INSERT INTO sessions ({cols}) VALUES ({marks})", row)

    def update(self, s: Session, now: datetime) -> None:
        row = _to_row(s)
        row["updated_at"] = rfc3339(now)
        sets = ",".join(f"{k}=:{k}" for k in row if k != "id")
        with self._transaction() as db:
            cur = db.execute(f"UPDATE sessions SET {sets} WHERE id=:id", row)
        if cur.rowcount != 1:
            raise KeyError(f"session {s.id} is not in the ledger")

    def get(self, session_id: str) -> Session | None:
        row = self._one("SELECT * FROM sessions WHERE id=?", (session_id,))
        return _from_row(row) if row else None

    def ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Session ids beginning with ``prefix`` (hubctl shows 8 characters)."""
        # A range on the primary key: quick with a million sessions.
        rows = self.db.execute("SELECT id FROM sessions WHERE id >= ? AND id < ? LIMIT ?",
                               (prefix, prefix + "\U0010ffff", limit))
        return [r[0] for r in rows]

    def open_sessions(self) -> list[Session]:
        return [
            _from_row(r)
            for r in self._all("SELECT * FROM sessions WHERE status IN ('starting','active') ORDER BY started_at")
        ]

    def open_for_connector(self, connector: str) -> Session | None:
        row = self._one(
            "SELECT * FROM sessions WHERE connector=? AND status IN ('starting','active') ORDER BY started_at DESC LIMIT 1",
            (connector,),
        )
        return _from_row(row) if row else None

    def query(
        self,
        *,
        session: str | None = None,
        token: str | None = None,
        connector: str | None = None,
        location: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """R-S2: the portal's filters, locally. Newest first."""
        if location and location != self.hub_id:
            return []  # this ledger holds this hub's sessions only
        where, args = [], []
        if session:
            where.append("id=?")
            args.append(session)
        if token:
            where.append("token=?")
            args.append(token)
        if connector:
            where.append("connector=?")
            args.append(connector)
        if status:
            where.append("status=?")
            args.append(status)
        if since:
            where.append("started_at>=?")
            args.append(rfc3339(since))
        if until:
            where.append("started_at<?")
            args.append(rfc3339(until))
        sql = "SELECT * FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC LIMIT ?"
        args.append(int(limit))
        return [_from_row(r) for r in self._all(sql, tuple(args))]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]

    def _one(self, sql: str, args: tuple = ()):
        cur = self.db.execute(sql, args)
        cur.row_factory = sqlite3.Row
        return cur.fetchone()

    def _all(self, sql: str, args: tuple = ()):
        cur = self.db.execute(sql, args)
        cur.row_factory = sqlite3.Row
        return cur.fetchall()
