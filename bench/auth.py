"""Card authorisation at a million tokens: decision time, list memory, sync apply.

Every figure has a baseline measured in the same run: a plain Python dict of
uid -> tuple holding the same list (what the store replaces).
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
from edge.auth import Authorisation, AuthPolicy, StartCharging
from edge.tokens import CachedAuthorisation, TokenInfo, TokenStore

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
