"""Card authorisation at a million tokens: decision time, list memory, sync apply,
and tap to start command through the hub core.

Every figure has a baseline measured in the same run: a plain Python dict of
uid -> tuple holding the same list (what the store replaces).

``auth.tap_to_start_write_p99``: the hub core (edge.core.hub.Hub with the card
part, edge.parts.cards.part) runs on its own loop with the million-token list in its
store; a charger simulator answers Modbus TCP from another thread. A thread
hands a CardTap to the loop exactly as the reader driver does
(call_soon_threadsafe); the figure is the time from that hand-over to the
charger acknowledging the start write (the session written ahead in the
ledger in between). Each started session is then stopped while still
starting, so the connector stays Preparing for the next tap; the hub polls
once a minute, so no poll sits in the way. Baseline: the same path with the
dict as token source.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone

from bench.common import Result, percentile, rss_mb
from edge.parts.cards.auth import Authorisation, AuthPolicy, StartCharging
from edge.parts.cards.tokens import CachedAuthorisation, TokenInfo, TokenStore

CMD = "python -m bench auth"


def _uids(n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    return [("%014X" % rnd.getrandbits(56)) for _ in range(n)]


def _full_message(uids: list[str]) -> dict:
    return {"version": 1, "kind": "full", "upsert": [
        {"uid": u, "status": "Active", "type": "own" if i % 3 else "emsp",
         "group": f"fleet-{i % 500}", "reference": f"truck {i}"} for i, u in enumerate(uids)]}


class DictTokens:
    """The baseline token source: everything in one Python dict."""

    def __init__(self, message: dict):
        self.d = {i["uid"]: (i["status"], i["type"], i.get("group"), i.get("reference"), None)
                  for i in message["upsert"]}
        self.cache: dict = {}

    def lookup(self, uid):
        t = self.d.get(uid)
        return None if t is None else TokenInfo(uid, *t)

    def cached(self, uid, now):
        return None

    def remember(self, answer: CachedAuthorisation, now):
        self.cache[answer.uid] = answer


def _memory_of_store(path: str, uids: list[str], out) -> None:
    before = rss_mb()
    store = TokenStore(path)
    for u in uids:
        store.lookup(u)
    out.put(rss_mb() - before)


def _memory_of_dict(n: int, out) -> None:
    gc.collect()
    before = rss_mb()
    uids = _uids(n)
    d = {u: ("Active", "own" if i % 3 else "emsp", f"fleet-{i % 500}", f"truck {i}", None) for i, u in enumerate(uids)}
    del uids
    gc.collect()
    out.put(rss_mb() - before if d else 0.0)


def _in_fresh_process(target, *args) -> float:
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no pages shared with this one
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    value = q.get(timeout=300)
    p.join(30)
    return value


def _tap_times(tokens, uids: list[str], taps: int) -> list[float]:
    auth = Authorisation(tokens, AuthPolicy())
    now = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    rnd = random.Random(3)
    samples = []
    for k in range(taps):
        connector = f"c{k % 40}"
        auth.connector_changed(connector, "Available", now)
        auth.connector_changed(connector, "Preparing", now)
        uid = uids[rnd.randrange(len(uids))]
        t0 = time.perf_counter()
        out = auth.card_tapped(connector, uid, now)
        elapsed = time.perf_counter() - t0
        assert isinstance(out[0], StartCharging), out
        samples.append(elapsed * 1000)
        now += timedelta(seconds=3)
    return samples


def _hub_config(tmp: str, charger_port: int) -> str:
    from pathlib import Path

    maps = Path(__file__).resolve().parent.parent / "config" / "register-maps"
    return f"""
