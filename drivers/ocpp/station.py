"""One configured station: its live connection, its offline clock, and the
hub's commands to it.

Each connection runs in its own task (the listener's request task): it reads
one frame at a time, answers CALLs through the version adapter, and hands
the station's answers to the one outgoing call waiting for them. Outgoing
calls go through the station's ``CallQueue`` and the ``ocpp`` library's
``ChargePoint.call`` (which validates the request and the answer against the
official schemas, R-O7).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from aiohttp import WSMsgType, web
from ocpp import v16 as lib16
from ocpp import v201 as lib201
from ocpp.exceptions import OCPPError

from drivers.ocpp import rpc
from drivers.ocpp.adapter import Adapter, error_outcome
from drivers.ocpp.calls import CallQueue
from drivers.ocpp.events import (
    CallOutcome,
    PowerLimit,
    StationConnected,
    StationDisconnected,
)
from drivers.ocpp.handler import StationHandler
from drivers.ocpp.leniency import check_names, repairs_for
from drivers.ocpp.v16 import Adapter16
from drivers.ocpp.v201 import Adapter201
from drivers.device import cancel_and_wait

log = logging.getLogger("hubedge.ocpp")
# The library logs every frame with its payload at INFO (card ids, meter
# data); ours logs what happened instead.
wire_log = logging.getLogger("hubedge.ocpp.wire")
wire_log.setLevel(logging.WARNING)
REPLACE_WAIT_S = 5.0


@dataclass(frozen=True)
class StationConfig:
    """A station the hub accepts: ``id`` is its identity in the URL and its
    Basic-auth user; ``version`` the subprotocol it must speak."""

    id: str
    version: str  # ocpp1.6 | ocpp2.0.1
    security_profile: int = 1  # 0: no password (only when written explicitly); 1, 2: HTTP Basic
    leniencies: frozenset[str] = field(default_factory=frozenset)
    voltage_v: float | None = None  # for limits in A (leniency limits_in_amps)
    phases: int | None = None

    def __post_init__(self):
        if self.version not in rpc.CODES:
            raise ValueError(f"station {self.id!r}: protocol {self.version!r} is not ocpp1.6 or ocpp2.0.1")
        if self.security_profile not in (0, 1, 2):
            raise ValueError(f"station {self.id!r}: security_profile {self.security_profile} is not 0, 1 or 2 "
                             "(profile 3, client certificates, is not supported)")
        if not self.id or len(self.id) > 48 or ":" in self.id:
            raise ValueError(f"station id {self.id!r}: 1..48 characters, no ':' (it is the Basic-auth user)")
        object.__setattr__(self, "leniencies", check_names(self.leniencies))


class _Socket:
    """What the library's ChargePoint needs of a connection: send()."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.sent = 0  # CALLs sent: a call that failed before this moved was never on the wire

    async def send(self, text: str) -> None:
        self.sent += 1
        await self.ws.send_str(text)

    async def recv(self) -> str:  # never used: the station's task reads
        raise RuntimeError("the OCPP layer reads frames itself")


class _Link16(lib16.ChargePoint):
    pass


class _Link201(lib201.ChargePoint):
    pass


