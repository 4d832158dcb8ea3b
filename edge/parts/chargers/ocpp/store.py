"""What the OCPP part keeps on disk, in the hub's database (R-O3, R-O4).

- 1.6 transaction ids: issued from an AUTOINCREMENT table, so an id is never
  given twice, even after a restart or a deleted row.
- Transactions by (station, transaction id): the session they belong to,
  the last 2.0.1 seqNo, whether they ended.
- Transaction messages by content key (``event.key``): the answer given the
  first time, so a replay after a lost answer is answered the same and
  recorded once.
- Signed meter values (OCMF ...) verbatim, with their session (R-S3).
- What each station said at boot (vendor, model, serial, firmware).

Writes join the caller's ``store.transaction()``: a transaction message, the
session change it makes and its events are one commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from units import rfc3339

SCHEMA = """
CREATE TABLE IF NOT EXISTS ocpp_tx16 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    station TEXT NOT NULL,
    made_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ocpp_transactions (
    station TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    session_id TEXT,
    evse INTEGER,
    id_token TEXT,
    last_seq INTEGER,
    ended INTEGER NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    PRIMARY KEY (station, transaction_id)
);
CREATE INDEX IF NOT EXISTS ocpp_transactions_session ON ocpp_transactions(session_id);
CREATE TABLE IF NOT EXISTS ocpp_messages (
    key TEXT PRIMARY KEY,
    station TEXT NOT NULL,
    answer TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ocpp_signed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT,
    station TEXT NOT NULL,
    transaction_id TEXT,
    at TEXT NOT NULL,
    context TEXT,
    encoding TEXT,
    signing_method TEXT,
    public_key TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ocpp_signed_session ON ocpp_signed(session_id);
CREATE TABLE IF NOT EXISTS ocpp_stations (
    station TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
"""


@dataclass
class TxRecord:
    station: str
    transaction_id: str
    session_id: str | None
    evse: int | None
    id_token: str | None
    last_seq: int | None
    ended: bool


class OcppStore:
    def __init__(self, store):
        self.store = store
        store.db.executescript(SCHEMA)

    @property
    def db(self):
        return self.store.db

    # ---- 1.6 transaction ids (R-O3)
    def new_transaction_id(self, station: str, now: datetime) -> int:
        cur = self.db.execute("INSERT INTO ocpp_tx16 (station, made_at) VALUES (?, ?)", (station, rfc3339(now)))
        tx = int(cur.lastrowid)
        if tx >= 2**31:
            raise RuntimeError("OCPP 1.6 transaction ids are exhausted (2^31): the hub's database must be renewed")
        return tx

    # ---- transactions
    def transaction(self, station: str, transaction_id: str) -> TxRecord | None:
        row = self.db.execute(
            "SELECT station, transaction_id, session_id, evse, id_token, last_seq, ended FROM ocpp_transactions "
            "WHERE station = ? AND transaction_id = ?", (station, str(transaction_id))).fetchone()
        return TxRecord(*row[:6], bool(row[6])) if row else None

    def transaction_of_session(self, session_id: str) -> TxRecord | None:
        row = self.db.execute(
            "SELECT station, transaction_id, session_id, evse, id_token, last_seq, ended FROM ocpp_transactions "
            "WHERE session_id = ? ORDER BY rowid DESC LIMIT 1", (session_id,)).fetchone()
        return TxRecord(*row[:6], bool(row[6])) if row else None

    def open_transactions(self, station: str) -> list[TxRecord]:
        rows = self.db.execute(
            "SELECT station, transaction_id, session_id, evse, id_token, last_seq, ended FROM ocpp_transactions "
            "WHERE station = ? AND ended = 0", (station,)).fetchall()
        return [TxRecord(*r[:6], bool(r[6])) for r in rows]

    def put_transaction(self, tx: TxRecord, now: datetime) -> None:
        self.db.execute(
            "INSERT INTO ocpp_transactions (station, transaction_id, session_id, evse, id_token, last_seq, ended, "
            "started_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(station, transaction_id) DO UPDATE SET "
            "session_id = excluded.session_id, evse = excluded.evse, id_token = excluded.id_token, "
            "last_seq = excluded.last_seq, ended = excluded.ended",
            (tx.station, str(tx.transaction_id), tx.session_id, tx.evse, tx.id_token, tx.last_seq, int(tx.ended),
             rfc3339(now)))

    # ---- transaction messages recorded once (R-O3)
    def answered(self, key: tuple) -> dict | None:
        row = self.db.execute("SELECT answer FROM ocpp_messages WHERE key = ?", (_key(key),)).fetchone()
        return json.loads(row[0]) if row else None

    def remember_answer(self, key: tuple, station: str, answer: dict, now: datetime) -> None:
        self.db.execute("INSERT OR REPLACE INTO ocpp_messages (key, station, answer, at) VALUES (?,?,?,?)",
                        (_key(key), station, json.dumps(answer, sort_keys=True), rfc3339(now)))

    # ---- signed meter values (R-O4, R-S3)
    def keep_signed(self, session_id: str | None, station: str, transaction_id: str | None, at: datetime,
                    signed) -> None:
        self.db.execute(
            "INSERT INTO ocpp_signed (session_id, station, transaction_id, at, context, encoding, signing_method, "
            "public_key, data) VALUES (?,?,?,?,?,?,?,?,?)",
            (session_id, station, transaction_id, rfc3339(at), signed.context, signed.encoding,
             signed.signing_method, signed.public_key, signed.data))

    def signed_values(self, session_id: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT at, context, encoding, signing_method, public_key, data FROM ocpp_signed WHERE session_id = ? "
            "ORDER BY seq", (session_id,)).fetchall()
        return [dict(zip(("at", "context", "encoding", "signing_method", "public_key", "data"), r)) for r in rows]

    # ---- boot data
    def boot(self, station: str) -> dict | None:
        row = self.db.execute("SELECT doc FROM ocpp_stations WHERE station = ?", (station,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_boot(self, station: str, doc: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO ocpp_stations (station, doc) VALUES (?, ?)",
                        (station, json.dumps(doc, sort_keys=True)))


def _key(key: tuple) -> str:
    return json.dumps([str(k) if k is not None else None for k in key], separators=(",", ":"))
