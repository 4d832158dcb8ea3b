"""R-M2 against a real mosquitto: the outbox drains completely, in order per
stream, with stable ids, across broker restarts, uplink crashes and a broker
that is down when the hub starts. R-M4: retained status with a last will."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from units import Clock
from edge.cloud.schemas import validator
from edge.core.outbox import Outbox
from edge.core.store import Store
from edge.cloud.uplink import Uplink

pytestmark = pytest.mark.hil

HUB = "HUB-T1"
RUNNER = Path(__file__).with_name("uplink_runner.py")


def check_delivery(received: list[tuple[str, bytes, bool]], expected_ids: set[str]) -> dict[str, int]:
    """Every expected id arrived; per stream the first arrivals are seq 1..N
    in order without gaps; a repeated seq repeats the same id. Returns the
    number of duplicates per stream."""
    seen: dict[str, str] = {}
    first_seqs: dict[str, list[int]] = defaultdict(list)
    by_seq: dict[tuple[str, int], str] = {}
    dups: dict[str, int] = defaultdict(int)
    for topic, payload, _ in received:
        if "/event/" not in topic:
            continue
        env = json.loads(payload)
        assert topic == f"hub/{HUB}/event/{env['stream']}"
        key = (env["stream"], env["seq"])
        if key in by_seq:
            assert by_seq[key] == env["id"], f"seq {key} reused by another message"
            dups[env["stream"]] += 1
            continue
        assert env["id"] not in seen, "one id with two seqs"
        by_seq[key] = env["id"]
        seen[env["id"]] = env["stream"]
        first_seqs[env["stream"]].append(env["seq"])
    missing = expected_ids - set(seen)
    assert not missing, f"{len(missing)} of {len(expected_ids)} events never arrived"
    for stream, seqs in first_seqs.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"stream {stream}: out of order or gaps"
    return dict(dups)


def make_uplink(outbox, url, loop, links=None, **kw):
    return Uplink(HUB, url, client_id=f"hub-{HUB}", outbox=outbox, clock=Clock(), version="1.2.3",
                  on_message=kw.pop("on_message", lambda t, p, s: None),
                  on_link=(links.append if links is not None else (lambda up: None)), loop=loop,
                  backoff=(0.05, 0.5), **kw)


async def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


STREAMS = ["session", "payment", "connector", "audit"]


def put_events(outbox: Outbox, n: int, start: int = 0) -> list[str]:
    envs = outbox.put_many([{"type": f"{STREAMS[i % 4]}.test", "data": {"n": i}} for i in range(start, start + n)])
    return [e.id for e in envs]


async def test_sync_5000_events_20_broker_restarts_R_M2(tmp_path, broker, cloud_client):
    """R-M2: 5,000 events put while the broker stops and restarts 20 times in
    the middle of the drain all arrive, per-stream seq gapless and in order,
    duplicates only with the same id."""
    cloud = cloud_client(broker.url)
    store = Store(tmp_path / "state")
    outbox = Outbox(store, HUB, quota_bytes=64 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    links: list[bool] = []
    uplink = make_uplink(outbox, broker.url, loop, links=links, window=20)
    ids: list[str] = []
    uplink.start()
    try:
        for round_ in range(20):
            ids += put_events(outbox, 250, len(ids))
            ups = links.count(True)
            broker.start()
            await wait_until(lambda: links.count(True) > ups)
            depth = outbox.depth()
            # stop as soon as this connection's drain is visibly under way, so each restart cuts it
            await wait_until(lambda: outbox.depth() < depth - 20)
            broker.stop()
            assert outbox.depth() > 0, "the drain finished before the restart: the test would prove nothing"
        broker.start()
        await wait_until(lambda: outbox.depth() == 0, 60)
        got = lambda: len({json.loads(p)["id"] for t, p, _ in cloud.received(f"hub/{HUB}/event/")})
        ok = cloud.wait_for(lambda: got() >= 5000, 30)
        assert ok, (got(), len(cloud.received(f"hub/{HUB}/event/")), broker.log_text()[-3000:])
    finally:
        await uplink.stop()
        store.close()
    assert len(ids) == 5000
    check_delivery(cloud.received(), set(ids))
    assert links.count(True) == 21 and uplink.link_state()["reconnects"] >= 20


async def test_sync_broker_down_at_start_offline_flag_R_M2(tmp_path, broker, cloud_client):
    """R-M1/R-M2: the hub starts with the broker down; events queued while
    offline arrive once it is up, flagged offline; those queued online are not."""
    cloud = cloud_client(broker.url)
    broker.stop()
    store = Store(tmp_path / "state")
    outbox = Outbox(store, HUB, quota_bytes=16 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    links: list[bool] = []
    uplink = make_uplink(outbox, broker.url, loop, links=links)
    uplink.start()
    try:
        offline_ids = put_events(outbox, 100)  # link never came up: offline by default
        await asyncio.sleep(0.5)
        state = uplink.link_state()
        assert state["connected"] is False and state["last_error"] and state["reconnects"] >= 1
        broker.start()
        await wait_until(lambda: outbox.depth() == 0)
        online_ids = put_events(outbox, 20, 100)
        await wait_until(lambda: outbox.depth() == 0)
        assert cloud.wait_for(lambda: len(cloud.received(f"hub/{HUB}/event/")) >= 120)
    finally:
        await uplink.stop()
        store.close()
    check_delivery(cloud.received(), set(offline_ids + online_ids))
    for topic, payload, _ in cloud.received(f"hub/{HUB}/event/"):
        env = json.loads(payload)
        validator("envelope").validate(env)  # the test's own event types have no data schema
        assert env["offline"] is (env["id"] in offline_ids)
    assert links[0] is True and links[-1] is False


async def test_sync_status_retained_with_last_will_R_M4(tmp_path, broker, cloud_client):
    """R-M4: online:true retained on connect; a hub that vanishes (socket cut,
    no goodbye) leaves online:false via its will; a clean stop publishes
    online:false itself."""
    store = Store(tmp_path / "state")
    outbox = Outbox(store, HUB, quota_bytes=1024 * 1024)
    loop = asyncio.get_running_loop()
    uplink = make_uplink(outbox, broker.url, loop, keepalive=1)
    uplink.start()
    await wait_until(lambda: uplink.link_state()["connected"])
    late = cloud_client(broker.url, client_id="late-joiner", topics=(f"hub/{HUB}/status",))
    assert late.wait_for(lambda: late.received(f"hub/{HUB}/status"))
    topic, payload, retained = late.received()[0]
    status = json.loads(payload)
    assert retained and status["online"] is True and status["version"] == "1.2.3" and status["v"] == 1
    # Vanish: kill the socket under paho without a DISCONNECT packet.
    uplink._stopping = True
    uplink._task.cancel()
    uplink._conn.client.socket().shutdown(2)
    assert late.wait_for(lambda: any(not json.loads(p)["online"] for _, p, _ in late.received()), 10)
    await uplink.stop()
    store.close()
    # And a clean stop says so itself.
    store = Store(tmp_path / "state")
    outbox = Outbox(store, HUB, quota_bytes=1024 * 1024)
    uplink = make_uplink(outbox, broker.url, loop)
    n = len(late.received())
    uplink.start()
    await wait_until(lambda: uplink.link_state()["connected"])
    assert late.wait_for(lambda: len(late.received()) > n and json.loads(late.received()[-1][1])["online"])
    await uplink.stop()
    assert late.wait_for(lambda: json.loads(late.received()[-1][1])["online"] is False)
    store.close()


def test_sync_uplink_process_killed_mid_drain_R_M2(tmp_path, broker, cloud_client):
    """R-M2: the uplink's process is SIGKILLed three times while draining a
    backlog; started again, it delivers everything, in order, same ids."""
    cloud = cloud_client(broker.url)
    state = tmp_path / "state"
    store = Store(state)
    outbox = Outbox(store, HUB, quota_bytes=64 * 1024 * 1024)
    ids = put_events(outbox, 3000)
    store.close()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kills = 0
    for _ in range(3):
        before = len(cloud.received(f"hub/{HUB}/event/"))
        proc = subprocess.Popen([sys.executable, str(RUNNER), str(state), broker.url, HUB, "5"], env=env,
                                stdout=subprocess.DEVNULL)
        try:
            assert cloud.wait_for(lambda: len(cloud.received(f"hub/{HUB}/event/")) > before + 50, 20)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    store = Store(state)
    left = Outbox(store, HUB, quota_bytes=64 * 1024 * 1024).depth()
    store.close()
    assert left > 0, "the backlog drained before the last kill: the test would prove nothing"
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(state), broker.url, HUB, "50"], env=env,
                            stdout=subprocess.DEVNULL)
    try:
        assert cloud.wait_for(
            lambda: len({json.loads(p)["id"] for _, p, _ in cloud.received(f"hub/{HUB}/event/")}) >= 3000, 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    check_delivery(cloud.received(), set(ids))
    assert kills == 3
