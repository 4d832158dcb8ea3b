"""The OCPP rig: the listener on 127.0.0.1 (a free port), a handler that
records what the layer tells the hub (once per content key, as the hub
must, R-O3), and station simulators pointed at it."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from drivers.ocpp import IdTokenDecision, ListenerSettings, OcppListener, StartAnswer, StationConfig, password_check
from drivers.ocpp.events import TransactionEnded, TransactionStarted, TransactionUpdated
from simulators.ocpp_station import OcppStation

PASSWORD = "correct-horse-battery-1"


@dataclass
class Recorder:
    """A StationHandler that keeps every event, and records transaction
    messages once per content key (a replay is answered as the first time)."""

    events: list = field(default_factory=list)
    cards: dict[str, str] = field(default_factory=lambda: {"CARD-OK": "Accepted", "CARD-BLOCKED": "Blocked"})
    recorded: dict[tuple, object] = field(default_factory=dict)
    tx_ids: dict[tuple, int] = field(default_factory=dict)
    fail_next: int = 0  # raise on the next N transaction messages (a disk failure)
    slow_s: float = 0.0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type, count: int = 1, timeout: float = 10.0, where=lambda e: True) -> list:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.of(kind) if where(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} {kind.__name__} events within {timeout} s, expected {count}: "
                                     f"{[type(e).__name__ for e in self.events][-15:]}")
            await asyncio.sleep(0.02)

    def _decide(self, token: str | None) -> IdTokenDecision:
        return IdTokenDecision(self.cards.get(token or "", "Invalid"))

    async def _record(self, event) -> bool:
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk full (simulated)")
        self.events.append(event)
        if event.key in self.recorded:
            return False
        self.recorded[event.key] = event
        return True

    async def station_connected(self, event): self.events.append(event)
    async def station_disconnected(self, event): self.events.append(event)
    async def handshake_refused(self, event): self.events.append(event)
    async def station_booted(self, event): self.events.append(event)
    async def heartbeat(self, event): self.events.append(event)
    async def connector_status(self, event): self.events.append(event)
    async def meter_values(self, event): self.events.append(event)
    async def notification(self, event): self.events.append(event)

    async def authorise(self, request):
        self.events.append(request)
        return self._decide(request.id_token)

    async def transaction_started(self, event: TransactionStarted) -> StartAnswer:
        await self._record(event)
        tx = self.tx_ids.get(event.key)
        if tx is None:
            tx = self.tx_ids[event.key] = next(self._ids)
        return StartAnswer(self._decide(event.id_token), tx)

    async def transaction_updated(self, event: TransactionUpdated):
        await self._record(event)
        return self._decide(event.id_token) if event.id_token else None

    async def transaction_ended(self, event: TransactionEnded):
        await self._record(event)
        return self._decide(event.id_token) if event.id_token else None

    def transactions(self, kind: type) -> list:
        return [e for e in self.recorded.values() if isinstance(e, kind)]


async def until(check, timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds (real seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class OcppRig:
    def __init__(self, recorder: Recorder | None = None):
        self.recorder = recorder or Recorder()
        self.listener: OcppListener | None = None
        self.stations: list[OcppStation] = []

    async def start(self, configs: list[StationConfig], **settings) -> OcppListener:
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)
        settings.setdefault("heartbeat_interval_s", 60)
        settings.setdefault("ping_interval_s", None)
        passwords = {c.id: PASSWORD.encode() for c in configs}
        self.listener = OcppListener(ListenerSettings(**settings), configs, self.recorder, password_check(passwords))
        await self.listener.start()
        return self.listener

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.listener.port}/ocpp"

    def station(self, station_id: str, version: str, **kw) -> OcppStation:
        kw.setdefault("password", PASSWORD)
        kw.setdefault("tick_s", 0.05)
        sim = OcppStation(station_id, version, self.base_url, **kw)
        self.stations.append(sim)
        return sim

    async def close(self) -> None:
        for sim in self.stations:
            await sim.close()
        if self.listener is not None:
            await self.listener.stop()


class RawStation:
    """A bare websocket to the listener: frames exactly as a test writes them."""

    def __init__(self, rig: OcppRig, station_id: str, version: str):
        self.rig, self.id, self.version = rig, station_id, version
        self.session = None
        self.ws = None

    async def __aenter__(self):
        import aiohttp
        self.session = aiohttp.ClientSession()
        headers = {"Authorization": aiohttp.encode_basic_auth(self.id, PASSWORD)}
        self.ws = await self.session.ws_connect(f"{self.rig.base_url}/{self.id}", protocols=(self.version,),
                                                headers=headers)
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()
        await self.session.close()

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def reply(self, timeout: float = 5.0):
        import json
        msg = await self.ws.receive(timeout=timeout)
        return json.loads(msg.data)

    async def exchange(self, text: str, timeout: float = 5.0):
        await self.send(text)
        return await self.reply(timeout)
