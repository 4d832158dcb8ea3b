"""R-G6, from the chaos run: a plate read at the exit while the barrier's I/O
module is silent must still open the exit once the module answers again, if
the vehicle is still on the loop — nobody is ever trapped. (The chaos run's
exit invariant checks the same over hundreds of faults.)"""

import asyncio
import time

import pytest

from edge.demo import DemoHub

pytestmark = pytest.mark.hil


async def test_r_g6_exit_opening_owed_after_a_silent_barrier(tmp_path):
    hub = DemoHub(state_dir=tmp_path / "site", socket=tmp_path / "site" / "control.sock", speed=60)
    await hub.start()
    try:
        await hub.wait_ready()
        bar = hub.devices["barriers"]["G-OUT"]
        cam = hub.devices["cameras"]["G-OUT"]
        bar.silence(True)
        bar.vehicle_arrives()
        await cam.send_plate("NL-TX-123-K", 0.93, "truck", "leave")
        await asyncio.sleep(6)  # longer than the driver's request timeout and open confirmation
        assert bar.position == "closed"
        bar.silence(False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and bar.position == "closed":
            await asyncio.sleep(0.2)
        assert bar.position != "closed", "the exit stayed closed on a waiting vehicle"
        assert not bar.close_commands
        await asyncio.sleep(1.0)
        opened = [e["data"] for e in hub.cloud.events("gate.opened") if e["data"]["gate"] == "G-OUT"]
        assert opened, "the opening is an event (R-G7)"
    finally:
        await hub.stop()
