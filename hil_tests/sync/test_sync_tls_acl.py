"""R-M5: TLS with client certificates against mosquitto's TLS listener; with
the per-hub ACL (certificate CN = hub id) a hub can neither publish nor
subscribe under another hub's root."""

from __future__ import annotations

import asyncio
import json
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.core.outbox import Outbox
from edge.core.store import Store
from edge.cloud.uplink import Uplink
from hil_tests.broker import HUB_ACL, Broker

pytestmark = pytest.mark.hil


async def wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def tls_broker(tmp_path, pki):
    b = Broker(tmp_path / "tls-broker", pki=pki, acl=HUB_ACL, tls_only=True).start()
    yield b
    b.kill()


async def test_sync_tls_client_certificates_and_acl_R_M5(tmp_path, tls_broker, pki, cloud_client):
    cloud = cloud_client(tls_broker.tls_url, tls=pki.client("cloud"))
    store = Store(tmp_path / "a")
    outbox = Outbox(store, "HUB-A", quota_bytes=1024 * 1024)
    loop = asyncio.get_running_loop()
    uplink = Uplink("HUB-A", tls_broker.tls_url, client_id="hub-HUB-A", outbox=outbox, tls=pki.client("HUB-A"),
                    version="t", on_message=lambda t, p, s: None, on_link=lambda up: None, loop=loop,
                    backoff=(0.05, 0.5))
    uplink.start()
    try:
        env = outbox.put("session.started", {"n": 1})
        await wait_until(lambda: outbox.depth() == 0)
        await wait_until(lambda: any(env.id in p.decode() for _, p, _ in cloud.received("hub/HUB-A/event/")))
        await wait_until(lambda: cloud.received("hub/HUB-A/status"))
    finally:
        await uplink.stop()
        store.close()

    # HUB-A's credentials used against HUB-B's root.
    rogue_msgs: list[str] = []
    granted: list = []
    acks: list = []
    rogue = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rogue", protocol=mqtt.MQTTv5)
    a = pki.client("HUB-A")
    rogue.tls_set(ca_certs=a["ca"], certfile=a["cert"], keyfile=a["key"])
    rogue.on_message = lambda c, u, m: rogue_msgs.append(m.topic)
    rogue.on_subscribe = lambda c, u, mid, codes, p: granted.extend(codes)
    rogue.on_publish = lambda c, u, mid, code, p: acks.append(code)
    rogue.connect("127.0.0.1", tls_broker.tls_port)
    rogue.loop_start()
    try:
        rogue.subscribe("hub/HUB-B/#", qos=1)
        await wait_until(lambda: granted)
        cloud.publish("hub/HUB-B/cmd/open_gate", json.dumps({"v": 1}))
        await asyncio.sleep(0.3)
        rogue.publish("hub/HUB-B/event/session", json.dumps({"forged": True}), qos=1)
        await wait_until(lambda: acks)
        await asyncio.sleep(0.3)
    finally:
        rogue.disconnect()
        rogue.loop_stop()
    assert acks[0].is_failure, "the broker accepted a publish under another hub's root"
    assert not cloud.received("hub/HUB-B/event/"), "a hub published under another hub's root"
    # mosquitto 2.0 may grant the SUBACK and apply the ACL to each message
    # instead: what counts is that nothing of HUB-B's ever reaches HUB-A.
    assert granted and rogue_msgs == [], "a hub received another hub's commands"

    # Without a client certificate the hub does not get in, and says why.
    store = Store(tmp_path / "c")
    outbox = Outbox(store, "HUB-C", quota_bytes=1024 * 1024)
    nocert = Uplink("HUB-C", tls_broker.tls_url, client_id="hub-HUB-C", outbox=outbox, tls={"ca": a["ca"]},
                    version="t", on_message=lambda t, p, s: None, on_link=lambda up: None, loop=loop,
                    backoff=(0.05, 0.5))
    nocert.start()
    try:
        await wait_until(lambda: nocert.link_state()["reconnects"] >= 2)
        assert not nocert.link_state()["connected"]
        assert nocert.link_state()["last_error"]
    finally:
        await nocert.stop()
        store.close()
