"""Builders for the site-access unit tests (imported by name: test folders
have no __init__.py). A hub core with the site-access part, built from a configuration but
never started: no sockets, a fake clock, and a barrier stand-in that
records what it was told."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

from drivers.anpr import PlateRead as CameraRead
from drivers.barrier import BarrierUnavailable
from units import FakeClock, rfc3339
from edge.demo import MCS_BAYS

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"
NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def config(tmp: Path, extra: str = "") -> dict:
    import tomllib

    text = f"""
[hub]
id = "UNIT-SITE"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{tmp / 'control.sock'}"
[bookings]
assign_lead_min = 60
early_grace_min = 30
no_show_after_min = 30
hold_horizon_min = 90
overstay_after_min = 15
[[chargers]]
id = "CH1"
address = "127.0.0.1:9"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1 }}, {{ id = "C2", index = 2 }}, {{ id = "C3", index = 3 }}, {{ id = "C4", index = 4 }} ]
{MCS_BAYS}[[gates]]
id = "G-IN"
role = "entry"
barrier = {{ address = "127.0.0.1:9" }}
[[gates]]
id = "G-OUT"
role = "exit"
barrier = {{ address = "127.0.0.1:9" }}
{extra}
"""
    return tomllib.loads(text)


class FakeBarrier:
    """Stands in for BarrierDriver: records commands, never touches a wire."""

    def __init__(self):
        self.commands: list[str] = []
        self.hold_wanted = False
        self.silent = False  # the I/O module does not answer: openings fail as the driver's do

    async def pulse_open(self, on_sent=None):
        if self.silent:
            if on_sent is not None:
                on_sent(False)
            raise BarrierUnavailable("I/O module 192.0.2.1:502 did not answer: check its power and network")
        self.commands.append("open")
        if on_sent is not None:
            on_sent(True)

    async def hold_open(self):
        if self.silent:
            raise BarrierUnavailable("I/O module 192.0.2.1:502 did not answer: check its power and network")
        self.hold_wanted = True
        self.commands.append("hold_open")

    async def release(self):
        self.hold_wanted = False
        self.commands.append("release")

    async def close(self):
        pass


class SiteRig:
    def __init__(self, hub, clock: FakeClock):
        self.hub = hub
        self.clock = clock
        self.site = next(p for p in hub.capabilities if p.name == "site")
        self.events: list[tuple[str, dict]] = []
        original = hub.emit

        def emit(type_, data):
            self.events.append((type_, data))
            original(type_, data)

        hub.emit = emit
        self.barriers = {gid: FakeBarrier() for gid in self.site.gates}
        for gid, rt in self.site.gates.items():
            rt.barrier = self.barriers[gid]

    def of(self, type_: str) -> list[dict]:
        return [d for t, d in self.events if t == type_]

    def sync(self, *items: dict, cancel: list[str] = ()) -> None:
        outcome = self.hub.bookings.apply_sync({"v": 1, "id": f"m{len(self.events)}", "upsert": list(items),
                                                "cancel": list(cancel)}, self.clock.now())
        assert outcome.ok and not outcome.refused, outcome

    def tick(self, seconds: float = 0) -> None:
        if seconds:
            self.clock.advance(seconds)
        self.site.tick(self.clock.now())

    def plug(self, cid: str) -> None:
        c = self.hub.connectors[cid]
        prev = c.state
        c.trigger("plug_in")
        self.site.on_connector_changed(c, prev)

    def read(self, gate: str, plate: str, *, confidence: float = 0.95, vehicle_class: str = "truck",
             direction: str = "approach", event: str | None = None) -> None:
        now = self.clock.now()
        self.site._on_read(gate, CameraRead(f"{gate}-camera", plate, "NL", confidence, vehicle_class, direction, now,
                                            "hikvision", event or f"ev-{len(self.events)}-{id(plate)}", now))

    async def settle(self) -> None:
        """Until what the last calls set going is done: an opening waits for
        the store's writer before the barrier moves."""
        for _ in range(3):
            for _ in range(5):
                await asyncio.sleep(0)
            await self.hub.store.durable()


def booking(bid: str, start: datetime, minutes: int = 90, *, side: str = "left", plate: str | None = None, **extra) -> dict:
    item = {"id": bid, "slot_start": rfc3339(start), "slot_end": rfc3339(start + timedelta(minutes=minutes)),
            "connector_type": "MCS", "side": side, "customer": "fleet-1", "plates": [plate or f"NL-{bid}-01"]}
    item.update(extra)
    return item
