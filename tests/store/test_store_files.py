"""Store recovery at open and atomic writes (R-M2, R-D2: power may go at any moment)."""

from __future__ import annotations

import os
import sqlite3

import pytest

from units import FakeClock
from edge.core.store import Store, atomic_write


def fill(state):
    store = Store(state)
    store.db.executescript("CREATE TABLE IF NOT EXISTS t(x INTEGER); ")
    with store.transaction() as db:
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2000)])
    store.documents("tariffs").insert({"id": "t1"})
    store.wait_durable()  # written, so that the next write keeps it as the .bak
    store.documents("tariffs").insert({"id": "t2"})  # second write: t1-only copy becomes the .bak
    store.close()


def test_store_pragmas_wal_normal_sync_foreign_keys(tmp_path):
    store = Store(tmp_path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Commits do not fsync on the loop: the writer thread does (group commit).
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # checkpoints run in the writer
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert store.alarms == []
    store.close()


def test_store_garbage_sqlite_moved_aside_alarm_and_usable_R_M2(tmp_path):
    fill(tmp_path)
    (tmp_path / "hub.sqlite3-wal").unlink(missing_ok=True)
    (tmp_path / "hub.sqlite3").write_bytes(b"this is no database" * 100)
    store = Store(tmp_path, clock=FakeClock())
    assert len(store.alarms) == 1 and "hub.sqlite3" in store.alarms[0] and "moved to" in store.alarms[0]
    aside = list(tmp_path.glob("hub.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is no database")
    store.db.executescript("CREATE TABLE t(x INTEGER)")  # empty, fresh and writable
    with store.transaction() as db:
        db.execute("INSERT INTO t VALUES (1)")
    assert store.db.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    store.close()


def test_store_truncated_sqlite_uses_backup_R_M2(tmp_path):
    fill(tmp_path)
    store = Store(tmp_path)
    store.backup()
    store.close()
    db_file = tmp_path / "hub.sqlite3"
    (tmp_path / "hub.sqlite3-wal").unlink(missing_ok=True)
    with open(db_file, "r+b") as f:
        f.truncate(os.path.getsize(db_file) // 3)
    store = Store(tmp_path)
    assert len(store.alarms) == 1 and "backup" in store.alarms[0]
    assert store.db.execute("SELECT count(*) FROM t").fetchone()[0] == 2000
    assert list(tmp_path.glob("hub.sqlite3.corrupt-*"))
    store.close()


def test_store_corrupt_json_restores_last_good_copy(tmp_path):
    fill(tmp_path)
    (tmp_path / "tariffs.json").write_text('{"_default": {"1": {"id": "t1"}, "2": {"id"')  # torn write
    store = Store(tmp_path)
    docs = store.documents("tariffs")
    assert [d["id"] for d in docs.all()] == ["t1"]  # the .bak held the state before the last write
    assert len(store.alarms) == 1 and "tariffs.json" in store.alarms[0] and "resync" in store.alarms[0]
    assert list(tmp_path.glob("tariffs.json.corrupt-*"))
    docs.insert({"id": "t3"})  # and it is writable again
    store.close()  # writes out what the writer thread still holds
    assert [d["id"] for d in Store(tmp_path).documents("tariffs").all()] == ["t1", "t3"]


def test_store_corrupt_json_and_backup_starts_empty(tmp_path):
    fill(tmp_path)
    (tmp_path / "tariffs.json").write_bytes(b"\x00\x00\x00")
    (tmp_path / "tariffs.json.bak").write_text("[1, 2")
    store = Store(tmp_path)
    assert store.documents("tariffs").all() == []
    assert len(store.alarms) == 1 and "started empty" in store.alarms[0]
    assert len(list(tmp_path.glob("tariffs.json*.corrupt-*"))) == 2
    store.close()


def test_store_json_of_wrong_shape_is_corrupt(tmp_path):
    (tmp_path / "bookings.json").write_text("[1, 2, 3]")
    store = Store(tmp_path)
    assert store.documents("bookings").all() == []
    assert store.alarms
    store.close()


def test_atomic_write_interrupted_before_rename_keeps_old(tmp_path, monkeypatch):
    target = tmp_path / "config-cache.json"
    atomic_write(target, b"old content")
    real_replace = os.replace

    def power_cut(src, dst):
        if str(dst) == str(target):
            raise OSError("simulated power cut before the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        atomic_write(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["config-cache.json"]  # no temp file left behind
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"


def test_atomic_write_keeps_backup(tmp_path):
    target = tmp_path / "x.json"
    atomic_write(target, b"1", backup=True)
    atomic_write(target, b"2", backup=True)
    assert target.read_bytes() == b"2" and (tmp_path / "x.json.bak").read_bytes() == b"1"


def test_store_stale_temp_files_removed_at_open(tmp_path):
    (tmp_path / ".tariffs.json.tmp-123-abcd").write_text("half")
    Store(tmp_path).documents("tariffs")
    assert not list(tmp_path.glob(".tariffs.json.tmp-*"))


def test_store_documents_batch_all_or_nothing_R_M3(tmp_path):
    store = Store(tmp_path)
    docs = store.documents("bookings")
    docs.insert({"id": "b0"})
    store.wait_durable()  # the writer thread writes the file
    before = (tmp_path / "bookings.json").read_bytes()
    with pytest.raises(RuntimeError):
        with store.documents_batch("bookings") as db:
            db.insert({"id": "b1"})
            db.insert({"id": "b2"})
            raise RuntimeError("third booking invalid")
    assert (tmp_path / "bookings.json").read_bytes() == before
    assert [d["id"] for d in docs.all()] == ["b0"]
    with store.documents_batch("bookings") as db:
        db.insert({"id": "b1"})
        db.insert({"id": "b2"})
    store.wait_durable()
    assert [d["id"] for d in Store(tmp_path).documents("bookings").all()] == ["b0", "b1", "b2"]
    store.close()


def test_store_document_name_checked(tmp_path):
    with pytest.raises(ValueError):
        Store(tmp_path).documents("../etc/passwd")


def test_store_nested_transaction_and_after_commit(tmp_path):
    store = Store(tmp_path)
    store.db.executescript("CREATE TABLE t(x INTEGER)")
    ran: list[str] = []
    with store.transaction() as db:
        db.execute("INSERT INTO t VALUES (1)")
        store.after_commit(lambda: ran.append("outer"))
        with pytest.raises(ValueError):
            with store.transaction():
                db.execute("INSERT INTO t VALUES (2)")
                store.after_commit(lambda: ran.append("rolled back"))
                raise ValueError
        with store.transaction():
            db.execute("INSERT INTO t VALUES (3)")
            store.after_commit(lambda: ran.append("inner"))
        assert ran == []  # nothing before the outer commit
    assert ran == ["outer", "inner"]
    assert [r[0] for r in store.db.execute("SELECT x FROM t ORDER BY x")] == [1, 3]
    with pytest.raises(sqlite3.OperationalError):
        with store.transaction() as db:
            db.execute("INSERT INTO nowhere VALUES (1)")
    assert not store.db.in_transaction
    store.close()
