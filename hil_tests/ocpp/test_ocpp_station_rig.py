"""An OCPP station through the real daemon: the station simulator on
127.0.0.1 by default, or on a rig the real station the rig file names
(`[station]`, see hil_tests/rig.py). These tests need no truck, no card and
no fault injection, so they run against any station make and show what it
does with the hub:

- it connects with its HTTP Basic password and is accepted, and the hub
  keeps who it is (vendor, model, firmware), asking for a BootNotification
  when it connects without booting (R-O1, R-O2);
- every connector's status is reported after the connection (R-O5);
- it takes the heartbeat and meter intervals the hub configures, and its
  heartbeats keep it online (R-O3);
- a technician takes a connector out of service and back: the station
  gets ChangeAvailability and reports the status (R-C7).

On a rig: `pytest hil_tests -m station --rig rig.toml`; point the station's
CSMS URL at ws://RIG:PORT/ocpp/ID with the `listen` port of the rig file."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from hil_tests.daemon import RunningDaemon
from simulators.broker import free_port
from simulators.ocpp_station import OcppStation

pytestmark = [pytest.mark.hil, pytest.mark.on_real_device]

HEARTBEAT_S = 2
OCPP_STATES = {"Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Reserved",
               "Unavailable", "Faulted"}


class StationDaemon(RunningDaemon):
    """The daemon with one OCPP station configured, as the rig file says
    (or as the simulator needs)."""

    def __init__(self, tmp: Path, station: dict):
        super().__init__(tmp)
        self.station = station
        self.ids = [f"C{i}" for i in range(1, int(station.get("connectors", 1)) + 1)]
        place = ", connector = 1" if station["protocol"] == "ocpp2.0.1" else ""
        connectors = ", ".join(f'{{ id = "{cid}", evse = {i}{place} }}' for i, cid in enumerate(self.ids, 1))
        self.config.write_text(self.preamble("HIL-STATION") + f"""
