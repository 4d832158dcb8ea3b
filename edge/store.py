"""The hub's durable state on an SD card that may lose power at any moment (R-D2).

Two kinds of storage, each where it fits (reference.md, "Storage: tinydb"):

* ``Store.db`` - one sqlite3 database (WAL, synchronous=FULL) for everything
  that grows: the outbox, sessions, audit, the payment ledger. A commit that
  returned is on disk.
* ``Store.documents(name)`` - small TinyDB document sets that change rarely
  (bookings, tariffs, maintenance windows, config cache), each written whole
  through :func:`atomic_write`, so a power cut leaves the old or the new file,
  never half of one.

Opening never raises because a file is damaged: a corrupt part is moved aside
(``name.corrupt-<UTC time>``), the last good copy (``.bak``) or an empty store
takes its place, and ``Store.alarms`` says what happened, so the daemon raises
a device alarm instead of crash-looping on a bad file. A database's ``.bak``
is an online copy made while the hub runs (``online_backup``, sqlite's backup
API, scheduled by the hub); a database found empty (0 bytes) counts as
damaged, so a lost file never passes for a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from edge.clock import Clock, rfc3339

log = logging.getLogger("hubedge.store")

DB_NAME = "hub.sqlite3"
_DOC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes, *, backup: bool = False, mode: int = 0o640) -> None:
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
            os.fsync(f.fileno())
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
    _fsync_dir(directory)


def _corrupt_name(path: Path, clock: Clock) -> Path:
    stamp = clock.now().strftime("%Y%m%dT%H%M%S.%fZ")
    return path.with_name(f"{path.name}.corrupt-{stamp}")


def quick_check(db: sqlite3.Connection) -> None:
    """Raise sqlite3.DatabaseError unless sqlite finds the database sound."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise sqlite3.DatabaseError("quick_check: " + "; ".join(str(r[0]) for r in rows[:3]))


def move_db_aside(path: Path, clock: Clock) -> Path:
    """Rename a damaged database and its -wal/-shm to ``name.corrupt-<UTC time>``."""
    aside = _corrupt_name(path, clock)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    os.replace(path, aside)
    return aside


def _copy_durably(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)  # streamed: a database may be larger than the memory to spare
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def open_database(path: Path, connect: Callable[[Path], sqlite3.Connection], *, clock: Clock,
                  lost_since_backup: str, lost_if_empty: str) -> tuple[sqlite3.Connection, str | None]:
    """Open the database at ``path`` with ``connect`` once sqlite's
    quick_check finds it sound. A damaged one - or one found empty (0 bytes),
    which a database this hub has opened never is - is moved aside and its
    last backup (``<name>.bak``) restored if that is sound, else an empty one
    started. Returns the connection and the alarm to raise (None when the
    file was sound); the alarm says what may be lost: ``lost_since_backup``
    or ``lost_if_empty``."""
    bak = path.with_name(path.name + ".bak")
    if not path.exists():
        return connect(path), None
    if path.stat().st_size == 0:
        aside = move_db_aside(path, clock)
        problem = f"{path.name} was found empty (0 bytes) and was moved to {aside.name}"
    else:
        db = None
        try:
            db = connect(path)
            quick_check(db)
            return db, None
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            aside = move_db_aside(path, clock)
            problem = f"{path.name} is damaged ({e}) and was moved to {aside.name}"
    if bak.exists():
        try:
            check = sqlite3.connect(f"file:{bak}?mode=ro", uri=True)
            try:
                quick_check(check)
            finally:
                check.close()
            made = rfc3339(datetime.fromtimestamp(bak.stat().st_mtime, timezone.utc))
            _copy_durably(bak, path)
            db = connect(path)
            quick_check(db)
            return db, f"{problem}; restored the backup {bak.name} made at {made}: {lost_since_backup}"
        except sqlite3.DatabaseError:
            db = None
            for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
            problem += "; its backup was damaged too"
    return connect(path), f"{problem}; started empty: {lost_if_empty}"


def online_backup(source: Path, bak: Path) -> Path:
    """Copy the live database ``source`` to ``bak`` with sqlite's backup API,
    from a connection of its own: in WAL mode that is one consistent snapshot,
    and the hub's writers go on meanwhile. The copy is checked before it
    replaces the previous one, so a database damaged unnoticed never
    overwrites the last good copy (sqlite3.DatabaseError then). Blocking:
    run it in a thread."""
    tmp = bak.with_name(f".{bak.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(source)
    target = sqlite3.connect(tmp)
    try:
        src.execute("PRAGMA query_only=ON")
        src.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
        try:
            quick_check(target)
        except sqlite3.DatabaseError as e:
            raise sqlite3.DatabaseError(f"{source.name} is damaged, its backup {bak.name} was left as it was: {e}") from None
    except BaseException:
        target.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    target.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, bak)
    _fsync_dir(bak.parent)
    return bak


