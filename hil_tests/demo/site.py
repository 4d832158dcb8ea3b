"""The whole simulated hub for the demo folder's tests, and hubctl run
against it as a technician runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from edge.demo import DemoHub

SCHEMAS = Path(__file__).resolve().parents[2] / "edge" / "cloud" / "schemas" / "hubctl"


@contextlib.asynccontextmanager
async def started_site(tmp_path: Path, speed: float = 60):
    """The demo hub (daemon, simulators, broker and simulated cloud), ready."""
    hub = DemoHub(state_dir=tmp_path / "site", socket=tmp_path / "site" / "control.sock", speed=speed)
    await hub.start()
    try:
        await hub.wait_ready()
        yield hub
    finally:
        await hub.stop()


async def hubctl(hub: DemoHub, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edge.hubctl", "--socket", str(hub.socket), *args],
                                   capture_output=True, text=True, timeout=60)


def valid(schema: str, text: str):
    """hubctl's --json output, checked against its documented schema."""
    data = json.loads(text)
    jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{schema}.json").read_text())).validate(data)
    return data
