"""Card authorisation end to end: the real daemon (`hubedge run` as a child
process) with two RFID readers on nfcpy's UDP frontend played by card
simulators, a charger simulator over Modbus TCP, and a real mosquitto with
the simulated cloud on it. Every port is picked free at run time."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from drivers.register_map import load_register_map
from hil_tests.daemon import RunningDaemon
from edge.cloud.envelope import validate_event
from simulators.broker import Broker, mosquitto_available
from simulators.card import CardSimulator
from simulators.charger import ChargerSimulator
from simulators.cloud import CloudSimulator

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"
HUB_ID = "HIL-CARDS"

OWN_A = "04A1B2C3"  # own card, fleet-north
OWN_B = "04D4E5F6"  # own card, fleet-south: not allowed to stop A's session
BLOCKED = "0BADBAD0"  # own card, Blocked in the list
ROAMING = "04C0FFEE"  # not on the list; the cloud accepts it
STRANGER = "04DEAD01"  # unknown to the list and to the cloud

TOKEN_LIST = [
    {"uid": OWN_A, "status": "Active", "type": "own", "group": "fleet-north", "reference": "truck 12"},
    {"uid": OWN_B, "status": "Active", "type": "own", "group": "fleet-south", "reference": "truck 40"},
    {"uid": BLOCKED, "status": "Blocked", "type": "own", "group": "fleet-north"},
]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CardHub(RunningDaemon):
    """The daemon under test and everything it talks to."""

    needs_cloud = True

    def __init__(self, tmp: Path, charger: ChargerSimulator, readers: dict[str, CardSimulator],
                 broker: Broker, cloud: CloudSimulator):
        super().__init__(tmp)
        self.charger, self.readers, self.broker, self.cloud = charger, readers, broker, cloud
        self.config.write_text(f"""
[hub]
id = "{HUB_ID}"
country = "NL"
vat_rate = "0.21"

[cloud]
broker = "{broker.url}"
client_id = "hubedge-{HUB_ID}"
allow_unsigned = true

[storage]
state_dir = "{tmp / 'state'}"

[control]
socket = "{self.socket}"

[charging]
poll_interval_s = 0.2
fault_after_polls = 3
modbus_timeout_s = 0.3
unlock_retries = 2
unlock_retry_s = 0.2
start_timeout_s = 20

[auth]
connection_timeout_s = 6
debounce_s = 1.0
cloud_timeout_s = 1.5
unknown_offline = "refuse"

[[chargers]]
id = "CH1"
address = "127.0.0.1:{charger.port}"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1 }}, {{ id = "C2", index = 2 }} ]

[[readers]]
id = "R1"
path = "udp:127.0.0.1:{readers['R1'].port}"
connector = "C1"

[[readers]]
id = "R2"
path = "udp:127.0.0.1:{readers['R2'].port}"
connector = "C2"
""")

    async def tap(self, reader: str, uid: str, hold_s: float = 0.5) -> None:
        await asyncio.to_thread(self.readers[reader].tap, uid, hold_s)

    async def send_tokens(self, payload: dict) -> dict:
        message_id = self.cloud.send("tokens", payload)
        reply = await asyncio.to_thread(self.cloud.reply_to, message_id, 15.0)
        assert reply is not None, f"no reply to tokens message {message_id}\n{self.log_tail()}"
        return reply

    def events(self) -> list[dict]:
        """Every event the hub recorded: those the cloud received, and those
        still waiting in the outbox (sent while the link was down)."""
        seen: dict[str, dict] = {e["id"]: e for e in self.cloud.events()}
        db = sqlite3.connect(self.tmp / "state" / "hub.sqlite3")
        try:
            for (body,) in db.execute("SELECT body FROM outbox WHERE stream NOT IN ('telemetry', 'reply') ORDER BY pos"):
                e = json.loads(body)
                seen.setdefault(e["id"], e)
        finally:
            db.close()
        return sorted(seen.values(), key=lambda e: (e["stream"], e["seq"]))

    async def wait_event(self, type_: str, timeout: float = 10, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e["type"] == type_ and all(e["data"].get(k) == v for k, v in match.items()):
                    return e
            await asyncio.sleep(0.1)
        got = [(e["type"], e["data"]) for e in self.events() if e["type"].startswith(type_.split(".")[0])]
        raise AssertionError(f"no {type_} event matching {match}; got {got}\n{self.log_tail()}")

    def auth_events(self) -> list[dict]:
        return [e for e in self.events() if e["stream"] == "auth"]

    def validate_all(self) -> list[dict]:
        events = self.events()
        for e in events:
            validate_event(e)
        return events


@pytest.fixture
async def card_hub(tmp_path):
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed: `./dev test` installs it (apt-get install mosquitto)")
    broker = Broker(tmp_path / "broker").start()
    cloud = CloudSimulator(broker.url, HUB_ID, client_id="cloud-sim-cards").start()
    charger = ChargerSimulator(load_register_map(MAPS / "hubcharge-mcs1200.toml"), 2, time_scale=20)
    await charger.start()
    readers = {rid: CardSimulator(free_udp_port()) for rid in ("R1", "R2")}
    hub = CardHub(tmp_path, charger, readers, broker, cloud)
    hub.start()
    try:
        await hub.wait_ready()
        reply = await hub.send_tokens({"version": 1, "kind": "full", "upsert": TOKEN_LIST, "remove": []})
        assert reply["ok"], reply
        yield hub
    finally:
        if hub.proc.poll() is None:
            hub.terminate()
        for sim in hub.readers.values():
            sim.close()
        await charger.stop()
        cloud.stop()
        broker.kill()
