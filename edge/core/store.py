"""The hub's durable state on an SD card that may lose power at any moment (R-D2).

Two kinds of storage, each where it fits (tinydb rewrites its whole file on
every write, so it keeps only small document sets):

* ``Store.db`` - one sqlite3 database (WAL) for everything that grows: the
  outbox, sessions, audit, the payment ledger.
* ``Store.documents(name)`` - small TinyDB document sets that change rarely
  (bookings, tariffs, maintenance windows, config cache), each written whole
  through :func:`atomic_write`, so a power cut leaves the old or the new file,
  never half of one.

Durable writes off the event loop: one writer, group commit
-----------------------------------------------------------
An fsync on an SD card can take 100 ms. The loop owns the state and must not
wait for the card, or no gate, card or cost-cap decision happens meanwhile.
So a commit on the loop only writes its frames into the WAL file
(``synchronous=NORMAL``: no fsync at commit), and one writer thread makes
them durable: it fsyncs the WAL file, and one fsync covers every commit
written before it began (group commit). The same thread writes the document
sets (``atomic_write``, fsync and rename) and runs the checkpoints on its own
connection (``wal_autocheckpoint=0`` on the loop's), so the loop never
fsyncs. ``await Store.durable()`` returns once everything committed or
written so far is on disk; ``Store.on_durable`` tells the outbox how far
that is.

Why this keeps the hub's promises after a power cut:

* SQLite's WAL recovery keeps a prefix of the commits: every frame carries a
  checksum chained from the WAL header and its salt, and recovery stops at the
  first frame that does not match, then keeps the transactions up to the last
  commit frame before it. A commit is one transaction, so what survives is
  the hub's history up to some point, never a part of a transaction and never
  a later commit without an earlier one. That prefix contains at least every
  commit our fsync covered, maybe some after it.
* Write-ahead before actions: a record that announces an action (a session
  written before the charger is told to start, a payment step before the
  terminal is called) is followed by ``await store.durable()`` before the
  action. A cut can lose the record only if the action was never taken.
* Events exactly once with gapless seqs: an event is stored in the same
  transaction as the state change it reports, with the next seq of its
  stream. The uplink publishes only entries at or below the durable
  watermark (``Outbox.rows_after``), so everything the cloud has seen is in
  the surviving prefix: after a restart the hub neither forgets a published
  event nor gives its seq to another. An event not yet durable may be lost
  with its state change, together; the hub then re-derives the change from
  the hardware and reports it again under the next free seq, which the cloud
  has never seen.
* Documents and database: they are separate files with no order between their
  writes, so a database record that relies on a document set being on disk
  (a sync marked handled, the bookings journal folded into the bookings file)
  is committed only after ``await store.durable()``.
* Replies that report a change done (control socket, cloud replies, which go
  through the outbox) are sent only once the change is durable.

SQLite syncs the WAL header itself when it starts reusing the WAL after a
checkpoint (out-of-order writes could otherwise corrupt it). The writer makes
that happen on its own connection right after its checkpoint, at a quiet
moment; a loop commit arriving in the same instant waits for that one fsync,
and if the loop held the lock then, its next commit makes the sync itself:
at most one fsync on the loop per checkpoint.

Opening never raises because a file is damaged: a corrupt part is moved aside
(``name.corrupt-<UTC time>``), the last good copy (``.bak``) or an empty store
takes its place, and ``Store.alarms`` says what happened, so the daemon raises
a device alarm instead of crash-looping on a bad file. A database's ``.bak``
is an online copy made while the hub runs (``online_backup``, sqlite's backup
API, scheduled by the hub); a database found empty (0 bytes) counts as
damaged, so a lost file never passes for a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from tinydb import TinyDB

from units import Clock

log = logging.getLogger("hubedge.store")

DB_NAME = "hub.sqlite3"
_DOC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

Fsync = Callable[[int], None]

# Checkpoints copy the WAL into the database file. Rarely, so that a page
# changed many times is written to the card once: after this many commits
# at a quiet moment, or regardless once this many more have piled up.
CHECKPOINT_AFTER_COMMITS = 200
CHECKPOINT_FORCED_AFTER_COMMITS = 2000
QUIET_S = 1.0  # no commit for this long: a good moment for a checkpoint
# A commit not on disk after this long means the card is stuck; writes
# failing this long, that it is failing (the watchdog then stops pinging).
STALLED_AFTER_S = 30.0
FAILING_FOR_S = 10.0


class DiskError(Exception):
    """The state directory's disk did not take a write; the message says what to do."""


