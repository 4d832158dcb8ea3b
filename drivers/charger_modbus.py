"""Charger driver over Modbus TCP: reads connector values, writes commands.

One ``ChargerDriver`` per charger, each with its own TCP connection, so a
silent charger only ever costs its own poll (bounded by ``timeout``) and never
delays the others (openWB's lesson: one dead meter must not stop the hub).

The driver holds no business rules. It turns registers into
``ConnectorReading`` values and commands into register writes, and it keeps
its own health: after ``fault_after`` failed polls in a row it reports a
``DeviceFault`` and when a poll succeeds again a ``DeviceRecovered`` (R-C6).
Whatever goes wrong on the wire, the caller only ever sees
``ChargerUnavailable`` with a sentence for a person.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NoReturn

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.device import DeviceFault, DeviceHealth, DeviceRecovered, Emit
from drivers.register_map import (
    HardwareStatus,
    LockState,
    ReadSpan,
    RegisterMap,
    decode,
    decode_string,
    encode,
)
from units import Clock

log = logging.getLogger("hubedge.charger")
# pymodbus logs every lost answer at ERROR with a multi-line frame dump; this
# driver reports the same failure once, in one line, with what to check.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

DEVICE_CLASS = "charger"

# Modbus exception codes, worded for the technician reading the log.
EXCEPTION_CODES = {
    1: "illegal function (the charger does not support this request; check the register map's kind)",
    2: "illegal data address (the register map does not match this charger's firmware)",
    3: "illegal data value (the charger refused the value written)",
    4: "device failure (the charger reports an internal error; check it on site)",
    5: "acknowledge (the charger is still working on the request)",
    6: "device busy (the charger is busy; it will be asked again)",
    10: "gateway path unavailable (check the gateway in front of the charger)",
    11: "gateway target did not respond (check the unit id and the charger's power)",
}


class LimitNotSupported(Exception):
    """The charger has no register for what was asked (the caller sees
    ``outcome`` as the charger interface names it)."""

    outcome = "not_supported"

    def __init__(self, charger_id: str, reason: str):
        self.charger_id = charger_id
        super().__init__(f"charger {charger_id}: {reason}")


class ChargerUnavailable(Exception):
    """The charger could not be read or commanded just now. The message says
    what happened and what to check; the driver keeps retrying by itself."""

    def __init__(self, charger_id: str, reason: str):
        self.charger_id = charger_id
        self.reason = reason
        super().__init__(f"charger {charger_id}: {reason}")


@dataclass(frozen=True)
class ConnectorReading:
    connector_id: str
    status: HardwareStatus
    raw_status: int
    energy_wh: int  # meter register, lifetime total
    power_w: int
    soc: int | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    locked: bool | None = None
    power_limit_w: int | None = None
    signed_meter_value: str | None = None  # OCMF text as the meter gave it
    problem: str | None = None  # set when a value was unreadable; status is then FAULT


# --------------------------------------------------------------------------
# Pure parts: no I/O, time comes in as an argument.


class ReconnectBackoff:
    """When to try a charger again after it failed: capped exponential
    backoff with jitter, so that after a site power cut the chargers are not
    all hammered in the same instant."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0, jitter: float = 0.2, rng: random.Random | None = None):
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.failures = 0
        self.next_attempt = 0.0  # monotonic seconds

    def ready(self, now: float) -> bool:
        return now >= self.next_attempt

    def failed(self, now: float) -> float:
        """Record a failure; returns the delay until the next attempt."""
        self.failures += 1
        delay = min(self.maximum, self.initial * 2 ** (self.failures - 1))
        delay *= 1 + self.rng.uniform(-self.jitter, self.jitter)
        delay = min(delay, self.maximum)
        self.next_attempt = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.next_attempt = 0.0


class ContactWatch:
    """Counts failed polls and turns them into fault / recovery events (R-C6)."""

    def __init__(self, health: DeviceHealth, fault_after: int):
        if fault_after < 1:
            raise ValueError("fault_after must be at least 1 failed poll")
        self.health = health
        self.fault_after = fault_after
        self.failed_polls = 0

    def poll_failed(self, reason: str, now: datetime) -> DeviceFault | None:
        self.failed_polls += 1
        self.health.last_error = reason
        self.health.detail["failed_polls"] = self.failed_polls
        if self.failed_polls >= self.fault_after and self.health.mark_fault(reason, now):
            return DeviceFault(self.health.device_id, self.health.device_class, reason, now)
        return None

    def poll_succeeded(self, now: datetime) -> DeviceRecovered | None:
        self.failed_polls = 0
        self.health.detail.pop("failed_polls", None)
        if self.health.mark_ok(now):
            return DeviceRecovered(self.health.device_id, self.health.device_class, now)
        return None


