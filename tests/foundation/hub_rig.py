"""A hub core built from a configuration, for the core's tests without
sockets: charger CH1's Modbus driver is replaced by a stand-in that records
commands, and readings are fed in as the poll loop would (``Rig.read``).

``CrashImages`` copies the state directory as a SIGKILL would leave it right
after each commit of the hub's connection (a process crash keeps what was
written, fsynced or not), so a test can restart a hub on every one of them."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tomllib
from pathlib import Path

from drivers.charger_modbus import ConnectorReading
from units import FakeClock
from edge.core.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"


def hub_config(tmp: Path, state: str = "state", extra: str = "", free_vend: bool = False) -> dict:
    vend = ", free_vend = true" if free_vend else ""
    return tomllib.loads(f"""
[hub]
id = "CORE-01"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp / state}"
[control]
socket = "{tmp / 'control.sock'}"
[charging]
poll_interval_s = 0.05
start_timeout_s = 60
[[chargers]]
id = "CH1"
address = "127.0.0.1:9"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1{vend} }}, {{ id = "C2", index = 2{vend} }} ]
{extra}
""")


class FakeCharger:
    """Stands in for CH1's driver: answers polls with what the test set,
    records commands, refuses starts while ``refuse_start`` is set."""

    def __init__(self, health):
        self.health = health
        self.commands: list[tuple[str, str]] = []
        self.refuse_start = False
        self.status = {"C1": "unplugged", "C2": "unplugged"}
        self.energy = {"C1": 1000, "C2": 5000}

    def readings(self) -> dict:
        return {cid: ConnectorReading(cid, status, 0, self.energy[cid], 0) for cid, status in self.status.items()}

    async def poll(self) -> dict:
        self.health.mark_ok()
        return self.readings()

    async def start(self, cid):
        self.commands.append(("start", cid))
        if self.refuse_start:
            raise ConnectionError("charger refused the start")

    async def stop(self, cid):
        self.commands.append(("stop", cid))

    async def unlock(self, cid):
        self.commands.append(("unlock", cid))
        return True

    async def close(self):
        pass


class Rig:
    def __init__(self, tmp: Path, state: str = "state", clock: FakeClock | None = None, *, free_vend: bool = False):
        from edge.core.hub import Hub

        self.tmp = tmp
        self.clock = clock or FakeClock()
        self.cfg = parse_config(hub_config(tmp, state, free_vend=free_vend), tmp / "hub.toml")
        self.hub = Hub(self.cfg, clock=self.clock)
        self.charger = FakeCharger(self.hub.devices["CH1"])
        self.hub.chargers["CH1"] = self.charger

    def read(self, **status: str) -> None:
        """One poll of CH1 with these hardware statuses (others unchanged)."""
        self.charger.status.update(status)
        self.hub._poll_ok("CH1", self.charger.readings())

    def state(self, cid: str) -> str:
        return self.hub.connectors[cid].state

    def events(self, type_: str | None = None) -> list[dict]:
        return events_in(self.hub.store.db, type_)

    def close(self) -> None:
        self.hub.store.close()


def events_in(db: sqlite3.Connection, type_: str | None = None) -> list[dict]:
    rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM outbox WHERE stream != 'reply' ORDER BY pos")]
    return [e for e in rows if type_ is None or e["type"] == type_]


class CrashImages:
    """State directories as a crash right after each commit leaves them.

    sqlite's trace callback sees each statement before it runs; when the one
    after a COMMIT starts, the files hold exactly the state of that commit.
    Checkpoints must not run meanwhile (they rewrite the database file):
    tests raise the store's checkpoint thresholds. Copying closes a
    descriptor of the live database file, which drops this process's POSIX
    locks on it: harmless while no other process opens it, as here."""

    def __init__(self, store, dest: Path):
        self.state_dir = store.state_dir
        self.dest = dest
        self.images: list[Path] = []
        self._committed = False
        store.db.set_trace_callback(self._trace)
        self._db = store.db

    def _trace(self, sql: str) -> None:
        if self._committed:
            self.take()
        self._committed = sql.strip().upper() == "COMMIT"

    def take(self) -> None:
        self._committed = False
        image = self.dest / f"after-commit-{len(self.images) + 1:03d}"
        image.mkdir(parents=True)
        for name in ("hub.sqlite3", "hub.sqlite3-wal"):
            if (self.state_dir / name).exists():
                shutil.copyfile(self.state_dir / name, image / name)
        self.images.append(image)

    def stop(self) -> list[Path]:
        if self._committed:
            self.take()
        self._db.set_trace_callback(None)
        return self.images
