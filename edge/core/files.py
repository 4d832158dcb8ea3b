"""Files on a card that may lose power at any moment: the bottom of the store (R-D2).

``atomic_write`` replaces a file so that a crash leaves the old content or
the new, whole; ``open_database`` opens the sqlite database once it is found
sound, else moves it aside and restores its backup (``online_backup`` makes
that backup while the hub runs); ``AtomicJSONStorage`` is the TinyDB storage
of the document sets, with the same recovery. ``edge/core/store.py`` builds
the store (one writer thread, group commit) on these; why each step keeps the
hub's promises is told there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

from units import Clock, rfc3339

log = logging.getLogger("hubedge.store")

Fsync = Callable[[int], None]


class DiskError(Exception):
    """The state directory's disk did not take a write; the message says what to do."""


def fsync_dir(directory: Path, fsync: Fsync = os.fsync) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path, fsync: Fsync = os.fsync) -> bool:
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
    fsync_dir(directory, fsync)


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
    fsync_dir(target.parent)


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
    fsync_dir(bak.parent)
    return bak


class AtomicJSONStorage(Storage):
    """TinyDB storage that writes the whole file atomically, keeps the
    previous good copy as ``.bak`` and recovers from a damaged file at open.

    Single writer: one instance per file, used from one thread at a time.
    ``batch()`` groups several TinyDB writes into one file write, so a batch
    applies whole or not at all. With ``defer`` the file write is handed to
    ``defer(path, bytes)`` (the store's writer thread) instead of being done
    here; reads see the new content at once.
    """

    def __init__(self, path: Path | str, *, alarms: list[str] | None = None, clock: Clock | None = None,
                 defer: Callable[[Path, bytes], None] | None = None):
        super().__init__()
        self.path = Path(path)
        self.alarms = alarms if alarms is not None else []
        self._clock = clock or Clock()
        self._defer = defer
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
        self._store(text)

    def _store(self, text: str) -> None:
        if self._defer is not None:
            self._text = text
            self._defer(self.path, text.encode("utf-8"))
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
            self._store(pending)
