"""Scale (issue 9): a hub of 40 connectors and 8 gates with 1,000,000 tokens
and 1,000,000 sessions in its history.

Measured on the real daemon, with baselines from the same run:
- `hubctl sessions` filters over the control socket (goal ≤ 100 ms each),
  against the same query forced to scan the table (no index);
- session insert with 1M sessions in the ledger against 1k (goal ≤ 2×);
- resident memory, idle CPU and start to READY of the daemon on that state,
  against the same daemon on an empty state directory.
Quick mode uses 100,000 of each and says so in the names.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import Result, cpu_seconds, percentile, rss_mb
from units import rfc3339
from edge.core.control import request
from edge.core.sessions import Session, SessionLedger

ROOT = Path(__file__).resolve().parent.parent
CMD = "python -m bench scale"
HUB = "SCALE-01"
T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)


def _connectors() -> list[str]:
    return [f"C{i:02d}" for i in range(1, 41)]


def _fill_sessions(state: Path, n: int) -> list[str]:
    """n past sessions across 40 connectors and 5,000 tokens; returns some tokens."""
    state.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state / "hub.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    SessionLedger(db, HUB)  # creates the table and its indexes
    rng = random.Random(1)
    tokens = [f"04{rng.getrandbits(48):012X}" for _ in range(5000)]
    conns = _connectors()
    step = (365 * 86400) / n
    db.execute("BEGIN")
    rows = []
    for i in range(n):
        start = T0 + timedelta(seconds=i * step)
        e = rng.randint(20_000, 600_000)
        rows.append((str(uuid.UUID(int=rng.getrandbits(128))), HUB, rng.choice(conns), "B", "own_card",
                     rng.choice(tokens), "****", "stopped", rfc3339(start), rfc3339(start + timedelta(minutes=45)),
                     1_000_000 + i, 1_000_000 + i + e, e, "ev_finished", rfc3339(start)))
        if len(rows) == 20000:
            db.executemany("INSERT INTO sessions (id,hub,connector,bay,method,token,token_masked,status,started_at,stopped_at,"
                           "meter_start_wh,meter_stop_wh,energy_wh,stop_reason,updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            rows = []
    if rows:
        db.executemany("INSERT INTO sessions (id,hub,connector,bay,method,token,token_masked,status,started_at,stopped_at,"
                       "meter_start_wh,meter_stop_wh,energy_wh,stop_reason,updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("COMMIT")
    db.close()
    return tokens[:20]


def _fill_tokens(state: Path, n: int) -> None:
    from edge.parts.cards.tokens import TokenStore

    rng = random.Random(2)
    store = TokenStore(str(state / "tokens.sqlite3"))
    upsert = [{"uid": f"{rng.getrandbits(56):014X}", "status": "Active", "type": "own"} for _ in range(n)]
    result = store.apply({"v": 1, "id": "scale", "version": 1, "kind": "full", "upsert": upsert, "remove": []})
    if not result.ok:
        raise RuntimeError(f"token list refused: {result.reasons[:3]}")
    store.close()


def _insert_time(state: Path, count: int = 300) -> float:
    """Median seconds per session insert (durable) into the ledger as it is."""
    db = sqlite3.connect(state / "hub.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    ledger = SessionLedger(db, HUB)
    times = []
    now = datetime.now(timezone.utc)
    for i in range(count):
        s = Session(id=str(uuid.uuid4()), hub=HUB, connector="C01", method="own_card", status="starting",
                    started_at=now + timedelta(seconds=i), token="04AABBCCDD")
        t = time.perf_counter()
        ledger.insert(s, now)
        times.append(time.perf_counter() - t)
    db.close()
    return statistics.median(times)


def _gates(barrier_ports: list[int]) -> str:
    """Eight gates: four entries and four exits, each with its barrier I/O
    module (simulated) and a camera listener on a free port."""
    from simulators.broker import free_port

    out = []
    for n, port in enumerate(barrier_ports, 1):
        role = "entry" if n <= len(barrier_ports) // 2 else "exit"
        out.append(f"""[[gates]]
