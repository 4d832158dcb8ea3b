"""A hub core with OCPP chargers, for the mapping's tests without sockets.

The station is a stand-in for ``drivers.ocpp.station.Station`` that records
the hub's calls and answers each with the outcome the test set; the
station's messages are the layer's events, handed to the site as the layer
would. The hub itself is real: connector machine, session ledger, store,
outbox, card decisions (R-O2, R-O3)."""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from drivers.ocpp.events import (
    AuthoriseRequest, CallOutcome, ConnectorStatus, MeterReading, MeterValues, SignedMeterValue, StationBooted,
    StationConnected, StationDisconnected, TransactionEnded, TransactionStarted, TransactionUpdated,
)
from units import FakeClock
from edge.core.config import parse_config

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc)


def ocpp_config(tmp: Path, extra: str = "", version: str = "ocpp1.6") -> dict:
    key = tmp / "cs1.key"
    if not key.exists():
        key.write_text("s3cret-station-pw\n")
        os.chmod(key, 0o600)
    return tomllib.loads(f"""
[hub]
id = "OCPP-01"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{tmp / 'control.sock'}"
[ocpp]
listen = "127.0.0.1:19999"
heartbeat_interval_s = 30
offline_after_s = 90
[[chargers]]
id = "CS1"
protocol = "{version}"
password_file = "{key}"
connectors = [ {{ id = "C7", evse = 1 }}, {{ id = "C8", evse = 2 }} ]
{extra}
""")


class FakeStation:
    """Records calls; each answers ``answers.get(method, Accepted)``."""

    def __init__(self, sid: str):
        self.id = sid
        self.calls: list[tuple] = []
        self.answers: dict[str, str] = {}
        self.connected = True
        self.last_frame_at = T0
        self._silent: float | None = 0.0
        self._rid = 0

    def _answer(self, method: str, *args):
        self.calls.append((method, *args))
        kind = self.answers.get(method, "Accepted")
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(CallOutcome(kind, method, f"{self.id}: {method} {kind}", status=kind))
        return fut

    def silent_for(self):
        return self._silent

    def offline(self, after):
        return self._silent is None or self._silent > after

    def next_remote_start_id(self):
        self._rid += 1
        return self._rid

    def __getattr__(self, name):
        if name in ("remote_start", "remote_stop", "unlock", "set_available", "reserve", "cancel_reservation",
                    "set_power_limit", "clear_power_limit", "trigger_status", "trigger_meter_values",
                    "set_heartbeat_interval", "set_meter_interval"):
            def call(*args, **kwargs):
                return self._answer(name, *args, *kwargs.values())
            return call
        raise AttributeError(name)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class OcppRig:
    def __init__(self, tmp: Path, extra: str = "", version: str = "ocpp1.6", tokens: dict | None = None):
        from edge.core.hub import Hub

        self.tmp = tmp
        self.clock = FakeClock(T0)
        self.cfg = parse_config(ocpp_config(tmp, extra, version), tmp / "hub.toml")
        self.hub = Hub(self.cfg, clock=self.clock)
        self.site = self.hub.ocpp_site
        self.charger = self.site.chargers["CS1"]
        self.station = FakeStation("CS1")
        self.charger.station = self.station
        self.charger.sink = self.hub
        self.version = version
        if tokens:
            self.load_tokens(tokens)

    def load_tokens(self, tokens: dict) -> None:
        """uid -> status (Accepted/Blocked ...) as own cards on the local list."""
        version = self.hub.tokens.version + 1
        result = self.hub.tokens.apply({"version": version, "kind": "full", "upsert": [
            {"uid": uid, "status": st, "type": "own", "group": "fleet"} for uid, st in tokens.items()]})
        assert result.ok, result

    # ---- the station's messages, as the layer hands them over
    async def status(self, evse: int, status: str, error: str | None = None):
        await self.site.connector_status(ConnectorStatus("CS1", evse, 1, status, error, None, self.clock.now(),
                                                         "StatusNotification", status))

    async def start(self, evse: int, token: str | None, meter: float = 1000, *, tx: str | None = None,
                    seq: int | None = None, at: datetime | None = None, offline: bool = False,
                    remote_start_id: int | None = None):
        ev = TransactionStarted("CS1", evse, 1, tx, token, "ISO14443", meter, at or self.clock.now(), offline, seq,
                                remote_start_id=remote_start_id)
        return await self.site.transaction_started(ev)

    async def meter(self, evse: int, tx: str | None, wh: float, w: float = 50_000, signed: str | None = None):
        sv = (SignedMeterValue(signed, "OCMF", None, None, "Sample.Periodic", "Energy.Active.Import.Register"),) \
            if signed else ()
        r = MeterReading(self.clock.now(), "Sample.Periodic", wh, w, 40.0, (), sv)
        await self.site.meter_values(MeterValues("CS1", evse, None, tx, (r,)))

    async def stop(self, tx: str, meter: float, *, reason: str = "Local", evse: int | None = None,
                   seq: int | None = None, at: datetime | None = None, token: str | None = None):
        ev = TransactionEnded("CS1", tx, evse, None, meter, at or self.clock.now(), reason, False, seq, token)
        return await self.site.transaction_ended(ev)

    async def update(self, tx: str, seq: int, evse: int = 1, missing=()):
        ev = TransactionUpdated("CS1", tx, evse, 1, self.clock.now(), False, seq, "Charging", None,
                                missing_seq_nos=tuple(missing))
        return await self.site.transaction_updated(ev)

    async def authorise(self, token: str):
        return await self.site.authorise(AuthoriseRequest("CS1", token, "ISO14443", self.clock.now()))

    async def connect(self):
        await self.site.station_connected(StationConnected("CS1", self.version, "127.0.0.1:5555", self.clock.now()))

    async def disconnect(self):
        await self.site.station_disconnected(StationDisconnected("CS1", "dropped", self.clock.now()))

    async def boot(self):
        await self.site.station_booted(StationBooted("CS1", "Kempower", "T500", "SN-1", "1.2.3", None,
                                                     self.clock.now()))

    async def settle(self):
        for _ in range(5):
            await asyncio.sleep(0)
        tasks = [t for t in self.hub._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    # ---- views
    def state(self, cid: str) -> str:
        return self.hub.connectors[cid].state

    def events(self, type_: str | None = None) -> list[dict]:
        rows = [json.loads(b) for (b,) in self.hub.store.db.execute(
            "SELECT body FROM outbox WHERE stream != 'reply' ORDER BY pos")]
        return [e for e in rows if type_ is None or e["type"] == type_]

    def sessions(self):
        return self.hub.sessions.query(limit=100)

    def close(self) -> None:
        self.hub.store.close()
