"""A full token list larger than one MQTT message arrives in parts and
applies whole once the last part is in (R-A3, R-M3)."""

import asyncio
import json

import pytest

from hil_tests.hub.conftest import DaemonUnderTest
from simulators.broker import Broker
from simulators.cloud import CloudSimulator

pytestmark = pytest.mark.hil


def part(n: int, parts: int, uids: list[str], version: int = 7) -> dict:
    return {"version": version, "kind": "full", "part": n, "parts": parts,
            "upsert": [{"uid": u, "status": "Active", "type": "own"} for u in uids], "remove": []}


async def test_r_a3_a_chunked_full_list_applies_whole_on_its_last_part(tmp_path, sims):
    broker = Broker(tmp_path / "broker", persistence=False).start()
    cloud = CloudSimulator(broker.url, "HIL-01").start()
    d = DaemonUnderTest(tmp_path, sims)
    d.config.write_text(f'[cloud]\nbroker = "{broker.url}"\nallow_unsigned = true\n' + d.config.read_text())
    d.start()
    try:
        await d.wait_ready()

        async def version() -> int:
            out = await d.hubctl("--json", "tokens", "version")
            return json.loads(out.stdout)["list"]["version"]

        r1 = await asyncio.to_thread(cloud.reply_to, cloud.send("tokens", part(1, 3, ["04AA0001", "04AA0002"])))
        r3 = await asyncio.to_thread(cloud.reply_to, cloud.send("tokens", part(3, 3, ["04AA0005"])))
        assert r1["ok"] and r1["data"]["staged"] and r3["data"]["received"] == 2
        assert await version() == 0  # nothing applies before every part is in
        bad = await asyncio.to_thread(cloud.reply_to, cloud.send("tokens", {**part(2, 3, []), "parts": True}))
        assert bad and not bad["ok"]
        r2 = await asyncio.to_thread(cloud.reply_to, cloud.send("tokens", part(2, 3, ["04AA0003", "04AA0004"])))
        assert r2["ok"] and r2["data"]["version"] == 7 and r2["data"]["counts"]["upserted"] == 5, r2
        assert await version() == 7
        known = await d.hubctl("--json", "tokens", "lookup", "04AA0005")
        assert known.returncode == 0 and json.loads(known.stdout)["status"] == "Active"
    finally:
        d.terminate()
        cloud.stop()
        broker.kill()
