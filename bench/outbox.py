"""Durable outbox appends: latency and throughput (R-M2, R-M6).

Baselines measured in the same run, on the same disk:
- a raw fsync loop: write + fsync of the same envelope bytes to a plain file,
  the floor for "durable when it returns" one event at a time;
- a naive TinyDB outbox: one insert per event (TinyDB rewrites its whole
  file on every write).
Goals: p99 of one put (the commit on the loop; the store's writer makes it
durable) <= 5 ms with a 100k backlog; >= 5,000 durable appends/s with group
commit (many puts each awaiting Store.durable()).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.common import Result, percentile
from edge.core.outbox import Outbox
from edge.core.store import Store

DATA = {"session": "S-000123", "connector": "C-04", "bay": "B-04", "method": "rfid", "token": "04A1****9C",
        "meter_start_wh": 1234567, "started_at": "2026-01-01T00:00:00.000Z"}
CMD = "python -m bench outbox"


def _raw_fsync(directory: Path, body: bytes, n: int) -> list[float]:
    lat = []
    fd = os.open(directory / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, body)
            os.fsync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return lat


def _puts(outbox: Outbox, n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        outbox.put("session.started", DATA)
        lat.append(time.perf_counter() - t)
    return lat


def _tinydb(directory: Path, n: int, backlog: int) -> list[float]:
    from tinydb import TinyDB

    db = TinyDB(directory / "naive.json")
    table = db.table("outbox")
    table.insert_multiple({"type": "session.started", "data": DATA} for _ in range(backlog))
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        table.insert({"type": "session.started", "data": DATA})
        lat.append(time.perf_counter() - t)
    db.close()
    return lat


async def _burst(outbox: Outbox, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            outbox.put("session.started", DATA)
            await outbox.store.durable()

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t)


def run(quick: bool) -> list[Result]:
    n = 300 if quick else 2000
    backlog = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        tmp = Path(tmp)
        store = Store(tmp / "state")
        outbox = Outbox(store, "BENCH", quota_bytes=2 * 1024**3)
        body = outbox.put("session.started", DATA).to_json().encode()
        raw = _raw_fsync(tmp, body, n)
        empty = _puts(outbox, n)
        for i in range(0, backlog, 5000):
            outbox.put_many([{"type": "session.started", "data": DATA}] * 5000)
        full = _puts(outbox, n)
        rate = asyncio.run(_burst(outbox, n * 5, 500))
        store.close()
        naive = _tinydb(tmp, 100 if quick else 200, 2000 if quick else 5000)
    raw_p99 = percentile(raw, 99) * 1000
    raw_rate = len(raw) / sum(raw)
    results = [
        Result("outbox.put_p99_empty", percentile(empty, 99) * 1000, "ms", "raw write+fsync loop p99", raw_p99,
               goal=5.0, command=CMD),
        Result(f"outbox.put_p99_backlog_{backlog // 1000}k", percentile(full, 99) * 1000, "ms",
               "raw write+fsync loop p99", raw_p99, goal=5.0, command=CMD),
        Result("outbox.put_rate_single", len(full) / sum(full), "appends/s",
               f"naive tinydb outbox (1 insert per event, {2000 if quick else 5000} queued)", len(naive) / sum(naive),
               lower_is_better=False, command=CMD),
        Result("outbox.durable_group_commit_rate", rate, "appends/s", "raw write+fsync loop (1 fsync per event)",
               raw_rate, goal=5000, lower_is_better=False, command=CMD),
    ]
    return results


if __name__ == "__main__":
    for r in run(quick=True):
        print(r.as_dict())
