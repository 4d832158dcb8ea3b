"""Durable writes off the event loop: one writer thread, group commit, the
outbox's durable watermark, and what a power cut leaves (R-D2, R-M2).

The disk is the real one; the seam is Store's ``fsync`` parameter: a slow,
blocked, failing or recording fsync stands in for an SD card."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core import store as store_module
from edge.core.outbox import Outbox
from edge.core.store import DiskError, Store


class SlowDisk:
    """An fsync that records which thread called it and can be held back."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.threads: list[int] = []
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail: OSError | None = None

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        self.calls += 1
        self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        os.fsync(fd)


async def test_commits_never_fsync_on_the_loop_and_share_fsyncs(tmp_path):
    disk = SlowDisk(delay=0.05)
    store = Store(tmp_path, fsync=disk)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    opened = disk.calls  # the store makes what it found durable at open
    loop_thread = threading.get_ident()
    t0 = time.perf_counter()
    for i in range(20):
        outbox.put("session.stopped", {"i": i})
    returned = time.perf_counter() - t0
    await store.durable()
    assert loop_thread not in disk.threads[opened:], "an fsync ran on the event loop's thread"
    assert returned < 20 * 0.05, "the puts waited for fsyncs"
    assert disk.calls - opened < 20, "one fsync per commit: no group commit"
    assert store.durable_commits == store.commits == 20
    store.close()


async def test_durable_waits_for_the_fsync_covering_every_commit_so_far(tmp_path):
    disk = SlowDisk()
    store = Store(tmp_path, fsync=disk)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    disk.gate.clear()  # the card is busy
    outbox.put("session.started", {})
    waiter = asyncio.ensure_future(store.durable())
    await asyncio.sleep(0.2)
    assert not waiter.done(), "durable() returned before the fsync"
    outbox.put("session.stopped", {})  # committed while the fsync is held: the next one covers it
    disk.gate.set()
    await asyncio.wait_for(waiter, 5)
    await asyncio.wait_for(store.durable(), 5)
    assert store.durable_commits == 2
    store.close()


async def test_uplink_never_sees_an_entry_before_it_is_durable_R_M2(tmp_path):
    disk = SlowDisk()
    store = Store(tmp_path, fsync=disk)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    woken = threading.Event()
    outbox.on_put(woken.set)
    first = outbox.put("session.started", {"n": 1})
    await store.durable()
    assert [r[1] for r in outbox.rows_after(0, 10)] == [first.id]
    woken.clear()
    disk.gate.clear()
    second = outbox.put("session.stopped", {"n": 2})
    await asyncio.sleep(0.2)
    assert [r[1] for r in outbox.rows_after(0, 10)] == [first.id], "published before it was on disk"
    assert [e.id for e in outbox.read_batch(10)] == [first.id]
    assert not woken.is_set()
    disk.gate.set()
    await asyncio.wait_for(store.durable(), 5)
    assert woken.wait(5), "the uplink was not woken when the entry became durable"
    assert [r[1] for r in outbox.rows_after(0, 10)] == [first.id, second.id]
    store.close()


async def test_a_failing_disk_fails_durable_and_recovers(tmp_path):
    disk = SlowDisk()
    store = Store(tmp_path, fsync=disk)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    disk.fail = OSError(5, "Input/output error")
    entry = outbox.put("session.started", {})
    with pytest.raises(DiskError) as err:
        await asyncio.wait_for(store.durable(), 5)
    assert "Input/output error" in str(err.value) and "SD card" in str(err.value)
    assert "Input/output error" in store.writer_view()["failure"]
    assert outbox.rows_after(0, 10) == []  # not durable: not sent
    disk.fail = None  # the card answers again: the writer tries again by itself
    await asyncio.wait_for(store.durable(), 5)
    assert store.disk_problem() is None
    assert [r[1] for r in outbox.rows_after(0, 10)] == [entry.id]
    store.close()


async def test_document_sets_are_written_by_the_writer_and_covered_by_durable(tmp_path):
    disk = SlowDisk()
    store = Store(tmp_path, fsync=disk)
    opened = disk.calls
    disk.gate.clear()
    store.documents("tariffs").insert({"id": "t1"})  # returns at once: the card is held
    assert [d["id"] for d in store.documents("tariffs").all()] == ["t1"]  # readers see it now
    waiter = asyncio.ensure_future(store.durable())
    await asyncio.sleep(0.2)
    assert not waiter.done()
    disk.gate.set()
    await asyncio.wait_for(waiter, 5)
    assert (tmp_path / "tariffs.json").read_text().count('"t1"') == 1
    assert threading.get_ident() not in disk.threads[opened:]
    store.close()


def test_wait_durable_for_threads_and_tools(tmp_path):
    store = Store(tmp_path)
    store.db.execute("CREATE TABLE t(x)")
    with store.transaction() as db:
        db.execute("INSERT INTO t VALUES (1)")
    store.wait_durable(5)
    assert store.durable_commits == store.commits == 1
    store.close()


