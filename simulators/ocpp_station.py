"""A charging station speaking OCPP 1.6J or 2.0.1 to a central system, simulated.

It connects over a real websocket (aiohttp's client) as a station would, with
trucks on its connectors (the physics of ``simulators.charger``: taper by state
of charge, a power limit followed with a ramp), its own card reader (tap ->
Authorize -> StartTransaction or TransactionEvent; a local list while
offline), optional signed meter values (OCMF text), and the faults and habits
of real stations: a dropped connection, transaction messages queued while
offline and replayed in order on reconnection (1.6 with their old timestamps,
2.0.1 with offline=true), remote starts refused, slow answers, garbage frames,
a wrong password or subprotocol, no BootNotification on reconnection.

Every CALL the central system sends is checked against the official schema
(``violations`` lists any that break it) and recorded in ``received``.

Run it alone::

    python -m simulators.ocpp_station --url ws://127.0.0.1:9000/ocpp --id CS-1 \\
        --version ocpp2.0.1 --password-file cs1.key --connectors 2 --traffic
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from urllib.parse import quote

import aiohttp
from ocpp.messages import get_validator

from simulators.charger import Truck, taper

log = logging.getLogger("hubedge.simulator.ocpp")
DECIMAL_ACTIONS = ("SetChargingProfile", "RemoteStartTransaction")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def stamp(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallFailed(Exception):
    """The central system answered a CALLERROR, or did not answer."""


@dataclass
class LocalTx:
    id_token: str
    meter_start_wh: float
    started: datetime
    tx_id: str  # 2.0.1: the station's id; 1.6: the central system's once answered
    remote_start_id: int | None = None
    seq: itertools.count = field(default_factory=itertools.count)
    answered: bool = False  # 1.6: the StartTransaction answer arrived


@dataclass
class Connector:
    energy_wh: float
    truck: Truck | None = None
    tx: LocalTx | None = None
    power_w: float = 0.0
    limit_w: float | None = None  # from charging profiles
    authorised: str | None = None  # a token authorised before the cable came in
    remote_start_id: int | None = None
    operative: bool = True
    faulted: bool = False
    reserved: int | None = None
    finished: bool = False
    last_status: str = ""


class OcppStation:
    def __init__(self, station_id: str, version: str, url: str, *, password: str | None = None,
                 connectors: int = 1, rated_power_w: float = 350_000, time_scale: float = 1.0,
                 meter_interval_s: float = 10.0, tick_s: float = 0.2, signed: bool = False,
                 local_list: dict[str, str] | None = None, subprotocol: str | None = "same",
                 ramp_w_per_s: float = 100_000, meter_start_wh: int = 1_000_000, vendor: str = "SimCharge",
                 model: str = "SIM-MCS-1200", ssl=None):
        if version not in ("ocpp1.6", "ocpp2.0.1"):
            raise ValueError(f"version {version!r}: use ocpp1.6 or ocpp2.0.1")
        self.id, self.version, self.url = station_id, version, url.rstrip("/")
        self.password = password
        self.subprotocol = version if subprotocol == "same" else subprotocol
        self.connectors = [Connector(float(meter_start_wh + 10_000 * i)) for i in range(connectors)]
        self.rated_power_w, self.time_scale, self.tick_s = rated_power_w, time_scale, tick_s
        self.meter_interval_s, self.ramp_w_per_s = meter_interval_s, ramp_w_per_s
        self.heartbeat_interval_s = 300.0
        self.signed, self.local_list = signed, dict(local_list or {})
        self.vendor, self.model = vendor, model
        self.ssl = ssl  # an ssl.SSLContext trusting the central system's certificate, for wss://
        # faults and habits
        self.reject_remote_start = False
        self.unsupported: set[str] = set()  # actions answered with a CALLERROR NotSupported (a station without them)
        self.retry_interval_s = 2.0  # a transaction message the central system refused is tried again
        self.slow_answers_s = 0.0
        self.voltage_v, self.phases = 400.0, 3
        # what happened (for tests)
        self.received: list[tuple[str, dict]] = []
        self.answers: list[tuple[str, object]] = []  # (action, answer payload or CallFailed)
        self.violations: list[str] = []
        self.queue: list[tuple[str, object]] = []  # transaction messages waiting for the link
        self.boot_status: str | None = None
        self.handshake_status: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task] = []
        self._tx_numbers = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self._replaying = False

    # ------------------------------------------------------------------ link
    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self, boot: bool = True) -> None:
        """Open the websocket; BootNotification (unless ``boot`` is False, as a
        real station reconnecting without a reboot), status of every
        connector, then the queued transaction messages in order."""
        self._session = self._session or aiohttp.ClientSession()
        headers = {}
        if self.password is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(self.id, self.password, encoding="latin1")
        protocols = tuple(p for p in (self.subprotocol or "").split(",") if p)
        try:
            self._ws = await self._session.ws_connect(f"{self.url}/{quote(self.id, safe='')}", protocols=protocols,
                                                      headers=headers, heartbeat=None, autoping=True,
                                                      max_msg_size=1 << 20, ssl=self.ssl if self.ssl else True)
        except aiohttp.WSServerHandshakeError as exc:
            self.handshake_status = exc.status
            raise
        self.handshake_status = 101
        self._tasks = [asyncio.create_task(self._read(), name=f"sim-read-{self.id}"),
                       asyncio.create_task(self._tick(), name=f"sim-tick-{self.id}")]
        if boot:
            await self.boot()
        for i in range(len(self.connectors)):
            await self.send_status(i, force=True)
        await self.replay()

    async def boot(self, reason: str = "PowerUp") -> dict:
        if self.version == "ocpp1.6":
            payload = {"chargePointVendor": self.vendor, "chargePointModel": self.model,
                       "chargePointSerialNumber": f"SN-{self.id}"[:25], "firmwareVersion": "1.0.0-sim"}
        else:
            payload = {"reason": reason, "chargingStation": {"vendorName": self.vendor, "model": self.model,
                                                                "serialNumber": f"SN-{self.id}"[:25],
                                                                "firmwareVersion": "1.0.0-sim"}}
        answer = await self.call("BootNotification", payload)
        self.boot_status = answer.get("status")
        self.heartbeat_interval_s = float(answer.get("interval") or 300)
        return answer

    async def disconnect(self) -> None:
        """A clean close, as at a planned shutdown."""
        await self._stop_tasks()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def drop(self) -> None:
        """The network goes away: the TCP connection is cut, no close frame."""
        ws, self._ws = self._ws, None
        if ws is not None and ws._conn is not None and ws._conn.transport is not None:
            ws._conn.transport.abort()
        await self._stop_tasks()

    async def close(self) -> None:
        await self.disconnect()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        pending = {t for t in tasks if t is not asyncio.current_task()}
        while pending:
            # Cancelled again until they end: asyncio.wait_for (Python 3.11)
            # swallows a cancellation that comes as its call is answered.
            for t in pending:
                t.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.5)
        for f in self._pending.values():
            if not f.done():
                f.set_exception(CallFailed("the connection closed before the answer"))
        self._pending.clear()

    async def send_raw(self, text: str) -> None:
        """Send anything (garbage, floods, oversize frames)."""
        await self._ws.send_str(text)

    async def call(self, action: str, payload: dict, timeout: float = 10.0) -> dict:
        """A CALL to the central system; its answer payload, or CallFailed."""
        if not self.connected:
            raise CallFailed("not connected")
        self._check(action, payload, outgoing=True)
        mid = f"{self.id[:20]}-{next(self._ids)}"
        future = asyncio.get_running_loop().create_future()
        self._pending[mid] = future
        async with self._send_lock:  # OCPP-J: one CALL at a time
            try:
                await self._ws.send_str(json.dumps([2, mid, action, payload]))
                answer = await asyncio.wait_for(future, timeout)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:
                self.answers.append((action, CallFailed(str(exc) or type(exc).__name__)))
                raise CallFailed(f"{action}: {exc or type(exc).__name__}") from None
            finally:
                self._pending.pop(mid, None)
        self.answers.append((action, answer))
        return answer

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    frame = None
                if not isinstance(frame, list) or len(frame) < 3 or (frame[0] == 2 and len(frame) != 4):
                    self.violations.append(f"central system sent a malformed frame: {msg.data[:80]!r}")
                    continue
                if frame[0] == 2:
                    asyncio.create_task(self._answer(frame[1], frame[2], frame[3]))
                elif frame[1] in self._pending:
                    future = self._pending[frame[1]]
                    if frame[0] == 3:
                        future.set_result(frame[2])
                    else:
                        self.answers.append(("CALLERROR", frame))
                        future.set_exception(CallFailed(f"{frame[2]}: {frame[3]}"))
        finally:
            for f in self._pending.values():
                if not f.done():
                    f.set_exception(CallFailed("the connection closed before the answer"))

    def _check(self, action: str, payload: dict, outgoing: bool) -> bool:
        lib_version = self.version[4:]
        try:
            if lib_version == "1.6" and action in DECIMAL_ACTIONS:
                # As the library does: limits are multipleOf 0.1, checked in decimal.
                get_validator(2, action, lib_version, parse_float=Decimal).validate(
                    json.loads(json.dumps(payload), parse_float=Decimal))
            else:
                get_validator(2, action, lib_version).validate(payload)
        except Exception as exc:  # a schema error, or an action the version does not have
            who = "station" if outgoing else "central system"
            self.violations.append(f"{who} {action}: {str(exc).splitlines()[0][:160]}")
            return False
        return True

    # ------------------------------------------------------------------ transaction messages
    async def send_tx(self, action: str, build) -> dict | None:
        """A transaction message: sent now, or queued while offline (and on
        a failure) to be replayed in order on reconnection."""
        if self.connected and not self.queue and not self._replaying:
            try:
                return await self.call(action, build(False))
            except CallFailed:
                pass
        self.queue.append((action, build))
        return None

    async def replay(self) -> None:
        self._replaying = True
        try:
            while self.queue and self.connected:
                action, build = self.queue[0]
                answer = await self.call(action, build(True))
                self.queue.pop(0)
                hook = getattr(self, "_answered_" + action, None)
                if hook:
                    hook(build, answer)
        except CallFailed:
            pass
        finally:
            self._replaying = False

    # ------------------------------------------------------------------ the truck and the card reader
    def plug(self, i: int, soc: float = 20.0, battery_kwh: float = 600.0, max_power_w: float | None = None) -> None:
        c = self.connectors[i]
        if c.truck is not None:
            raise ValueError(f"connector {i} already has a truck")
        c.truck = Truck(float(soc), battery_kwh * 1000.0, float(max_power_w or self.rated_power_w))
        c.finished = False
        self._soon(self.send_status(i))
        if c.authorised or c.remote_start_id is not None:
            self._soon(self.start(i, c.authorised or "REMOTE", c.remote_start_id))

    def unplug(self, i: int) -> None:
        c = self.connectors[i]
        if c.tx is not None:
            self._soon(self.stop(i, "EVDisconnected"))
        c.truck, c.finished = None, False
        self._soon(self.send_status(i))

    async def tap(self, token: str, i: int = 0) -> str:
        """A card at the station's reader: stops this connector's transaction
        if it is the same card, else authorises and starts. Returns the status."""
        c = self.connectors[i]
        if c.tx is not None and c.tx.id_token == token:
            await self.stop(i, "Local")
            return "Stopped"
        status = await self.authorise(token)
        if status != "Accepted":
            return status
        if c.truck is None:
            c.authorised = token
            return status
        await self.start(i, token)
        return status

    async def authorise(self, token: str) -> str:
        if not self.connected:
            return self.local_list.get(token, "Invalid")  # the local list decides offline
        if self.version == "ocpp1.6":
            answer = await self.call("Authorize", {"idTag": token})
            return answer["idTagInfo"]["status"]
        answer = await self.call("Authorize", {"idToken": {"idToken": token, "type": "ISO14443"}})
        return answer["idTokenInfo"]["status"]

    async def start(self, i: int, token: str, remote_start_id: int | None = None) -> None:
        c = self.connectors[i]
        if c.tx is not None or c.truck is None:
            return
        c.authorised, c.remote_start_id = None, None
        tx = LocalTx(token, c.energy_wh, utcnow(), f"{self.id}-T{next(self._tx_numbers)}", remote_start_id)
        c.tx = tx
        if self.version == "ocpp1.6":
            def build(_replay):
                return {"connectorId": i + 1, "idTag": token[:20], "meterStart": int(tx.meter_start_wh),
                        "timestamp": stamp(tx.started)}
            build.tx = tx
            answer = await self.send_tx("StartTransaction", build)
            if answer is not None:
                self._started_16(tx, answer)
        else:
            offline = not self.connected
            ev = self._event(i, tx, "Started", "RemoteStart" if remote_start_id is not None else "Authorized",
                             offline, context="Transaction.Begin", id_token=token)
            answer = await self.send_tx("TransactionEvent", ev)
            if answer is not None:
                self._answered_TransactionEvent(ev, answer)
        await self.send_status(i)

    def _started_16(self, tx: LocalTx, answer: dict) -> None:
        tx.tx_id, tx.answered = str(answer["transactionId"]), True
        if answer["idTagInfo"]["status"] != "Accepted":  # StopTransactionOnInvalidId
            for i, c in enumerate(self.connectors):
                if c.tx is tx:
                    self._soon(self.stop(i, "DeAuthorized"))

    def _answered_StartTransaction(self, build, answer: dict) -> None:
        self._started_16(build.tx, answer)

    def _answered_TransactionEvent(self, build, answer: dict) -> None:
        """A token the central system does not accept stops its transaction (TxCtrlr.StopTxOnInvalidId)."""
        info = answer.get("idTokenInfo")
        if info and info.get("status") != "Accepted":
            for i, c in enumerate(self.connectors):
                if c.tx is build.tx:
                    self._soon(self.stop(i, "DeAuthorized"))

    async def stop(self, i: int, reason: str = "Local") -> None:
        c = self.connectors[i]
        tx = c.tx
        if tx is None:
            return
        c.tx, c.finished, c.power_w = None, True, 0.0
        at = utcnow()
        meter_stop = c.energy_wh
        if self.version == "ocpp1.6":
            def build(_replay):
                payload = {"transactionId": int(tx.tx_id) if tx.answered else 0, "meterStop": int(meter_stop),
                           "timestamp": stamp(at), "reason": reason, "idTag": tx.id_token[:20]}
                if self.signed:
                    payload["transactionData"] = [{"timestamp": stamp(at), "sampledValue": [
                        {"value": self._ocmf(tx, "E", meter_stop), "format": "SignedData",
                         "context": "Transaction.End"}]}]
                return payload
            build.tx = tx
            await self.send_tx("StopTransaction", build)
        else:
            ev = self._event(i, tx, "Ended", {"Local": "StopAuthorized", "Remote": "RemoteStop",
                                              "EVDisconnected": "EVDeparted"}.get(reason, "AbnormalCondition"),
                             not self.connected, context="Transaction.End", stopped_reason=reason, at=at,
                             energy=meter_stop)
            await self.send_tx("TransactionEvent", ev)
        await self.send_status(i)

    def _event(self, i: int, tx: LocalTx, event: str, trigger: str, offline: bool, *, context: str,
               id_token: str | None = None, stopped_reason: str | None = None, at: datetime | None = None,
               energy: float | None = None, charging_state: str | None = None):
        """A 2.0.1 TransactionEvent, built when sent (seqNo fixed now)."""
        seq = next(tx.seq)
        at = at or utcnow()
        energy = self.connectors[i].energy_wh if energy is None else energy
        power = self.connectors[i].power_w

        def build(_replay):
            info = {"transactionId": tx.tx_id}
            state = charging_state or ("Charging" if event != "Ended" else None)
            if state:
                info["chargingState"] = state
            if stopped_reason:
                info["stoppedReason"] = stopped_reason
            if tx.remote_start_id is not None and event == "Started":
                info["remoteStartId"] = tx.remote_start_id
            sample = {"value": round(energy, 1), "context": context, "measurand": "Energy.Active.Import.Register"}
            if self.signed and context != "Sample.Periodic":
                sample["signedMeterValue"] = {"signedMeterData": self._ocmf(tx, context[12] if context.startswith(
                    "Transaction.") else "T", energy), "signingMethod": "", "encodingMethod": "OCMF",
                    "publicKey": ""}
            values = [sample, {"value": round(power, 1), "context": context, "measurand": "Power.Active.Import",
                               "unitOfMeasure": {"unit": "W"}}]
            payload = {"eventType": event, "timestamp": stamp(at), "triggerReason": trigger, "seqNo": seq,
                       "transactionInfo": info, "evse": {"id": i + 1, "connectorId": 1},
                       "meterValue": [{"timestamp": stamp(at), "sampledValue": values}]}
            if offline:
                payload["offline"] = True
            if id_token:
                payload["idToken"] = {"idToken": id_token, "type": "ISO14443"}
            return payload
        build.tx = tx
        return build

    def _ocmf(self, tx: LocalTx, kind: str, energy_wh: float) -> str:
        """OCMF-shaped text; the signature is a digest (the simulator has no meter key, as GI says)."""
        body = json.dumps({"FV": "1.0", "GI": "SIMULATED UNSIGNED", "GS": self.id, "IS": True,
                           "ID": tx.id_token, "RD": [{"TM": stamp(utcnow()), "TX": kind,
                                                      "RV": round(math.floor(energy_wh) / 1000.0, 3),
                                                      "RI": "1-b:1.8.0", "RU": "kWh", "ST": "G"}]},
                          separators=(",", ":"))
        return f'OCMF|{body}|{{"SA":"none","SD":"{hashlib.sha256(body.encode()).hexdigest()}"}}'

    # ------------------------------------------------------------------ status and meter values
    def status_of(self, i: int) -> str:
        """The 1.6 status name of connector ``i`` (2.0.1 sends its own words)."""
        c = self.connectors[i]
        if c.faulted:
            return "Faulted"
        if not c.operative and c.tx is None:
            return "Unavailable"
        if c.truck is None:
            return "Reserved" if c.reserved is not None else "Available"
        if c.tx is None:
            return "Finishing" if c.finished else "Preparing"
        if c.truck.soc >= 100.0:
            return "SuspendedEV"
        if c.limit_w == 0:
            return "SuspendedEVSE"
        return "Charging"

    async def send_status(self, i: int, force: bool = False) -> None:
        status = self.status_of(i)
        c = self.connectors[i]
        if self.version == "ocpp2.0.1":
            status = {"Available": "Available", "Reserved": "Reserved", "Unavailable": "Unavailable",
                      "Faulted": "Faulted"}.get(status, "Occupied")
        if not self.connected or (status == c.last_status and not force):
            return
        c.last_status = status
        if self.version == "ocpp1.6":
            payload = {"connectorId": i + 1, "errorCode": "InternalError" if status == "Faulted" else "NoError",
                       "status": status, "timestamp": stamp(utcnow())}
        else:
            payload = {"timestamp": stamp(utcnow()), "connectorStatus": status, "evseId": i + 1, "connectorId": 1}
        with contextlib.suppress(CallFailed):
            await self.call("StatusNotification", payload)

    async def send_meter_values(self, i: int, context: str = "Sample.Periodic") -> None:
        c = self.connectors[i]
        if self.version == "ocpp2.0.1" and c.tx is not None:
            trigger = "Trigger" if context == "Trigger" else "MeterValuePeriodic"
            await self.send_tx("TransactionEvent", self._event(i, c.tx, "Updated", trigger, not self.connected,
                                                                context=context))
            return
        at, tx = utcnow(), c.tx
        energy, power, soc = c.energy_wh, c.power_w, (c.truck.soc if c.truck else None)
        if self.version == "ocpp1.6":
            def build(_replay):
                values = [{"value": str(int(energy)), "context": context, "measurand": "Energy.Active.Import.Register",
                           "unit": "Wh"},
                          {"value": f"{power / 1000:.3f}", "context": context, "measurand": "Power.Active.Import",
                           "unit": "kW"}]
                if soc is not None:
                    values.append({"value": f"{soc:.1f}", "context": context, "measurand": "SoC", "unit": "Percent",
                                   "location": "EV"})
                payload = {"connectorId": i + 1, "meterValue": [{"timestamp": stamp(at), "sampledValue": values}]}
                if tx is not None and tx.answered:
                    payload["transactionId"] = int(tx.tx_id)
                return payload
            if tx is None and not self.connected:
                return  # meter values outside a transaction are not kept while offline
            await self.send_tx("MeterValues", build)
        elif self.connected:
            with contextlib.suppress(CallFailed):
                await self.call("MeterValues", {"evseId": i + 1, "meterValue": [{"timestamp": stamp(at), "sampledValue": [
                    {"value": round(energy, 1), "context": context, "measurand": "Energy.Active.Import.Register"}]}]})

    # ------------------------------------------------------------------ physics
    def advance(self, seconds: float) -> None:
        """Move simulated time on: power ramps toward what the truck takes
        under the limit, energy and state of charge follow."""
        while seconds > 1e-9:
            step = min(5.0, seconds)
            seconds -= step
            for i, c in enumerate(self.connectors):
                target = 0.0
                if c.tx is not None and c.truck is not None and not c.faulted and not c.truck.paused:
                    ceiling = min(c.truck.max_power_w, self.rated_power_w,
                                  c.limit_w if c.limit_w is not None else math.inf)
                    target = ceiling * taper(c.truck.soc) if c.truck.soc < 100.0 else 0.0
                delta = max(-self.ramp_w_per_s * step, min(self.ramp_w_per_s * step, target - c.power_w))
                c.power_w = max(0.0, c.power_w + delta)
                if c.power_w > 0 and c.truck is not None:
                    room = (100.0 - c.truck.soc) / 100.0 * c.truck.battery_wh
                    energy = min(c.power_w * step / 3600.0, room)
                    c.energy_wh += energy
                    c.truck.soc = min(100.0, c.truck.soc + energy / c.truck.battery_wh * 100.0)

    async def _tick(self) -> None:
        since_meter = since_heartbeat = since_retry = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            sim = self.tick_s * self.time_scale
            self.advance(sim)
            since_meter += sim
            since_heartbeat += self.tick_s
            since_retry += self.tick_s
            if self.queue and not self._replaying and since_retry >= self.retry_interval_s:
                since_retry = 0.0  # TransactionMessageRetryInterval: try the queue again
                await self.replay()
            if self.meter_interval_s and since_meter >= self.meter_interval_s:
                since_meter = 0.0
                for i, c in enumerate(self.connectors):
                    if c.tx is not None:
                        await self.send_meter_values(i)
            if since_heartbeat >= self.heartbeat_interval_s:
                since_heartbeat = 0.0
                with contextlib.suppress(CallFailed):
                    await self.call("Heartbeat", {})
            for i in range(len(self.connectors)):
                await self.send_status(i)

    def _soon(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)

    # ------------------------------------------------------------------ the central system's calls
    async def _answer(self, mid: str, action: str, payload: dict) -> None:
        self.received.append((action, payload))
        if not self._check(action, payload, outgoing=False):
            reply = [4, mid, "FormationViolation" if self.version == "ocpp1.6" else "FormatViolation",
                     "payload does not match the schema", {}]
        else:
            handler = getattr(self, "_on_" + action, None) if action not in self.unsupported else None
            if handler is None:
                reply = [4, mid, "NotSupported", f"{action} is not supported by this station", {}]
            else:
                reply = [3, mid, handler(payload)]
        if self.slow_answers_s:
            await asyncio.sleep(self.slow_answers_s)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if self.connected:
                await self._ws.send_str(json.dumps(reply))

    def _index(self, payload: dict) -> int:
        n = payload.get("connectorId", payload.get("evseId"))
        if n is None and isinstance(payload.get("evse"), dict):
            n = payload["evse"].get("id")
        return (n or 1) - 1

    def _tx_index(self, tx_id) -> int | None:
        return next((i for i, c in enumerate(self.connectors) if c.tx is not None and c.tx.tx_id == str(tx_id)), None)

    def _on_RemoteStartTransaction(self, p: dict) -> dict:
        return self._remote_start(self._index(p), p["idTag"], None, p.get("chargingProfile"))

    def _on_RequestStartTransaction(self, p: dict) -> dict:
        return self._remote_start(self._index(p), p["idToken"]["idToken"], p["remoteStartId"],
                                  p.get("chargingProfile"))

    def _remote_start(self, i: int, token: str, remote_start_id: int | None, profile: dict | None) -> dict:
        if self.reject_remote_start or not 0 <= i < len(self.connectors) or self.connectors[i].tx is not None:
            return {"status": "Rejected"}
        c = self.connectors[i]
        if profile:
            self._apply_profile(i, profile)
        c.authorised, c.remote_start_id = token, remote_start_id
        if c.truck is not None:
            self._soon(self.start(i, token, remote_start_id))
        return {"status": "Accepted"}

    def _on_RemoteStopTransaction(self, p: dict) -> dict:  # 2.0.1 RequestStopTransaction is the same
        i = self._tx_index(p["transactionId"])
        if i is None:
            return {"status": "Rejected"}
        self._soon(self.stop(i, "Remote"))
        return {"status": "Accepted"}

    _on_RequestStopTransaction = _on_RemoteStopTransaction

    def _on_UnlockConnector(self, p: dict) -> dict:
        i = self._index(p)
        if not 0 <= i < len(self.connectors):
            return {"status": "UnlockFailed" if self.version == "ocpp1.6" else "UnknownConnector"}
        if self.connectors[i].tx is not None:
            if self.version == "ocpp2.0.1":
                return {"status": "OngoingAuthorizedTransaction"}
            self._soon(self.stop(i, "UnlockCommand"))
        return {"status": "Unlocked"}

    def _on_ChangeAvailability(self, p: dict) -> dict:
        operative = (p.get("type") or p.get("operationalStatus")) == "Operative"
        index = self._index(p) if (p.get("connectorId") or p.get("evse")) else None
        targets = range(len(self.connectors)) if index is None else [index]
        busy = False
        for i in targets:
            self.connectors[i].operative = operative
            busy |= self.connectors[i].tx is not None
            self._soon(self.send_status(i))
        return {"status": "Scheduled" if busy and not operative else "Accepted"}

    def _on_ReserveNow(self, p: dict) -> dict:
        i = self._index(p)
        c = self.connectors[i]
        if c.truck is not None or c.tx is not None:
            return {"status": "Occupied"}
        c.reserved = p.get("reservationId", p.get("id"))
        self._soon(self.send_status(i))
        return {"status": "Accepted"}

    def _on_CancelReservation(self, p: dict) -> dict:
        for i, c in enumerate(self.connectors):
            if c.reserved == p["reservationId"]:
                c.reserved = None
                self._soon(self.send_status(i))
                return {"status": "Accepted"}
        return {"status": "Rejected"}

    def _apply_profile(self, i: int | None, profile: dict) -> None:
        schedule = profile.get("chargingSchedule")
        schedule = schedule[0] if isinstance(schedule, list) else schedule
        limit = float(schedule["chargingSchedulePeriod"][0]["limit"])
        if schedule["chargingRateUnit"] == "A":
            limit *= self.voltage_v * schedule["chargingSchedulePeriod"][0].get("numberPhases", self.phases)
        for n in (range(len(self.connectors)) if not i or i < 0 else [i]):
            self.connectors[n].limit_w = limit

    def _on_SetChargingProfile(self, p: dict) -> dict:
        profile = p.get("csChargingProfiles") or p.get("chargingProfile")
        n = p.get("connectorId", p.get("evseId"))
        if profile["chargingProfilePurpose"] == "TxProfile" and (not n or self.connectors[n - 1].tx is None):
            return {"status": "Rejected"}
        self._apply_profile(None if not n else n - 1, profile)
        return {"status": "Accepted"}

    def _on_ClearChargingProfile(self, p: dict) -> dict:
        for c in self.connectors:
            c.limit_w = None
        return {"status": "Accepted"}

    def _on_TriggerMessage(self, p: dict) -> dict:
        what = p["requestedMessage"]
        evse = p.get("connectorId") or (p.get("evse") or {}).get("id")
        targets = range(len(self.connectors)) if not evse else [evse - 1]
        if what == "StatusNotification":
            for i in targets:
                self._soon(self.send_status(i, force=True))
        elif what == "MeterValues":
            for i in targets:
                self._soon(self.send_meter_values(i, "Trigger"))
        elif what == "Heartbeat":
            self._soon(self.call("Heartbeat", {}))
        elif what == "BootNotification":
            self._soon(self.boot("Triggered"))
        else:
            return {"status": "NotImplemented" if self.version == "ocpp1.6" else "Rejected"}
        return {"status": "Accepted"}

    def _on_ChangeConfiguration(self, p: dict) -> dict:
        return {"status": self._configure(p["key"], p["value"])}

    def _on_SetVariables(self, p: dict) -> dict:
        names = {"HeartbeatInterval": "HeartbeatInterval", "TxUpdatedInterval": "MeterValueSampleInterval"}
        results = []
        for item in p["setVariableData"]:
            key = names.get(item["variable"]["name"])
            status = self._configure(key, item["attributeValue"]) if key else "UnknownVariable"
            results.append({"attributeStatus": status if status != "NotSupported" else "Rejected",
                            "component": item["component"], "variable": item["variable"]})
        return {"setVariableResult": results}

    def _configure(self, key: str, value: str) -> str:
        try:
            number = float(value)
        except ValueError:
            return "Rejected"
        if key == "HeartbeatInterval":
            self.heartbeat_interval_s = number
        elif key == "MeterValueSampleInterval":
            self.meter_interval_s = number
        else:
            return "NotSupported"
        return "Accepted"


if __name__ == "__main__":  # python -m simulators.ocpp_station: the runner in simulators/ocpp_station_run.py
    from simulators.ocpp_station_run import main

    main()
