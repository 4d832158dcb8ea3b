"""The durable outbox: every hub-to-cloud message waits here until the broker
has acknowledged it (R-M2), within a disk quota with a stated policy (R-M6).

The contract follows thingsboard-gateway's event storage - put, read a batch,
mark delivered, count. A put is committed when it returns, usually in the
same transaction as the state change it reports; the store's writer thread
makes it durable moments later (edge/core/store.py, group commit), and only then
may it leave: ``rows_after`` and ``read_batch`` stop at the durable
watermark, so the cloud never sees an event that a power cut could take back
and whose seq the hub would then give to another event.

Ordering and identity: each event gets the next ``seq`` of its stream inside
the same transaction that stores it, so seqs are gapless from 1 and survive
restarts; the envelope is stored as the exact bytes to send, so a resend
carries the same id and content.

Quota policy (R-M6): ``bytes_used`` counts the stored messages plus a fixed
allowance per row. Telemetry (meter samples) is shed oldest first as soon as
the outbox passes the near mark, so samples never push billing data towards
the limit. Every other stream (session, payment, audit, ...) is never dropped:
past the near mark the hub raises an alarm once per crossing
(``take_quota_alarm``); at the quota ``accepting_sessions()`` answers False, so
no new session adds to a backlog the cloud cannot take, while sessions in
progress still record their stop.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from units import Clock
from edge.cloud.envelope import (
    REPLY_STREAM,
    TELEMETRY_STREAM,
    Envelope,
    event_type_and_stream,
)
from edge.core.store import Store

log = logging.getLogger("hubedge.outbox")

ROW_OVERHEAD = 64  # bytes counted per row for sqlite's own bookkeeping (row header, index entry)

FULL_REASON = ("outbox full: the cloud link has been down too long; new sessions refused until it drains "
               "- check the uplink with hubctl outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    pos       INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a reader's cursor stays valid
    -- A uuid4, unique by construction. No index on it: an index on random
    -- ids costs a random page per insert and per delete (measured: 49 us
    -- against 6 us per delivered entry); the uplink deletes by position.
    id        TEXT NOT NULL,
    stream    TEXT NOT NULL,
    seq       INTEGER,
    body      TEXT NOT NULL,                      -- the exact bytes published, resent unchanged
    size      INTEGER NOT NULL,
    queued_at REAL NOT NULL                       -- unix seconds, for the oldest message's age
);
CREATE INDEX IF NOT EXISTS outbox_telemetry ON outbox(pos) WHERE stream = 'telemetry';
CREATE TABLE IF NOT EXISTS outbox_seq (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_QUOTA_RANK = {"ok": 0, "near": 1, "full": 2}


class Outbox:
    def __init__(self, store: Store, hub_id: str, *, clock: Clock | None = None, quota_bytes: int,
                 near_ratio: float = 0.8):
        if quota_bytes <= 0:
            raise ValueError("outbox quota must be a positive number of bytes: set [storage] outbox quota")
        self.store = store
        self.hub_id = hub_id
        self.clock = clock or store.clock
        self.quota_bytes = int(quota_bytes)
        self.near_ratio = near_ratio
        # Set by the uplink; a put without an explicit ``offline`` uses it.
        self.link_up = False
        self.dropped_telemetry = 0
        store.db.executescript(SCHEMA)
        # Reads go through their own connection: they see committed entries
        # only (never a put still inside someone's transaction) and do not
        # wait for a writer's fsync.
        self._reader = store.reader()
        self._counts: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        for stream, n, size in store.db.execute("SELECT stream, count(*), sum(size) FROM outbox GROUP BY stream"):
            self._counts[stream] = n
            self._bytes[stream] = size
        row = store.db.execute("SELECT value FROM outbox_meta WHERE key = 'last_ack_at'").fetchone()
        self.last_ack_at: datetime | None = datetime.fromisoformat(row[0]) if row else None
        self._reported_quota = "ok"
        self._quota_alarm: dict | None = None
        self._listeners: list = []
        self._note_quota()
        # The durable watermark: every entry at or below ``durable_pos`` is on
        # disk. Entries of commits not yet durable wait in ``_undurable`` as
        # (commit number, highest position). What is here at open was made
        # durable by the store when it opened.
        row = store.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self.durable_pos = row[0] if row else 0
        self._undurable: deque[tuple[int, int]] = deque()
        self._watermark_lock = threading.Lock()
        store.on_durable(lambda _commits: self._advance())

    # ------------------------------------------------------------------ put
    def put(self, type: str, data: Mapping[str, Any], *, stream: str | None = None, ts: datetime | None = None,
            offline: bool | None = None) -> Envelope:
        """Queue one event; it is on disk when this returns. ``offline`` says
        the link was down when it was queued (default: the uplink's view)."""
        return self.put_many([{"type": type, "data": data, "stream": stream, "ts": ts, "offline": offline}])[0]

    def put_telemetry(self, data: Mapping[str, Any]) -> Envelope:
        return self.put("telemetry.meter", data, stream=TELEMETRY_STREAM)

    def put_many(self, items: Iterable[Mapping[str, Any]]) -> list[Envelope]:
        """Queue several events in one commit (one fsync for all). Each item is
        a mapping with ``type``, ``data`` and optional ``stream``, ``ts``,
        ``offline``."""
        now = self.clock.now()
        queued_at = now.timestamp()
        envelopes: list[Envelope] = []
        rows: list[tuple] = []
        seqs: dict[str, int] = {}
        with self.store.transaction() as db:
            for item in items:
                type_, stream = event_type_and_stream(item["type"], item.get("stream"))
                if stream == REPLY_STREAM:
                    raise ValueError("replies go through Outbox.put_reply(), not put()")
                if stream not in seqs:
                    row = db.execute("SELECT seq FROM outbox_seq WHERE stream = ?", (stream,)).fetchone()
                    seqs[stream] = row[0] if row else 0
                seqs[stream] += 1
                offline = item.get("offline")
                envelope = Envelope.new(self.hub_id, stream, seqs[stream], item.get("ts") or now, type_,
                                        (not self.link_up) if offline is None else offline, dict(item["data"]))
                body = envelope.to_json()
                rows.append((envelope.id, stream, envelope.seq, body, len(body.encode()) + ROW_OVERHEAD, queued_at))
                envelopes.append(envelope)
            self._insert(db, rows)
            db.executemany(
                "INSERT INTO outbox_seq(stream, seq) VALUES (?, ?) "
                "ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq", seqs.items())
        return envelopes

    def put_reply(self, payload: Mapping[str, Any]) -> str:
        """Queue an answer for hub/{id}/reply; returns the outbox entry id
        (not the reply's own id, which repeats when a duplicate is answered)."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        entry = str(uuid.uuid4())
        with self.store.transaction() as db:
            self._insert(db, [(entry, REPLY_STREAM, None, body, len(body.encode()) + ROW_OVERHEAD,
                               self.clock.now().timestamp())])
        return entry

    def _insert(self, db, rows: list[tuple]) -> None:
        db.executemany("INSERT INTO outbox(id, stream, seq, body, size, queued_at) VALUES (?, ?, ?, ?, ?, ?)", rows)
        last_pos = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0]
        added_n: Counter[str] = Counter()
        added_b: Counter[str] = Counter()
        for _, stream, _, _, size, _ in rows:
            added_n[stream] += 1
            added_b[stream] += size
        shed_n, shed_b = self._shed_telemetry(db, sum(self._bytes.values()) + sum(added_b.values()))

        def apply() -> None:
            self._counts.update(added_n)
            self._bytes.update(added_b)
            if shed_n:
                self._counts[TELEMETRY_STREAM] -= shed_n
                self._bytes[TELEMETRY_STREAM] -= shed_b
                self.dropped_telemetry += shed_n
                log.warning("outbox.telemetry_dropped count=%d bytes=%d quota_bytes=%d", shed_n, shed_b,
                            self.quota_bytes)
            self._note_quota()
            with self._watermark_lock:
                self._undurable.append((self.store.commits, last_pos))
            self._advance()  # the writer may have been quicker than this callback

        self.store.after_commit(apply)

    def _advance(self) -> None:
        """Move the durable watermark up to the store's durable commits and
        wake the uplink when it moved. Any thread."""
        durable = self.store.durable_commits
        moved = False
        with self._watermark_lock:
            while self._undurable and self._undurable[0][0] <= durable:
                self.durable_pos = max(self.durable_pos, self._undurable.popleft()[1])
                moved = True
        if moved:
            for listener in self._listeners:
                listener()

    def _shed_telemetry(self, db, total: int) -> tuple[int, int]:
        """Delete the oldest meter samples until the outbox is back under the
        near mark (or no sample is left). Runs inside the put's transaction."""
        excess = total - self.near_ratio * self.quota_bytes
        if excess <= 0:
            return 0, 0
        freed, last_pos, n = 0, None, 0
        for pos, size in db.execute("SELECT pos, size FROM outbox WHERE stream = ? ORDER BY pos", (TELEMETRY_STREAM,)):
            freed += size
            last_pos = pos
            n += 1
            if freed >= excess:
                break
        if last_pos is None:
            return 0, 0
        db.execute("DELETE FROM outbox WHERE stream = ? AND pos <= ?", (TELEMETRY_STREAM, last_pos))
        return n, freed

    # ----------------------------------------------------------------- read
    def read_batch(self, limit: int, *, after: str | None = None) -> list[Envelope]:
        """The oldest undelivered durable events (not replies), in queue
        order, which keeps each stream's order. ``after`` skips up to and
        including the event with that id (e.g. those already in flight)."""
        start = 0
        if after is not None:
            row = self._reader.execute("SELECT pos FROM outbox WHERE id = ?", (after,)).fetchone()
            if row is None:
                raise KeyError(f"event {after} is no longer in the outbox (delivered): read from the start")
            start = row[0]
        cur = self._reader.execute(
            "SELECT body FROM outbox WHERE pos > ? AND pos <= ? AND stream != ? ORDER BY pos LIMIT ?",
            (start, self.durable_pos, REPLY_STREAM, limit))
        return [Envelope.from_json(body) for (body,) in cur]

    def rows_after(self, pos: int, limit: int) -> list[tuple[int, str, str, str]]:
        """(pos, id, stream, body) of the next durable entries after position
        ``pos``, replies included: what the uplink sends, as stored. Entries
        not yet on disk are left for a later call (the watermark)."""
        return self._reader.execute(
            "SELECT pos, id, stream, body FROM outbox WHERE pos > ? AND pos <= ? ORDER BY pos LIMIT ?",
            (pos, self.durable_pos, limit)).fetchall()

    def mark_delivered(self, ids: Iterable[str] = (), *, positions: Iterable[int] = ()) -> int:
        """Delete acknowledged entries, named by id or (cheaper: the rowid,
        as the uplink knows it) by position; returns how many were still
        there. A deletion lost to a power cut only means a resend with the
        same id, which the cloud drops."""
        ids = list(ids)
        positions = list(positions)
        if not ids and not positions:
            return 0
        now = self.clock.now()
        removed_n: Counter[str] = Counter()
        removed_b: Counter[str] = Counter()
        with self.store.transaction() as db:
            for column, keys in (("id", ids), ("pos", positions)):
                for i in range(0, len(keys), 500):
                    chunk = keys[i:i + 500]
                    marks = ",".join("?" * len(chunk))
                    for stream, size in db.execute(
                            f"DELETE FROM outbox WHERE {column} IN ({marks}) RETURNING stream, size", chunk):
                        removed_n[stream] += 1
                        removed_b[stream] += size
            db.execute("INSERT INTO outbox_meta(key, value) VALUES ('last_ack_at', ?) "
                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (now.isoformat(),))

            def apply() -> None:
                self._counts.subtract(removed_n)
                self._bytes.subtract(removed_b)
                self.last_ack_at = now
                self._note_quota()

            self.store.after_commit(apply)
        return sum(removed_n.values())

    def on_put(self, listener) -> None:
        """Call ``listener()`` (no arguments, on any thread) when put entries
        have become durable, i.e. sendable: the uplink uses it to wake its
        drain."""
        self._listeners.append(listener)

    # --------------------------------------------------------------- status
    def counts(self) -> dict[str, int]:
        return {stream: n for stream, n in sorted(self._counts.items()) if n > 0}

    def depth(self) -> int:
        return sum(self._counts.values())

    def bytes_used(self) -> int:
        return sum(self._bytes.values())

    def oldest_age(self, now: datetime | None = None) -> float | None:
        """Seconds the oldest undelivered entry has waited, or None if empty."""
        row = self._reader.execute("SELECT queued_at FROM outbox ORDER BY pos LIMIT 1").fetchone()
        if row is None:
            return None
        now = now or self.clock.now()
        return max(0.0, now.timestamp() - row[0])

    def quota_state(self) -> str:
        used = self.bytes_used()
        if used >= self.quota_bytes:
            return "full"
        if used >= self.near_ratio * self.quota_bytes:
            return "near"
        return "ok"

    def accepting_sessions(self) -> tuple[bool, str]:
        if self.quota_state() == "full":
            return False, FULL_REASON
        return True, ""

    def _note_quota(self) -> None:
        state = self.quota_state()
        if _QUOTA_RANK[state] > _QUOTA_RANK[self._reported_quota]:
            used = self.bytes_used()
            if state == "full":
                message = (f"outbox full ({used} of {self.quota_bytes} bytes): new sessions are refused until "
                           f"the cloud link drains it - check the uplink with hubctl outbox")
            else:
                message = (f"outbox near its quota ({used} of {self.quota_bytes} bytes): the cloud link has "
                           f"been down a long time; at the quota new sessions will be refused - check the "
                           f"uplink with hubctl outbox")
            self._quota_alarm = {"alarm": f"outbox.{state}", "message": message}
            log.warning("outbox.quota state=%s bytes_used=%d quota_bytes=%d", state, used, self.quota_bytes)
        if state != self._reported_quota:
            self._reported_quota = state

    def take_quota_alarm(self) -> dict | None:
        """The ``device.alarm`` data for the latest upward quota crossing (ok ->
        near, near -> full), once; None when there is nothing new. The hub puts
        it as a ``device.alarm`` event."""
        alarm, self._quota_alarm = self._quota_alarm, None
        return alarm


def outbox_summary(outbox: Outbox, link: Mapping[str, Any] | None = None, now: datetime | None = None) -> dict:
    """What ``hubctl outbox`` shows: depth per stream, oldest message age, last
    acknowledgement, link state and quota use."""
    now = now or outbox.clock.now()
    last_ack = outbox.last_ack_at
    return {
        "depth": outbox.depth(),
        "streams": outbox.counts(),
        "oldest_age_s": outbox.oldest_age(now),
        "last_ack_at": last_ack.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if last_ack else None,
        "quota": {"state": outbox.quota_state(), "bytes_used": outbox.bytes_used(),
                  "quota_bytes": outbox.quota_bytes,
                  "used_ratio": round(outbox.bytes_used() / outbox.quota_bytes, 4)},
        "dropped_telemetry": outbox.dropped_telemetry,
        "accepting_sessions": outbox.accepting_sessions()[0],
        "link": dict(link) if link is not None else None,
    }