def test_quiet_checkpoint_runs_in_the_writer_and_restarts_the_wal_there(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHECKPOINT_AFTER_COMMITS", 5)
    monkeypatch.setattr(store_module, "QUIET_S", 0.05)
    store = Store(tmp_path)
    store.db.execute("CREATE TABLE t(x)")
    wal = tmp_path / "hub.sqlite3-wal"
    for i in range(10):
        with store.transaction() as db:
            db.execute("INSERT INTO t VALUES (?)", (i,))
    header = wal.read_bytes()[:32]
    deadline = time.monotonic() + 10
    while store.writer_view()["checkpoints"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    # The WAL's checkpoint sequence and salts (bytes 12-24) changed: the
    # writer restarted the WAL (and SQLite synced its new header) on its own
    # connection, so the next commit on the loop appends without an fsync.
    assert wal.read_bytes()[12:24] != header[12:24]
    assert (tmp_path / "hub.sqlite3").stat().st_size > 0  # pages copied into the database file
    with store.transaction() as db:
        db.execute("INSERT INTO t VALUES (99)")
    store.close()
    check = sqlite3.connect(tmp_path / "hub.sqlite3")
    assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 11
    check.close()


# ------------------------------------------------------------ power cuts
FRAME = 24 + 4096  # a WAL frame: its header and one page (SQLite's default page size)
WAL_HEADER = 32


class RecordingDisk:
    """What the card really holds of the WAL: its content as of the last
    fsync (a power cut may add later writes to it, in any order)."""

    def __init__(self):
        self.wal = b""
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith("-wal"):
            content = os.pread(fd, os.fstat(fd).st_size, 0)
            with self.lock:
                self.wal = content
        os.fsync(fd)


def _recovered(state: Path) -> tuple[list[int], list[int], set[str], list[int]]:
    db = sqlite3.connect(state / "hub.sqlite3")
    try:
        rows = [r[0] for r in db.execute("SELECT i FROM work ORDER BY i")]
        import json

        events = [json.loads(b) for (b,) in db.execute("SELECT body FROM outbox ORDER BY pos")]
        return rows, [e["data"]["i"] for e in events], {e["id"] for e in events}, [e["seq"] for e in events]
    finally:
        db.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 40), syncs=st.sets(st.integers(0, 40), max_size=6),
       reads=st.sets(st.integers(0, 40), max_size=6), survive=st.lists(st.booleans(), min_size=200, max_size=200),
       torn=st.booleans())
def test_power_cut_keeps_a_prefix_of_commits_and_everything_published(n, syncs, reads, survive, torn):
    """Each commit is a work row and its event, as the hub makes them. At a
    power cut the WAL holds what the last fsync covered plus any subset of
    the frames written since (the kernel writes pages back in any order, and
    a frame may be torn). Recovery must give a prefix of the commits, whole
    transactions only, with gapless seqs, and at least every commit the
    writer confirmed, including every entry the uplink could have sent."""
    tmp = Path(tempfile.mkdtemp(prefix="powercut-"))
    try:
        disk = RecordingDisk()
        store = Store(tmp / "live", fsync=disk)
        outbox = Outbox(store, "H", quota_bytes=10**8)
        store.db.execute("CREATE TABLE work(i INTEGER PRIMARY KEY)")
        with store.transaction() as db:
            db.execute("INSERT INTO store_meta(key, value) VALUES ('setup', 'done')")
        store.wait_durable(5)  # the hub has started
        base = store.durable_commits
        published: set[str] = set()
        for i in range(n):
            with store.transaction() as db:
                db.execute("INSERT INTO work(i) VALUES (?)", (i,))
                outbox.put("session.stopped", {"i": i})
            if i in syncs:
                store.wait_durable(5)
            if i in reads:
                published |= {r[1] for r in outbox.rows_after(0, 1000)}
        published |= {r[1] for r in outbox.rows_after(0, 1000)}
        with disk.lock:  # the cut: what the card holds ...
            durable_image = disk.wal
            confirmed = store.durable_commits - base
        live_wal = (tmp / "live" / "hub.sqlite3-wal").read_bytes()  # ... and what was only in the page cache
        image = bytearray(durable_image.ljust(len(live_wal), b"\0"))
        frames = (len(live_wal) - WAL_HEADER) // FRAME
        for k in range(frames):
            start = WAL_HEADER + k * FRAME
            if start + FRAME <= len(durable_image):
                continue  # on the card already
            if survive[k % len(survive)]:
                end = start + (FRAME // 2 if torn and k == frames - 1 else FRAME)
                image[start:end] = live_wal[start:end]
        (tmp / "cut").mkdir()
        shutil.copyfile(tmp / "live" / "hub.sqlite3", tmp / "cut" / "hub.sqlite3")
        (tmp / "cut" / "hub.sqlite3-wal").write_bytes(bytes(image))
        store.close()

        rows, event_is, ids, seqs = _recovered(tmp / "cut")
        k = len(rows)
        assert rows == list(range(k)), "not a prefix of the commits"
        assert event_is == rows, "a work row without its event or the other way round"
        assert seqs == list(range(1, k + 1)), "seqs not gapless"
        assert k >= confirmed, f"a confirmed commit was lost ({k} kept, {confirmed} confirmed)"
        assert published <= ids, "the uplink could have sent an event the cut took back"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_another_process_reading_never_takes_the_wal_away(tmp_path):
    """Technicians' tools and the tests read hub.sqlite3 from another
    process. Closing any descriptor of the database file in the hub's
    process drops its POSIX locks; a reader closing next would then take
    itself for the last connection, checkpoint and delete the WAL under the
    hub, and every later commit would go to a deleted file."""
    import subprocess
    import sys

    store = Store(tmp_path)
    store.db.execute("CREATE TABLE t(x)")
    count = [sys.executable, "-c", "import sqlite3, sys; "
             "print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM t').fetchone()[0])",
             str(tmp_path / "hub.sqlite3")]
    for i in range(3):
        with store.transaction() as db:
            db.execute("INSERT INTO t VALUES (?)", (i,))
        store.wait_durable(5)
        assert subprocess.run(count, capture_output=True, text=True, check=True).stdout.strip() == str(i + 1)
    store.close()