def reading_from_registers(
    register_map: RegisterMap,
    connector_id: str,
    index: int,
    image: dict[tuple[str, int], int],
    previous: ConnectorReading | None = None,
    signed_meter_value: str | None = None,
) -> ConnectorReading:
    """Decode one connector from the registers read (``(kind, address) -> value``).

    A value that cannot be true (unknown status code, energy not a number or
    negative) does not crash the poll: the connector reads as FAULT with a
    ``problem`` text, keeping the last good energy so no session loses Wh.
    """
    regs = register_map.registers

    def words(name: str) -> list[int]:
        spec = regs[name]
        start = register_map.address(spec, index)
        return [image[(spec.kind, a)] for a in range(start, start + spec.width)]

    def number(name: str) -> float | int | None:
        if name not in regs:
            return None
        value = decode(regs[name], words(name))
        return None if isinstance(value, float) and math.isnan(value) else value

    problems: list[str] = []
    raw_status = words("status")[0]
    status = register_map.status_of(raw_status)
    if status is None:
        problems.append(f"unknown status code {raw_status} (not in the {register_map.model} register map)")
        status = HardwareStatus.FAULT

    energy = number("energy")
    if energy is None or energy < 0:
        problems.append(f"energy register unreadable ({energy!r})")
        energy_wh = previous.energy_wh if previous else 0
    else:
        energy_wh = int(round(energy))
    power = number("power")
    if power is None:
        problems.append("power register unreadable")
        power = 0
    soc = number("soc")
    if soc is not None and not 0 <= soc <= 100:
        problems.append(f"state of charge {soc} outside 0..100")
        soc = None
    lock = register_map.lock_of(words("lock")[0])
    limit = number("power_limit")
    voltage = number("voltage")
    current = number("current")

    if problems:
        status = HardwareStatus.FAULT
    return ConnectorReading(
        connector_id=connector_id,
        status=status,
        raw_status=raw_status,
        energy_wh=energy_wh,
        power_w=int(round(power)),
        soc=int(round(soc)) if soc is not None else None,
        # float32 carries about 7 digits; more would be noise in the UI.
        voltage_v=round(float(voltage), 2) if voltage is not None else None,
        current_a=round(float(current), 2) if current is not None else None,
        locked=None if lock is None else lock == LockState.LOCKED,
        power_limit_w=int(round(limit)) if limit is not None else None,
        signed_meter_value=signed_meter_value,
        problem="; ".join(problems) or None,
    )


# --------------------------------------------------------------------------
# The transport edge.


