"""R-M3 over a real broker: every malformed cloud-to-hub message is refused
with a reply on hub/{id}/reply and changes nothing; a good one applies once."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest

from units import Clock, rfc3339
from edge.cloud.downlink import Downlink
from edge.parts.payments.tariffs import apply_tariffs
from edge.core.outbox import Outbox
from edge.core.store import Store
from edge.cloud.uplink import Uplink

pytestmark = pytest.mark.hil

HUB = "HUB-D1"
TARIFF = {"id": "t1", "currency": "EUR", "price_per_kwh": "0.399", "vat_rate": "0.19",
          "effective_from": "2026-01-01T00:00:00.000Z"}


async def wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_sync_malformed_downlink_refused_with_reply_R_M3(tmp_path, broker, cloud_client):
    cloud = cloud_client(broker.url, topics=(f"hub/{HUB}/reply",))
    clock = Clock()
    store = Store(tmp_path / "state", clock=clock)
    outbox = Outbox(store, HUB, clock=clock, quota_bytes=4 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task] = []
    uplink = Uplink(HUB, broker.url, client_id=f"hub-{HUB}", outbox=outbox, clock=clock, version="t",
                    on_message=lambda t, p, s: tasks.append(loop.create_task(downlink.handle(t, p, s))),
                    on_link=lambda up: None, loop=loop, backoff=(0.05, 0.5))
    downlink = Downlink(HUB, store, clock=clock, reply=uplink.publish_reply, on_event=outbox.put,
                        allow_unsigned=True)
    gate_opened: list[dict] = []
    downlink.register("cmd:open_gate", lambda m: gate_opened.append(m) or {"gate": m["args"].get("gate")})
    downlink.register("tariffs", lambda m: apply_tariffs(store, m))  # as the payments part does
    uplink.start()
    await wait_until(lambda: uplink.link_state()["connected"])
    await asyncio.sleep(0.2)  # let the SUBACK land before the cloud publishes

    # A good batch first, so there is state that must stay unchanged.
    cloud.publish(f"hub/{HUB}/sync/tariffs", json.dumps({"v": 1, "id": "m-good", "tariffs": [TARIFF]}))
    await wait_until(lambda: len(cloud.received()) >= 1)
    assert json.loads(cloud.received()[0][1])["code"] == "ok"
    tariffs_file = tmp_path / "state" / "tariffs.json"
    before = tariffs_file.read_bytes()

    now = clock.now()
    cmd = {"v": 1, "id": "c-1", "ts": rfc3339(now), "expires": rfc3339(now + timedelta(minutes=5)),
           "args": {"gate": "entry-1"}}
    bad_tariff = dict(TARIFF, price_per_kwh="cheap")
    cases = [
        ("sync/tariffs", b"\xff\xfe not utf-8", "invalid_json"),
        ("sync/tariffs", b"{not json", "invalid_json"),
        ("sync/tariffs", json.dumps({"v": 2, "id": "m-v2", "tariffs": []}).encode(), "wrong_version"),
        ("sync/tariffs", json.dumps({"v": 1, "id": "m-s1", "tariffs": [bad_tariff]}).encode(), "schema"),
        ("sync/tariffs", json.dumps({"v": 1, "id": "m-s2"}).encode(), "schema"),
        ("sync/tariffs", json.dumps({"v": 1, "id": "m-r", "tariffs": [dict(TARIFF, id="t2", vat_rate="19")]}).encode(),
         "rejected"),
        ("sync/maintenance", json.dumps({"v": 1, "id": "m-s3", "windows": [{"id": "w"}]}).encode(), "schema"),
        ("sync/tariffs", json.dumps({"v": 1, "id": "m-big", "tariffs": [TARIFF] * 3000}).encode(), "too_large"),
        ("cmd/self_destruct", json.dumps(dict(cmd, id="c-x")).encode(), "unknown_command"),
        ("cmd/open_gate", json.dumps(dict(cmd, id="c-old", expires=rfc3339(now - timedelta(seconds=1)))).encode(),
         "expired"),
        ("cmd/open_gate", json.dumps(cmd).encode(), "ok"),
        ("cmd/open_gate", json.dumps(cmd).encode(), "duplicate"),
        ("sync/tariffs", json.dumps({"v": 1, "id": "m-good", "tariffs": [dict(TARIFF, price_per_kwh="9")]}).encode(),
         "duplicate"),
    ]
    for i, (topic, payload, _) in enumerate(cases):
        cloud.publish(f"hub/{HUB}/{topic}", payload)
        # one at a time: replies must be matched to their case
        await wait_until(lambda: len(cloud.received()) >= i + 2, 10)
    await uplink.stop()
    store.close()

    replies = [json.loads(p) for _, p, _ in cloud.received()][1:]
    for (topic, _, code), reply in zip(cases, replies):
        assert reply["code"] == code, (topic, reply)
        assert reply["v"] == 1 and reply["message"]
        assert reply["ok"] is (code in ("ok", "duplicate"))
    assert replies[-1]["data"]["original"]["code"] == "ok"
    assert tariffs_file.read_bytes() == before, "a refused message changed the tariffs"
    assert len(gate_opened) == 1, "the command ran more or less than once"
