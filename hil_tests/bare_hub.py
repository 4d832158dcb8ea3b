"""A real daemon (`hubedge run`) with no devices, for the tests whose subject
is the process itself - its signals, its state files, its cloud link - rather
than the hardware it drives. Optionally linked to a broker, signed with a
command key as a site would be."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from hil_tests.daemon import ROOT, RunningDaemon

COMMAND_KEY = bytes(range(32))


class BareHub(RunningDaemon):
    def __init__(self, tmp: Path, *, hub_id: str = "BARE-01", broker_url: str | None = None, storage: str = "",
                 extra: str = "", entry: list[str] | None = None):
        super().__init__(tmp)
        self.hub_id = hub_id
        self.needs_cloud = broker_url is not None
        self.state = tmp / "state"
        # The daemon's command line after the interpreter: edge.cli by default,
        # or a test's own wrapper around it.
        self.entry = entry or ["-m", "edge.cli"]
        cloud = ""
        if broker_url:
            self.key_file = tmp / "command.key"
            self.key_file.write_text(COMMAND_KEY.hex() + "\n")
            os.chmod(self.key_file, 0o600)
            cloud = (f'[cloud]\nbroker = "{broker_url}"\nclient_id = "hubedge-{hub_id}"\n'
                     f'command_key_file = "{self.key_file}"\n')
        self.config.write_text(f"""
[hub]
id = "{hub_id}"
country = "NL"
vat_rate = "0.21"
{cloud}
[storage]
state_dir = "{self.state}"
{storage}
[control]
socket = "{self.socket}"
{extra}
""")

    def start(self, **env: str) -> None:
        import subprocess

        environ = dict(os.environ, PYTHONUNBUFFERED="1", **self.env_extra, **env)
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, *self.entry, "run", "--config", str(self.config)],
                                         stdout=f, stderr=f, env=environ, cwd=str(ROOT))

    def events(self, type_prefix: str = "") -> list[dict]:
        """Every event the daemon has put in its outbox and not yet had
        acknowledged by the broker, oldest first."""
        db = sqlite3.connect(f"file:{self.state / 'hub.sqlite3'}?mode=ro", uri=True)
        try:
            bodies = [json.loads(r[0]) for r in db.execute("SELECT body FROM outbox ORDER BY pos")]
        finally:
            db.close()
        return [b for b in bodies if str(b.get("type", "")).startswith(type_prefix)]


async def until(predicate, timeout: float = 20.0, what: str = "condition"):
    """Wait for ``predicate()`` to be truthy and return its value; fail
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        await asyncio.sleep(0.05)