class ChargerDriver:
    def __init__(
        self,
        charger_id: str,
        host: str,
        port: int,
        unit: int,
        register_map: RegisterMap,
        connectors: dict[str, int],
        *,
        timeout: float = 1.0,
        fault_after: int = 3,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        unlock_confirm_s: float = 3.0,
        emit: Emit | None = None,
        clock: Clock | None = None,
    ):
        for connector_id, index in connectors.items():
            if not 0 <= index < register_map.max_connectors:
                raise ValueError(
                    f"charger {charger_id}: connector {connector_id} has index {index}, but a "
                    f"{register_map.model} has connectors 0..{register_map.max_connectors - 1}; fix the hub config"
                )
        self.charger_id = charger_id
        self.host = host
        self.port = port
        self.unit = unit
        self.register_map = register_map
        self.connectors = dict(connectors)
        self.timeout = timeout
        self.unlock_confirm_s = unlock_confirm_s
        self.emit = emit or (lambda event: None)
        self.clock = clock or Clock()
        self.health = DeviceHealth(charger_id, DEVICE_CLASS)
        self.health.detail["address"] = f"{host}:{port}/{unit}"
        self._watch = ContactWatch(self.health, fault_after)
        self._backoff = ReconnectBackoff(reconnect_min, reconnect_max)
        self._lock = asyncio.Lock()  # one request at a time per charger
        self._client: AsyncModbusTcpClient | None = None
        self._last: dict[str, ConnectorReading] = {}
        self._last_failure = "not answering (check the charger's power and network)"
        self._plans = {
            cid: register_map.read_plan(idx, tuple(n for n in register_map.registers if n != "ocmf"))
            for cid, idx in self.connectors.items()
        }
        self._ocmf_plans = {
            cid: register_map.read_plan(idx, ("ocmf",)) for cid, idx in self.connectors.items()
        } if "ocmf" in register_map.registers else {}

    # ---- public API

    async def poll(self) -> dict[str, ConnectorReading]:
        """Read every connector of this charger. Raises ChargerUnavailable
        (after at most about ``timeout``) when the charger does not answer."""
        now = self.clock.monotonic()
        if not self._backoff.ready(now):
            wait = self._backoff.next_attempt - now
            self._poll_failed(f"{self._last_failure}; next attempt in {wait:.1f} s")
        try:
            readings = await self._read_all()
        except ChargerUnavailable as exc:
            self._poll_failed(exc.reason)
        event = self._watch.poll_succeeded(self.clock.now())
        if event:
            log.info("charger_recovered charger=%s", self.charger_id)
            self.emit(event)
        return readings

    async def start(self, connector_id: str) -> None:
        await self._command(connector_id, "start")

    async def stop(self, connector_id: str) -> None:
        await self._command(connector_id, "stop")

    async def set_power_limit(self, connector_id: str, watts: int) -> None:
        if watts < 0:
            raise ValueError(f"power limit {watts} W is negative; give 0 W or more")
        await self._command(connector_id, "power_limit", watts)

    async def set_fail_safe_limit(self, watts_per_connector: int) -> None:
        """The limit each connector holds by itself when the hub stops
        talking to it, where the register map has one (fail_safe_limit)."""
        if watts_per_connector < 0:
            raise ValueError(f"fail-safe limit {watts_per_connector} W is negative; give 0 W or more")
        if "fail_safe_limit" not in self.register_map.commands:
            raise LimitNotSupported(
                self.charger_id, f"register map {self.register_map.model!r} has no fail_safe_limit: the charger "
                                 "keeps its last limit if the hub stops; check its own settings for one")
        for connector_id in self.connectors:
            await self._command(connector_id, "fail_safe_limit", watts_per_connector)

    async def unlock(self, connector_id: str) -> bool:
        """Ask the charger to release the connector and confirm it from the
        lock state (R-C5). False when it is still locked after
        ``unlock_confirm_s``; the caller retries and reports."""
        await self._command(connector_id, "unlock")
        spec = self.register_map.registers["lock"]
        address = self.register_map.address(spec, self.connectors[connector_id])
        deadline = self.clock.monotonic() + self.unlock_confirm_s
        while True:
            registers = await self._locked_io(self._read, ReadSpan(spec.kind, address, 1))
            if self.register_map.lock_of(registers[0]) == LockState.UNLOCKED:
                log.info("connector_unlocked charger=%s connector=%s", self.charger_id, connector_id)
                return True
            if self.clock.monotonic() >= deadline:
                log.warning(
                    "connector_unlock_failed charger=%s connector=%s reason=still_locked", self.charger_id, connector_id
                )
                return False
            await asyncio.sleep(0.1)

    async def read_signed_meter_value(self, connector_id: str) -> str | None:
        """The OCMF text the meter shows now, or None when the model has none."""
        if connector_id not in self._ocmf_plans:
            self._index(connector_id)
            return None
        return await self._locked_io(self._read_ocmf, connector_id)

    async def close(self) -> None:
        async with self._lock:
            self._drop_connection()

    # ---- internals

    def _index(self, connector_id: str) -> int:
        try:
            return self.connectors[connector_id]
        except KeyError:
            raise ValueError(
                f"charger {self.charger_id} has no connector {connector_id!r}; it has {', '.join(self.connectors)}"
            ) from None

    def _poll_failed(self, reason: str) -> NoReturn:
        self._last_failure = reason.split("; next attempt")[0]
        event = self._watch.poll_failed(reason, self.clock.now())
        if event:
            log.warning("charger_fault charger=%s failed_polls=%d reason=%s", self.charger_id, self._watch.failed_polls, reason)
            self.emit(event)
        raise ChargerUnavailable(self.charger_id, reason)

    async def _command(self, connector_id: str, name: str, value: int | None = None) -> None:
        index = self._index(connector_id)
        spec = self.register_map.commands[name]
        registers = encode(spec, spec.value if value is None else value)
        address = self.register_map.address(spec, index)
        await self._locked_io(self._write, address, registers)
        log.info("charger_command charger=%s connector=%s command=%s", self.charger_id, connector_id, name)

    async def _locked_io(self, fn, *args):
        async with self._lock:
            await self._ensure_connected()
            return await fn(*args)

    async def _read_all(self) -> dict[str, ConnectorReading]:
        async with self._lock:
            await self._ensure_connected()
            readings: dict[str, ConnectorReading] = {}
            for connector_id, index in self.connectors.items():
                image: dict[tuple[str, int], int] = {}
                for span in self._plans[connector_id]:
                    values = await self._read(span)
                    image.update(((span.kind, span.address + i), v) for i, v in enumerate(values))
                previous = self._last.get(connector_id)
                reading = reading_from_registers(self.register_map, connector_id, index, image, previous)
                ocmf = previous.signed_meter_value if previous else None
                # Signed values change at transaction boundaries: read the long
                # string only when the status moved, not on every 1 Hz poll.
                if connector_id in self._ocmf_plans and (previous is None or previous.status != reading.status):
                    ocmf = await self._read_ocmf(connector_id)
                if ocmf != reading.signed_meter_value:
                    reading = replace(reading, signed_meter_value=ocmf)
                if reading.problem and (previous is None or previous.problem != reading.problem):
                    log.warning(
                        "charger_bad_value charger=%s connector=%s problem=%s", self.charger_id, connector_id, reading.problem
                    )
                readings[connector_id] = reading
            self._last.update(readings)
            return readings

    async def _read_ocmf(self, connector_id: str) -> str | None:
        words: list[int] = []
        for span in self._ocmf_plans[connector_id]:
            words.extend(await self._read(span))
        return decode_string(words) or None

    async def _ensure_connected(self) -> None:
        if self._client is not None and self._client.connected:
            return
        self._drop_connection()
        # retries=0 and no reconnect of its own: the timeout is ours to bound
        # and the backoff ours to pace.
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout, retries=0, reconnect_delay=0, name=self.charger_id
        )
        try:
            connected = await asyncio.wait_for(client.connect(), self.timeout + 0.5)
        except (asyncio.TimeoutError, OSError):
            connected = False
        if not connected:
            client.close()
            self._failed_exchange()
            raise ChargerUnavailable(
                self.charger_id,
                f"cannot connect to {self.host}:{self.port} (check the charger's power, network cable and IP address)",
            )
        self._client = client

    def _drop_connection(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _failed_exchange(self) -> None:
        delay = self._backoff.failed(self.clock.monotonic())
        log.info("charger_retry_scheduled charger=%s delay_s=%.2f", self.charger_id, delay)

    async def _read(self, span: ReadSpan) -> list[int]:
        assert self._client is not None
        call = self._client.read_input_registers if span.kind == "input" else self._client.read_holding_registers
        response = await self._exchange(call(span.address, count=span.count, device_id=self.unit), f"read {span.kind} {span.address}+{span.count}")
        if len(response.registers) < span.count:
            raise ChargerUnavailable(self.charger_id, f"short answer to read at {span.address}; check the register map")
        return list(response.registers[: span.count])

    async def _write(self, address: int, registers: list[int]) -> None:
        assert self._client is not None
        if len(registers) == 1:
            request = self._client.write_register(address, registers[0], device_id=self.unit)
        else:
            request = self._client.write_registers(address, registers, device_id=self.unit)
        await self._exchange(request, f"write {address}")

    async def _exchange(self, request, what: str):
        """One request with a hard time bound. A timeout drops the connection:
        a late answer must never be taken for the answer to the next request."""
        try:
            response = await asyncio.wait_for(request, self.timeout + 0.25)
        except (asyncio.TimeoutError, ModbusException, OSError) as exc:
            self._drop_connection()
            self._failed_exchange()
            kind = "no answer" if isinstance(exc, (asyncio.TimeoutError, ModbusException)) else "connection lost"
            raise ChargerUnavailable(
                self.charger_id,
                f"{kind} to {what} within {self.timeout:.1f} s (check the charger's power, network and unit id {self.unit})",
            ) from None
        if response.isError():
            code = getattr(response, "exception_code", 0)
            text = EXCEPTION_CODES.get(code, "unknown exception code; check the charger's manual")
            raise ChargerUnavailable(self.charger_id, f"{what} refused with exception {code}: {text}")
        self._backoff.succeeded()
        return response

