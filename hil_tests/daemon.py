"""A real hub-edge daemon (`python -m edge.cli run`) as a child process of a
test, and the ways a test looks at it. The HIL fixtures of each area write
their own configuration and subclass this for their own helpers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.core.control import request

ROOT = Path(__file__).resolve().parents[1]


class RunningDaemon:
    # Subclasses whose tests need the cloud link set this: ready then also
    # waits for the uplink to be connected.
    needs_cloud = False

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.socket = tmp / "control.sock"
        self.config = tmp / "hub.toml"
        self.log = tmp / "hubedge.log"
        self.proc: subprocess.Popen | None = None
        self.env_extra: dict[str, str] = {}

    def preamble(self, hub_id: str) -> str:
        """The configuration every test hub starts with: who it is, where
        it keeps its state and its control socket."""
        return f"""
[hub]
id = "{hub_id}"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{self.tmp / 'state'}"
[control]
socket = "{self.socket}"
"""

    def outbox_events(self, type_: str | None = None) -> list[dict]:
        """Every event the hub has put in its outbox (of ``type_``), read
        from its database as the uplink would."""
        import json
        import sqlite3

        path = self.tmp / "state" / "hub.sqlite3"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM outbox WHERE stream != 'reply' ORDER BY pos")]
        return [e for e in rows if type_ is None or e["type"] == type_]

    # -- the process -------------------------------------------------------
    def start(self, *, kill: tuple[str, str] | None = None, **env: str) -> None:
        """Start the daemon. ``kill`` = (before|after, commit point): it runs
        through hil_tests/crash/daemon.py and SIGKILLs itself at that commit."""
        environ = dict(os.environ, PYTHONUNBUFFERED="1", **self.env_extra, **env)
        entry = ["edge.cli"] if kill is None else ["hil_tests.crash.daemon", "--kill", *kill]
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", *entry, "run", "--config", str(self.config)],
                                         stdout=f, stderr=f, env=environ, cwd=str(ROOT))

    def kill(self) -> None:
        """A power cut, as the daemon sees it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:]

    # -- the control socket --------------------------------------------------
    async def ask(self, cmd: str, args: dict | None = None, timeout: float = 15) -> dict:
        return await request(self.socket, cmd, args or {}, timeout=timeout)

    async def status(self) -> dict:
        resp = await self.ask("status")
        assert resp["ok"], resp
        return resp["data"]

    async def wait_ready(self, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited: {self.log_tail()}"
            try:
                st = await self.status()
                if st["ready"] and (not self.needs_cloud or st["cloud"].get("connected")):
                    return st
            except (OSError, AssertionError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"daemon not ready{' and connected' if self.needs_cloud else ''} in {timeout}s: {self.log_tail()}")

    async def connector(self, cid: str) -> dict:
        return next(c for c in (await self.status())["connectors"] if c["connector"] == cid)

    async def wait_connector(self, cid: str, state: str, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.connector(cid)
            if last["status"] == state:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"connector {cid} did not reach {state}: last {last}\n{self.log_tail(2000)}")

    async def hubctl(self, *args: str) -> subprocess.CompletedProcess:
        # In a thread: the simulators live on the test's event loop and must
        # keep answering while hubctl waits for the daemon.
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "edge.hubctl", "--socket", str(self.socket), *args],
            capture_output=True, text=True, cwd=str(ROOT), timeout=60)
