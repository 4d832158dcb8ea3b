"""OCPP chargers through the real daemon (`hubedge run` as a child process)
and real websockets on 127.0.0.1: station simulators of both versions
connect to the hub's listener, and the hub's state is read over its control
socket and its database, as a technician and the cloud would see it
(R-O1..R-O7). Every port is picked free at run time."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

import aiohttp
import jsonschema
import pytest

from edge.cloud.envelope import validate_event
from edge.parts.cards.tokens import TokenStore
from hil_tests.daemon import RunningDaemon
from simulators.broker import free_port
from simulators.ocpp_station import OcppStation

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "station-pw-0123456789"
OWN = "04A1B2C3"
BLOCKED = "0BADBAD0"


class OcppDaemon(RunningDaemon):
    def __init__(self, tmp: Path, pki=None, extra: str = ""):
        super().__init__(tmp)
        self.port = free_port()
        self.scheme = "wss" if pki else "ws"
        tls = f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"' if pki else ""
        profile = "security_profile = 2" if pki else ""
        for sid in ("CS1", "CS2"):
            key = tmp / f"{sid}.key"
            key.write_text(PASSWORD + "\n")
            os.chmod(key, 0o600)
        self.config.write_text(self.preamble("HIL-OCPP") + f"""
[ocpp]
listen = "127.0.0.1:{self.port}"
heartbeat_interval_s = 1
offline_after_s = 3
meter_interval_s = 1
{tls}
[[chargers]]
id = "CS1"
protocol = "ocpp1.6"
{profile}
password_file = "{tmp / 'CS1.key'}"
connectors = [ {{ id = "C1", evse = 1 }}, {{ id = "C2", evse = 2 }} ]
[[chargers]]
id = "CS2"
protocol = "ocpp2.0.1"
password_file = "{tmp / 'CS2.key'}"
connectors = [ {{ id = "C3", evse = 1, connector = 1 }} ]
{extra}
""")
        (tmp / "state").mkdir(exist_ok=True)
        tokens = TokenStore(tmp / "state" / "tokens.sqlite3")
        assert tokens.apply({"version": 1, "kind": "full", "upsert": [
            {"uid": OWN, "status": "Active", "type": "own", "group": "fleet"},
            {"uid": BLOCKED, "status": "Blocked", "type": "own", "group": "fleet"}]}).ok
        tokens.close()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/ocpp"

    def station(self, sid: str, version: str = "ocpp1.6", **kw) -> OcppStation:
        kw.setdefault("connectors", 2 if sid == "CS1" else 1)
        return OcppStation(sid, version, self.url, password=PASSWORD, meter_interval_s=0.5, tick_s=0.1,
                           time_scale=60.0, **kw)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.tmp / 'state' / 'hub.sqlite3'}?mode=ro", uri=True)

    def events(self, type_: str | None = None) -> list[dict]:
        return self.outbox_events(type_)

    async def sessions(self, **filters) -> list[dict]:
        resp = await self.ask("sessions", {"limit": 50, **filters})
        assert resp["ok"], resp
        return resp["data"]

    async def wait_session(self, status: str, count: int = 1, timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in await self.sessions() if s["status"] == status]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} {status} sessions, expected {count}: {await self.sessions()}\n"
                                     f"{self.log_tail(3000)}")
            await asyncio.sleep(0.1)


async def until(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def hub(tmp_path):
    d = OcppDaemon(tmp_path)
    d.start()
    await d.wait_ready()
    yield d
    d.terminate()


async def test_r_o1_r_o2_r_o4_r_o7_card_at_the_stations_reader_charges_and_stops_end_to_end(hub):
    cs1 = hub.station("CS1", signed=True)
    await cs1.connect()
    try:
        assert cs1.boot_status == "Accepted"
        await hub.wait_connector("C1", "Available")
        charger = await until_async(lambda: chargers_row(hub, "CS1"), lambda r: r and r["vendor"], "boot data")
        assert (charger["vendor"], charger["model"], charger["firmware"], charger["connected"]) == (
            "SimCharge", "SIM-MCS-1200", "1.0.0-sim", True)
        out = await hub.hubctl("chargers")
        assert out.returncode == 0 and "SimCharge" in out.stdout and "ocpp1.6" in out.stdout, out
        status = await hub.hubctl("status")
        assert "ocpp: 1 of 2 stations connected" in status.stdout, status.stdout
        machine = await hub.hubctl("--json", "chargers")
        schema = json.loads((ROOT / "edge" / "cloud" / "schemas" / "hubctl" / "chargers.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(json.loads(machine.stdout))
        assert await cs1.tap(OWN, 0) == "Accepted"  # tapped before plugging: the station waits
        cs1.plug(0, soc=30)
        await hub.wait_connector("C1", "Charging")
        [s] = await hub.wait_session("active")
        assert (s["connector"], s["method"], s["token_masked"]) == ("C1", "own_card", "*B2C3")
        await asyncio.sleep(1.0)
        assert await cs1.tap(OWN, 0) == "Stopped"  # the same card stops (R-C4)
        [s] = await hub.wait_session("stopped")
        assert s["energy_wh"] > 0 and s["stop_reason"] == "local"
        assert s["signed_stop"] and s["signed_stop"].startswith("OCMF|")  # R-O4: kept with the session
        cs1.unplug(0)
        await hub.wait_connector("C1", "Available")
        for e in hub.events():
            validate_event(e)
        assert not cs1.violations  # every call of the hub passed the official schema (R-O7)
        assert ("TriggerMessage" in [a for a, _ in cs1.received])  # R-O5: status asked after connecting
    finally:
        await cs1.close()


async def until_async(get, ok, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s: {value}")
        await asyncio.sleep(0.1)


async def chargers_row(hub, sid: str) -> dict | None:
    resp = await hub.ask("chargers")
    assert resp["ok"], resp
    return next((c for c in resp["data"] if c["charger"] == sid), None)


async def test_r_o1_unknown_station_and_wrong_password_refused_401_and_evented(hub):
    async with aiohttp.ClientSession() as http:
        for sid, password in (("NOPE", PASSWORD), ("CS1", "wrong-password")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(f"{hub.url}/{sid}", protocols=("ocpp1.6",),
                                      headers={"Authorization": aiohttp.encode_basic_auth(sid, password)})
            assert info.value.status == 401
    refused = await until(lambda: len(hub.events("device.handshake_refused")) >= 2 and
                          hub.events("device.handshake_refused"), what="two refusals evented")
    assert {e["data"]["reason"] for e in refused} == {"unknown station", "wrong password"}
    assert "wrong-password" not in hub.log_text() and "wrong-password" not in json.dumps(refused)
    assert (await chargers_row(hub, "CS1"))["connected"] is False  # never reached the hub's state


async def test_r_o3_sigkill_mid_transaction_station_queues_and_everything_is_recorded_once(hub):
    cs1 = hub.station("CS1")
    await cs1.connect()
    try:
        cs1.plug(1, soc=20)
        assert await cs1.tap(OWN, 1) == "Accepted"
        await hub.wait_connector("C2", "Charging")
        [s] = await hub.wait_session("active")
        first_tx = cs1.connectors[1].tx.tx_id
        hub.kill()  # the hub dies mid-transaction
        await until(lambda: not cs1.connected, what="the station seeing the hub gone")
        await asyncio.sleep(0.5)
        await cs1.send_meter_values(1)
        await cs1.stop(1, "Local")  # queued while the hub is down, after its meter values
        queued = [a for a, _ in cs1.queue]
        assert queued[-1] == "StopTransaction" and set(queued) == {"MeterValues", "StopTransaction"}
        hub.start()
        await hub.wait_ready()
        await cs1.connect(boot=False)  # a station need not boot again
        await until(lambda: not cs1.queue, what="the queue replayed")
        [stopped] = await hub.wait_session("stopped")
        assert stopped["id"] == s["id"] and stopped["energy_wh"] > 0
        assert len(hub.events("session.stopped")) == 1 and len(hub.events("session.started")) == 1
        cs1.unplug(1)
        cs1.plug(1, soc=20)
        assert await cs1.tap(OWN, 1) == "Accepted"
        await hub.wait_session("active")
        assert int(cs1.connectors[1].tx.tx_id) > int(first_tx)  # R-O3: ids unique across the restart
    finally:
        await cs1.close()


async def test_r_o3_blocked_card_started_while_the_hub_was_down_is_recorded_then_stopped(hub):
    cs2 = hub.station("CS2", "ocpp2.0.1", local_list={BLOCKED: "Accepted"})
    await cs2.connect()
    try:
        await hub.wait_connector("C3", "Available")
        hub.kill()
        await until(lambda: not cs2.connected, what="the station seeing the hub gone")
        cs2.plug(0, soc=20)
        assert await cs2.tap(BLOCKED, 0) == "Accepted"  # the station's own list, offline
        await asyncio.sleep(0.5)
        hub.start()
        await hub.wait_ready()
        await cs2.connect(boot=False)
        [s] = await hub.wait_session("stopped")  # recorded, then stopped: the card is blocked (R-A1)
        assert s["method"] == "own_card" and s["stop_reason"] in ("token_blocked", "remote")
        rejected = hub.events("auth.rejected")
        assert rejected and rejected[-1]["data"]["code"] == "blocked"
    finally:
        await cs2.close()


async def test_r_o6_bad_frames_answered_and_the_other_station_unaffected(hub):
    cs1, cs2 = hub.station("CS1"), hub.station("CS2", "ocpp2.0.1")
    await cs1.connect()
    await cs2.connect()
    try:
        answers = []
        cs1._pending["bad-1"] = asyncio.get_running_loop().create_future()
        await cs1.send_raw('[2,"bad-1","Heartbeat",')  # not JSON
        try:
            await asyncio.wait_for(cs1._pending["bad-1"], 5)
        except Exception as exc:
            answers.append(str(exc))
        assert answers and "FormationViolation" in answers[0]
        for _ in range(200):
            await cs1.send_raw("garbage")
        cs2.plug(0)
        await hub.wait_connector("C3", "Preparing")  # the other station is heard all the while
        await cs1.send_raw("x" * 70_000)  # over 64 KiB: that connection closes (1009), nothing else
        await until(lambda: not cs1.connected, what="the oversize frame closing CS1")
        cs2.unplug(0)
        await hub.wait_connector("C3", "Available")
        assert (await chargers_row(hub, "CS2"))["connected"] is True
    finally:
        await cs1.close()
        await cs2.close()


async def test_r_o5_silent_station_makes_its_connectors_unavailable_and_comes_back(hub):
    cs1 = hub.station("CS1")
    await cs1.connect()
    try:
        await hub.wait_connector("C1", "Available")
        await cs1.drop()  # the network goes away: no close frame
        c1 = await hub.wait_connector("C1", "Unavailable", timeout=10)
        assert c1["unavailable_reason"] == "charger offline"
        assert (await hub.connector("C2"))["status"] == "Unavailable"
        assert any(e["data"]["device"] == "CS1" for e in hub.events("device.fault"))
        await cs1.connect(boot=False)
        await hub.wait_connector("C1", "Available")
        await hub.wait_connector("C2", "Available")
        assert any(e["data"]["device"] == "CS1" for e in hub.events("device.recovered"))
    finally:
        await cs1.close()


async def test_r_o1_security_profile_2_wss_through_the_daemon(tmp_path):
    import ssl

    from hil_tests.broker import make_pki

    pki = make_pki(tmp_path / "pki")
    d = OcppDaemon(tmp_path, pki=pki)
    d.start()
    await d.wait_ready()
    cs1 = d.station("CS1", ssl=ssl.create_default_context(cafile=str(pki.ca)))
    try:
        await cs1.connect()
        assert cs1.boot_status == "Accepted" and d.url.startswith("wss://")
        cs1.plug(0)
        await d.wait_connector("C1", "Preparing")
        plain = OcppStation("CS1", "ocpp1.6", d.url.replace("wss://", "ws://"), password=PASSWORD)
        with pytest.raises((aiohttp.ClientError, OSError)):
            await plain.connect()  # no plain websocket on a TLS listener
        await plain.close()
    finally:
        await cs1.close()
        d.terminate()


async def test_r_b3_r_o2_a_booked_truck_over_ocpp_its_bay_reserved_at_the_station(tmp_path):
    """The cloud books bay B1 (C1 on OCPP station CS1) for a truck with card
    OWN: the hub holds the bay and the station gets ReserveNow for that card;
    the truck plugs in, its driver taps the card at the station's reader and
    the session fulfils the booking (booking.charging)."""
    from datetime import datetime, timedelta, timezone

    from simulators.broker import Broker
    from simulators.cloud import CloudSimulator
    from units import rfc3339

    broker = Broker(tmp_path / "broker").start()
    cloud = CloudSimulator(broker.url, "HIL-OCPP").start()
    d = OcppDaemon(tmp_path, extra=f"""