[hub]
id = "BENCH-AUTH"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp}/state"
[control]
socket = "{tmp}/control.sock"
[charging]
poll_interval_s = 60
[auth]
debounce_s = 0.5
[logging]
level = "warning"
[[chargers]]
id = "CH1"
address = "127.0.0.1:{charger_port}"
register_map = "{maps / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1 }} ]
[[readers]]
id = "R1"
path = "udp:127.0.0.1:9"
connector = "C1"
"""


def _charger_in_thread():
    """A charger simulator with a truck plugged in on C1, on its own loop and thread."""
    import threading
    from pathlib import Path

    from drivers.register_map import load_register_map
    from simulators.charger import ChargerSimulator

    maps = Path(__file__).resolve().parent.parent / "config" / "register-maps"
    sim = ChargerSimulator(load_register_map(maps / "hubcharge-mcs1200.toml"), 1)
    sim.plug(0, soc=20)
    ready = threading.Event()
    holder: dict = {}

    def serve():
        import asyncio

        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        loop.run_until_complete(sim.start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, name="bench-charger", daemon=True).start()
    ready.wait(10)
    return sim, holder["loop"]


async def _tap_to_start_samples(message: dict, uids: list[str], taps: int) -> tuple[list[float], list[float]]:
    """(store samples, dict samples) in ms: CardTap handed over -> start write acknowledged."""
    import asyncio
    import logging
    import threading

    from drivers.nfc_reader import CardTap
    from edge.core.config import parse_config
    from edge.core.hub import Hub
    import tomllib

    logging.getLogger("hubedge").setLevel(logging.WARNING)
    sim, sim_loop = _charger_in_thread()
    tmp = tempfile.mkdtemp(prefix="hubedge-bench-auth-")
    hub = None
    try:
        cfg = parse_config(tomllib.loads(_hub_config(tmp, sim.port)), os.path.join(tmp, "hub.toml"))
        hub = Hub(cfg)
        assert (await asyncio.to_thread(hub.tokens.apply, message)).ok
        await hub.start()
        assert await hub.wait_ready(10), "the charger simulator did not answer"
        cards = next(p for p in hub.capabilities if p.name == "cards")
        driver = hub.chargers["CH1"]
        loop = asyncio.get_running_loop()
        acked: asyncio.Queue = asyncio.Queue()
        plain_start = driver.start

        async def timed_start(connector_id: str) -> None:
            await plain_start(connector_id)
            acked.put_nowait(time.perf_counter())

        driver.start = timed_start
        rnd = random.Random(5)

        async def one(uid: str) -> float:
            handed = {}

            def reader_thread():  # what CardReader._hand_over does
                handed["t"] = time.perf_counter()
                loop.call_soon_threadsafe(cards._reader_event, "R1", CardTap("R1", uid, 7))

            threading.Thread(target=reader_thread).start()
            try:
                done = await asyncio.wait_for(acked.get(), 5)
            except asyncio.TimeoutError:
                raise RuntimeError(f"no start write within 5 s of a tap; last hub events: "
                                   f"{[row[3][:300] for row in hub.outbox.rows_after(0, 100_000)][-3:]}") from None
            c = hub.connectors["C1"]
            await hub.stop_session(c.session_id, reason="bench")  # still starting: ends at once
            return (done - handed["t"]) * 1000

        samples: dict[str, list[float]] = {"store": [], "dict": []}
        sources = {"store": cards.tokens.store, "dict": DictTokens(message)}
        # Every tap a different card: the same card again within the debounce
        # window counts once (R-A4) and would start nothing.
        cards_to_tap = iter(rnd.sample(uids, min(len(uids), 2 * (taps // 2) * 2)))
        for round_ in range(2):  # interleaved, so drift on the machine hits both alike
            for name in ("store", "dict"):
                cards.tokens.store = sources[name]
                for _ in range(taps // 2):
                    samples[name].append(await one(next(cards_to_tap)))
        cards.tokens.store = sources["store"]
        return samples["store"], samples["dict"]
    finally:
        if hub is not None:
            await hub.stop()
        asyncio.run_coroutine_threadsafe(sim.stop(), sim_loop).result(5)
        sim_loop.call_soon_threadsafe(sim_loop.stop)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool) -> list[Result]:
    n = 100_000 if quick else 1_000_000
    label = "100k tokens, quick" if quick else "1M tokens"
    uids = _uids(n)
    message = _full_message(uids)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokens.sqlite")
        store = TokenStore(path)

        t0 = time.perf_counter()
        applied = store.apply(message)
        full_s = time.perf_counter() - t0
        assert applied.ok, applied.message
        t0 = time.perf_counter()
        baseline = DictTokens(message)
        dict_full_s = time.perf_counter() - t0
        results.append(Result(f"auth.token_list_full_apply ({label})", full_s, "s",
                              "dict of uid -> tuple built from the same list", dict_full_s, goal=5.0, command=CMD))

        new = _uids(500, seed=99)
        delta = {"version": 2, "kind": "delta", "base_version": 1,
                 "upsert": [{"uid": u, "status": "Blocked", "type": "own"} for u in uids[:250]]
                 + [{"uid": u, "status": "Active", "type": "emsp", "group": "roam"} for u in new],
                 "remove": uids[250:500]}
        t0 = time.perf_counter()
        applied = store.apply(delta)
        delta_ms = (time.perf_counter() - t0) * 1000
        assert applied.ok, applied.message
        t0 = time.perf_counter()
        for i in delta["upsert"]:
            baseline.d[i["uid"]] = (i["status"], i["type"], i.get("group"), None, None)
        for u in delta["remove"]:
            baseline.d.pop(u, None)
        dict_delta_ms = (time.perf_counter() - t0) * 1000
        results.append(Result(f"auth.token_list_delta_1000 ({label})", delta_ms, "ms",
                              "the same delta applied to the dict (not durable)", dict_delta_ms, goal=50.0, command=CMD))

        live = uids[500:]
        taps = 2000 if quick else 5000
        store_ms = _tap_times(store, live, taps)
        dict_ms = _tap_times(baseline, live, taps)
        results.append(Result(f"auth.tap_to_decision_p99 ({label})", percentile(store_ms, 99), "ms",
                              "the same decisions with the dict as token source", percentile(dict_ms, 99),
                              goal=20.0, command=CMD))
        import asyncio

        hub_store_ms, hub_dict_ms = asyncio.run(_tap_to_start_samples(message, live, 200 if quick else 600))
        results.append(Result(f"auth.tap_to_start_write_p99 ({label}, hub core + Modbus TCP)",
                              percentile(hub_store_ms, 99), "ms",
                              "the same path with the dict as token source", percentile(hub_dict_ms, 99),
                              goal=20.0, command=CMD))
        store.close()
        del message, baseline
        gc.collect()

        store_mb = _in_fresh_process(_memory_of_store, path, live[:20_000])
        dict_mb = _in_fresh_process(_memory_of_dict, n)
        results.append(Result(f"auth.token_list_memory ({label})", store_mb, "MB",
                              "RSS of a dict of uid string -> tuple with the same list", dict_mb,
                              goal=64.0, command=CMD))
    return results


if __name__ == "__main__":
    for r in run(quick=True):
        print(r.as_dict())
