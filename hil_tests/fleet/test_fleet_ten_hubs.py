"""Ten hubs on one broker (issue 9 item 3; R-M2, R-M4, R-M5, docs/cloud-contract.md).

Ten real daemons (`edge.cli run` subprocesses), each with its own state
directory, control socket and simulated charger, sync over mqtts:// to ONE
mosquitto running the example configuration from config/mosquitto/ (client
certificates, CN = hub id, the per-hub ACL). A cloud-side client on the
cloud services' listener checks that every hub's streams arrive whole and in
order and that each hub's retained status says online; a client holding one
hub's certificate tries to reach another hub and gets nowhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.register_map import load_register_map
from units import rfc3339
from edge.core.control import request
from edge.cloud.envelope import validate_event
from edge.cloud.schemas import validator
from hil_tests.broker import CloudClient
from simulators.charger import ChargerSimulator

pytestmark = pytest.mark.hil

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "config" / "register-maps" / "hubcharge-mcs1200.toml"
HUBS = 10
CONNECTORS = ("C1", "C2")
ROUNDS = 2  # sessions per connector


async def until(predicate, timeout: float, what: str):
    """Poll without blocking the loop (the simulators live on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        await asyncio.sleep(0.05)


class FleetHub:
    """One hub of the fleet: a daemon subprocess and its charger simulator."""

    def __init__(self, n: int, base: Path, broker, sim: ChargerSimulator):
        self.id = f"FLEET-{n:02d}"
        self.dir = base / self.id
        self.dir.mkdir(parents=True)
        self.sim = sim
        self.socket = self.dir / "control.sock"
        self.log = self.dir / "hubedge.log"
        self.proc: subprocess.Popen | None = None
        tls = broker.pki.client(self.id)
        bays = "\n".join(
            f'[[bays]]\nid = "B{i + 1}"\nconnector = "{cid}"\nconnector_type = "MCS"\nside = "left"'
            for i, cid in enumerate(CONNECTORS)
        )
        connectors = ", ".join(f'{{ id = "{cid}", index = {i + 1}, free_vend = true }}' for i, cid in enumerate(CONNECTORS))
        self.config = self.dir / "hub.toml"
        self.config.write_text(f"""
[hub]
id = "{self.id}"
country = "NL"
vat_rate = "0.21"
[cloud]
broker = "{broker.hub_url}"
client_id = "hubedge-{self.id}"
allow_unsigned = true
ca_file = "{tls['ca']}"
cert_file = "{tls['cert']}"
key_file = "{tls['key']}"
[storage]
state_dir = "{self.dir / 'state'}"
[control]
socket = "{self.socket}"
[charging]
poll_interval_s = 0.25
fault_after_polls = 5
modbus_timeout_s = 0.5
unlock_retries = 2
unlock_retry_s = 0.2
[[chargers]]
id = "CH1"
address = "127.0.0.1:{sim.port}"
register_map = "{MAP}"
connectors = [ {connectors} ]
{bays}
""")

    def start(self) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(self.config)],
                                         stdout=f, stderr=f, cwd=str(ROOT), env=self.env())

    @staticmethod
    def env() -> dict[str, str]:
        # Not systemd's notify socket, should the tests run under systemd.
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        return {**env, "PYTHONUNBUFFERED": "1"}

    async def status(self) -> dict:
        resp = await request(self.socket, "status", {}, timeout=10)
        assert resp["ok"], resp
        return resp["data"]

    async def wait_ready(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.id} exited: {self.log.read_text()[-3000:]}"
            try:
                st = await self.status()
                if st["ready"] and st["cloud"].get("connected"):
                    return
            except (OSError, AssertionError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.id} not ready and connected within {timeout}s: {self.log.read_text()[-3000:]}")

    async def connector(self, cid: str) -> dict:
        return next(c for c in (await self.status())["connectors"] if c["connector"] == cid)

    async def wait_connector(self, cid: str, state: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.connector(cid)
            if last["status"] == state:
                return last
            await asyncio.sleep(0.15)
        raise AssertionError(f"{self.id} {cid} did not reach {state}: last {last}\n{self.log.read_text()[-2000:]}")

    def last_seqs(self) -> dict[str, int]:
        """The last seq given out per event stream, from the hub's own store."""
        db = sqlite3.connect(f"file:{self.dir / 'state' / 'hub.sqlite3'}?mode=ro", uri=True)
        try:
            return {s: n for s, n in db.execute("SELECT stream, seq FROM outbox_seq") if s not in ("telemetry", "reply")}
        finally:
            db.close()


async def charge_once(hub: FleetHub, i: int, cid: str) -> None:
    """Plug, let free vend start it, battery full, the hub unlocks, unplug."""
    hub.sim.plug(i, soc=30, battery_kwh=400)
    await hub.wait_connector(cid, "Charging")
    await asyncio.sleep(0.3)  # some energy on the meter
    hub.sim.full(i)
    await until(lambda: not hub.sim.connectors[i].locked, 15, f"{hub.id} {cid} unlocked after the charge")
    hub.sim.unplug(i)
    await hub.wait_connector(cid, "Available")


def command(name: str, args: dict, marker: str = "") -> tuple[str, str, bytes]:
    now = datetime.now(timezone.utc)
    msg_id = f"{marker}{uuid.uuid4()}"
    body = {"v": 1, "id": msg_id, "ts": rfc3339(now), "expires": rfc3339(now + timedelta(minutes=5)), "args": args}
    return name, msg_id, json.dumps(body).encode()


class Intruder:
    """An MQTT client holding one hub's certificate and key, as someone with
    a stolen or cloned hub would."""

    def __init__(self, port: int, tls: dict[str, str], client_id: str):
        self.received: list[str] = []
        self.acks: dict[int, object] = {}
        self.connected = threading.Event()
        self.refused: list[str] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        c.tls_set(ca_certs=tls["ca"], certfile=tls["cert"], keyfile=tls["key"])
        c.on_connect = lambda _c, _u, _f, rc, _p: self.connected.set() if not rc.is_failure else self.refused.append(str(rc))
        c.on_message = lambda _c, _u, m: self.received.append(m.topic)
        c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        self.client = c
        self.port = port

    def connect(self) -> bool:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except OSError as exc:  # TLS refused during the handshake
            self.refused.append(str(exc))
            return False
        self.client.loop_start()
        return self.connected.wait(2)

    def publish(self, topic: str, payload: bytes) -> int:
        return self.client.publish(topic, payload, qos=1).mid

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def envelopes(cloud: CloudClient, hub_id: str) -> list[tuple[str, dict]]:
    return [(t, json.loads(p)) for t, p, _r in cloud.received(f"hub/{hub_id}/event/")]


async def test_fleet_ten_hubs_one_broker_streams_intact_and_isolated_R_M2_R_M4_R_M5(tmp_path, example_broker):
    broker = example_broker
    t0 = time.monotonic()
    cloud = CloudClient(broker.cloud_url, client_id="cloud-fleet-test", tls=broker.cloud_tls()).start()
    rmap = load_register_map(MAP)
    sims = [ChargerSimulator(rmap, len(CONNECTORS), time_scale=20) for _ in range(HUBS)]
    for sim in sims:
        await sim.start()
    hubs = [FleetHub(n, tmp_path / "hubs", broker, sims[n]) for n in range(HUBS)]
    try:
        for hub in hubs:
            hub.start()
        await asyncio.gather(*(hub.wait_ready() for hub in hubs))
        t_ready = time.monotonic()

        # ROUNDS sessions on each connector of every hub, all hubs at once.
        async def day(hub: FleetHub) -> None:
            for _ in range(ROUNDS):
                await asyncio.gather(*(charge_once(hub, i, cid) for i, cid in enumerate(CONNECTORS)))

        await asyncio.gather(*(day(hub) for hub in hubs))
        t_sessions = time.monotonic()

        # --- isolation: hub A's certificate against hub B's root ----------
        # Hub A is stolen: its daemon is gone, its certificate and key are in
        # someone else's hands. (With A still running, the broker would hand
        # A's session to whichever of the two connected last.)
        a, b = hubs[0], hubs[1]
        a.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(a.proc.wait, 20) == 0
        b_link = (await b.status())["cloud"]
        intruder = Intruder(broker.tls_port, broker.pki.client(a.id), client_id=f"hubedge-{b.id}")
        assert await asyncio.to_thread(intruder.connect), f"A's certificate should still connect: {intruder.refused}"
        try:
            intruder.client.subscribe([(f"hub/{b.id}/#", 1), ("hub/#", 1)])
            _, rogue_cmd, body = command("set_availability", {"connector": "C1", "available": False, "reason": "rogue"}, "rogue-")
            forged_envelope = json.dumps({"v": 1, "id": f"rogue-{uuid.uuid4()}", "hub": b.id, "stream": "session", "seq": 999,
                                          "ts": rfc3339(datetime.now(timezone.utc)), "type": "session.stopped",
                                          "offline": False, "data": {}}).encode()
            forged_tokens = json.dumps({"v": 1, "id": f"rogue-{uuid.uuid4()}", "version": 99, "kind": "full",
                                        "upsert": [{"uid": "04DEADBEEF", "status": "Active", "type": "own"}], "remove": []}).encode()
            attempts = {
                intruder.publish(f"hub/{b.id}/cmd/set_availability", body): "another hub's command",
                intruder.publish(f"hub/{b.id}/sync/tokens", forged_tokens): "another hub's token list",
                intruder.publish(f"hub/{b.id}/event/session", forged_envelope): "another hub's event stream",
                intruder.publish(f"hub/{b.id}/status", b'{"v":1,"online":false}'): "another hub's status",
                # Its own root, but the cloud's direction: a cloned hub must
                # not hand itself a token list or a command either.
                intruder.publish(f"hub/{a.id}/sync/tokens", forged_tokens): "a token list for itself",
                intruder.publish(f"hub/{a.id}/cmd/set_availability", body): "a command for itself",
            }
            await until(lambda: all(mid in intruder.acks for mid in attempts), 5, "PUBACKs for every attempt")
            for mid, what in attempts.items():
                assert intruder.acks[mid].is_failure and intruder.acks[mid].value == 0x87, \
                    f"the broker accepted {what} from hub {a.id}'s certificate: {intruder.acks[mid]}"
            # B keeps talking meanwhile (a cloud command and its reply, a
            # state change): none of it may reach A's certificate.
            _, ctl_id, ctl = command("set_availability", {"connector": "C1", "available": False, "reason": "cloud says so"})
            await asyncio.to_thread(cloud.publish, f"hub/{b.id}/cmd/set_availability", ctl)
            await until(lambda: any(json.loads(p).get("id") == ctl_id for _t, p, _r in cloud.received(f"hub/{b.id}/reply")),
                        10, "B's reply to the cloud's command")
            await b.wait_connector("C1", "Unavailable")
            await asyncio.sleep(0.5)
        finally:
            await asyncio.to_thread(intruder.close)
        assert [t for t in intruder.received if not t.startswith(f"hub/{a.id}/")] == [], \
            "hub A's certificate read another hub's messages"
        # Nothing forged reached the cloud side or B; B's command went through
        # only when the cloud sent it, and B was never knocked off the broker
        # by someone claiming its client id.
        assert not [t for t, p, _r in cloud.received() if b"rogue" in p], "a forged message reached the cloud side"
        b_replies = [json.loads(p) for _t, p, _r in cloud.received(f"hub/{b.id}/reply")]
        assert rogue_cmd not in {r.get("id") for r in b_replies}, "B acted on a command sent with A's certificate"
        audits = [e["data"] for _t, e in envelopes(cloud, b.id) if e["type"] == "audit.action"]
        assert [x["reason"] for x in audits] == ["cloud says so"], audits
        b_after = (await b.status())["cloud"]
        assert b_after["connected"] and b_after["reconnects"] == b_link["reconnects"], (b_link, b_after)
        _, _, back = command("set_availability", {"connector": "C1", "available": True, "reason": "done"})
        await asyncio.to_thread(cloud.publish, f"hub/{b.id}/cmd/set_availability", back)
        await b.wait_connector("C1", "Available")

        # A hub's certificate does not open the cloud services' listener.
        outsider = Intruder(broker.port, {**broker.pki.client(a.id)}, client_id="cloud-impostor")
        assert not await asyncio.to_thread(outsider.connect), "a hub certificate was accepted on the cloud listener"
        await asyncio.to_thread(outsider.close)

        # A comes back (its state directory intact): its streams go on where
        # they stopped.
        a.start()
        await a.wait_ready()

        # --- every stream of every hub arrived whole, in order -----------
        expected: dict[str, dict[str, int]] = {}
        for hub in hubs:
            async def drained(h=hub) -> bool:
                st = await h.status()
                return st["cloud"]["connected"] and st["outbox"]["depth"] == 0
            deadline = time.monotonic() + 20
            while not await drained():
                assert time.monotonic() < deadline, f"{hub.id} outbox not drained: {(await hub.status())['outbox']}"
                await asyncio.sleep(0.1)
            expected[hub.id] = hub.last_seqs()

        def complete() -> bool:
            for hub in hubs:
                got = {(e["stream"], e["seq"]) for _t, e in envelopes(cloud, hub.id)}
                if any((s, n) not in got for s, last in expected[hub.id].items() for n in range(1, last + 1)):
                    return False
            return True

        await until(complete, 15, "every event of every hub at the cloud")
        t_drained = time.monotonic()

        total_events = 0
        for hub in hubs:
            by_stream: dict[str, list[dict]] = defaultdict(list)
            for topic, env in envelopes(cloud, hub.id):
                validate_event(env)
                assert env["hub"] == hub.id and topic == f"hub/{hub.id}/event/{env['stream']}", (topic, env)
                by_stream[env["stream"]].append(env)
            assert set(by_stream) == set(expected[hub.id]), (hub.id, set(by_stream), expected[hub.id])
            for stream, got in by_stream.items():
                ids: dict[int, str] = {}
                firsts: list[int] = []
                for env in got:
                    # A resend (after a takeover, say) repeats the same id.
                    assert ids.setdefault(env["seq"], env["id"]) == env["id"], f"{hub.id}/{stream} seq {env['seq']} has two ids"
                    if len(ids) > len(firsts):
                        firsts.append(env["seq"])
                last = expected[hub.id][stream]
                assert sorted(ids) == list(range(1, last + 1)), f"{hub.id}/{stream}: seqs {sorted(ids)} not 1..{last}"
                assert firsts == sorted(firsts), f"{hub.id}/{stream}: out of order {firsts}"
                total_events += len(ids)
            started = [e for e in by_stream["session"] if e["type"] == "session.started"]
            stopped = [e for e in by_stream["session"] if e["type"] == "session.stopped"]
            assert len({e["data"]["session"] for e in started}) == len(CONNECTORS) * ROUNDS, hub.id
            assert len({e["data"]["session"] for e in stopped}) == len(CONNECTORS) * ROUNDS, hub.id
            assert all(e["data"]["energy_wh"] > 0 for e in stopped), hub.id

        # --- retained status and connector states, as a newcomer sees them -
        viewer = CloudClient(broker.cloud_url, client_id="cloud-dashboard", tls=broker.cloud_tls(),
                             topics=("hub/+/status", "hub/+/state/connector/+"))
        await asyncio.to_thread(viewer.start)
        try:
            want = {f"hub/{h.id}/status" for h in hubs} | {f"hub/{h.id}/state/connector/{c}" for h in hubs for c in CONNECTORS}
            await until(lambda: want <= {t for t, _p, r in viewer.received() if r}, 10, "retained status and states")
            for topic, payload, retained in viewer.received():
                body = json.loads(payload)
                if topic.endswith("/status"):
                    validator("status").validate(body)
                    assert retained and body["online"] is True, (topic, body)
                else:
                    validator("connector_state").validate(body)
                    assert body["status"] == "Available", (topic, body)
        finally:
            await asyncio.to_thread(viewer.stop)

        # --- a graceful stop leaves online:false behind (R-M4) -----------
        for hub in hubs:
            hub.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(asyncio.to_thread(hub.proc.wait, 20) for hub in hubs))
        assert codes == [0] * HUBS, codes

        def all_offline() -> bool:
            last: dict[str, dict] = {}
            for topic, payload, _r in cloud.received():
                if topic.endswith("/status"):
                    last[topic] = json.loads(payload)
            return len(last) == HUBS and all(v["online"] is False for v in last.values())

        await until(all_offline, 10, "online:false from every hub after its stop")
        t_end = time.monotonic()
        print(f"\nfleet.figures hubs={HUBS} sessions={HUBS * len(CONNECTORS) * ROUNDS} events={total_events} "
              f"messages_at_cloud={len(cloud.received())} start_s={t_ready - t0:.1f} sessions_s={t_sessions - t_ready:.1f} "
              f"drain_s={t_drained - t_sessions:.1f} total_s={t_end - t0:.1f}")
    finally:
        for hub in hubs:
            if hub.proc is not None and hub.proc.poll() is None:
                hub.proc.kill()
                hub.proc.wait(10)
        await asyncio.to_thread(cloud.stop)
        for sim in sims:
            await sim.stop()
