"""Maintenance windows from the cloud take connectors out of service and
back (R-C7), through a real mosquitto and the daemon's downlink."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from units import rfc3339
from hil_tests.hub.conftest import DaemonUnderTest
from simulators.broker import Broker
from simulators.cloud import CloudSimulator

pytestmark = pytest.mark.hil


async def test_r_c7_a_maintenance_window_makes_a_connector_unavailable_then_available(tmp_path, sims):
    broker = Broker(tmp_path / "broker", persistence=False).start()
    cloud = CloudSimulator(broker.url, "HIL-01").start()
    d = DaemonUnderTest(tmp_path, sims)
    d.config.write_text(f'[cloud]\nbroker = "{broker.url}"\nallow_unsigned = true\n' + d.config.read_text())
    d.start()
    try:
        await d.wait_ready()
        now = datetime.now(timezone.utc)
        # A truck charges on C1 when the window opens: its session is not cut.
        sims["CH1"].plug(0, soc=20, battery_kwh=900)
        await d.wait_connector("C1", "Charging")
        msg_id = cloud.send("maintenance", {"windows": [
            {"id": "MW-1", "connectors": ["C2", "C1"], "start": rfc3339(now - timedelta(minutes=1)),
             "end": rfc3339(now + timedelta(seconds=6)), "reason": "cable replacement"},
        ]})
        reply = await asyncio.to_thread(cloud.reply_to, msg_id)
        assert reply and reply["ok"], reply
        c2 = await d.wait_connector("C2", "Unavailable", timeout=10)
        assert c2["unavailable_reason"] == "maintenance:MW-1"
        st = await d.status()
        assert next(c for c in st["connectors"] if c["connector"] == "C1")["status"] == "Charging"
        # The window ends: C2 is back by itself, without a technician.
        await d.wait_connector("C2", "Available", timeout=15)
        await asyncio.sleep(0.5)  # the uplink delivers what the outbox holds
        statuses = [e["data"] for e in cloud.events("connector.status") if e["data"]["connector"] == "C2"]
        assert [s["status"] for s in statuses][-2:] == ["Unavailable", "Available"]
        assert any(e["data"]["kind"] == "maintenance" for e in cloud.events("sync.applied"))
    finally:
        if d.proc.poll() is None:
            d.terminate()
        cloud.stop()
        broker.kill()


async def test_r_m3_a_bad_maintenance_message_changes_nothing(tmp_path, sims):
    broker = Broker(tmp_path / "broker", persistence=False).start()
    cloud = CloudSimulator(broker.url, "HIL-01").start()
    d = DaemonUnderTest(tmp_path, sims)
    d.config.write_text(f'[cloud]\nbroker = "{broker.url}"\nallow_unsigned = true\n' + d.config.read_text())
    d.start()
    try:
        await d.wait_ready()
        msg_id = cloud.send("maintenance", {"windows": [{"id": "MW-2", "connectors": ["C2"], "start": "yesterday", "end": 5}]})
        reply = await asyncio.to_thread(cloud.reply_to, msg_id)
        assert reply and not reply["ok"] and reply["message"], reply
        await asyncio.sleep(1.5)
        st = await d.status()
        assert all(c["status"] == "Available" for c in st["connectors"])
        assert any(e["data"]["kind"] == "maintenance" for e in cloud.events("sync.rejected"))
    finally:
        if d.proc.poll() is None:
            d.terminate()
        cloud.stop()
        broker.kill()