id = "G{n}"
role = "{role}"
barrier = {{ address = "127.0.0.1:{port}", unit = 1 }}
camera = {{ listen = "127.0.0.1:{free_port()}", vendor = "{'hikvision' if n % 2 else 'axis'}", secret = "scale-bench-secret" }}
""")
    return "\n".join(out)


def _start_barriers(count: int) -> tuple[subprocess.Popen, list[int]]:
    import re

    proc = subprocess.Popen([sys.executable, "-m", "simulators.barrier", "--count", str(count), "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    ports = []
    while len(ports) < count:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise RuntimeError("the barrier simulators did not start; run python -m simulators.barrier by hand to see why")
        if m := re.search(r"port=(\d+)", line):
            ports.append(int(m.group(1)))
    return proc, ports


def _config(tmp: Path, state: Path, ports: list[int], gates: str = "") -> Path:
    from bench.daemon import hub_config

    return hub_config(tmp / f"{state.name}.toml", state, ports, hub_id=HUB, tail=gates)


def _start_daemon(cfg: Path, tmp: Path) -> tuple[subprocess.Popen, float]:
    sock_path = tmp / f"notify-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(120)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)], cwd=ROOT,
                            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not sock.recv(4096).decode().startswith("READY=1"):
            pass
        return proc, time.monotonic() - t0
    finally:
        sock.close()


def _idle(proc: subprocess.Popen, seconds: float) -> tuple[float, float]:
    time.sleep(2)
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0) * 100
    return cpu, rss_mb(proc.pid)


async def _filters(sock: Path, tokens: list[str]) -> dict[str, list[float]]:
    cases = {
        "token": lambda: {"token": random.choice(tokens)},
        "connector": lambda: {"connector": random.choice(_connectors())},
        "status": lambda: {"status": "stopped"},
        "since_until": lambda: {"since": rfc3339(T0 + timedelta(days=100)), "until": rfc3339(T0 + timedelta(days=101))},
        "token_and_connector": lambda: {"token": random.choice(tokens), "connector": random.choice(_connectors())},
    }
    out: dict[str, list[float]] = {}
    for name, args in cases.items():
        times = []
        for _ in range(20):
            t = time.perf_counter()
            resp = await request(sock, "sessions", {**args(), "limit": 100})
            times.append(time.perf_counter() - t)
            if not resp.get("ok"):
                raise RuntimeError(f"sessions {name} refused: {resp}")
        out[name] = times
    return out


def _scan_baseline(state: Path, tokens: list[str]) -> float:
    """The token filter forced to scan the table (NOT INDEXED), same DB."""
    db = sqlite3.connect(f"file:{state / 'hub.sqlite3'}?mode=ro", uri=True)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        db.execute("SELECT * FROM sessions NOT INDEXED WHERE token=? ORDER BY started_at DESC LIMIT 100",
                   (random.choice(tokens),)).fetchall()
        times.append(time.perf_counter() - t)
    db.close()
    return statistics.median(times)


def run(quick: bool) -> list[Result]:
    from bench.polling import _start_simulator_process

    n = 100_000 if quick else 1_000_000
    tag = f"{n // 1000}k" if quick else "1M"
    idle_s = 10 if quick else 30
    sims, ports = [], []
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(2):
            proc, more = _start_simulator_process(5)
            sims.append(proc)
            ports += more
        barriers, barrier_ports = _start_barriers(8)
        sims.append(barriers)
        gates = _gates(barrier_ports)
        with tempfile.TemporaryDirectory(prefix="hubedge-scale-") as d:
            tmp = Path(d)
            empty, big = tmp / "empty", tmp / "big"
            empty.mkdir()
            tokens = _fill_sessions(big, n)
            _fill_tokens(big, n)
            small = tmp / "small"
            _fill_sessions(small, 1000)
            ins_small = _insert_time(small)
            ins_big = _insert_time(big)

            p_empty, ready_empty = _start_daemon(_config(tmp, empty, ports, gates), tmp)
            procs.append(p_empty)
            cpu_empty, rss_empty = _idle(p_empty, idle_s)
            p_empty.terminate()
            p_empty.wait(15)

            p_big, ready_big = _start_daemon(_config(tmp, big, ports, gates), tmp)
            procs.append(p_big)
            cpu_big, rss_big = _idle(p_big, idle_s)
            filters = asyncio.run(_filters(big / "control.sock", tokens))
            p_big.terminate()
            p_big.wait(15)
            scan = _scan_baseline(big, tokens)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in sims:
            p.kill()
            p.wait()
    results = [
        Result(f"scale.sessions_filter_{name}_p99_{tag}", percentile(times, 99) * 1000, "ms",
               "the token filter forced to scan the table (NOT INDEXED), same ledger", scan * 1000, goal=100, command=CMD)
        for name, times in filters.items()
    ]
    results += [
        Result(f"scale.session_insert_at_{tag}_history", ins_big * 1000, "ms", "the same insert with 1k sessions in the ledger",
               ins_small * 1000, goal=round(2 * ins_small * 1000, 3), command=CMD),
        Result(f"scale.daemon_rss_{tag}_tokens_and_sessions", rss_big, "MB", "the same daemon on an empty state directory",
               rss_empty, goal=150, command=CMD),
        Result(f"scale.daemon_idle_cpu_{tag}", cpu_big, "% of one core", "the same daemon on an empty state directory",
               cpu_empty, goal=5, command=CMD),
        Result(f"scale.start_to_ready_{tag}", ready_big, "s", "the same daemon on an empty state directory", ready_empty,
               command=CMD),
    ]
    return results
