"""The site part's bookings on disk (R-B1, R-C9).

The book is rewritten whole now and then (its document set); between two
full writes every lifecycle change is journalled at once in the hub's
database, so a power cut loses nothing acknowledged. The site part owns
both, the plate key the book hashes plates with (R-G8), and the cloud's
``bookings`` sync kind.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta as _td

from edge.cloud.downlink import Rejected
from edge.core.store import atomic_write
from edge.parts.site.bookings import Bay, BookingBook, BookingRules, documents_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS booking_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    doc TEXT NOT NULL
);
"""


class BookingStore:
    """Where the site's bookings are kept; ``hub.bookings`` is the book
    itself, which the other parts read."""

    def __init__(self, hub):
        self.hub = hub
        self.cfg = hub.cfg
        self.clock = hub.clock
        self.store = hub.store
        self.state_dir = hub.state_dir
        self.emit = hub.emit
        self._bookings_lock = asyncio.Lock()
        self.store.db.executescript(SCHEMA)
        hub.bookings = self._open_bookings()

    @property
    def bookings(self) -> BookingBook:
        return self.hub.bookings

    def _plate_secret(self) -> bytes:
        """The site's key for hashing plates (R-G8): from the configured file,
        or made once and kept in the state directory (mode 0600)."""
        if self.cfg.hub.plate_secret_file:
            return self.cfg.resolve(self.cfg.hub.plate_secret_file).read_bytes().strip()
        path = self.state_dir / "plate.key"
        if not path.exists():
            atomic_write(path, os.urandom(32).hex().encode(), mode=0o600)
        return path.read_bytes().strip()

    def _open_bookings(self) -> BookingBook:
        bays = [
            Bay(b.id, b.connector_type, b.side, b.length_m, b.bookable, b.connector)
            for b in self.cfg.bays
        ]
        book = BookingBook(bays, self._plate_secret(), BookingRules(horizon=_td(days=self.cfg.bookings.horizon_days)))
        try:
            # The last full write of the book, then every lifecycle change
            # journalled since (in order): nothing acknowledged is lost to a
            # power cut between two full writes.
            docs = {d["id"]: d for d in self.store.documents("bookings").all()}
            for _id, doc in self.store.db.execute("SELECT id, doc FROM booking_journal ORDER BY seq"):
                docs[_id] = json.loads(doc)
            book.load(docs.values())
        except Exception as exc:
            self.emit("device.alarm", {"alarm": "bookings_unreadable", "message": f"stored bookings could not be loaded ({exc}); ask the cloud to resend with hubctl resync"})
        return book

    async def sync(self, msg: dict) -> dict:
        """R-B1: a bookings sync from the cloud, kept in the book and on disk."""
        outcome = self.bookings.apply_sync(msg, self.clock.now())
        if not outcome.ok:  # the schema check lets none through: kept in the reply codes all the same
            raise Rejected("wrong_version" if outcome.code == "unsupported_version" else "schema", outcome.reason)
        await self.save_bookings()
        results = [
            {"booking": r.booking_id, "op": r.op, "ok": r.accepted, "code": r.code, "reason": r.reason}
            for r in outcome.results
        ]
        for r in outcome.refused:
            self.emit("booking.rejected", {"booking": r.booking_id, "op": r.op, "code": r.code, "reason": r.reason})
        accepted = sum(1 for r in outcome.results if r.accepted)
        return {"results": results, "counts": {"accepted": accepted, "refused": len(results) - accepted}}

    def journal_booking(self, booking_id: str) -> None:
        """Record one booking's current state at once (a small SQLite append,
        durable with the store's next group commit); the next full write of
        the book folds the journal in."""
        b = self.bookings.get(booking_id)
        if b is None:
            return
        with self.store.transaction() as db:
            db.execute("INSERT INTO booking_journal (id, doc) VALUES (?, ?)",
                       (b.id, json.dumps(b.to_document(), separators=(",", ":"))))

    async def save_bookings(self) -> None:
        """The one writer of the stored bookings. The book is snapshotted on
        the loop and written off it (10,000 bookings are megabytes of JSON,
        and the atomic document storage rewrites the whole file); writes
        never overlap, and a change made while one runs is written by the
        next."""
        async with self._bookings_lock:
            journalled = self.store.db.execute("SELECT COALESCE(MAX(seq), 0) FROM booking_journal").fetchone()[0]
            snapshot = self.bookings.snapshot()
            docs = await asyncio.to_thread(documents_of, snapshot)

            def write() -> None:
                with self.store.documents_batch("bookings") as db:
                    db.truncate()
                    db.insert_multiple(docs)

            await asyncio.to_thread(write)
            # The file is written by the store's writer: the journal it folds
            # in may go only once the file is on disk.
            await self.store.durable()
            with self.store.transaction() as db:
                db.execute("DELETE FROM booking_journal WHERE seq <= ?", (journalled,))