[ocpp]
listen = "{station['listen']}"
heartbeat_interval_s = {HEARTBEAT_S}
offline_after_s = {HEARTBEAT_S * 10}
meter_interval_s = 10
[[chargers]]
id = "{station['id']}"
protocol = "{station['protocol']}"
password_file = "{station['password_file']}"
connectors = [ {connectors} ]
""")

    def events(self, type_: str) -> list[dict]:
        return self.outbox_events(type_)

    async def row(self) -> dict:
        resp = await self.ask("chargers")
        assert resp["ok"], resp
        return next(r for r in resp["data"] if r["charger"] == self.station["id"])

    async def connectors(self) -> dict[str, dict]:
        return {c["connector"]: c for c in (await self.status())["connectors"] if c["connector"] in self.ids}

    async def until(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.log_tail(3000)}")
            await asyncio.sleep(0.2)


@pytest.fixture
async def station(rig, tmp_path):
    """(daemon, simulator or None for a real station, seconds to wait for the station to connect)."""
    if rig.is_real("station"):
        cfg = dict(rig.device("station"))
        key = Path(cfg["password_file"])
        if not key.is_absolute():
            key = Path(rig.source).resolve().parent / key
        cfg["password_file"] = str(key)
        sim, within = None, float(cfg.get("connect_within_s", 300))
    else:
        password = os.urandom(12).hex()
        key = tmp_path / "station.key"
        key.write_text(password + "\n")
        os.chmod(key, 0o600)
        port = free_port()
        cfg = {"id": "CS-SIM", "protocol": "ocpp1.6", "listen": f"127.0.0.1:{port}", "password_file": str(key),
               "connectors": 2}
        sim = OcppStation("CS-SIM", "ocpp1.6", f"ws://127.0.0.1:{port}/ocpp", password=password, connectors=2,
                          tick_s=0.1)
        within = 20.0
    d = StationDaemon(tmp_path, cfg)
    d.start()
    try:
        await d.wait_ready()
        yield d, sim, within
    finally:
        if sim is not None:
            await sim.close()
        d.terminate()


async def _connected(d: StationDaemon, sim: OcppStation | None, within: float, boot: bool = True) -> dict:
    if sim is not None:
        await sim.connect(boot=boot)

    async def connected():
        row = await d.row()
        return row if row["connected"] else None
    return await d.until(connected, within, f"station {d.station['id']} connected to the hub")


async def test_r_o1_r_o2_a_station_connecting_without_booting_is_asked_who_it_is_and_configured(station):
    """A new hub meets a station that does not boot when it connects (it
    was up all along): the hub asks for its BootNotification, keeps its
    identity, and sets the heartbeat and meter intervals."""
    d, sim, within = station
    await _connected(d, sim, within, boot=False)

    async def identified():
        row = await d.row()
        return row if row["vendor"] and row["model"] else None
    row = await d.until(identified, within + 15, "the station's vendor and model kept")
    assert row["protocol"] == d.station["protocol"] and row["booted_at"]
    if sim is not None:
        triggered = [p for a, p in sim.received if a == "TriggerMessage" and p["requestedMessage"] == "BootNotification"]
        assert len(triggered) == 1, sim.received
        assert (row["vendor"], row["model"]) == (sim.vendor, sim.model)
        await d.until(lambda: _true(sim.heartbeat_interval_s == HEARTBEAT_S), 10, "the heartbeat interval configured")
        assert not sim.violations
    assert not d.events("device.command_failed"), d.events("device.command_failed")


async def test_r_o1_a_station_that_boots_on_connecting_is_not_asked_again(station):
    d, sim, within = station
    if sim is None:
        pytest.skip("whether a real station boots on connecting is up to the station")
    await _connected(d, sim, within)
    await asyncio.sleep(6)  # past the hub's grace for a boot
    assert not [p for a, p in sim.received if a == "TriggerMessage" and p["requestedMessage"] == "BootNotification"]
    assert (await d.row())["vendor"] == sim.vendor


async def test_r_o5_every_connector_reports_its_status_after_connecting(station):
    d, sim, within = station
    await _connected(d, sim, within)

    async def all_reported():
        cs = await d.connectors()
        return cs if all(c["status"] in OCPP_STATES and c["unavailable_reason"] != "charger offline"
                         for c in cs.values()) else None
    cs = await d.until(all_reported, 30, "a status for every connector")
    assert set(cs) == set(d.ids)
    if sim is not None:
        assert all(c["status"] == "Available" for c in cs.values()), cs


async def test_r_o3_heartbeats_keep_the_station_online(station):
    d, sim, within = station
    await _connected(d, sim, within)
    first = (await d.row())["last_frame"]
    await d.until(lambda: _newer(d, first), HEARTBEAT_S * 3 + 10, "a frame from the station after the first")
    await asyncio.sleep(HEARTBEAT_S * 3)
    row = await d.row()
    assert row["connected"] and row["state"] == "connected"
    assert not d.events("device.fault"), d.events("device.fault")


async def test_r_c7_a_technician_takes_a_connector_out_of_service_and_back(station):
    d, sim, within = station
    await _connected(d, sim, within)

    async def free_one():
        cs = await d.connectors()
        return next((cid for cid, c in cs.items() if c["status"] == "Available"), None)
    try:
        cid = await d.until(free_one, 30, "an Available connector")
    except AssertionError:
        pytest.skip("no connector of the station is Available (a vehicle plugged in?): nothing to take out of service")
    reply = await d.ask("connector", {"action": "unavailable", "id": cid, "reason": "rig check"})
    assert reply["ok"], reply
    await d.until(lambda: _state(d, cid, "Unavailable"), 15, f"{cid} Unavailable")
    if sim is not None:
        await d.until(lambda: _true(sim.status_of(int(cid[1:]) - 1) == "Unavailable"), 10,
                      "the station's own connector Unavailable")
    reply = await d.ask("connector", {"action": "available", "id": cid, "reason": "rig check done"})
    assert reply["ok"], reply
    await d.until(lambda: _state(d, cid, "Available"), 15, f"{cid} Available again")
    changes = [p for a, p in sim.received if a == "ChangeAvailability"] if sim is not None else None
    if changes is not None:
        assert [c["type"] for c in changes] == ["Inoperative", "Operative"], changes
    assert not d.events("device.command_failed"), d.events("device.command_failed")


async def _true(value) -> bool:
    return bool(value)


async def _newer(d: StationDaemon, than: str | None) -> bool:
    last = (await d.row())["last_frame"]
    return bool(last) and last != than


async def _state(d: StationDaemon, cid: str, status: str) -> bool:
    return (await d.connectors())[cid]["status"] == status
