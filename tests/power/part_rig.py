"""The site power part inside a real hub core, without sockets: the chargers
are stand-ins that implement the charger interface's power limits and record
what they were sent; meter readings are handed to the part as its meter loop
would. Steps are driven by the test (``await rig.step()``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from drivers.charger_modbus import ConnectorReading
from drivers.grid_meter import MeterReading
from units import FakeClock
from edge.core.config import parse_config
from edge.core.charger import CommandFailed
from tests.foundation.hub_rig import FakeCharger, events_in, hub_config

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"
METER_MAP = ROOT / "config" / "meter-maps" / "sunspec-meter.toml"
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)

POWER = f"""
[power]
grid_limit_kw = 1000
margin_kw = 50
fallback_kw = 400
min_kw = 20
stale_after_s = 3
meter = {{ address = "127.0.0.1:9", register_map = "{METER_MAP}" }}
"""


CH2 = f"""
[[chargers]]
id = "CH2"
address = "127.0.0.1:9"
register_map = "{MAPS / 'voltflow-ccs400.toml'}"
connectors = [ {{ id = "C3", index = 1 }} ]
"""


def config(tmp: Path, power: str = POWER, extra: str = "") -> dict:
    """The core rig's hub (CH1: an MCS charger with C1 and C2) with a CCS
    charger CH2 (C3) and a [power] section."""
    return hub_config(tmp, extra=CH2 + power + extra)


class LimitedCharger(FakeCharger):
    """The core rig's stand-in charger (polls, commands) that also takes
    power limits (edge.core.charger.PowerLimits): it applies a limit at once and reports it back in its readings, unless it
    is ``deaf`` (takes the command, keeps its old limit) or ``refusing``
    (answers CommandFailed)."""

    def __init__(self, charger_id: str, connectors: list[str], health, rated_w: int, *, report_limit: bool = True):
        super().__init__(health)
        self.id = charger_id
        self.rated_w = rated_w
        self.connectors = connectors
        self.sent: list[tuple[str, int]] = []
        self.fail_safe: list[int] = []
        self.limit_w: dict[str, int | None] = {c: None for c in connectors}
        self.power_w: dict[str, int] = {c: 0 for c in connectors}
        self.status = {c: "unplugged" for c in connectors}
        self.deaf = False
        self.refusing = False
        self.report_limit = report_limit

    async def set_power_limit(self, connector_id: str, watts: int) -> None:
        self.sent.append((connector_id, watts))
        if self.refusing:
            raise CommandFailed(self.id, "set_power_limit", "rejected", "the charger said no")
        if not self.deaf:
            self.limit_w[connector_id] = watts
            if self.power_w[connector_id] > watts:
                self.power_w[connector_id] = watts

    async def set_fail_safe_limit(self, watts_per_connector: int) -> None:
        self.fail_safe.append(watts_per_connector)

    def readings(self) -> dict:
        return {c: ConnectorReading(c, self.status[c], 0, 1000, self.power_w[c],
                                    power_limit_w=self._limit(c) if self.report_limit else None)
                for c in self.connectors}

    def _limit(self, c: str) -> int:
        # Before any limit, the charger says it allows its rated power (as the Modbus maps do).
        return self.limit_w[c] if self.limit_w[c] is not None else self.rated_w



class PowerRig:
    def __init__(self, tmp: Path, power: str = POWER, extra: str = "", clock: FakeClock | None = None):
        from edge.core.hub import Hub

        self.tmp = tmp
        self.clock = clock or FakeClock(T0)
        self.cfg = parse_config(config(tmp, power, extra), tmp / "hub.toml")
        self.hub = Hub(self.cfg, clock=self.clock)
        self.chargers = {
            "CH1": LimitedCharger("CH1", ["C1", "C2"], self.hub.devices["CH1"], 1_200_000),
            "CH2": LimitedCharger("CH2", ["C3"], self.hub.devices["CH2"], 400_000),
        }
        self.hub.chargers.update(self.chargers)
        self.part = next(p for p in self.hub.capabilities if p.name == "power")
        self.slots: dict[str, tuple[datetime, datetime]] = {}
        self.hub.booked_slot = lambda cid: self.slots.get(cid)

    def charger_of(self, cid: str) -> LimitedCharger:
        return self.chargers["CH1" if cid in ("C1", "C2") else "CH2"]

    def poll(self) -> None:
        for charger_id, ch in self.chargers.items():
            self.hub._poll_ok(charger_id, ch.readings())

    def plug(self, cid: str, *, session: str | None = None) -> None:
        """A truck plugs in; with ``session`` it is charging under that session id."""
        ch = self.charger_of(cid)
        ch.status[cid] = "plugged"
        self.poll()
        if session:
            c = self.hub.connectors[cid]
            c.session_id = session
            ch.status[cid] = "charging"
            self.poll()

    def unplug(self, cid: str) -> None:
        ch = self.charger_of(cid)
        ch.status[cid] = "unplugged"
        ch.power_w[cid] = 0
        self.hub.connectors[cid].session_id = None
        self.poll()

    def draw(self, **kw: float) -> None:
        """Trucks draw this much (kW), up to the limit their charger applies."""
        for cid, value in kw.items():
            ch = self.charger_of(cid)
            limit = ch.limit_w[cid]
            w = int(value * 1000)
            ch.power_w[cid] = w if limit is None else min(w, limit)
        self.poll()

    def meter(self, kw: float, *, age_s: float = 0.0) -> None:
        """The grid meter read ``kw`` ``age_s`` ago."""
        mono = self.clock.monotonic() - age_s
        self.part.reading = MeterReading(kw * 1000, self.clock.now() - timedelta(seconds=age_s), mono, 0.0,
                                         {"power": kw * 1000})

    def site_meter(self, other_kw: float) -> None:
        """The meter reads the chargers' draw plus ``other_kw``."""
        drawn = sum(w for ch in self.chargers.values() for w in ch.power_w.values()) / 1000
        self.meter(drawn + other_kw)

    async def step(self, seconds: float = 0.0):
        if seconds:
            self.clock.advance(seconds)
        self.poll()
        return await self.part.step()

    def events(self, type_: str | None = None) -> list[dict]:
        return events_in(self.hub.store.db, type_)

    def close(self) -> None:
        self.hub.store.close()
