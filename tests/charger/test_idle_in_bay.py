"""R-C8 (etiquette): a truck still plugged a configured time after charging
ended raises connector.idle_in_bay, once per stay. The hub core's tick
decides it; driven here without sockets: a fake clock, readings handed to
the hub as its poll would, and a charger stand-in that accepts every
command."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from units import FakeClock
from edge.core.config import parse_config
from edge.cloud.envelope import validate_event

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"
IDLE_AFTER_S = 300


class AcceptingCharger:
    async def start(self, connector_id: str) -> None:
        pass

    async def stop(self, connector_id: str) -> None:
        pass

    async def unlock(self, connector_id: str) -> bool:
        return True

    async def close(self) -> None:
        pass


class IdleRig:
    def __init__(self, tmp: Path):
        from edge.core.hub import Hub

        cfg = tomllib.loads(f"""
[hub]
id = "UNIT-IDLE"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{tmp / 'control.sock'}"
[charging]
idle_in_bay_after_s = {IDLE_AFTER_S}
start_timeout_s = 60
[[chargers]]
id = "CH1"
address = "127.0.0.1:9"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1 }}, {{ id = "C2", index = 2 }} ]
[[bays]]
id = "B1"
connector = "C1"
connector_type = "MCS"
side = "left"
""")
        self.clock = FakeClock()
        self.hub = Hub(parse_config(cfg, tmp / "hub.toml"), clock=self.clock)
        self.hub.chargers["CH1"] = AcceptingCharger()
        self.events: list[tuple[str, dict]] = []
        emit = self.hub.emit

        def recording(type_: str, data: dict) -> None:
            self.events.append((type_, data))
            emit(type_, data)

        self.hub.emit = recording
        self.meter = 0

    def reading(self, cid: str, hw: str) -> None:
        """What the next poll reads for ``cid``."""
        self.meter += 5000 if hw == "charging" else 0
        self.hub._apply_reading(self.hub.connectors[cid], SimpleNamespace(status=hw, energy_wh=self.meter, raw_status=0))

    def tick(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        self.hub.tick(self.clock.now())

    def idle_events(self) -> list[dict]:
        return [d for t, d in self.events if t == "connector.idle_in_bay"]

    async def charge_and_finish(self, cid: str = "C1") -> str:
        """A truck plugs in, charges on a free-vend start, its battery is full."""
        self.reading(cid, "plugged")
        s = await self.hub.start_session(cid, method="free_vend")
        self.reading(cid, "charging")
        self.tick(600)
        self.reading(cid, "finished")
        assert self.hub.connectors[cid].state == "Finishing"
        return s.id


@pytest.fixture
def rig(tmp_path):
    r = IdleRig(tmp_path)
    yield r
    r.hub.store.close()


async def test_r_c8_idle_in_bay_after_the_configured_time_once(rig):
    sid = await rig.charge_and_finish()
    rig.tick(IDLE_AFTER_S - 1)
    assert rig.idle_events() == []
    rig.tick(1)
    (event,) = rig.idle_events()
    assert event == {"connector": "C1", "bay": "B1", "idle_s": IDLE_AFTER_S, "session": sid}
    for _ in range(5):
        rig.tick(IDLE_AFTER_S)
    assert len(rig.idle_events()) == 1, "R-C8: one event per stay, not one per tick"
    await rig.hub.store.durable()  # the outbox hands out only what is on disk
    stored = [e for e in rig.hub.outbox.read_batch(1000) if e.type == "connector.idle_in_bay"]
    assert len(stored) == 1
    validate_event(stored[0].to_dict())


async def test_r_c8_charging_or_waiting_for_a_card_is_not_idle(rig):
    rig.reading("C1", "plugged")  # plugged, no card yet
    rig.reading("C2", "plugged")
    await rig.hub.start_session("C2", method="free_vend")
    rig.reading("C2", "charging")
    for _ in range(3):
        rig.tick(IDLE_AFTER_S)
    assert (rig.hub.connectors["C1"].state, rig.hub.connectors["C2"].state) == ("Preparing", "Charging")
    assert rig.idle_events() == []


async def test_r_c8_the_next_truck_in_the_bay_is_reported_again(rig):
    first = await rig.charge_and_finish()
    rig.tick(IDLE_AFTER_S)
    rig.reading("C1", "unplugged")
    assert rig.hub.connectors["C1"].state == "Available"
    rig.tick(IDLE_AFTER_S)
    second = await rig.charge_and_finish()
    rig.tick(IDLE_AFTER_S)
    assert [e["session"] for e in rig.idle_events()] == [first, second]
