"""Barrier gates through a Modbus TCP I/O module.

The barrier's own controller owns closing and safety (induction loops,
photocells, EN 12453). Software may only pulse OPEN, or hold it open when a
technician asks (R-G5): this driver has no close command at all, and
``release()`` merely drops the hold so the barrier closes by itself when its
own logic says so.

Wiring, as seen over Modbus (addresses from ``BarrierIoMap``):

* coil OPEN      — impulse input of the barrier controller
* coil HOLD_OPEN — keep-open input
* discrete input PRESENCE — the presence (induction) loop under the boom
* discrete input OPEN / CLOSED — boom end-position switches

The driver turns input changes into ``VehiclePresent`` and
``BarrierPosition`` events, and reports ``DeviceFault`` when the I/O module
stops answering or when the boom does not reach its open position after an
open command. Requests on the one Modbus connection are serialised; every
request is time-bounded; reconnects back off up to a cap; while the module
is unreachable every call fails at once instead of waiting. Each new
connection first puts both outputs where this driver wants them (OPEN at
rest, HOLD_OPEN as held), so nothing a dead daemon left on stays on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.device import DeviceFault, DeviceHealth, DeviceRecovered, Emit, utcnow

log = logging.getLogger("hubedge.barrier")

Position = Literal["open", "closed", "moving", "unknown"]


@dataclass(frozen=True)
class BarrierIoMap:
    """Where the barrier's signals sit on the I/O module (0-based Modbus
    addresses). The default suits a small 4-in/4-out module wired in order."""

    open_coil: int = 0
    hold_open_coil: int = 1
    presence_input: int = 0
    open_input: int = 1
    closed_input: int = 2

    def __post_init__(self) -> None:
        for name in ("open_coil", "hold_open_coil", "presence_input", "open_input", "closed_input"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise ValueError(f"barrier io_map.{name} = {value!r}: expected a Modbus address 0..65535")
        if self.open_coil == self.hold_open_coil:
            raise ValueError("barrier io_map: open_coil and hold_open_coil must be different coils")
        inputs = {self.presence_input, self.open_input, self.closed_input}
        if len(inputs) != 3:
            raise ValueError("barrier io_map: presence, open and closed inputs must be three different inputs")
        if max(inputs) - min(inputs) > 63:
            raise ValueError("barrier io_map: keep the three inputs within 64 addresses so one read fetches them")

    @classmethod
    def from_dict(cls, data: dict | None) -> "BarrierIoMap":
        return cls(**(data or {}))


@dataclass(frozen=True)
class BarrierInputs:
    presence: bool
    is_open: bool
    is_closed: bool

    @property
    def position(self) -> Position:
        if self.is_open and self.is_closed:
            return "unknown"  # both end switches made: a wiring or sensor fault
        if self.is_open:
            return "open"
        if self.is_closed:
            return "closed"
        return "moving"


@dataclass(frozen=True)
class VehiclePresent:
    """The presence loop under the boom changed."""

    gate_id: str
    present: bool
    ts: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class BarrierPosition:
    """The boom's position changed (open, closed, moving, unknown)."""

    gate_id: str
    position: Position
    ts: datetime = field(default_factory=utcnow)


