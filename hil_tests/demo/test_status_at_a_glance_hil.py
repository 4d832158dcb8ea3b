"""R-T2 on the whole simulated hub (edge.demo.DemoHub: chargers, readers,
arch terminal, gates with cameras and barriers, a real mosquitto and the
simulated cloud): `hubctl status` shows at a glance every connector with its
bay and state, the session in progress, an upcoming booking, the gates, the
terminal, the readers, the cloud link, the outbox depth and a device in
fault; `hubctl --json status` says the same to a script."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest

from units import rfc3339
from edge.demo import DemoHub

pytestmark = [pytest.mark.hil, pytest.mark.cloud,
              pytest.mark.sim_only(reason="plugs a truck in and silences a barrier on the simulators",
                                   devices=["charger", "gate"])]
SCHEMA = Path(__file__).resolve().parents[2] / "edge" / "cloud" / "schemas" / "hubctl" / "status.json"


async def _hubctl(hub: DemoHub, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edge.hubctl", "--socket", str(hub.socket), *args],
                                   capture_output=True, text=True, timeout=30)


async def _until(hub: DemoHub, ok, what: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = await hub.ask("status")
        if ok(st):
            return st
        await asyncio.sleep(0.2)
    raise AssertionError(f"the hub did not show {what} within {timeout:.0f} s: {json.dumps(st)[:2000]}")


def _row(text: str, first: str) -> str:
    found = [line for line in text.splitlines() if line.split() and line.split()[0] == first]
    assert found, f"no line for {first} in:\n{text}"
    return found[0]


async def test_r_t2_hubctl_status_shows_the_whole_hub_at_a_glance(tmp_path):
    hub = DemoHub(state_dir=tmp_path / "site", socket=tmp_path / "site" / "control.sock", speed=60)
    await hub.start()
    try:
        await hub.wait_ready()
        await _until(hub, lambda st: st["cloud"].get("connected") and all(d["state"] == "ok" for d in st["devices"]),
                     "connected with every device answering")
        # A truck charging at C5 (free vend), a booking later today, the exit barrier's I/O module silent.
        hub.chargers["CH2"].plug(0, soc=30, battery_kwh=800, max_power_w=300_000)
        start = datetime.now(timezone.utc) + timedelta(hours=2)
        hub.cloud.send("bookings", {"cancel": [], "upsert": [{
            "id": "BK-GLANCE", "slot_start": rfc3339(start), "slot_end": rfc3339(start + timedelta(hours=1)),
            "connector_type": "MCS", "side": "left", "plates": ["NL-GH-404-K"], "customer": "glance-fleet"}]})
        hub.devices["barriers"]["G-OUT"].silence(True)
        st = await _until(hub, lambda st: any(c["connector"] == "C5" and c["status"] == "Charging" for c in st["connectors"])
                          and st.get("bookings") and any(d["state"] == "fault" for d in st["devices"]),
                          "C5 charging, the booking and the silent barrier")
        session = next(c["session"] for c in st["connectors"] if c["connector"] == "C5")
        fault = next(d for d in st["devices"] if d["state"] == "fault")

        human = await _hubctl(hub, "status")
        assert human.returncode == 0, human.stderr
        text = human.stdout
        for cid, bay in (("C1", "B1"), ("C2", "B2"), ("C3", "B3"), ("C4", "B4"), ("C5", "B5"), ("C6", "B6")):
            assert _row(text, cid).split()[1] == bay, f"R-T2: {cid}'s bay missing:\n{text}"
        c5 = _row(text, "C5")
        assert "Charging" in c5 and f"session {session[:8]}" in c5 and "kWh" in c5
        assert _row(text, "BK-GLANCE").split()[-1] in ("confirmed", "assigned")
        for section, first in (("bookings", "BK-GLANCE"), ("gates", "G-IN"), ("terminals", "T1"), ("readers", "R1")):
            assert section in text.splitlines(), f"R-T2: no {section} section:\n{text}"
        _row(text, "G-OUT")
        _row(text, "R2")
        assert "devices in fault" in text and fault["device"] in text
        cloud_line = next(line for line in text.splitlines() if line.startswith("cloud: "))
        assert cloud_line.startswith("cloud: connected") and "waiting" in cloud_line, text

        machine = await _hubctl(hub, "--json", "status")
        assert machine.returncode == 0, machine.stderr
        data = json.loads(machine.stdout)
        jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(data)
        assert {"connectors", "devices", "cloud", "outbox", "bookings", "gates", "terminals", "readers"} <= data.keys()
        assert isinstance(data["outbox"]["depth"], int) and data["cloud"]["connected"] is True
        # On OCPP station CS-OCPP1, C7 is the long bay B7 and C8 stands in the yard, outside the bays.
        assert {c["connector"]: c["bay"] for c in data["connectors"]} == {
            "C1": "B1", "C2": "B2", "C3": "B3", "C4": "B4", "C5": "B5", "C6": "B6", "C7": "B7", "C8": None}
    finally:
        await hub.stop()