def _fsync_dir(directory: Path, fsync: Fsync = os.fsync) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path, fsync: Fsync = os.fsync) -> bool:
    """fsync a file by name (any descriptor of it will do); False if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fsync(fd)
    finally:
        os.close(fd)
    return True


def atomic_write(path: Path | str, data: bytes, *, backup: bool = False, mode: int = 0o640,
                 fsync: Fsync = os.fsync) -> None:
    """Replace ``path`` with ``data`` so that a crash at any instant leaves
    either the old content or the new, whole.

    Writes a temp file in the same directory, fsyncs it, renames it over the
    old file and fsyncs the directory. With ``backup`` the previous content is
    kept as ``<path>.bak`` (a hard link to the old file, so it costs no copy).
    """
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            fsync(f.fileno())
        if backup and path.exists():
            bak = path.with_name(path.name + ".bak")
            bak_tmp = directory / f".{bak.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.link(path, bak_tmp)
            except OSError:  # file systems without hard links (vfat): copy instead
                bak_tmp.write_bytes(path.read_bytes())
            os.replace(bak_tmp, bak)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory, fsync)


class _Writer:
    """The store's one writer thread (see the module docstring).

    Counters, all under ``_cond``: ``committed`` outermost commits made so far
    (told by the store after each), ``durable`` how many of them the last WAL
    fsync covered; ``queued`` document writes handed over, ``written`` how
    many of them are on disk. A waiter names the two counts it needs and is
    called back (from this thread) with None once they are reached, or with
    a DiskError when the write it needs failed.

    Holds no reference to the Store, so a store dropped without close() lets
    this thread end (weakref.finalize)."""

    def __init__(self, state_dir: Path, db_path: Path, fsync: Fsync):
        self.state_dir = state_dir
        self.db_path = db_path
        self.wal_path = db_path.with_name(db_path.name + "-wal")
        self._fsync = fsync
        self._cond = threading.Condition()
        self.committed = 0
        self.durable = 0
        self.queued = 0
        self.written = 0
        self._files: dict[Path, bytes] = {}  # document sets to write, newest content per file
        # (commits, documents, rounds begun when it started waiting, callback)
        self._waiters: list[tuple[int, int, int, Callable[[BaseException | None], None]]] = []
        self._rounds = 0
        self._listeners: list[Callable[[int], None]] = []
        self._stop = False
        self.last_commit_mono = time.monotonic()
        self.pending_since: float | None = None  # monotonic time of the oldest write not yet on disk
        self.failure: str | None = None
        self.failing_since: float | None = None
        self.fsyncs = 0
        self.checkpoints = 0
        self._at_checkpoint = 0  # value of ``committed`` at the last checkpoint
        self._conn: sqlite3.Connection | None = None
        self._wal_fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    # -- called by the store (any thread)
    def committed_one(self) -> None:
        with self._cond:
            self.committed += 1
            self.last_commit_mono = time.monotonic()
            if self.pending_since is None:
                self.pending_since = self.last_commit_mono
            self._cond.notify()

    def write_file(self, path: Path, data: bytes) -> None:
        with self._cond:
            self.queued += 1
            self._files[path] = data  # a newer content replaces one not yet written
            if self.pending_since is None:
                self.pending_since = time.monotonic()
            self._cond.notify()

    def target(self) -> tuple[int, int]:
        with self._cond:
            return self.committed, self.queued

    def reached(self, target: tuple[int, int]) -> bool:
        with self._cond:
            return self.durable >= target[0] and self.written >= target[1]

    def wait_for(self, target: tuple[int, int], callback: Callable[[BaseException | None], None]) -> None:
        closed = False
        with self._cond:
            if self.durable >= target[0] and self.written >= target[1]:
                ready = True
            elif self._stop:
                ready, closed = True, True
            else:
                ready = False
                self._waiters.append((target[0], target[1], self._rounds, callback))
                self._cond.notify()
        if ready:
            callback(DiskError("the store is closed: nothing more is written") if closed else None)

    def on_durable(self, listener: Callable[[int], None]) -> None:
        with self._cond:
            self._listeners.append(listener)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # -- the thread
    def _work(self) -> bool:
        return self.committed > self.durable or bool(self._files) or any(
            c > self.durable or f > self.written for c, f, _, _ in self._waiters)

    def _run(self) -> None:
        retry_at = 0.0
        while True:
            with self._cond:
                if self.failure is not None:
                    # A failing card is tried again twice a second, not in a spin.
                    while not self._stop and (wait := retry_at - time.monotonic()) > 0:
                        self._cond.wait(wait)
                elif not self._work() and not self._stop:
                    self._cond.wait(1.0)
                stopping = self._stop
                commits, queued = self.committed, self.queued
                files, self._files = self._files, {}
                self._rounds += 1
                round_no = self._rounds
            if commits > self.durable or queued > self.written or self.failure:
                try:
                    self._round(round_no, commits, queued, files)
                except Exception as e:  # a bug here must not end the thread every durable() waits on
                    log.exception("store.writer_round_failed")
                    with self._cond:
                        self.failure = f"{type(e).__name__}: {e}"
                        for path, data in files.items():
                            self._files.setdefault(path, data)
                retry_at = time.monotonic() + 0.5
            with self._cond:
                if stopping and (not self._work() or self.failure is not None):
                    break  # done; or the disk is failing, and close() must not hang on it
            if not stopping:
                self._maybe_checkpoint()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        with self._cond:  # nobody is left to serve them
            waiters, self._waiters = self._waiters, []
        for *_, callback in waiters:
            callback(DiskError(f"the store closed before its writes were on disk ({self.failure or 'closing'})"))

    def _round(self, round_no: int, commits: int, queued: int, files: dict[Path, bytes]) -> None:
        """One group commit: the document sets handed over, then one fsync of
        the WAL covering the first ``commits`` commits (they were all written
        to it before this round began)."""
        wal_error: OSError | None = None
        file_error: OSError | None = None
        for path, data in files.items():
            try:
                atomic_write(path, data, backup=True, fsync=self._fsync)
            except OSError as e:
                file_error = file_error or e
                with self._cond:
                    self._files.setdefault(path, data)  # tried again, unless newer content came meanwhile
        if commits > self.durable:
            try:
                self._sync_wal()
                self.fsyncs += 1
            except OSError as e:
                wal_error = e
        with self._cond:
            if wal_error is None:
                self.durable = max(self.durable, commits)
            if file_error is None:
                self.written = max(self.written, queued)
            error = wal_error or file_error
            previous = self.failure
            self.failure = (f"{type(error).__name__}: {error}" if error is not None else None)
            if error is None:
                self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = time.monotonic()
            done, failed, waiting = [], [], []
            for c, f, registered, callback in self._waiters:
                if self.durable >= c and self.written >= f:
                    done.append(callback)
                elif registered < round_no and ((wal_error is not None and c > self.durable)
                                                or (file_error is not None and f > self.written)):
                    failed.append(callback)  # this round tried its writes (it began after the wait did)
                else:
                    waiting.append((c, f, registered, callback))
            self._waiters = waiting
            if self.durable >= self.committed and self.written >= self.queued:
                self.pending_since = None
            durable = self.durable
            listeners = list(self._listeners)
        if error is not None and previous is None:
            log.error("store.write_failed dir=%s error=%r action=%r", self.state_dir, self.failure,
                      "writes are kept and tried again; check the SD card (dmesg, free space)")
        elif error is None and previous is not None:
            log.warning("store.write_recovered dir=%s after=%r", self.state_dir, previous)
        # Listeners first (the outbox's durable watermark): whoever durable()
        # wakes must already see what this round made durable.
        for listener in listeners:
            try:
                listener(durable)
            except Exception:
                log.exception("store.durable_listener_failed")
        if failed:
            problem = DiskError(f"the state directory's disk did not take the write ({self.failure}): the hub "
                                f"keeps trying; check the SD card (dmesg, free space)")
            for callback in failed:
                callback(problem)
        for callback in done:
            callback(None)

    def _sync_wal(self) -> None:
        """fsync the WAL file through a descriptor kept open (the WAL holds
        no POSIX locks; the database file's must never be touched this way),
        opened again if SQLite has made a new WAL file since."""
        try:
            current = os.stat(self.wal_path)
        except FileNotFoundError:
            return  # nothing written yet
        if self._wal_fd is not None:
            held = os.fstat(self._wal_fd)
            if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
                os.close(self._wal_fd)
                self._wal_fd = None
        if self._wal_fd is None:
            self._wal_fd = os.open(self.wal_path, os.O_RDONLY)
        self._fsync(self._wal_fd)

    def _maybe_checkpoint(self) -> None:
        with self._cond:
            since = self.committed - self._at_checkpoint
            quiet = time.monotonic() - self.last_commit_mono >= QUIET_S
            if self.committed > self.durable or self.failure is not None:
                return
            if not (since >= CHECKPOINT_FORCED_AFTER_COMMITS or (quiet and since >= CHECKPOINT_AFTER_COMMITS)):
                return
            at = self.committed
        try:
            self.checkpoint()
        except sqlite3.Error as e:
            log.warning("store.checkpoint_failed error=%r", e)
            return
        with self._cond:
            self._at_checkpoint = at

    def checkpoint(self) -> bool:
        """Copy the WAL into the database file (PASSIVE: never waits for the
        loop's writes), then start the WAL over from here. True when the
        WAL was emptied. Runs on the writer thread."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=0)
            self._conn.execute("PRAGMA busy_timeout=0")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # the checkpoint syncs the WAL and the database
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        _busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        if frames <= 0 or copied != frames:
            return False
        # The next write restarts the WAL and syncs its new header: let it be
        # this one, here, and not a commit on the loop.
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("INSERT INTO store_meta(key, value) VALUES ('checkpointed_at', ?) "
                               "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(time.time()),))
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError:  # the loop is writing: its commit restarts the WAL instead
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        return True

    def view(self) -> dict:
        with self._cond:
            now = time.monotonic()
            return {
                "commits": self.committed,
                "durable": self.durable,
                "documents_waiting": len(self._files),
                "oldest_waiting_s": round(now - self.pending_since, 3) if self.pending_since is not None else None,
                "fsyncs": self.fsyncs,
                "checkpoints": self.checkpoints,
                "failure": self.failure,
            }

    def problem(self) -> str | None:
        """A sentence when the disk has not kept up for a while, else None."""
        with self._cond:
            now = time.monotonic()
            waiting = now - self.pending_since if self.pending_since is not None else 0.0
            failure = self.failure
            failing = now - self.failing_since if self.failing_since is not None else 0.0
        if failure is not None and failing > FAILING_FOR_S:
            return (f"the state directory's disk has failed writes for {failing:.0f} s ({failure}): they are kept "
                    f"and tried again; check the SD card (dmesg, free space)")
        if waiting > STALLED_AFTER_S:
            return (f"the state directory's disk has not confirmed a write for {waiting:.0f} s: check the SD "
                    f"card (dmesg); the hub restarts itself if it stays stuck")
        return None


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Store:
    """The hub's state directory: the sqlite database and the document sets.

    ``fsync`` is the function that makes a file descriptor durable (os.fsync);
    tests pass a slow or failing one."""

    def __init__(self, state_dir: Path | str, *, clock: Clock | None = None, busy_timeout_ms: int = 5000,
                 fsync: Fsync = os.fsync):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock or Clock()
        self.alarms: list[str] = []
        self._busy_timeout_ms = busy_timeout_ms
        self._fsync = fsync
        self._lock = threading.RLock()
        self._depth = 0
        self._on_commit: list[list] = []  # one list of callbacks per open transaction level
        self._documents: dict[str, TinyDB] = {}
        self._readers: list[sqlite3.Connection] = []
        # What a previous run left in the page cache (a crash is not a power
        # cut) counts as durable from here on: make it so before anyone,
        # the uplink included, relies on it. Before any connection opens:
        # closing a descriptor of the database file would drop every POSIX
        # lock this process holds on it, and another process could then
        # take itself for the last connection and delete the WAL.
        for path in (self.db_path.with_name(DB_NAME + "-wal"), self.db_path):
            _fsync_file(path, fsync)
        _fsync_dir(self.state_dir, fsync)
        self.db = self._open_db()
        self.db.execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._writer = _Writer(self.state_dir, self.db_path, fsync)
        weakref.finalize(self, self._writer.close)

    # -- sqlite
    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_NAME

    def _connect(self, path: Path) -> sqlite3.Connection:
        # Autocommit mode: transaction() issues BEGIN IMMEDIATE itself, so a
        # writer takes the lock up front instead of failing halfway.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                             timeout=self._busy_timeout_ms / 1000)
        db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        db.execute("PRAGMA journal_mode=WAL")
        # A commit writes the WAL and returns; the writer thread fsyncs it
        # (durable()), and checkpoints on its own connection.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _open_db(self) -> sqlite3.Connection:
        from edge.core.recovery import open_database

        db, alarm = open_database(
            self.db_path, self._connect, clock=self.clock,
            lost_since_backup="events, sessions and ledger entries since that backup are lost, check the cloud's "
                              "records",
            lost_if_empty="queued events, sessions and ledger entries since the last sync are lost, check the "
                          "cloud's records")
        if alarm:
            self._alarm(alarm)
        return db

    def _alarm(self, message: str) -> None:
        self.alarms.append(message)
        log.error("store.recovered file=%s problem=%r", DB_NAME, message)

    def reader(self) -> sqlite3.Connection:
        """A separate read-only connection to the database. It sees committed
        data only, and in WAL mode it reads while a writer commits, so a
        reader never waits on another thread's fsync."""
        db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                             timeout=self._busy_timeout_ms / 1000)
        db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        db.execute("PRAGMA query_only=ON")
        self._readers.append(db)
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception. Nested use
        becomes a savepoint, so a caller can wrap its own rows and an outbox
        event in one commit.

        The commit is written, not yet on disk: ``await durable()`` before an
        action that must not happen unless this record survives a power cut."""
        with self._lock:
            if self._depth == 0:
                self.db.execute("BEGIN IMMEDIATE")
                commit, rollback = ["COMMIT"], ["ROLLBACK"]
            else:
                name = f"sp{self._depth}"
                self.db.execute(f"SAVEPOINT {name}")
                commit, rollback = [f"RELEASE {name}"], [f"ROLLBACK TO {name}", f"RELEASE {name}"]
            self._depth += 1
            self._on_commit.append([])
            try:
                yield self.db
            except BaseException:
                self._depth -= 1
                self._on_commit.pop()
                for statement in rollback:
                    self.db.execute(statement)
                raise
            self._depth -= 1
            callbacks = self._on_commit.pop()
            try:
                for statement in commit:
                    self.db.execute(statement)
            except BaseException:
                if self._depth == 0 and self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            if self._depth:
                self._on_commit[-1].extend(callbacks)  # a savepoint's effects count once the outer commit lands
                return
            self._writer.committed_one()
            for callback in callbacks:
                # The commit stands: a failing callback must not look like a
                # failed transaction to the code that opened it.
                try:
                    callback()
                except Exception:
                    log.exception("store.after_commit_failed")

    @property
    def commits(self) -> int:
        """Outermost commits made so far (since this store was opened)."""
        return self._writer.committed

    @property
    def durable_commits(self) -> int:
        """How many of them are on disk."""
        return self._writer.durable

    async def durable(self) -> None:
        """Return once every transaction committed and every document set
        written so far is on disk; raise DiskError if the disk failed them.

        Call it between a write-ahead record and the action it announces
        (a start sent to a charger, a call to a payment terminal), so that a
        power cut can never leave the action done and its record lost; and
        before answering that a change is done. Waiting costs the loop
        nothing: the writer thread fsyncs, and one fsync serves every
        commit made before it (group commit)."""
        target = self._writer.target()
        if self._writer.reached(target):
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, error)

        self._writer.wait_for(target, done)
        await future

    def wait_durable(self, timeout: float | None = None) -> None:
        """durable() for code outside the event loop (threads, tools, tests):
        blocks until everything written so far is on disk."""
        finished = threading.Event()
        outcome: list[BaseException | None] = []

        def done(error: BaseException | None) -> None:
            outcome.append(error)
            finished.set()

        self._writer.wait_for(self._writer.target(), done)
        if not finished.wait(timeout):
            raise DiskError(f"the state directory's disk did not confirm the writes within {timeout} s")
        if outcome[0] is not None:
            raise outcome[0]

    def on_durable(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(durable_commits)`` after each group commit, on the
        writer's thread."""
        self._writer.on_durable(listener)

    def writer_view(self) -> dict:
        """The writer's counters, for `hubctl status`."""
        return self._writer.view()

    def disk_problem(self) -> str | None:
        """A sentence when the disk fails writes or has not confirmed one for
        long, else None (the daemon's watchdog stops pinging meanwhile)."""
        return self._writer.problem()

    def after_commit(self, callback) -> None:
        """Run ``callback`` once the enclosing outermost transaction has
        committed; dropped if it rolls back. Keeps in-memory tallies (outbox
        depth, quota) in step with what is really committed, and lets a step
        spawn its follow-ups only once its records stand."""
        if not self._on_commit:
            raise RuntimeError("after_commit() outside store.transaction(): open a transaction first")
        self._on_commit[-1].append(callback)

    def backup(self) -> Path:
        """Copy the database to hub.sqlite3.bak (consistent, online, checked),
        the copy used if the live file is found damaged at the next start.
        Blocking: the hub runs it in a thread."""
        from edge.core.recovery import online_backup

        return online_backup(self.db_path, self.db_path.with_name(DB_NAME + ".bak"))

    # -- documents
    def documents(self, name: str) -> TinyDB:
        """The TinyDB document set ``state_dir/<name>.json`` (opened once)."""
        from edge.core.documents import AtomicJSONStorage

        if not _DOC_NAME.match(name):
            raise ValueError(f"document set name {name!r}: use lower-case letters, digits, '_' or '-'")
        db = self._documents.get(name)
        if db is None:
            # The file is written by the writer thread: the loop never waits
            # for the card, and durable() covers the write.
            db = TinyDB(self.state_dir / f"{name}.json", storage=AtomicJSONStorage,
                        alarms=self.alarms, clock=self.clock, defer=self._writer.write_file)
            self._documents[name] = db
        return db

    @contextlib.contextmanager
    def documents_batch(self, name: str) -> Iterator[TinyDB]:
        """The document set, with every write inside the block landing in one
        atomic file write; on an exception nothing is written."""
        db = self.documents(name)
        storage = db.storage  # an AtomicJSONStorage (edge/core/documents.py)
        try:
            with storage.batch():
                yield db
        except BaseException:
            # TinyDB caches query results and the next id; drop them so the
            # tables reflect the file again.
            for table in db.tables() | {db.default_table_name}:
                db.table(table).clear_cache()
                db.table(table)._next_id = None
            raise

    def close(self) -> None:
        """Write out what is pending and close. Whatever the disk took is kept;
        after a disk failure the rest is lost with the process."""
        self._writer.close()
        for db in self._documents.values():
            db.close()
        self._documents.clear()
        for reader in self._readers:
            with contextlib.suppress(sqlite3.Error):
                reader.close()
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
