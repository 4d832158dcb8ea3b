"""R-M3 over a real mosquitto with a real daemon: a cloud message is
acknowledged to the broker only once it has been applied and its answer
recorded, durably. A daemon SIGKILLed between receipt and apply gets the
message again from the broker when it comes back, and applies it once; one
killed after the apply but before the acknowledgement gets it again too, and
answers it as a duplicate. At start, and when the broker kept no session,
the hub asks the cloud for a resync.

The pause in which the daemon is killed is put in from outside the product:
hil_tests/sync/slow_apply.py wraps the daemon's entry point."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from hil_tests.bare_hub import COMMAND_KEY, BareHub, until
from hil_tests.broker import Broker

pytestmark = pytest.mark.hil

HUB = "ACK-01"
SLOW = Path(__file__).with_name("slow_apply.py")
BLOCK = {"v": 1, "id": "tokens-v1", "version": 1, "kind": "full", "remove": [],
         "upsert": [{"uid": "04BAD001", "status": "Blocked", "type": "own", "reference": "stolen card"},
                    {"uid": "04600D01", "status": "Active", "type": "own"}]}




def token_list(state: Path) -> tuple[int, dict[str, str]]:
    path = state / "tokens.sqlite3"
    if not path.exists():
        return 0, {}
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM token_meta WHERE key = 'version'").fetchone()
        return (row[0] if row else 0), dict(db.execute("SELECT uid, status FROM token"))
    finally:
        db.close()


def cloud_seen(cloud, topic_suffix: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in cloud.received(f"hub/{HUB}/{topic_suffix}")]


@pytest.mark.parametrize("where", ["apply", "ack"])
async def test_sync_killed_before_the_ack_the_broker_delivers_again_and_it_applies_once_R_M3(
        tmp_path, broker, cloud_client, where):
    cloud = cloud_client(broker.url, topics=(f"hub/{HUB}/reply", f"hub/{HUB}/event/#"))
    mark = tmp_path / "reached"
    hub = BareHub(tmp_path, hub_id=HUB, broker_url=broker.url, entry=[str(SLOW), where])
    hub.start(HUBEDGE_TEST_MARK=str(mark))
    try:
        await hub.wait_ready()
        await asyncio.sleep(0.5)  # the subscription is in place
        await asyncio.to_thread(cloud.publish, f"hub/{HUB}/sync/tokens", json.dumps(BLOCK), key=COMMAND_KEY)
        await until(mark.exists, what=f"the daemon reaching the {where} point")
        hub.kill()
        version, _ = token_list(hub.state)
        assert version == (0 if where == "apply" else 1), version

        hub.entry = ["-m", "edge.cli"]  # the real daemon, restarted on the same state
        hub.start()
        await hub.wait_ready()
        version, tokens = await until(lambda: token_list(hub.state)[0] == 1 and token_list(hub.state),
                                      what="the token list applied after the restart")
        assert tokens == {"04BAD001": "Blocked", "04600D01": "Active"}
        # Applied once: one sync.applied, whatever was delivered twice.
        await until(lambda: len([r for r in cloud_seen(cloud, "reply") if r["id"] == BLOCK["id"]]) >= (
            1 if where == "apply" else 2), what="the replies")
        await asyncio.sleep(0.5)
        codes = [r["code"] for r in cloud_seen(cloud, "reply") if r["id"] == BLOCK["id"]]
        assert codes == (["ok"] if where == "apply" else ["ok", "duplicate"]), codes
        applied = [e for e in cloud_seen(cloud, "event/sync") if e["type"] == "sync.applied"]
        assert [e["data"]["message_id"] for e in applied] == [BLOCK["id"]], applied
    finally:
        hub.terminate()


async def test_sync_resync_is_asked_at_start_and_when_the_broker_lost_the_session_R_M3(tmp_path, cloud_client):
    """A broker without persistence forgets the hub's session (and what was
    queued in it) when it restarts: the hub notices (CONNACK without a
    session) and asks again, saying what it holds."""
    broker = Broker(tmp_path / "volatile", persistence=False).start()
    hub = BareHub(tmp_path, hub_id=HUB, broker_url=broker.url)
    try:
        cloud = cloud_client(broker.url, client_id="cloud-resync", topics=(f"hub/{HUB}/event/sync",))
        hub.start()
        await hub.wait_ready()
        asked = await until(lambda: [e["data"] for e in cloud_seen(cloud, "event/sync")
                                     if e["type"] == "sync.resync_requested"], what="the resync request at start")
        assert asked[0]["reason"] == "start" and asked[0]["held"]["tokens"] == {"version": 0}, asked
        assert sorted(asked[0]["kinds"]) == ["bookings", "maintenance", "tariffs", "tokens"]

        broker.stop()
        broker.start()
        # The broker forgot the cloud's session too, so the event may not
        # reach it; the daemon's log says what it asked.
        await until(lambda: "downlink.resync_requested reason=session_lost" in hub.log_text(),
                    what="the resync request after the broker lost the session")
        assert hub.log_text().count("downlink.resync_requested") == 2
    finally:
        hub.terminate()
        broker.kill()
