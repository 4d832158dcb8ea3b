"""R-B6 on the real daemon: a booking does not extend the stay. Two booked
trucks charge at their bays (CCS, free vend, Modbus charger simulator) with
bookings sent by the simulated cloud over a real mosquitto; both batteries
fill, one truck leaves, the other stays plugged in. Once its slot has ended
and the configured time has passed, the cloud gets booking.overstay for the
one that stayed, once; nothing for the one that left."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drivers.register_map import load_register_map
from units import rfc3339
from edge.cloud.envelope import validate_event
from hil_tests.broker import Broker
from hil_tests.daemon import RunningDaemon
from simulators.charger import ChargerSimulator
from simulators.cloud import CloudSimulator

pytestmark = [pytest.mark.hil, pytest.mark.cloud, pytest.mark.charger,
              pytest.mark.sim_only(reason="plays the trucks on the charger simulator", devices=["charger"])]

MAPS = Path(__file__).resolve().parents[2] / "config" / "register-maps"
HUB = "HIL-STAY"
OVERSTAY_AFTER_S = 6.0
SLOT_LEFT_S = 14.0  # the slots end this long after the bookings are sent


class BookedBays(RunningDaemon):
    needs_cloud = True

    def __init__(self, tmp: Path, broker: Broker, charger: ChargerSimulator, key_file: Path):
        super().__init__(tmp)
        self.config.write_text(f"""
[hub]
id = "{HUB}"
country = "NL"
vat_rate = "0.21"
[cloud]
broker = "{broker.url}"
client_id = "hubedge-{HUB}"
command_key_file = "{key_file}"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{self.socket}"
[charging]
poll_interval_s = 0.2
fault_after_polls = 3
modbus_timeout_s = 0.3
unlock_retry_s = 0.2
[bookings]
assign_lead_min = 60
early_grace_min = 30
no_show_after_min = 30
hold_horizon_min = 90
overstay_after_min = {OVERSTAY_AFTER_S / 60}
[[chargers]]
id = "CH1"
address = "127.0.0.1:{charger.port}"
register_map = "{MAPS / 'voltflow-ccs400.toml'}"
connectors = [ {{ id = "C1", index = 1, free_vend = true }}, {{ id = "C2", index = 2, free_vend = true }} ]
[[bays]]
id = "B1"
connector = "C1"
connector_type = "CCS"
side = "left"
[[bays]]
id = "B2"
connector = "C2"
connector_type = "CCS"
side = "right"
""")


@pytest.fixture
async def bays(tmp_path):
    from edge.cloud.signing import load_keys
    from edge.core.store import atomic_write

    key_file = tmp_path / "command.key"
    atomic_write(key_file, (b"42" * 32) + b"\n", mode=0o600)
    broker = Broker(tmp_path / "broker").start()
    cloud = CloudSimulator(broker.url, HUB, client_id="cloud-stay-hil", command_key=load_keys(key_file)[0]).start()
    charger = ChargerSimulator(load_register_map(MAPS / "voltflow-ccs400.toml"), 2, time_scale=20)
    await charger.start()
    hub = BookedBays(tmp_path, broker, charger, key_file)
    hub.cloud, hub.charger = cloud, charger
    hub.start()
    try:
        await hub.wait_ready()
        yield hub
    finally:
        hub.terminate()
        await charger.stop()
        cloud.stop()
        broker.kill()


async def _event(cloud: CloudSimulator, type_: str, timeout: float, **match) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in cloud.events(type_):
            if e["type"] == type_ and all(e["data"].get(k) == v for k, v in match.items()):
                return e
        await asyncio.sleep(0.1)
    raise AssertionError(f"the cloud saw no {type_} {match} within {timeout} s: "
                         f"{[(e['type'], e['data']) for e in cloud.events('booking.')]}")


async def test_r_b6_truck_staying_after_its_slot_and_charge_is_reported_once(bays):
    cloud, charger = bays.cloud, bays.charger
    # Slots that began almost five minutes ago (the shortest the hub takes)
    # and end in a few seconds: both trucks are late in their slots.
    end = datetime.now(timezone.utc) + timedelta(seconds=SLOT_LEFT_S)
    start = end - timedelta(minutes=5, seconds=2)
    msg = cloud.send("bookings", {"cancel": [], "upsert": [
        {"id": f"K-{side}", "slot_start": rfc3339(start), "slot_end": rfc3339(end), "connector_type": "CCS",
         "side": side, "plates": [plate], "customer": "hil-fleet"}
        for side, plate in (("left", "NL-GH-101-K"), ("right", "NL-GH-102-K"))]})
    reply = await asyncio.to_thread(cloud.reply_to, msg, 10.0)
    assert reply and reply.get("ok"), reply
    for side, bay in (("left", "B1"), ("right", "B2")):
        assigned = await _event(cloud, "booking.assigned", 15, booking=f"K-{side}")
        assert assigned["data"]["bay"] == bay, assigned

    for i, cid in enumerate(("C1", "C2")):
        await bays.wait_connector(cid, "Reserved")
        charger.plug(i, soc=60, battery_kwh=300, max_power_w=150_000)
    for side in ("left", "right"):
        await _event(cloud, "booking.charging", 15, booking=f"K-{side}")
    await asyncio.sleep(0.5)
    charger.full(0)
    charger.full(1)
    for side in ("left", "right"):
        await _event(cloud, "booking.fulfilled", 15, booking=f"K-{side}")
    # The right-hand truck leaves once its cable is unlocked; the left one stays.
    for _ in range(100):
        if not charger.connectors[1].locked:
            break
        await asyncio.sleep(0.1)
    charger.unplug(1)
    await bays.wait_connector("C2", "Available")

    # Not before the slot has ended and the configured time has passed.
    early = (end - datetime.now(timezone.utc)).total_seconds() + OVERSTAY_AFTER_S - 2.0
    await asyncio.sleep(max(0.0, early))
    assert cloud.events("booking.overstay") == [], "R-B6: reported before slot end + overstay time"
    over = await _event(cloud, "booking.overstay", 15, booking="K-left")
    validate_event(over)
    assert over["data"]["bay"] == "B1" and over["data"]["overstay_s"] >= OVERSTAY_AFTER_S
    assert "B1" in over["data"]["reason"] and "leave" in over["data"]["reason"]
    assert datetime.now(timezone.utc) >= end + timedelta(seconds=OVERSTAY_AFTER_S)
    await asyncio.sleep(3.0)
    stays = [e["data"]["booking"] for e in cloud.events("booking.overstay")]
    assert stays == ["K-left"], f"R-B6: reported once, and only for the truck that stayed: {stays}"