class AtomicJSONStorage(Storage):
    """TinyDB storage that writes the whole file atomically, keeps the
    previous good copy as ``.bak`` and recovers from a damaged file at open.

    Single writer: one instance per file, used from one thread at a time.
    ``batch()`` groups several TinyDB writes into one file write, so a batch
    applies whole or not at all.
    """

    def __init__(self, path: Path | str, *, alarms: list[str] | None = None, clock: Clock | None = None):
        super().__init__()
        self.path = Path(path)
        self.alarms = alarms if alarms is not None else []
        self._clock = clock or Clock()
        self._text = self._load()  # cached serialised content; the file is never re-read
        self._pending: str | None = None
        self._batch_depth = 0

    # -- opening and recovery
    def _parse(self, raw: bytes) -> dict:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
            raise ValueError("not a TinyDB document file (top level must map table names to objects)")
        return data

    def _load(self) -> str:
        for stale in self.path.parent.glob(f".{self.path.name}*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a crash before the rename: never the live copy
        bak = self.path.with_name(self.path.name + ".bak")
        if self.path.exists():
            try:
                return json.dumps(self._parse(self.path.read_bytes()))
            except (ValueError, UnicodeDecodeError) as e:
                aside = _corrupt_name(self.path, self._clock)
                os.replace(self.path, aside)
                problem = f"{self.path.name} is damaged ({type(e).__name__}) and was moved to {aside.name}"
        elif bak.exists():
            problem = f"{self.path.name} is missing"
            aside = None
        else:
            return "{}"
        if bak.exists():
            try:
                text = json.dumps(self._parse(bak.read_bytes()))
                atomic_write(self.path, text.encode())
                self._alarm(f"{problem}; restored the last good copy {bak.name}: changes since then may be "
                            f"missing, ask the cloud for a resync (hubctl resync)")
                return text
            except (ValueError, UnicodeDecodeError):
                bak_aside = _corrupt_name(bak, self._clock)
                os.replace(bak, bak_aside)
                problem += f"; its backup was damaged too and was moved to {bak_aside.name}"
        self._alarm(f"{problem}; started empty: ask the cloud for a resync (hubctl resync)")
        return "{}"

    def _alarm(self, message: str) -> None:
        self.alarms.append(message)
        log.error("store.recovered file=%s problem=%r", self.path.name, message)

    # -- tinydb Storage
    def read(self) -> dict[str, dict[str, Any]] | None:
        text = self._pending if self._pending is not None else self._text
        # A fresh copy each time: TinyDB edits what read() returns before write().
        return json.loads(text)

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        text = json.dumps(data, ensure_ascii=False)
        if self._batch_depth:
            self._pending = text
            return
        atomic_write(self.path, text.encode("utf-8"), backup=True)
        self._text = text

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Writes inside the block reach the file in one atomic write at the
        end; an exception discards them all."""
        self._batch_depth += 1
        try:
            yield
        except BaseException:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self._pending = None
            raise
        self._batch_depth -= 1
        if self._batch_depth == 0 and self._pending is not None:
            pending, self._pending = self._pending, None
            atomic_write(self.path, pending.encode("utf-8"), backup=True)
            self._text = pending


class Store:
    """The hub's state directory: the sqlite database and the document sets."""

    def __init__(self, state_dir: Path | str, *, clock: Clock | None = None, busy_timeout_ms: int = 5000):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock or Clock()
        self.alarms: list[str] = []
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._depth = 0
        self._on_commit: list[list] = []  # one list of callbacks per open transaction level
        self._documents: dict[str, TinyDB] = {}
        self._readers: list[sqlite3.Connection] = []
        self.db = self._open_db()

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
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _open_db(self) -> sqlite3.Connection:
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
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception. Nested use
        becomes a savepoint, so a caller can wrap its own rows and an outbox
        event in one commit.

        ``durable=False`` (outermost only) skips the fsync of this commit: for
        writes whose loss at a power cut is harmless (deleting delivered
        outbox entries: the worst case is a resend with the same id). The
        next durable commit makes them durable too."""
        with self._lock:
            relaxed = not durable and self._depth == 0
            if relaxed:
                self.db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction() as db:
                    yield db
            finally:
                if relaxed:
                    self.db.execute("PRAGMA synchronous=FULL")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
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
            else:
                for callback in callbacks:
                    callback()

    async def durable(self) -> None:
        """Return once every transaction committed so far is on disk.

        Call it between a write-ahead record and the action it announces
        (a start sent to a charger, a call to a payment terminal), so that a
        power cut can never leave the action done and its record lost.
        Commits here are fsynced as they return, so there is nothing left to
        wait for; the call marks the places where the order matters."""

    def after_commit(self, callback) -> None:
        """Run ``callback`` once the enclosing outermost transaction has
        committed; dropped if it rolls back. Keeps in-memory tallies (outbox
        depth, quota) in step with what is really on disk."""
        if not self._on_commit:
            raise RuntimeError("after_commit() outside store.transaction(): open a transaction first")
        self._on_commit[-1].append(callback)

    def backup(self) -> Path:
        """Copy the database to hub.sqlite3.bak (consistent, online, checked),
        the copy used if the live file is found damaged at the next start.
        Blocking: the hub runs it in a thread."""
        return online_backup(self.db_path, self.db_path.with_name(DB_NAME + ".bak"))

    # -- documents
    def documents(self, name: str) -> TinyDB:
        """The TinyDB document set ``state_dir/<name>.json`` (opened once)."""
        if not _DOC_NAME.match(name):
            raise ValueError(f"document set name {name!r}: use lower-case letters, digits, '_' or '-'")
        db = self._documents.get(name)
        if db is None:
            db = TinyDB(self.state_dir / f"{name}.json", storage=AtomicJSONStorage,
                        alarms=self.alarms, clock=self.clock)
            self._documents[name] = db
        return db

    @contextlib.contextmanager
    def documents_batch(self, name: str) -> Iterator[TinyDB]:
        """The document set, with every write inside the block landing in one
        atomic file write; on an exception nothing is written."""
        db = self.documents(name)
        storage: AtomicJSONStorage = db.storage  # type: ignore[assignment]
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
        for db in self._documents.values():
            db.close()
        self._documents.clear()
        for reader in self._readers:
            with contextlib.suppress(sqlite3.Error):
                reader.close()
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
