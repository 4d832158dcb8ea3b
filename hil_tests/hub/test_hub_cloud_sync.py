"""The daemon's cloud link through a real mosquitto: downlink stores tokens
and bookings, refuses bad messages with a reply, and `hubctl resync` follows
the cloud's resend (R-M3, R-A3, R-B1, issue 3 item 6)."""

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from units import rfc3339
from edge.cloud.envelope import validate_event
from hil_tests.broker import Broker, CloudClient
from hil_tests.hub.conftest import DaemonUnderTest

pytestmark = pytest.mark.hil


def _msg(**kw) -> bytes:
    return json.dumps({"v": 1, "id": str(uuid.uuid4()), **kw}).encode()


async def _reply(cloud, msg_id: str, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _t, p, _r in cloud.received("hub/HIL-01/reply"):
            d = json.loads(p)
            if d.get("id") == msg_id:
                return d
        await asyncio.sleep(0.05)
    raise AssertionError(f"no reply to {msg_id}")


async def test_sync_messages_are_stored_refused_and_resynced(tmp_path, sims):
    broker = Broker(tmp_path / "broker").start()
    cloud = CloudClient(broker.url, client_id="cloud-hub-test", topics=("hub/HIL-01/#",)).start()
    d = DaemonUnderTest(tmp_path, sims)
    # [cloud] goes before the arrays of tables.
    d.config.write_text(f'[cloud]\nbroker = "{broker.url}"\nclient_id = "hil-01"\nallow_unsigned = true\n'
                        + d.config.read_text())
    d.needs_cloud = True  # ready means connected to the broker too
    d.start()
    try:
        await d.wait_ready()
        # R-A3: a full token list is stored and answered.
        tokens = _msg(version=1, kind="full", upsert=[{"uid": "04A1B2C3", "status": "Active", "type": "own", "group": "FLEET-1", "reference": "truck 12"}], remove=[])
        tid = json.loads(tokens)["id"]
        cloud.publish("hub/HIL-01/sync/tokens", tokens)
        r = await _reply(cloud, tid)
        assert r["ok"] and r["code"] == "ok", r
        # A delta on the wrong base is refused and changes nothing.
        bad = _msg(version=5, kind="delta", upsert=[{"uid": "04FFFFFF", "status": "Active", "type": "own"}], remove=[])
        cloud.publish("hub/HIL-01/sync/tokens", bad)
        r = await _reply(cloud, json.loads(bad)["id"])
        assert not r["ok"], r
        # R-B1: one good booking, one beyond six months: the good one applies.
        now = datetime.now(timezone.utc)
        good = {"id": "BK-1", "slot_start": rfc3339(now + timedelta(hours=3)), "slot_end": rfc3339(now + timedelta(hours=4)),
                "connector_type": "MCS", "side": "left", "plates": ["NL-12-ABC"]}
        far = dict(good, id="BK-2", slot_start=rfc3339(now + timedelta(days=300)), slot_end=rfc3339(now + timedelta(days=300, hours=1)))
        bk = _msg(upsert=[good, far], cancel=[])
        cloud.publish("hub/HIL-01/sync/bookings", bk)
        r = await _reply(cloud, json.loads(bk)["id"])
        assert r["ok"], r
        res = {x["booking"]: x["ok"] for x in r["data"]["results"]}
        assert res == {"BK-1": True, "BK-2": False}
        # R-M3: non-JSON is refused with a reply (no id to echo: the reply says so).
        cloud.publish("hub/HIL-01/sync/tariffs", b"{not json")
        await asyncio.sleep(1.0)
        assert any(json.loads(p).get("ok") is False for _t, p, _r in cloud.received("hub/HIL-01/reply"))

        # hubctl resync: the cloud sees the request and resends every kind.
        task = asyncio.create_task(d.hubctl("resync", "--timeout", "20"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(b"sync.resync_requested" in p and b'"technician"' in p
                                                      for _t, p, _r in cloud.received("hub/HIL-01/event/sync")):
            await asyncio.sleep(0.1)
        eff = rfc3339(now - timedelta(days=1))
        cloud.publish("hub/HIL-01/sync/tokens", _msg(version=2, kind="full", upsert=[{"uid": "04A1B2C3", "status": "Blocked", "type": "own"}], remove=[]))
        cloud.publish("hub/HIL-01/sync/bookings", _msg(upsert=[good], cancel=[]))
        cloud.publish("hub/HIL-01/sync/tariffs", _msg(tariffs=[{"id": "T1", "currency": "EUR", "price_per_kwh": "0.399", "vat_rate": "0.21", "effective_from": eff}]))
        cloud.publish("hub/HIL-01/sync/maintenance", _msg(windows=[]))
        proc = await task
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "resync complete" in proc.stdout
        events = [json.loads(p) for _t, p, _r in cloud.received("hub/HIL-01/event/")]
        for e in events:
            validate_event(e)
        types = [e["type"] for e in events]
        assert "booking.rejected" in types and types.count("sync.applied") >= 6
    finally:
        if d.proc.poll() is None:
            d.terminate()
        cloud.stop()
        broker.kill()
