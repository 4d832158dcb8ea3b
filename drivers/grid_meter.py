"""Grid-connection meter over Modbus TCP: the site's draw as the grid sees it.

One ``GridMeterDriver`` per meter, with its own TCP connection. ``read()``
returns a ``MeterReading`` with total real power (and per phase, currents,
voltages, frequency and energy where the map has them), stamped with the
time it was read and how long its values have not moved. Whether a reading
is too old, or frozen, is the power controller's decision, not the driver's.

Like the charger driver it keeps its own health: after ``fault_after`` failed
reads in a row a ``DeviceFault``, and a ``DeviceRecovered`` when a read
succeeds again. Whatever goes wrong, the caller sees ``MeterUnavailable``
with a sentence saying what happened and what to check.

A SunSpec meter is found by walking its model chain once per connection.
Registers that cannot be a reading (a scale factor out of range, phases that
do not add up to the total, power beyond the meter's range) fail the read:
a hub that believed a garbage reading could overload its connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, NoReturn

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.charger_modbus import ContactWatch, ReconnectBackoff
from drivers.device import DeviceHealth, Emit, utcnow
from drivers.meter_map import (
    SUNSPEC_MARKER,
    MeterMap,
    MeterValueError,
    decode_readings,
    sunspec_next,
)
from drivers.register_map import ReadSpan

log = logging.getLogger("hubedge.meter")

DEVICE_CLASS = "meter"
ILLEGAL_ADDRESS = 2
MODBUS_EXCEPTIONS = {
    1: "illegal function (the meter does not support this request; check the register map's kind)",
    2: "illegal data address (the register map does not match this meter or its mode)",
    4: "device failure (the meter reports an internal error; check it on site)",
    6: "device busy (it will be asked again)",
    10: "gateway path unavailable (check the gateway in front of the meter)",
    11: "gateway target did not respond (check the unit id and the meter's power)",
}


class MeterUnavailable(Exception):
    """The meter could not be read just now; the message says what to check."""

    def __init__(self, meter_id: str, reason: str):
        self.meter_id = meter_id
        self.reason = reason
        super().__init__(f"grid meter {meter_id}: {reason}")


@dataclass(frozen=True)
class MeterReading:
    power_w: float  # total real power, positive when the site draws from the grid
    ts: datetime  # when it was read (UTC)
    monotonic: float  # the same instant on the monotonic clock, for its age
    unchanged_s: float = 0.0  # how long every value has been exactly the same
    values: Mapping[str, float] = field(default_factory=dict)  # every reading the meter gave, by map name

    @property
    def phase_power_w(self) -> tuple[float, float, float] | None:
        phases = tuple(self.values.get(f"power_l{i}") for i in (1, 2, 3))
        return None if None in phases else phases

    @property
    def energy_import_wh(self) -> float | None:
        return self.values.get("energy_import")

    @property
    def energy_export_wh(self) -> float | None:
        return self.values.get("energy_export")


def check_plausible(values: Mapping[str, float | None], max_power_w: float | None) -> str | None:
    """Why these values cannot be a true reading, or None when they can."""
    power = values.get("power")
    if power is None:
        return "the meter reports total power as not available (check the meter's mode and the register map)"
    if max_power_w is not None and abs(power) > max_power_w:
        return f"total power {power / 1000:.1f} kW is beyond the meter's range of {max_power_w / 1000:.0f} kW"
    hz = values.get("frequency")
    if hz is not None and hz != 0 and not 45.0 <= hz <= 65.0:
        return f"frequency {hz:g} Hz is no grid's (a register map that does not match this meter, or a faulty meter)"
    phases = [values.get(f"power_l{i}") for i in (1, 2, 3)]
    present = [p for p in phases if p is not None]
    if len(present) == 3:
        total = sum(present)
        tolerance = max(1000.0, 0.03 * max(abs(power), sum(abs(p) for p in present)))
        if abs(total - power) > tolerance:
            return (f"total power {power / 1000:.1f} kW and the sum of its phases {total / 1000:.1f} kW disagree "
                    "(a register map that does not match this meter, or a faulty meter)")
    return None


class GridMeterDriver:
    def __init__(
        self,
        meter_id: str,
        host: str,
        port: int,
        unit: int,
        meter_map: MeterMap,
        *,
        timeout: float = 1.0,
        fault_after: int = 3,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        max_power_w: float | None = None,
        emit: Emit | None = None,
        clock=None,
    ):
        self.meter_id = meter_id
        self.host = host
        self.port = port
        self.unit = unit
        self.map = meter_map
        self.timeout = timeout
        self.max_power_w = max_power_w
        self.emit = emit or (lambda event: None)
        self._now = clock.now if clock else utcnow
        self._monotonic = clock.monotonic if clock else time.monotonic
        self.health = DeviceHealth(meter_id, DEVICE_CLASS)
        self.health.detail["address"] = f"{host}:{port}/{unit}"
        self._watch = ContactWatch(self.health, fault_after)
        self._backoff = ReconnectBackoff(reconnect_min, reconnect_max)
        self._client: AsyncModbusTcpClient | None = None
        self._start: int | None = None  # where the block begins on this connection
        self._refused: set[str] = set()  # optional readings this meter does not have
        self._last_values: tuple | None = None
        self._changed_at = 0.0
        self._last_failure = "not answering (check the meter's power and network)"

    async def read(self) -> MeterReading:
        """One reading. Raises MeterUnavailable (after at most about ``timeout``
        per request) when the meter cannot be read or gave values that cannot be true."""
        now = self._monotonic()
        if not self._backoff.ready(now):
            self._failed(f"{self._last_failure}; next attempt in {self._backoff.next_attempt - now:.1f} s")
        try:
            values = await self._read_values()
        except MeterUnavailable as exc:
            self._failed(exc.reason)
        mono, ts = self._monotonic(), self._now()
        fingerprint = tuple(sorted(values.items()))
        if fingerprint != self._last_values:
            self._last_values, self._changed_at = fingerprint, mono
        event = self._watch.poll_succeeded(ts)
        if event:
            log.info("meter_recovered meter=%s", self.meter_id)
            self.emit(event)
        return MeterReading(values["power"], ts, mono, mono - self._changed_at,
                            {k: v for k, v in values.items() if v is not None})

    async def close(self) -> None:
        self._drop()

    # ---- internals

    def _failed(self, reason: str) -> NoReturn:
        self._last_failure = reason.split("; next attempt")[0]
        event = self._watch.poll_failed(reason, self._now())
        if event:
            log.warning("meter_fault meter=%s reason=%s", self.meter_id, reason)
            self.emit(event)
        raise MeterUnavailable(self.meter_id, reason)

    async def _read_values(self) -> dict[str, float | None]:
        await self._connect()
        main, optional = self.map.read_plan(self._start)
        image = self._image(main, await self._request(main))
        for name, span in optional:
            if name in self._refused:
                continue
            try:
                image.update(self._image(span, await self._request(span, optional=True)))
            except _Refused:
                self._refused.add(name)
                log.warning("meter_reading_absent meter=%s reading=%s reason=%s", self.meter_id, name,
                            "the meter refuses its register (illegal data address); it is left out from now on")
        try:
            values = decode_readings(self.map, image, self._start)
        except MeterValueError as exc:
            raise MeterUnavailable(self.meter_id, f"{exc}: the registers do not hold a reading "
                                                  "(check the register map; a faulty meter or gateway)") from None
        problem = check_plausible(values, self.max_power_w)
        if problem:
            raise MeterUnavailable(self.meter_id, problem)
        return values

    @staticmethod
    def _image(span: ReadSpan, words: list[int]) -> dict[int, int]:
        return {span.address + i: w for i, w in enumerate(words)}

    async def _connect(self) -> None:
        if self._client is not None and self._client.connected and self._start is not None:
            return
        self._drop()
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout, retries=0,
                                      reconnect_delay=0, name=self.meter_id)
        try:
            connected = await asyncio.wait_for(client.connect(), self.timeout + 0.5)
        except (asyncio.TimeoutError, OSError):
            connected = False
        if not connected:
            client.close()
            self._backoff.failed(self._monotonic())
            raise MeterUnavailable(self.meter_id, f"cannot connect to {self.host}:{self.port} "
                                                  "(check the meter's power, network cable and IP address)")
        self._client = client
        self._start = self.map.base if self.map.sunspec is None else await self._find_sunspec()

    async def _find_sunspec(self) -> int:
        chain = self.map.sunspec
        for base in chain.bases:
            try:
                marker = await self._request(ReadSpan(self.map.kind, base, 2), optional=True)
            except _Refused:
                continue
            if tuple(marker) != SUNSPEC_MARKER:
                continue
            address, seen = base + 2, []
            for _ in range(64):  # a chain longer than this is not a meter's
                model_id, length = await self._request(ReadSpan(self.map.kind, address, 2))
                step, address_next = sunspec_next(address, model_id, length, chain)
                if step == "found":
                    log.info("meter_sunspec meter=%s model=%d address=%d", self.meter_id, model_id, address)
                    self.health.detail["sunspec_model"] = model_id
                    return address
                if step == "end":
                    break
                seen.append(str(model_id))
                address = address_next
            self._drop()
            raise MeterUnavailable(self.meter_id, f"SunSpec models {', '.join(seen) or 'none'} at {base}, but no meter "
                                                  f"model ({', '.join(map(str, chain.models))}); is this a meter?")
        self._drop()
        raise MeterUnavailable(self.meter_id, f"no SunSpec marker at {', '.join(map(str, chain.bases))}: "
                                              "not a SunSpec device, or the wrong unit id or register map")

    async def _request(self, span: ReadSpan, optional: bool = False) -> list[int]:
        """One read with a hard time bound. A timeout drops the connection: a late
        answer must never be taken for the answer to the next request."""
        what = f"read {span.kind} {span.address}+{span.count}"
        call = self._client.read_input_registers if span.kind == "input" else self._client.read_holding_registers
        try:
            response = await asyncio.wait_for(call(span.address, count=span.count, device_id=self.unit),
                                              self.timeout + 0.25)
        except (asyncio.TimeoutError, ModbusException, OSError) as exc:
            self._drop()
            self._backoff.failed(self._monotonic())
            kind = "connection lost" if isinstance(exc, OSError) else "no answer"
            raise MeterUnavailable(self.meter_id, f"{kind} to {what} within {self.timeout:.1f} s (check the "
                                                  f"meter's power, network and unit id {self.unit})") from None
        if response.isError():
            code = getattr(response, "exception_code", 0)
            if optional and code == ILLEGAL_ADDRESS:
                raise _Refused()
            text = MODBUS_EXCEPTIONS.get(code, "unknown exception code; check the meter's manual")
            raise MeterUnavailable(self.meter_id, f"{what} refused with exception {code}: {text}")
        if len(response.registers) < span.count:
            raise MeterUnavailable(self.meter_id, f"short answer to {what}; check the register map")
        self._backoff.succeeded()
        return list(response.registers[: span.count])

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._start = None


class _Refused(Exception):
    """An optional register the meter does not have (illegal data address)."""
