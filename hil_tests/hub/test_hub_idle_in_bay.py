"""R-C8 on the real daemon: a truck left plugged in after its charge ended
is reported idle in bay (connector.idle_in_bay) once the configured time has
passed, once per stay; the next truck's stay is reported again. The charger
is the Modbus simulator; the truck ends each charge itself (battery full)."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.cloud.envelope import validate_event
from hil_tests.hub.conftest import DaemonUnderTest

pytestmark = [pytest.mark.hil, pytest.mark.charger]

IDLE_AFTER_S = 3.0


def _idle_events(hub: DaemonUnderTest) -> list[dict]:
    found = [e for e in hub.events() if e.get("type") == "connector.idle_in_bay"]
    for e in found:
        validate_event(e)
    return found


async def _charged_and_left_plugged(hub: DaemonUnderTest, ch1) -> tuple[str, float]:
    """A truck plugs into C1 (free vend), charges, its battery is full; it stays."""
    ch1.plug(0, soc=50, battery_kwh=600, max_power_w=300_000)
    c = await hub.wait_connector("C1", "Charging")
    await asyncio.sleep(0.5)
    ch1.full(0)
    await hub.wait_connector("C1", "Finishing")
    return c["session"], time.monotonic()


async def _wait_idle_events(hub: DaemonUnderTest, n: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _idle_events(hub)
        if len(found) >= n:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no connector.idle_in_bay #{n} within {timeout} s: {_idle_events(hub)}\n{hub.log_tail()}")


@pytest.fixture
async def hub(tmp_path, sims):
    """The hub rig (free vend on C1 and C2, bay B1 at C1), idle after a few seconds."""
    d = DaemonUnderTest(tmp_path, sims)
    d.config.write_text(d.config.read_text().replace("[charging]\n", f"[charging]\nidle_in_bay_after_s = {IDLE_AFTER_S}\n"))
    assert f"idle_in_bay_after_s = {IDLE_AFTER_S}" in d.config.read_text()
    d.start()
    await d.wait_ready()
    yield d
    d.terminate()


async def test_r_c8_truck_left_plugged_after_charging_is_reported_idle_once(hub, sims):
    ch1 = sims["CH1"]
    sid, finished_at = await _charged_and_left_plugged(hub, ch1)
    await asyncio.sleep(max(0.0, IDLE_AFTER_S - 1.5 - (time.monotonic() - finished_at)))
    assert _idle_events(hub) == [], "R-C8: reported before the configured time had passed"
    (event,) = await _wait_idle_events(hub, 1)
    assert event["data"]["connector"] == "C1" and event["data"]["bay"] == "B1"
    assert event["data"]["session"] == sid and event["data"]["idle_s"] >= IDLE_AFTER_S
    await asyncio.sleep(2 * IDLE_AFTER_S)
    assert len(_idle_events(hub)) == 1, "R-C8: one report per stay, not one per tick"
    assert (await hub.connector("C1"))["status"] == "Finishing"

    # The truck leaves once unlocked; the next one charges and also stays.
    for _ in range(50):
        if not ch1.connectors[0].locked:
            break
        await asyncio.sleep(0.1)
    ch1.unplug(0)
    await hub.wait_connector("C1", "Available")
    second, _ = await _charged_and_left_plugged(hub, ch1)
    found = await _wait_idle_events(hub, 2)
    assert [e["data"]["session"] for e in found] == [sid, second]


async def test_r_c8_a_truck_still_charging_is_not_idle(hub, sims):
    sims["CH1"].plug(1, soc=10, battery_kwh=1000, max_power_w=300_000)
    await hub.wait_connector("C2", "Charging")
    await asyncio.sleep(2 * IDLE_AFTER_S)
    assert _idle_events(hub) == []
