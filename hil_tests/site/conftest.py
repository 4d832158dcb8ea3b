"""A real daemon (`hubedge run` as a child process) with two gates: ANPR
cameras posting over HTTP and barrier I/O modules over Modbus TCP, a charger
over Modbus TCP, and a real mosquitto with the simulated cloud sending
bookings (R-H1). Ports are picked at run time on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.register_map import load_register_map
from edge.core.control import request
from hil_tests.broker import Broker
from simulators.barrier import BarrierSimulator
from simulators.broker import free_port
from simulators.camera import CameraSimulator
from simulators.charger import ChargerSimulator
from simulators.cloud import CloudSimulator
from edge.demo import MCS_BAYS

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"
HUB = "HIL-SITE"
SECRET = "camera-secret-hil"


class SiteUnderTest:
    """The daemon and every device around it, driven from the test's loop."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.socket = tmp / "control.sock"
        self.config = tmp / "hub.toml"
        self.log = tmp / "hubedge.log"
        self.proc: subprocess.Popen | None = None
        self.broker: Broker | None = None
        self.cloud: CloudSimulator | None = None
        self.charger: ChargerSimulator | None = None
        self.barriers: dict[str, BarrierSimulator] = {}
        self.cameras: dict[str, CameraSimulator] = {}

    async def start(self, *, no_show_min: float = 0.25) -> "SiteUnderTest":
        self.broker = Broker(self.tmp / "broker").start()
        self.cloud = CloudSimulator(self.broker.url, HUB, client_id="cloud-site-hil").start()
        self.charger = ChargerSimulator(load_register_map(MAPS / "hubcharge-mcs1200.toml"), 4, time_scale=20)
        await self.charger.start()
        for gid in ("G-IN", "G-OUT"):
            sim = BarrierSimulator(travel_s=0.3, dwell_s=0.6, tick_s=0.02)
            await sim.start()
            self.barriers[gid] = sim
        ports = {"G-IN": free_port(), "G-OUT": free_port()}
        self.cameras = {
            "G-IN": CameraSimulator(f"http://127.0.0.1:{ports['G-IN']}/anpr", "hikvision", SECRET),
            "G-OUT": CameraSimulator(f"http://127.0.0.1:{ports['G-OUT']}/anpr", "axis", SECRET),
        }
        # C3 charges without a card (free vend) so a booked truck's session
        # runs end to end; the other connectors wait for a card nobody taps.
        self.config.write_text(f"""
[hub]
id = "{HUB}"
country = "NL"
vat_rate = "0.21"
timezone = "Europe/Amsterdam"
[cloud]
broker = "{self.broker.url}"
client_id = "hubedge-{HUB}"
allow_unsigned = true
[storage]
state_dir = "{self.tmp / 'state'}"
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
hold_horizon_min = 90
no_show_after_min = {no_show_min}
overstay_after_min = 30
[gate]
confidence_threshold = 0.85
[[chargers]]
id = "CH1"
address = "127.0.0.1:{self.charger.port}"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1 }}, {{ id = "C2", index = 2 }}, {{ id = "C3", index = 3, free_vend = true }}, {{ id = "C4", index = 4 }} ]
{MCS_BAYS}[[gates]]
id = "G-IN"
role = "entry"
barrier = {{ address = "127.0.0.1:{self.barriers['G-IN'].port}" }}
camera = {{ listen = "127.0.0.1:{ports['G-IN']}", vendor = "hikvision", secret = "{SECRET}" }}
[[gates]]
id = "G-OUT"
role = "exit"
barrier = {{ address = "127.0.0.1:{self.barriers['G-OUT'].port}" }}
camera = {{ listen = "127.0.0.1:{ports['G-OUT']}", vendor = "axis", secret = "{SECRET}" }}
""")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(self.config)],
                                         stdout=f, stderr=f, env=env, cwd=str(ROOT))
        await self.wait(lambda st: st["ready"] and st["cloud"].get("connected")
                        and all(d["state"] == "ok" for d in st["devices"]), "ready with its cloud link and devices")
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 15)
        for sim in self.barriers.values():
            await sim.stop()
        if self.charger is not None:
            await self.charger.stop()
        if self.cloud is not None:
            self.cloud.stop()
        if self.broker is not None:
            self.broker.kill()

    # ---------------------------------------------------------- looking
    async def status(self) -> dict:
        resp = await request(self.socket, "status", {}, timeout=10)
        assert resp["ok"], resp
        return resp["data"]

    async def wait(self, predicate, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        last: dict | None = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited: {self.log_text()[-3000:]}"
            try:
                last = await self.status()
                if predicate(last):
                    return last
            except (OSError, asyncio.TimeoutError, KeyError):
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"daemon not {what} in {timeout}s; last status {json.dumps(last)[:1500]}\n{self.log_text()[-2500:]}")

    def connector(self, st: dict, cid: str) -> dict:
        return next(c for c in st["connectors"] if c["connector"] == cid)

    async def wait_connector(self, cid: str, state: str, reserved_for: str | None = "any", timeout: float = 15) -> dict:
        def ok(st):
            c = self.connector(st, cid)
            return c["status"] == state and (reserved_for == "any" or c["reserved_for"] == reserved_for)
        return await self.wait(ok, f"showing {cid} {state} (reserved for {reserved_for})", timeout)

    def events(self, prefix: str = "") -> list[dict]:
        """Every event the hub sent to the cloud, plus any still in its outbox."""
        seen = {e["id"]: e for e in self.cloud.events(prefix)}
        db = sqlite3.connect(self.tmp / "state" / "hub.sqlite3")
        try:
            for (body,) in db.execute("SELECT body FROM outbox WHERE stream != 'reply' ORDER BY pos"):
                e = json.loads(body)
                if e.get("type", "").startswith(prefix):
                    seen.setdefault(e["id"], e)
        finally:
            db.close()
        return list(seen.values())

    async def wait_event(self, type_: str, timeout: float = 15.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.cloud.events(type_):
                if e["type"] == type_ and all(e["data"].get(k) == v for k, v in match.items()):
                    return e
            await asyncio.sleep(0.05)
        got = [(e["type"], e["data"]) for e in self.cloud.events("gate.") + self.cloud.events("booking.")]
        raise AssertionError(f"no {type_} {match} in {timeout}s; site events so far: {json.dumps(got)[:3000]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def open_pulses(self, gid: str) -> int:
        return sum(1 for c in self.barriers[gid].commands if c.coil == "open" and c.value)

    # ---------------------------------------------------------- acting
    async def hubctl(self, *args: str) -> subprocess.CompletedProcess:
        # In a thread: the simulators live on this loop and must keep answering.
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "edge.hubctl", "--socket", str(self.socket), *args],
            capture_output=True, text=True, cwd=str(ROOT), timeout=30)

    async def send_bookings(self, upsert: list[dict], cancel: list[str] = ()) -> dict:
        msg_id = self.cloud.send("bookings", {"upsert": upsert, "cancel": list(cancel)})
        reply = await asyncio.to_thread(self.cloud.reply_to, msg_id, 10.0)
        assert reply is not None, f"no reply to bookings {msg_id}\n{self.log_text()[-2000:]}"
        return reply


@pytest.fixture
async def site(tmp_path):
    s = SiteUnderTest(tmp_path)
    try:
        await s.start()
        yield s
    finally:
        await s.stop()
    # R-G5, after every test: the software never commanded a close.
    for gid, sim in s.barriers.items():
        assert sim.close_commands == [], gid