[cloud]
broker = "{broker.url}"
client_id = "hubedge-HIL-OCPP"
allow_unsigned = true
[bookings]
assign_lead_min = 60
early_grace_min = 30
hold_horizon_min = 90
no_show_after_min = 30
[[bays]]
id = "B1"
connector = "C1"
connector_type = "MCS"
side = "left"
""")
    d.needs_cloud = True
    d.start()
    cs1 = d.station("CS1")
    try:
        await d.wait_ready()
        await cs1.connect()
        await d.wait_connector("C1", "Available")
        start = datetime.now(timezone.utc) + timedelta(minutes=5)
        cloud.send("bookings", {"cancel": [], "upsert": [{
            "id": "BK-OCPP", "slot_start": rfc3339(start), "slot_end": rfc3339(start + timedelta(hours=1)),
            "connector_type": "MCS", "side": "left", "plates": ["NL-BT-101-K"], "customer": "fleet",
            "token_uid": OWN}]})
        await d.wait_connector("C1", "Reserved")
        reserve = await until(lambda: [p for a, p in cs1.received if a == "ReserveNow"], what="ReserveNow at CS1")
        assert reserve[0]["connectorId"] == 1 and reserve[0]["idTag"] == OWN
        cs1.plug(0, soc=30)
        await d.wait_connector("C1", "Preparing")
        assert await cs1.tap(OWN, 0) == "Accepted"
        await d.wait_connector("C1", "Charging")
        # The outbox empties as the cloud acknowledges: the booking's state says it.
        booking = await until_async(lambda: d.ask("bookings", {}),
                                    lambda r: r["ok"] and any(b["booking"] == "BK-OCPP" and b["state"] == "charging"
                                                              for b in r["data"]), "booking BK-OCPP charging")
        [b] = [b for b in booking["data"] if b["booking"] == "BK-OCPP"]
        assert b["connector"] == "C1"
        assert not cs1.violations
    finally:
        await cs1.close()
        d.terminate()
        cloud.stop()
        broker.kill()


async def test_r_o2_r_o3_2_0_1_transaction_events_make_one_session_with_its_seq_nos(hub):
    cs2 = hub.station("CS2", "ocpp2.0.1", signed=True)
    await cs2.connect()
    try:
        await hub.wait_connector("C3", "Available")
        cs2.plug(0, soc=40)
        assert await cs2.tap(OWN, 0) == "Accepted"
        await hub.wait_connector("C3", "Charging")  # from the TransactionEvent's charging state
        [s] = await hub.wait_session("active")
        tx = cs2.connectors[0].tx.tx_id
        await asyncio.sleep(1.5)  # Updated events with meter values
        assert await cs2.tap(OWN, 0) == "Stopped"
        [s] = await hub.wait_session("stopped")
        assert s["energy_wh"] > 0 and s["signed_stop"].startswith("OCMF|")
        with hub.db() as db:
            row = db.execute("SELECT session_id, last_seq, ended FROM ocpp_transactions WHERE station = 'CS2' "
                             "AND transaction_id = ?", (tx,)).fetchone()
        assert row[0] == s["id"] and row[1] >= 2 and row[2] == 1
        assert not hub.events("device.transaction_gap") and not cs2.violations
    finally:
        await cs2.close()
