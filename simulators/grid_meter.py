"""A grid-connection meter on Modbus TCP, simulated: the device side of a meter map (R-H1).

It serves the same meter map file the driver reads (a SunSpec meter with its
model chain, or a fixed-layout vendor meter) on a real pymodbus server. What
it reads is what the site draws: the chargers (a callable the rig gives it,
in W, e.g. the sum of the charger simulators' power) plus the site's other
load, a ``BaseLoad``: a daily profile of a truck stop (shop, lights,
heating and cooling) with noise and machines that switch on and off.

Faults, as a real meter has them: ``silence()`` (no answer, or the port
closed), ``freeze()`` (answers, but its values stop moving: a gateway
serving a cached value), ``garbage()`` (registers that are no reading), and
``refuse=`` readings its mode or variant lacks (illegal data address).

Run it alone::

    python -m simulators.grid_meter --map config/meter-maps/sunspec-meter.toml --port 0 \
        --charging-kw 800 --time-scale 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.meter_map import SUNSPEC_END, SUNSPEC_MARKER, MeterMap, encode_reading, load_meter_map
from drivers.register_map import encode_string

log = logging.getLogger("hubedge.simulator.meter")

# A truck stop's other load through the day, as a share of its peak: low at
# night, up with the morning shift, highest in the afternoon (cooling, the
# shop and the kitchen), falling in the evening. (hour, share), linear between.
DAY_PROFILE = ((0, 0.30), (5, 0.28), (7, 0.60), (10, 0.88), (14, 1.00), (18, 0.85), (21, 0.50), (24, 0.30))
COMMON_MODEL_LENGTH = 66
PHASE_VOLTAGE = 230.0
EXPONENTS = range(-3, 10)  # scale factors the simulator picks from: the finest that fits


@dataclass
class _Machine:
    kw: float
    on: bool = False
    next_switch: float = 0.0  # seconds since start


class BaseLoad:
    """The site's load other than the chargers, in kW, at a simulated time.

    Deterministic for a seed when asked in time order: a daily profile
    scaled to ``peak_kw``, slow noise (a random walk pulled back to the
    profile) of about ``noise_kw``, and ``machines`` that switch on and off
    (compressors, a kitchen): steps of ``machine_kw`` that the grid meter
    sees as jumps.
    """

    def __init__(self, peak_kw: float = 250.0, noise_kw: float = 5.0, machines: int = 3, machine_kw: float = 40.0,
                 seed: int = 0, start: datetime | None = None):
        self.peak_kw = peak_kw
        self.noise_kw = noise_kw
        self.rng = random.Random(seed)
        self.epoch = start or datetime(2026, 6, 1, tzinfo=timezone.utc)
        self.machines = [_Machine(machine_kw * self.rng.uniform(0.6, 1.4), next_switch=self.rng.uniform(0, 1200))
                         for _ in range(machines)]
        self._noise = 0.0
        self._at = 0.0

    def profile_kw(self, ts: datetime) -> float:
        hour = (ts.hour + ts.minute / 60 + ts.second / 3600) % 24
        for (h0, s0), (h1, s1) in zip(DAY_PROFILE, DAY_PROFILE[1:]):
            if h0 <= hour <= h1:
                return self.peak_kw * (s0 + (s1 - s0) * (hour - h0) / (h1 - h0))
        return self.peak_kw * DAY_PROFILE[0][1]

    def kw(self, ts: datetime) -> float:
        t = (ts - self.epoch).total_seconds()
        dt = max(0.0, t - self._at)
        self._at = max(self._at, t)
        if dt > 0:
            # Ornstein-Uhlenbeck with a one-minute memory: slow wander, not white noise.
            pull = math.exp(-dt / 60.0)
            self._noise = self._noise * pull + self.rng.gauss(0, self.noise_kw * math.sqrt(1 - pull * pull))
        for m in self.machines:
            while m.next_switch <= t:
                m.on = not m.on
                m.next_switch += self.rng.uniform(300, 900) if m.on else self.rng.uniform(600, 1800)
        machines = sum(m.kw for m in self.machines if m.on)
        return max(0.0, self.profile_kw(ts) + self._noise + machines)


class GridMeterSimulator:
    def __init__(
        self,
        meter_map: MeterMap,
        *,
        draw_w: Callable[[], float] = lambda: 0.0,
        base_load: BaseLoad | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        unit: int = 1,
        time_scale: float = 1.0,
        start: datetime | None = None,
        sunspec_model: int | None = None,
        sunspec_base: int | None = None,
        energy_import_wh: float = 150_000_000.0,
        refuse: tuple[str, ...] = (),
        seed: int = 0,
    ):
        self.map = meter_map
        self.draw_w = draw_w
        self.base_load = base_load or BaseLoad(seed=seed, start=start)
        self.host, self.port, self.unit = host, port, unit
        self.time_scale = time_scale
        self.epoch = start or self.base_load.epoch
        self.energy_import_wh = energy_import_wh
        self.energy_export_wh = 0.0
        self.requests = 0
        self.rng = random.Random(seed + 1)
        self._server: ModbusTcpServer | None = None
        self._silent = self._refusing = self._frozen = self._garbage = False
        self._mono0 = time.monotonic()
        self._sim_s = 0.0  # simulated seconds since start, at the last update
        self._power_w = 0.0
        self.peak_w = 0.0  # the most the site drew at any reading or update
        self._extra_s = 0.0
        if meter_map.sunspec:
            chain = meter_map.sunspec
            self.model_id = sunspec_model or chain.models[0]
            base = chain.bases[0] if sunspec_base is None else sunspec_base
            self.block_start = base + 2 + 2 + COMMON_MODEL_LENGTH  # marker, common model header and body
            self._first = base
            self._words = [0] * (self.block_start + 2 + chain.length + 2 - base)
        else:
            self.model_id = None
            self.block_start = self._first = meter_map.base
            end = max(r.offset + r.width for r in meter_map.registers.values())
            self._words = [0] * end
        # Readings this meter's mode or variant does not have: "illegal data address".
        self._refused = [(self.block_start + meter_map.registers[n].offset, meter_map.registers[n].width)
                         for n in refuse]
        self._render_header()
        self._render()

    # ---- lifecycle

    async def start(self) -> int:
        """Listen; returns the TCP port (a free one when ``port`` was 0)."""
        server = ModbusTcpServer(self._device(), address=(self.host, self.port), trace_packet=self._trace_packet)
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]
        self._server = server
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    # ---- what it measures

    def now(self) -> datetime:
        return self.epoch + timedelta(seconds=self._sim_now())

    def advance(self, seconds: float) -> None:
        """Move simulated time on without waiting (energy counts on)."""
        self._extra_s += seconds
        self._update()

    def site_w(self) -> float:
        """What the site draws now: the chargers plus the other load."""
        self._update()
        return self._power_w

    # ---- faults

    async def silence(self, mode: str = "no_answer") -> None:
        if mode == "no_answer":
            self._silent = True
        elif mode == "refuse":
            self._refusing = True
            await self.stop()
        else:
            raise ValueError(f"unknown silence mode {mode!r}; use 'no_answer' or 'refuse'")

    async def speak(self) -> None:
        self._silent = False
        if self._refusing:
            self._refusing = False
            await self.start()

    def freeze(self, on: bool = True) -> None:
        """Keep answering with the values of this instant (stale)."""
        self._frozen = on

    def garbage(self, on: bool = True) -> None:
        """Answer with registers that are no reading."""
        self._garbage = on

    # ---- physics

    def _sim_now(self) -> float:
        return (time.monotonic() - self._mono0) * self.time_scale + self._extra_s

    def _update(self) -> None:
        t = self._sim_now()
        dt = max(0.0, t - self._sim_s)
        if dt:
            # Energy over the interval at the power of its start: the meter's own integration is finer.
            if self._power_w >= 0:
                self.energy_import_wh += self._power_w * dt / 3600
            else:
                self.energy_export_wh -= self._power_w * dt / 3600
        self._sim_s = max(self._sim_s, t)
        self._power_w = float(self.draw_w()) + 1000.0 * self.base_load.kw(self.epoch + timedelta(seconds=self._sim_s))
        self.peak_w = max(self.peak_w, self._power_w)

    def _values(self) -> dict[str, float]:
        total = self._power_w
        # The other load is not quite balanced; the chargers (three-phase rectifiers) are.
        skew = (0.04, -0.01, -0.03)
        phases = [total / 3 + s * min(abs(total), 300_000.0) for s in skew]
        values = {"power": total, "frequency": 50.0 + self.rng.uniform(-0.02, 0.02),
                  "energy_import": self.energy_import_wh, "energy_export": self.energy_export_wh}
        for i, p in enumerate(phases, 1):
            volts = PHASE_VOLTAGE + self.rng.uniform(-2, 2)
            values[f"power_l{i}"] = p
            values[f"voltage_l{i}"] = volts
            values[f"current_l{i}"] = abs(p) / volts
        return values

    # ---- the register image

    def _put(self, address: int, words: list[int]) -> None:
        self._words[address - self._first: address - self._first + len(words)] = words

    def _render_header(self) -> None:
        if self.model_id is None:
            return
        base = self._first
        self._put(base, list(SUNSPEC_MARKER))
        self._put(base + 2, [1, COMMON_MODEL_LENGTH])
        for offset, text, length in ((2, "HubEdge", 16), (18, "Simulated grid meter", 16), (42, "1.0", 8),
                                     (50, f"SIM-{self.unit:04d}", 16)):
            self._put(base + 2 + offset, encode_string(text, length))
        self._put(base + 2 + 66, [self.unit])
        self._put(self.block_start, [self.model_id, self.map.sunspec.length])
        self._put(self.block_start + 2 + self.map.sunspec.length, [SUNSPEC_END, 0])

    def _render(self) -> None:
        self._update()
        values = self._values()
        by_sf: dict[int, list] = {}
        for reg in self.map.registers.values():
            if reg.scale_factor is None:
                self._put(self.block_start + reg.offset, encode_reading(reg, values[reg.name]))
            else:
                by_sf.setdefault(reg.scale_factor, []).append(reg)
        for sf_offset, regs in by_sf.items():
            for exponent in EXPONENTS:  # the finest scale at which every value sharing it fits
                try:
                    words = [encode_reading(r, values[r.name], exponent) for r in regs]
                except ValueError:
                    continue
                for r, w in zip(regs, words):
                    self._put(self.block_start + r.offset, w)
                self._put(self.block_start + sf_offset, [exponent & 0xFFFF])
                break

    def _device(self) -> SimDevice:
        block = [SimData(self._first, count=len(self._words), datatype=DataType.REGISTERS)]
        none = [SimData(0, datatype=DataType.INVALID)]
        no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        holding, inputs = (block, none) if self.map.kind == "holding" else (none, block)
        return SimDevice(id=self.unit, simdata=(no_bits, list(no_bits), holding, inputs), action=self._on_request)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        return b"" if sending and self._silent else data

    async def _on_request(self, function_code, start_address, address, count, registers, set_values):
        self.requests += 1
        if self._silent:
            return ExcCodes.DEVICE_BUSY  # never sent: _trace_packet drops it
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # a meter is read, never written
        if any(a < address + count and address < a + width for a, width in self._refused):
            return ExcCodes.ILLEGAL_ADDRESS
        if not self._frozen:
            self._render()
        words = self._words[address - self._first: address - self._first + count]
        if self._garbage:
            words = [self.rng.randrange(0x10000) for _ in words]
        offset = address - start_address
        registers[offset: offset + count] = words
        return None


# --------------------------------------------------------------------------
# Standalone: python -m simulators.grid_meter


async def _main(args: argparse.Namespace) -> None:
    meter_map = load_meter_map(args.map)
    charging_w = args.charging_kw * 1000.0
    start = datetime.now(timezone.utc).replace(microsecond=0)
    sim = GridMeterSimulator(meter_map, draw_w=lambda: charging_w, host=args.host, port=args.port, unit=args.unit,
                             time_scale=args.time_scale, seed=args.seed,
                             base_load=BaseLoad(peak_kw=args.base_peak_kw, seed=args.seed, start=start), start=start)
    port = await sim.start()
    print(f"grid_meter_simulator_listening port={port} unit={args.unit} model={meter_map.model!r}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    with contextlib.suppress(Exception):
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.grid_meter", description="Simulated grid meter on Modbus TCP.")
    parser.add_argument("--map", required=True, help="meter map TOML file (config/meter-maps/...)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit (device) id")
    parser.add_argument("--charging-kw", type=float, default=0.0, help="a constant charger draw to add to the base load")
    parser.add_argument("--base-peak-kw", type=float, default=250.0, help="the site's other load at its afternoon peak")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