class Connection:
    """One websocket of one station; ended by the station, the network, the
    size limit, or a newer connection of the same station."""

    def __init__(self, station: "Station", ws: web.WebSocketResponse, remote: str):
        self.station = station
        self.ws = ws
        self.remote = remote
        link = _Link16 if station.config.version == "ocpp1.6" else _Link201
        self.socket = _Socket(ws)
        self.link = link(station.id, self.socket, response_timeout=3600, logger=wire_log)
        self.queue = CallQueue(station.id, self._send_call)
        self.awaiting: str | None = None  # the message id of the one CALL in flight
        self.answer_error: rpc.Error | None = None
        self.reader: asyncio.Task | None = None
        self.done = asyncio.Event()
        self.end_reason = "the station closed the connection"
        self.repairs: Counter = Counter()
        self.refusals: Counter = Counter()
        self.frames = 0

    # ---- reading
    async def serve(self) -> None:
        self.reader = asyncio.current_task()
        worker = asyncio.create_task(self.queue.run(), name=f"ocpp-calls-{self.station.id}")
        try:
            async for msg in self.ws:
                self.station._stamp()
                self.frames += 1
                if msg.type == WSMsgType.TEXT:
                    await self._frame(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._send(rpc.refusal(self.station.config.version, "not_rpc", "-1",
                                                 "Binary frame: OCPP-J messages are text frames").frame())
                elif msg.type == WSMsgType.ERROR:
                    self.end_reason = _why(self.ws.exception(), self.station.max_frame_bytes)
                    break
            if self.ws.close_code == 1009:
                self.end_reason = f"a frame over {self.station.max_frame_bytes} bytes (closed 1009)"
        finally:
            worker.cancel()
            self.queue.close("the connection closed")
            await cancel_and_wait([worker])
            self._summary()

    async def _frame(self, raw: str) -> None:
        version = self.station.config.version
        frame = rpc.read_frame(raw, version, ignore_empty="ignore_empty_frames" in self.station.config.leniencies)
        if isinstance(frame, rpc.Call):
            await self._call(frame)
        elif isinstance(frame, (rpc.Result, rpc.Error)):
            if frame.message_id != self.awaiting:
                log.info("ocpp_answer_ignored station=%s id=%s reason=no call of ours is waiting for that id",
                         self.station.id, frame.message_id[:36])
                return
            if isinstance(frame, rpc.Error):
                self.answer_error = frame
                self.link._response_queue.put_nowait(_library_error(frame))
            else:
                self.link._response_queue.put_nowait(_library_result(frame))
        elif isinstance(frame, rpc.Refusal):
            self._refused(frame, "frame")
            await self._send(frame.frame())
        else:
            if "ignore_empty_frames" in self.station.config.leniencies and frame.reason.startswith("empty"):
                self._repaired("ignore_empty_frames", "an empty frame dropped")
            else:
                log.warning("ocpp_frame_ignored station=%s reason=%s", self.station.id, frame.reason)

    async def _call(self, call: rpc.Call) -> None:
        station = self.station
        version = station.config.version
        checked = rpc.check_call(version, call, station.repairs,
                                 null_as_empty="null_payload_as_empty" in station.config.leniencies)
        if isinstance(checked, rpc.Refusal):
            self._refused(checked, call.action)
            await self._send(checked.frame())
            return
        for name, what in checked.repairs:
            self._repaired(name, what)
        try:
            payload = await station.adapter.answer(call.action, checked.payload)
        except Exception as exc:
            log.exception("ocpp_handler_failed station=%s action=%s: the station is answered InternalError and "
                          "will retry a transaction message; check the hub's log above", station.id, call.action)
            await self._send(rpc.refusal(version, "internal", call.message_id,
                                         f"The central system could not process {call.action} "
                                         f"({type(exc).__name__}); retry later").frame())
            return
        finally:
            self._drain_problems()
        problem = rpc.check_answer(version, call.action, payload)
        if problem:
            log.error("ocpp_answer_invalid station=%s %s: the hub's answer breaks the schema (a bug of the hub); "
                      "answered InternalError", station.id, problem)
            await self._send(rpc.refusal(version, "internal", call.message_id,
                                         f"The central system failed to answer {call.action}").frame())
            return
        await self._send(rpc.result_frame(call.message_id, payload))

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            log.info("ocpp_send_failed station=%s error=%s", self.station.id, exc)

    # ---- calls to the station (the queue's worker runs these, one at a time)
    async def _send_call(self, action: str, payload) -> CallOutcome:
        message_id = str(uuid.uuid4())
        self.awaiting, self.answer_error = message_id, None
        sent_before = self.socket.sent
        try:
            result = await self.link.call(payload, suppress=False, unique_id=message_id)
        except Exception as exc:
            error = self.answer_error
            if error is not None and error.message_id == message_id:
                return error_outcome(action, self.station.id, error.code, error.description)
            if isinstance(exc, OCPPError) and self.socket.sent == sent_before:
                log.error("ocpp_request_invalid station=%s action=%s %s: not sent (a bug of the hub's command)",
                          self.station.id, action, exc.details)
                return CallOutcome("Error", action, f"{self.station.id}: {action} not sent, the request breaks the "
                                   f"OCPP schema ({exc.code}: {str(exc.details)[:120]})")
            if isinstance(exc, OCPPError):
                return CallOutcome("Error", action, f"{self.station.id}: {action} answer breaks the OCPP schema "
                                   f"({exc.code}: {str(exc.details)[:120]})")
            raise
        finally:
            self.awaiting = None
        return self.station.adapter.outcome(action, result)

    # ---- bookkeeping
    def _refused(self, refusal: rpc.Refusal, what: str) -> None:
        self.refusals[refusal.code] += 1
        level = logging.WARNING if self.refusals[refusal.code] <= 3 else logging.DEBUG
        log.log(level, "ocpp_callerror station=%s action=%s code=%s description=%s", self.station.id, what[:40],
                refusal.code, refusal.description)

    def _repaired(self, leniency: str, what: str) -> None:
        self.repairs[leniency] += 1
        if self.repairs[leniency] == 1:
            log.warning("ocpp_leniency station=%s leniency=%s repaired=%s (logged once per connection)",
                        self.station.id, leniency, what)

    def _drain_problems(self) -> None:
        problems = self.station.adapter.problems
        for text in problems[:3]:
            log.warning("ocpp_meter_value_skipped station=%s %s", self.station.id, text)
        problems.clear()

    def _summary(self) -> None:
        if self.repairs or self.refusals:
            log.info("ocpp_connection_summary station=%s frames=%d repairs=%s callerrors=%s", self.station.id,
                     self.frames, dict(self.repairs), dict(self.refusals))

    async def close(self, reason: str, code: int = 1000) -> None:
        self.end_reason = reason
        await self.ws.close(code=code, message=reason[:120].encode())


def _why(exc: BaseException | None, limit: int) -> str:
    text = str(exc) if exc else "connection error"
    if getattr(exc, "code", None) == 1009 or "exceeds limit" in text:
        return f"a frame over {limit} bytes (closed 1009)"
    return f"connection error: {text[:120]}"


def _library_result(frame: rpc.Result):
    from ocpp.messages import CallResult
    return CallResult(frame.message_id, frame.payload)


def _library_error(frame: rpc.Error):
    from ocpp.messages import CallError
    return CallError(frame.message_id, frame.code, frame.description, frame.details)


class Station:
    """A configured station, connected or not. The hub's commands return a
    ``CallOutcome`` (Accepted / Rejected / NotSupported / Timeout / Error)
    and never raise for anything the station does."""

    def __init__(self, config: StationConfig, handler: StationHandler, *, clock: Callable[[], datetime],
                 heartbeat_interval_s: int = 300, max_frame_bytes: int = 65536):
        self.config = config
        self.id = config.id
        self.handler = handler
        self.clock = clock
        self.max_frame_bytes = max_frame_bytes
        adapter_class = Adapter16 if config.version == "ocpp1.6" else Adapter201
        self.adapter: Adapter = adapter_class(config.id, handler, clock=clock,
                                              heartbeat_interval_s=heartbeat_interval_s,
                                              leniencies=config.leniencies, voltage_v=config.voltage_v,
                                              phases=config.phases)
        self.repairs = repairs_for(config.leniencies, clock)
        self.connection: Connection | None = None
        self.last_frame_at: datetime | None = None
        self._last_frame_mono: float | None = None
        self._remote_start_ids = 0

    # ---- the offline clock (R-O5)
    def _stamp(self) -> None:
        self._last_frame_mono = time.monotonic()
        self.last_frame_at = self.clock()

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def silent_for(self) -> float | None:
        """Seconds since the station's last frame (any frame), None if never
        heard since the listener started. Past ``offline_after_s`` the hub
        marks its connectors Unavailable (charger offline)."""
        if self._last_frame_mono is None:
            return None
        return time.monotonic() - self._last_frame_mono

    def offline(self, offline_after_s: float) -> bool:
        silent = self.silent_for()
        return silent is None or silent > offline_after_s

    # ---- connections
    async def attach(self, ws: web.WebSocketResponse, remote: str) -> Connection:
        old = self.connection
        if old is not None:
            await old.close("replaced by a new connection of the same station", 1000)
            try:  # a hub handler stuck in the old connection must not keep the station out
                await asyncio.wait_for(old.done.wait(), REPLACE_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("ocpp_replace_slow station=%s: the old connection did not end within %g s; the new one "
                            "is taken anyway", self.id, REPLACE_WAIT_S)
        conn = Connection(self, ws, remote)
        self.connection = conn
        self._stamp()
        await self._tell("station_connected", StationConnected(self.id, self.config.version, remote, self.clock()))
        return conn

    async def detach(self, conn: Connection) -> None:
        if self.connection is conn:
            self.connection = None
        try:
            await self._tell("station_disconnected", StationDisconnected(self.id, conn.end_reason, self.clock()))
        finally:
            conn.done.set()

    async def _tell(self, method: str, event) -> None:
        try:
            await getattr(self.handler, method)(event)
        except Exception:
            log.exception("ocpp_handler_failed station=%s method=%s", self.id, method)

    # ---- commands
    def _submit(self, kind: str, build: Callable[[], object], coalesce=None,
                timeout_s: float | None = None) -> "asyncio.Future[CallOutcome]":
        conn = self.connection
        future = asyncio.get_running_loop().create_future()
        if conn is not None and asyncio.current_task() is conn.reader:
            raise RuntimeError(f"a call to {self.id} from inside its own message handler would wait for an answer "
                               "that cannot be read until the handler returns: schedule it in a task")
        try:
            payload = build()
        except (ValueError, TypeError) as exc:
            future.set_result(CallOutcome("Error", kind, f"{self.id}: not sent, {exc}"))
            return future
        finally:
            applied, self.adapter.applied = self.adapter.applied, []
        for name, what in applied:
            if conn is not None:
                conn._repaired(name, what)
        action = type(payload).__name__
        if conn is None:
            future.set_result(CallOutcome("Error", action, f"{self.id} is not connected; {action} not sent"))
            return future
        return conn.queue.submit(action, payload, kind, coalesce=coalesce, timeout_s=timeout_s)

    def next_remote_start_id(self) -> int:
        self._remote_start_ids += 1
        return int(time.time()) % 1_000_000 * 1000 + self._remote_start_ids % 1000

    async def remote_start(self, evse: int, id_token: str, *, remote_start_id: int | None = None,
                           limit: PowerLimit | None = None) -> CallOutcome:
        """Start charging on ``evse`` for ``id_token`` (bank-card and booked
        starts), optionally limited from the first second by a TxProfile."""
        rid = remote_start_id if remote_start_id is not None else self.next_remote_start_id()
        return await self._submit("control", lambda: self.adapter.remote_start(evse, id_token, rid, limit))

    async def remote_stop(self, transaction_id: str) -> CallOutcome:
        return await self._submit("control", lambda: self.adapter.remote_stop(transaction_id))

    async def unlock(self, evse: int, connector: int = 1) -> CallOutcome:
        return await self._submit("control", lambda: self.adapter.unlock(evse, connector))

    async def set_available(self, evse: int | None, available: bool) -> CallOutcome:
        """``evse`` None or 0: the whole station."""
        return await self._submit("availability", lambda: self.adapter.set_available(evse, available),
                                  coalesce=("availability", evse or 0))

    async def reserve(self, evse: int, reservation_id: int, id_token: str, until: datetime) -> CallOutcome:
        return await self._submit("booking", lambda: self.adapter.reserve(evse, reservation_id, id_token, until))

    async def cancel_reservation(self, reservation_id: int) -> CallOutcome:
        return await self._submit("booking", lambda: self.adapter.cancel_reservation(reservation_id))

    async def set_power_limit(self, limit: PowerLimit, timeout_s: float | None = None) -> CallOutcome:
        """SetChargingProfile, first in the queue; a newer limit for the same
        purpose and evse replaces one still waiting."""
        return await self._submit("power", lambda: self.adapter.set_limit(limit),
                                  coalesce=("limit", limit.purpose, limit.evse), timeout_s=timeout_s)

    async def clear_power_limit(self, purpose: str, evse: int | None = None,
                                profile_id: int | None = None) -> CallOutcome:
        return await self._submit("power", lambda: self.adapter.clear_limit(purpose, evse, profile_id))

    async def trigger_status(self, evse: int | None = None) -> CallOutcome:
        return await self._submit("trigger", lambda: self.adapter.trigger("StatusNotification", evse))

    async def trigger_meter_values(self, evse: int | None = None) -> CallOutcome:
        return await self._submit("trigger", lambda: self.adapter.trigger("MeterValues", evse))

    async def trigger_boot(self) -> CallOutcome:
        """Ask a station that connected without booting for its
        BootNotification (vendor, model, firmware)."""
        return await self._submit("trigger", lambda: self.adapter.trigger("BootNotification"))

    async def set_heartbeat_interval(self, seconds: int) -> CallOutcome:
        return await self._submit("config", lambda: self.adapter.configure("heartbeat", seconds))

    async def set_meter_interval(self, seconds: int) -> CallOutcome:
        return await self._submit("config", lambda: self.adapter.configure("meter", seconds))
