"""Opening the hub's databases whatever state a crash or a failing card left
them in, and the online copies they are restored from (edge/core/store.py
says why).

A database that sqlite finds unsound, or one found empty, is moved aside
(``name.corrupt-<UTC time>``) and its last online copy (``.bak``) or an empty
database takes its place; what happened is added to the caller's alarms.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from edge.core.store import _fsync_dir
from units import Clock, rfc3339


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
