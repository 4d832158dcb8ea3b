"""A real daemon (`hubedge run` as a child process) against charger
simulators over Modbus TCP on loopback (R-H1)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.register_map import load_register_map
from edge.control import request
from simulators.charger import ChargerSimulator

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"


class DaemonUnderTest:
    def __init__(self, tmp: Path, sims: dict[str, ChargerSimulator], *, free_vend=True, extra: str = ""):
        self.tmp = tmp
        self.sims = sims
        self.socket = tmp / "control.sock"
        self.config = tmp / "hub.toml"
        self.log = tmp / "hubedge.log"
        self.proc: subprocess.Popen | None = None
        self.env_extra: dict[str, str] = {}
        fv = "true" if free_vend else "false"
        self.config.write_text(f"""
[hub]
id = "HIL-01"
country = "NL"
vat_rate = "0.21"
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
[[chargers]]
id = "CH1"
address = "127.0.0.1:{sims['CH1'].port}"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1, free_vend = {fv} }}, {{ id = "C2", index = 2, free_vend = {fv} }} ]
[[chargers]]
id = "CH2"
address = "127.0.0.1:{sims['CH2'].port}"
register_map = "{MAPS / 'voltflow-ccs400.toml'}"
connectors = [ {{ id = "C3", index = 1, free_vend = {fv} }} ]
[[bays]]
id = "B1"
connector = "C1"
connector_type = "MCS"
side = "left"
{extra}
""")

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env_extra)
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(self.config)],
                                         stdout=f, stderr=f, env=env, cwd=str(ROOT))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    async def ask(self, cmd: str, args: dict | None = None) -> dict:
        return await request(self.socket, cmd, args or {}, timeout=10)

    async def status(self) -> dict:
        resp = await self.ask("status")
        assert resp["ok"], resp
        return resp["data"]

    async def wait_ready(self, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited: {self.log.read_text()[-3000:]}"
            try:
                st = await self.status()
                if st["ready"]:
                    return st
            except (OSError, AssertionError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"daemon not ready in {timeout}s: {self.log.read_text()[-3000:]}")

    async def wait_connector(self, cid: str, state: str, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            st = await self.status()
            last = next(c for c in st["connectors"] if c["connector"] == cid)
            if last["status"] == state:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"connector {cid} did not reach {state}: last {last}\n{self.log.read_text()[-2000:]}")

    def events(self) -> list[dict]:
        import sqlite3

        db = sqlite3.connect(self.tmp / "state" / "hub.sqlite3")
        try:
            return [json.loads(r[0]) for r in db.execute("SELECT body FROM outbox ORDER BY pos")]
        finally:
            db.close()

    def sessions(self) -> list[dict]:
        import sqlite3

        db = sqlite3.connect(self.tmp / "state" / "hub.sqlite3")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY started_at")]
        finally:
            db.close()

    async def hubctl(self, *args: str) -> subprocess.CompletedProcess:
        # In a thread: the simulators live on this test's event loop and must
        # keep answering while hubctl waits for the daemon.
        return await asyncio.to_thread(
            subprocess.run,[sys.executable, "-m", "edge.hubctl", "--socket", str(self.socket), *args],
            capture_output=True, text=True, cwd=str(ROOT), timeout=30)


@pytest.fixture
async def sims():
    ch1 = ChargerSimulator(load_register_map(MAPS / "hubcharge-mcs1200.toml"), 2, time_scale=20)
    ch2 = ChargerSimulator(load_register_map(MAPS / "voltflow-ccs400.toml"), 1, time_scale=20)
    await ch1.start()
    await ch2.start()
    yield {"CH1": ch1, "CH2": ch2}
    await ch1.stop()
    await ch2.stop()


@pytest.fixture
async def daemon(tmp_path, sims):
    d = DaemonUnderTest(tmp_path, sims)
    d.start()
    await d.wait_ready()
    yield d
    if d.proc.poll() is None:
        d.terminate()