class BarrierUnavailable(RuntimeError):
    """The I/O module did not carry out a request; ``reason`` says why and
    what to check."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def next_backoff(previous: float, *, first: float = 0.5, cap: float = 10.0) -> float:
    """Reconnect delay after one more failure: doubles from ``first`` up to ``cap``."""
    if previous <= 0:
        return first
    return min(cap, previous * 2)


class BarrierDriver:
    def __init__(
        self,
        gate_id: str,
        host: str,
        port: int,
        unit: int,
        io_map: BarrierIoMap | dict | None,
        emit: Emit,
        *,
        open_confirm_s: float = 5.0,
        pulse_ms: int = 500,
        poll_interval_s: float = 0.2,
        request_timeout_s: float = 1.0,
        backoff_cap_s: float = 10.0,
        hold_open: bool = False,
    ):
        self.gate_id = gate_id
        self.host = host
        self.port = port
        self.unit = unit
        self.io_map = io_map if isinstance(io_map, BarrierIoMap) else BarrierIoMap.from_dict(io_map)
        self._emit = emit
        self.open_confirm_s = open_confirm_s
        self.pulse_s = pulse_ms / 1000.0
        self.poll_interval_s = poll_interval_s
        self.request_timeout_s = request_timeout_s
        self.backoff_cap_s = backoff_cap_s
        self.health = DeviceHealth(gate_id, "barrier")
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._faults: dict[str, str] = {}  # cause -> reason; empty = healthy
        # A technician's hold kept by the hub across restarts starts wanted.
        self._hold_wanted = hold_open
        self._pulsing = False
        # coil address -> state to write once the module answers again
        self._pending: dict[int, bool] = {}
        self._last: BarrierInputs | None = None
        self.open_confirmation: asyncio.Task[bool] | None = None

    # -- public commands (no close: R-G5)

    async def pulse_open(self, on_sent: Callable[[bool], None] | None = None) -> None:
        """Give the barrier an OPEN impulse. Returns after the impulse; the
        open position is confirmed in the background (``open_confirmation``),
        and a boom that does not get there in ``open_confirm_s`` is a fault.

        ``on_sent(ok)`` is called as soon as the OPEN write is answered (or
        has failed), before the impulse ends: the caller's bookkeeping waits
        for the barrier, never the other way round."""
        self._pulsing = True
        try:
            try:
                await self._write_coil(self.io_map.open_coil, True, rest=False)
            except BarrierUnavailable:
                if on_sent is not None:
                    on_sent(False)
                raise
            if on_sent is not None:
                on_sent(True)
            try:
                await asyncio.sleep(self.pulse_s)
            finally:
                # Always try to end the impulse, even when the caller gives up:
                # a stuck OPEN input would keep the barrier open.
                try:
                    await self._write_coil(self.io_map.open_coil, False)
                except BarrierUnavailable:
                    log.warning("barrier.pulse_reset_pending gate=%s", self.gate_id)
        finally:
            self._pulsing = False
        log.info("barrier.pulse_open gate=%s pulse_ms=%d", self.gate_id, int(self.pulse_s * 1000))
        self._watch_open()

    async def hold_open(self) -> None:
        """Keep the barrier open (technician request). Lasts until release()."""
        await self._write_coil(self.io_map.hold_open_coil, True, rest=self._hold_wanted)
        self._hold_wanted = True
        log.info("barrier.hold_open gate=%s", self.gate_id)
        self._watch_open()

    async def release(self) -> None:
        """Drop the hold-open. This is not a close: the barrier closes by
        itself once its own loop and photocells are clear (R-G5)."""
        self._hold_wanted = False
        await self._write_coil(self.io_map.hold_open_coil, False)
        log.info("barrier.release gate=%s", self.gate_id)

    async def read(self) -> BarrierInputs:
        m = self.io_map
        first = min(m.presence_input, m.open_input, m.closed_input)
        count = max(m.presence_input, m.open_input, m.closed_input) - first + 1
        bits = await self._request(
            "read inputs",
            lambda client: client.read_discrete_inputs(first, count=count, device_id=self.unit),
        )
        if len(bits) < count:
            raise self._link_fault(f"I/O module answered {len(bits)} inputs, expected {count}: check the unit id and io_map")
        return BarrierInputs(
            presence=bool(bits[m.presence_input - first]),
            is_open=bool(bits[m.open_input - first]),
            is_closed=bool(bits[m.closed_input - first]),
        )

    @property
    def last_inputs(self) -> BarrierInputs | None:
        return self._last

    @property
    def hold_wanted(self) -> bool:
        return self._hold_wanted

    async def run(self) -> None:
        """Poll the inputs and emit changes until cancelled. Never raises on a
        device problem: it reports the fault and keeps trying."""
        while True:
            try:
                await self._reassert_outputs()
                inputs = await self.read()
            except BarrierUnavailable:
                if self._last is not None:
                    self._last = None
                    self._emit(BarrierPosition(self.gate_id, "unknown"))
                await asyncio.sleep(max(self.poll_interval_s, self._retry_at - self._now()))
                continue
            self._observe(inputs)
            await asyncio.sleep(self.poll_interval_s)

    async def close(self) -> None:
        """Close the Modbus connection (driver shutdown; not a barrier command)."""
        if self.open_confirmation and not self.open_confirmation.done():
            self.open_confirmation.cancel()
        async with self._lock:
            self._drop_client()

    # -- change detection and open confirmation

    def _observe(self, inputs: BarrierInputs) -> None:
        last = self._last
        self._last = inputs
        if last is None or last.presence != inputs.presence:
            self._emit(VehiclePresent(self.gate_id, inputs.presence))
        if last is None or last.position != inputs.position:
            self._emit(BarrierPosition(self.gate_id, inputs.position))
        if inputs.is_open and not inputs.is_closed:
            self._clear_fault("open")

    def _watch_open(self) -> None:
        if self.open_confirmation and not self.open_confirmation.done():
            return  # one watch per opening is enough; it already runs
        self.open_confirmation = asyncio.get_running_loop().create_task(
            self._confirm_open(), name=f"barrier-open-confirm-{self.gate_id}"
        )

    async def _confirm_open(self) -> bool:
        deadline = self._now() + self.open_confirm_s
        step = max(0.02, min(self.poll_interval_s, self.open_confirm_s / 10))
        while True:
            try:
                inputs = await self.read()
                self._observe(inputs)
                if inputs.is_open and not inputs.is_closed:
                    return True
            except BarrierUnavailable:
                pass  # the link fault is already reported; keep the deadline
            if self._now() >= deadline:
                self._raise_fault(
                    "open",
                    f"barrier did not reach the open position within {self.open_confirm_s:g} s of an open "
                    "command: check the barrier for a jam, its power and the open-position switch",
                )
                return False
            await asyncio.sleep(min(step, max(0.0, deadline - self._now())) or step)

    async def _reassert_outputs(self) -> None:
        """Write coils whose state on the module is in doubt after a failed
        write (a timed-out request may still land late)."""
        for address, value in list(self._pending.items()):
            await self._write_coil(address, value)

    # -- health

    def _raise_fault(self, cause: str, reason: str) -> None:
        new_cause = cause not in self._faults
        self._faults[cause] = reason
        self.health.mark_fault(reason)
        if new_cause:
            log.warning("barrier.fault gate=%s cause=%s reason=%r", self.gate_id, cause, reason)
            self._emit(DeviceFault(self.gate_id, "barrier", reason))

    def _clear_fault(self, cause: str) -> None:
        self._faults.pop(cause, None)
        if self._faults:
            self.health.last_error = next(iter(self._faults.values()))
            return
        if self.health.mark_ok():
            log.info("barrier.recovered gate=%s", self.gate_id)
            self._emit(DeviceRecovered(self.gate_id, "barrier"))

    def _link_fault(self, reason: str) -> BarrierUnavailable:
        self._raise_fault("link", reason)
        return BarrierUnavailable(reason)

    # -- the Modbus link

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a broken transport must not mask the cause
                pass
            self._client = None

    async def _connect(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_client()
        if self._now() < self._retry_at:
            raise BarrierUnavailable(
                f"barrier I/O module {self.host}:{self.port} unreachable; next reconnect in "
                f"{self._retry_at - self._now():.1f} s"
            )
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.request_timeout_s,
            retries=0,
            reconnect_delay=0,  # we reconnect ourselves, with our own backoff
        )
        try:
            ok = await asyncio.wait_for(client.connect(), self.request_timeout_s + 0.5)
        except (asyncio.TimeoutError, OSError, ModbusException):
            ok = False
        if not ok:
            client.close()
            self._backoff = next_backoff(self._backoff, cap=self.backoff_cap_s)
            self._retry_at = self._now() + self._backoff
            raise self._link_fault(
                f"cannot connect to the barrier I/O module at {self.host}:{self.port}: check its power, "
                "network cable and address"
            )
        self._client = client
        await self._outputs_known(client)
        return client

    async def _outputs_known(self, client: AsyncModbusTcpClient) -> None:
        """On every new connection (the driver's start, the module back after
        an outage) both outputs are written to what this driver wants: an
        OPEN impulse left on by a daemon that died during it is ended (unless
        a pulse of ours is under way), and the hold is as the technician
        asked (kept across restarts by the hub), or dropped. The barrier's
        own controller still decides when to close (R-G5)."""
        writes = [(self.io_map.hold_open_coil, self._hold_wanted)]
        if not self._pulsing:
            writes.insert(0, (self.io_map.open_coil, False))
        for address, value in writes:
            response = await asyncio.wait_for(client.write_coil(address, value, device_id=self.unit),
                                              self.request_timeout_s + 0.5)
            if response.isError():
                raise ModbusException(f"write coil {address} refused")
            self._pending.pop(address, None)
        log.info("barrier.outputs_known gate=%s hold_open=%s", self.gate_id, self._hold_wanted)

    async def _request(self, what: str, call: Callable[[AsyncModbusTcpClient], Awaitable]) -> list:
        async with self._lock:
            try:
                client = await self._connect()
                response = await asyncio.wait_for(call(client), self.request_timeout_s + 0.5)
            except BarrierUnavailable:
                raise
            except (asyncio.TimeoutError, OSError, ModbusException) as exc:
                self._drop_client()
                self._backoff = next_backoff(self._backoff, cap=self.backoff_cap_s)
                self._retry_at = self._now() + self._backoff
                raise self._link_fault(
                    f"barrier I/O module at {self.host}:{self.port} did not answer ({what}: "
                    f"{type(exc).__name__}): check its power and network"
                ) from None
            if response.isError():
                raise self._link_fault(
                    f"barrier I/O module refused {what} (Modbus exception {getattr(response, 'exception_code', '?')}): "
                    "check the unit id and io_map addresses"
                )
            self._backoff = 0.0
            self._retry_at = 0.0
            self._clear_fault("link")
            return list(getattr(response, "bits", []) or [])

    async def _write_coil(self, address: int, value: bool, *, rest: bool | None = None) -> None:
        """Write one coil. When the write fails, the coil's state on the
        module is in doubt (a timed-out request may still land), so its rest
        state — ``rest``, or ``value`` when not given — is written by
        ``run()`` once the module answers again."""
        try:
            await self._request(
                f"write coil {address}",
                lambda client: client.write_coil(address, value, device_id=self.unit),
            )
        except BarrierUnavailable:
            self._pending[address] = value if rest is None else rest
            raise
        self._pending.pop(address, None)  # the latest good write is the state
