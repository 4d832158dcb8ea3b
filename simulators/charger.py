"""A DC charger on Modbus TCP, simulated: the device side of a register map (R-H1).

It serves the same register map file the driver reads, on a real pymodbus
``ModbusTcpServer``, with a scriptable truck on each connector: plug it in,
let the driver start it, watch energy flow along a power curve that tapers as
the battery fills, pause it from the truck side, stop it, unlock, unplug.
With a ``Ramp`` the truck follows a changed power limit as a real one does,
over a second or two rather than at once (IEC 61851-1 gives a vehicle 5 s);
without one (the default) power jumps, which keeps scripted energy simple.
Faults are injected on purpose: a charger that stops answering (connection
kept, or refused), answers slowly, answers with exception codes, reports a
garbage status, or has a lock that will not release.

Run it alone::

    python -m simulators.charger --map config/register-maps/hubcharge-mcs1200.toml \
        --connectors 4 --port 0 --traffic
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.register_map import (
    HardwareStatus,
    decode,
    LockState,
    RegisterMap,
    encode,
    encode_string,
    load_register_map,
)

log = logging.getLogger("hubedge.simulator.charger")

# A status the map has no code for is shown as the nearest one it has.
STATUS_FALLBACK = {
    HardwareStatus.SUSPENDED_EV: HardwareStatus.CHARGING,
    HardwareStatus.SUSPENDED_EVSE: HardwareStatus.CHARGING,
    HardwareStatus.FINISHED: HardwareStatus.PLUGGED,
}
MAX_STEP_S = 5.0  # integration step of simulated time; fine enough for a taper over minutes
# Registers are re-rendered at most this often (real seconds) unless something
# changed: a 1 Hz poller reading 40 connectors should not pay 80 renders a second.
RENDER_EVERY_S = 0.05


class SimulatorError(RuntimeError):
    """A script asked the simulated charger for something the real one cannot do."""


@dataclass
class Truck:
    soc: float  # percent
    battery_wh: float
    max_power_w: float
    paused: bool = False
    taper_from: float = 80.0  # state of charge (%) where its power starts to fall
    # The driver's charge limit: at this state of charge the truck stops
    # drawing power and waits, plugged (SuspendedEV), as trucks set to 80 % do.
    limit_soc: float = 100.0


@dataclass(frozen=True)
class Ramp:
    """How fast a truck's power follows its limit: up by ``up_w_per_s`` when it
    may take more, down by ``down_w_per_s`` when told to take less. The
    defaults take a megawatt truck from 0 to full in about ten seconds and
    drop it to nothing within two, inside the 5 s IEC 61851-1 allows."""

    up_w_per_s: float = 100_000.0
    down_w_per_s: float = 600_000.0

    def __post_init__(self):
        if not (self.up_w_per_s > 0 and self.down_w_per_s > 0):
            raise ValueError("ramp rates must be positive watts per second")


def follow(power_w: float, target_w: float, seconds: float, ramp: Ramp | None) -> tuple[float, float]:
    """Power after ``seconds`` of moving from ``power_w`` towards ``target_w``
    along the ramp, and the energy (Wh) delivered meanwhile: exact for a
    straight ramp that may reach its target within the interval."""
    if ramp is None or power_w == target_w:
        return target_w, target_w * seconds / 3600.0
    rate = ramp.up_w_per_s if target_w > power_w else ramp.down_w_per_s
    reach_s = abs(target_w - power_w) / rate
    if reach_s >= seconds:
        end = power_w + math.copysign(rate * seconds, target_w - power_w)
        return end, (power_w + end) / 2 * seconds / 3600.0
    return target_w, ((power_w + target_w) / 2 * reach_s + target_w * (seconds - reach_s)) / 3600.0


@dataclass
class ReceivedCommand:
    connector: int
    name: str
    value: int | None
    accepted: bool
    at: float  # monotonic seconds
    source: str = "modbus"  # modbus: written by a driver; local: the charger's own panel


@dataclass
class SimulatedConnector:
    energy_wh: float  # meter reading, lifetime
    truck: Truck | None = None
    active: bool = False  # a charging session runs (started, not stopped or full)
    finished: bool = False
    power_w: float = 0.0
    locked: bool = False
    limit_w: int | None = None
    fail_safe_w: int | None = None  # what it holds by itself when no controller writes a limit
    deaf_to_limits: bool = False  # takes power_limit writes and keeps its old limit
    lock_stuck: bool = False
    faulted: bool = False
    garbage_status: int | None = None
    ocmf: str = ""
    session_start_wh: float = 0.0

    def status(self) -> HardwareStatus:
        if self.faulted:
            return HardwareStatus.FAULT
        if self.truck is None:
            return HardwareStatus.UNPLUGGED
        if self.finished:
            return HardwareStatus.FINISHED
        if not self.active:
            return HardwareStatus.PLUGGED
        if self.truck.paused:
            return HardwareStatus.SUSPENDED_EV
        if self.limit_w == 0:
            return HardwareStatus.SUSPENDED_EVSE
        return HardwareStatus.CHARGING


def taper(soc: float, knee: float = 80.0) -> float:
    """Share of full power a truck battery accepts at a state of charge:
    flat up to the knee (80 % by default; megawatt packs often start falling
    near 60 %), then falling to 15 % at full, as lithium packs do."""
    if soc < knee:
        return 1.0
    return max(0.15, 1.0 - (soc - knee) / (100.0 - knee) * 0.85)


class ChargerSimulator:
    def __init__(
        self,
        register_map: RegisterMap,
        connectors: int,
        host: str = "127.0.0.1",
        port: int = 0,
        unit: int = 1,
        time_scale: float = 1.0,
        *,
        meter_start_wh: int = 1_000_000,
        ramp: Ramp | None = None,
    ):
        if not 1 <= connectors <= register_map.max_connectors:
            raise ValueError(
                f"a {register_map.model} has 1..{register_map.max_connectors} connectors, not {connectors}"
            )
        self.map = register_map
        self.host = host
        self.port = port
        self.unit = unit
        self.time_scale = time_scale
        self.ramp = ramp
        self.rated_power_w = register_map.rated_power_w or 350_000
        self.connectors = [SimulatedConnector(energy_wh=float(meter_start_wh + 10_000 * i)) for i in range(connectors)]
        self.commands: list[ReceivedCommand] = []
        self.requests = 0
        self._server: ModbusTcpServer | None = None
        self._silent = False
        self._refusing = False
        self._slow_s = 0.0
        self._fail_left = 0
        self._fail_code = ExcCodes.DEVICE_BUSY
        self._last_mono = time.monotonic()
        self._image: dict[str, tuple[int, list[int]]] = {}
        self._ocmf_shown: dict[int, str] = {}
        self._dirty = True
        self._rendered_at = 0.0
        self._build_image()

    # ---- lifecycle

    async def start(self) -> int:
        """Listen; returns the TCP port (a free one when ``port`` was 0)."""
        await self._listen(self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def _listen(self, port: int) -> None:
        server = ModbusTcpServer(self._device(), address=(self.host, port), trace_packet=self._trace_packet)
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]
        self._server = server

    # ---- the truck, as a test or demo script drives it

    def plug(self, i: int, soc: float = 20.0, battery_kwh: float = 600.0, max_power_w: float | None = None,
             taper_from: float = 80.0, limit_soc: float = 100.0) -> None:
        c = self._connector(i)
        self._advance()
        if c.truck is not None:
            raise SimulatorError(f"connector {i} already has a truck plugged in; unplug it first")
        c.truck = Truck(soc=float(soc), battery_wh=battery_kwh * 1000.0,
                        max_power_w=float(max_power_w or self.rated_power_w), taper_from=float(taper_from),
                        limit_soc=float(limit_soc))
        c.finished = False

    def pause_ev(self, i: int) -> None:
        self._truck(i).paused = True
        self._advance()

    def resume_ev(self, i: int) -> None:
        self._advance()
        self._truck(i).paused = False

    def full(self, i: int) -> None:
        """The battery is full: the truck ends the session by itself."""
        self._advance()
        truck = self._truck(i)
        truck.soc = 100.0
        self._finish(self.connectors[i])

    def unplug(self, i: int) -> None:
        c = self._connector(i)
        self._advance()
        if c.truck is None:
            raise SimulatorError(f"connector {i} has no truck plugged in")
        if c.locked:
            raise SimulatorError(f"connector {i} is locked; it must be unlocked before the cable comes out")
        c.truck = None
        c.active = c.finished = False
        c.power_w = 0.0

    def advance(self, seconds: float) -> None:
        """Move simulated time on by ``seconds`` without waiting for it."""
        self._advance(extra=seconds)

    def drawn_w(self) -> float:
        """What all connectors draw now, in W (what a grid meter sees of this charger)."""
        self._advance()
        return sum(c.power_w for c in self.connectors)

    # ---- faults

    async def silence(self, mode: str = "no_answer") -> None:
        """Stop answering. ``no_answer`` keeps accepting connections and
        requests but sends nothing back; ``refuse`` closes the port."""
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
            await self._listen(self.port)

    def slow(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (0 to answer promptly again)."""
        self._slow_s = seconds

    def fail_next(self, n: int, code: int = ExcCodes.DEVICE_BUSY) -> None:
        """Answer the next ``n`` requests with a Modbus exception code."""
        self._fail_left = n
        self._fail_code = ExcCodes(code)

    def garbage_status(self, i: int, code: int | None = 0xBEEF) -> None:
        """Report a status code the map does not know (None to stop)."""
        self._connector(i).garbage_status = code
        self._dirty = True

    def deaf_to_limits(self, i: int, deaf: bool = True) -> None:
        """Accept power_limit writes on the wire but keep the old limit (a
        firmware that ignores them): the limit register reads the old one back."""
        self._connector(i).deaf_to_limits = deaf
        self._dirty = True

    def stuck_lock(self, i: int, stuck: bool = True) -> None:
        """Make the connector lock ignore unlock commands."""
        self._connector(i).lock_stuck = stuck

    def fault(self, i: int, on: bool = True) -> None:
        c = self._connector(i)
        self._advance()
        c.faulted = on
        if on and c.active:
            self._finish(c)

    # ---- what the driver did (for tests)

    def command_count(self, i: int, name: str, accepted: bool | None = None, source: str = "modbus") -> int:
        """How many ``name`` commands connector ``i`` received (e.g. to prove no second start)."""
        return sum(
            1
            for c in self.commands
            if c.connector == i and c.name == name and c.source == source and (accepted is None or c.accepted == accepted)
        )

    def status(self, i: int) -> HardwareStatus:
        self._advance()
        return self._connector(i).status()

    # ---- physics

    def _connector(self, i: int) -> SimulatedConnector:
        if not 0 <= i < len(self.connectors):
            raise SimulatorError(f"connector {i} does not exist; this simulator has 0..{len(self.connectors) - 1}")
        return self.connectors[i]

    def _truck(self, i: int) -> Truck:
        truck = self._connector(i).truck
        if truck is None:
            raise SimulatorError(f"connector {i} has no truck plugged in; plug() one first")
        return truck

    def _available_power(self, c: SimulatedConnector) -> float:
        if c.status() != HardwareStatus.CHARGING or c.truck is None:
            return 0.0
        ceiling = min(c.truck.max_power_w, self.rated_power_w, c.limit_w if c.limit_w is not None else math.inf)
        return ceiling * taper(c.truck.soc, c.truck.taper_from)

    def _advance(self, extra: float = 0.0) -> None:
        self._dirty = True  # callers change state after advancing time
        now = time.monotonic()
        remaining = (now - self._last_mono) * self.time_scale + extra
        self._last_mono = now
        while remaining > 1e-9:
            step = min(MAX_STEP_S, remaining)
            remaining -= step
            for c in self.connectors:
                target = self._available_power(c)
                if c.truck is None or not c.active or (target <= 0 and (self.ramp is None or c.power_w <= 0)):
                    c.power_w = 0.0
                    continue
                power, energy = follow(c.power_w, target, step, self.ramp)
                limit = min(100.0, c.truck.limit_soc)
                room_wh = max(0.0, limit - c.truck.soc) / 100.0 * c.truck.battery_wh
                energy = min(energy, room_wh)
                c.energy_wh += energy
                c.truck.soc = min(limit, c.truck.soc + energy / c.truck.battery_wh * 100.0)
                c.power_w = power
                if c.truck.soc >= 100.0 - 1e-6:
                    self._finish(c)
                elif c.truck.soc >= limit - 1e-6:
                    c.truck.paused = True  # at the driver's limit
                    c.power_w = 0.0

    def _finish(self, c: SimulatedConnector) -> None:
        if c.active:
            c.active = False
            c.finished = True
            c.power_w = 0.0
            c.ocmf = self._signed_value(c, "E")

    def _signed_value(self, c: SimulatedConnector, tx: str) -> str:
        """An OCMF-shaped record. The signature is a digest, not a real
        signature: the simulator has no meter key, and says so in ``GI``."""
        reading = {
            "TM": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S,000+0000 S"),
            "TX": tx,
            "RV": round(math.floor(c.energy_wh) / 1000.0, 3),
            "RI": "1-b:1.8.0",
            "RU": "kWh",
            "ST": "G",
        }
        payload = json.dumps(
            {"FV": "1.0", "GI": "SIMULATED UNSIGNED", "GS": f"sim-{self.unit}", "PG": f"T{len(self.commands)}", "RD": [reading]},
            separators=(",", ":"),
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()
        return f'OCMF|{payload}|{{"SA":"none","SD":"{digest}"}}'

    # ---- commands written by the driver

    def local_command(self, i: int, name: str, value: int | None = None) -> None:
        """Operate the charger from its own panel, as a site attendant would;
        recorded apart from what a driver wrote over Modbus."""
        self._connector(i)
        self._on_command(i, name, value, source="local")

    def _on_command(self, i: int, name: str, value: int | None, source: str = "modbus") -> None:
        c = self.connectors[i]
        self._advance()
        accepted = True
        if name == "start":
            accepted = c.status() == HardwareStatus.PLUGGED
            if accepted:
                c.active, c.locked = True, True
                c.session_start_wh = c.energy_wh
                c.ocmf = self._signed_value(c, "B")
        elif name == "stop":
            accepted = c.active
            self._finish(c)
        elif name == "unlock":
            # A real charger will not release a cable under load, nor a jammed lock.
            accepted = not c.active and not c.lock_stuck
            if accepted:
                c.locked = False
        elif name == "power_limit":
            accepted = not c.deaf_to_limits
            if accepted:
                c.limit_w = value
            self._dirty = True  # the register reads back the limit in force
        elif name == "fail_safe_limit":
            c.fail_safe_w = value
        self.commands.append(ReceivedCommand(i, name, value, accepted, time.monotonic(), source))
        log.info("simulator_command unit=%s connector=%d command=%s accepted=%s", self.unit, i, name, accepted)

    # ---- the register image and the Modbus side

    def _build_image(self) -> None:
        spans: dict[str, list[int]] = {"holding": [], "input": []}
        for i in range(len(self.connectors)):
            for spec in self.map.registers.values():
                a = self.map.address(spec, i)
                spans[spec.kind] += [a, a + spec.width]
            for cmd in self.map.commands.values():
                a = self.map.address(cmd, i)
                spans["holding"] += [a, a + cmd.width]
        for kind, edges in spans.items():
            if edges:
                self._image[kind] = (min(edges), [0] * (max(edges) - min(edges)))
        self._render()

    def _device(self) -> SimDevice:
        def block(kind: str) -> list[SimData]:
            if kind not in self._image:
                return [SimData(0, datatype=DataType.INVALID)]
            start, regs = self._image[kind]
            return [SimData(start, count=len(regs), datatype=DataType.REGISTERS)]

        no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            id=self.unit,
            simdata=(no_bits, list(no_bits), block("holding"), block("input")),
            action=self._on_request,
        )

    def _put(self, kind: str, address: int, registers: list[int]) -> None:
        start, image = self._image[kind]
        image[address - start : address - start + len(registers)] = registers

    def _render(self) -> None:
        m = self.map
        regs = m.registers
        for i, c in enumerate(self.connectors):
            status = c.status()
            code = m.status_code(status)
            if code is None:
                code = m.status_code(STATUS_FALLBACK.get(status, HardwareStatus.FAULT))
            if c.garbage_status is not None:
                code = c.garbage_status
            values: dict[str, list[int]] = {
                "status": [code],
                "lock": [m.lock_code(LockState.LOCKED if c.locked else LockState.UNLOCKED)],
                "energy": encode(regs["energy"], math.floor(c.energy_wh)),
                "power": encode(regs["power"], round(c.power_w)),
            }
            if "soc" in regs:
                values["soc"] = encode(regs["soc"], int(c.truck.soc) if c.truck else 0)
            voltage = (750.0 + 1.5 * c.truck.soc) if c.truck else 0.0
            if "voltage" in regs:
                values["voltage"] = encode(regs["voltage"], round(voltage, 1))
            if "current" in regs:
                values["current"] = encode(regs["current"], round(c.power_w / voltage, 1) if voltage else 0)
            if "power_limit" in regs:
                values["power_limit"] = encode(regs["power_limit"], c.limit_w if c.limit_w is not None else self.rated_power_w)
            if "ocmf" in regs and self._ocmf_shown.get(i) != c.ocmf:
                values["ocmf"] = encode_string(c.ocmf, regs["ocmf"].length)
                self._ocmf_shown[i] = c.ocmf
            for name, words in values.items():
                self._put(regs[name].kind, m.address(regs[name], i), words)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # A silent charger swallows its answers; the connection stays open.
        if sending and self._silent:
            return b""
        return data

    async def _on_request(self, function_code, start_address, address, count, registers, set_values):
        self.requests += 1
        if self._silent:
            return ExcCodes.DEVICE_BUSY  # never sent: _trace_packet drops it; no write is applied
        if self._slow_s:
            await asyncio.sleep(self._slow_s)
        if self._fail_left > 0:
            self._fail_left -= 1
            return self._fail_code
        kind = "input" if function_code == 4 else "holding"
        start, image = self._image.get(kind, (0, []))
        if set_values is not None:
            self._put(kind, address, list(set_values))
            self._apply_writes(address, len(set_values))
        self._refresh()
        offset = address - start_address
        registers[offset : offset + count] = image[address - start : address - start + count]
        if set_values is not None:
            set_values[:] = registers[offset : offset + count]
        return None

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._dirty or now - self._rendered_at >= RENDER_EVERY_S:
            self._advance()
            self._render()
            self._rendered_at = now
            self._dirty = False

    def _apply_writes(self, address: int, count: int) -> None:
        end = address + count
        for i in range(len(self.connectors)):
            touched = []
            for cmd in self.map.commands.values():
                a = self.map.address(cmd, i)
                if address <= a and a + cmd.width <= end:
                    touched.append((a, cmd))
            for a, cmd in touched:
                words = self._image["holding"][1][a - self._image["holding"][0] : a - self._image["holding"][0] + cmd.width]
                value = decode(cmd, words)
                if cmd.value is not None:
                    if value == cmd.value:
                        self._on_command(i, cmd.name, None)
                else:
                    self._on_command(i, cmd.name, int(round(value)))


# --------------------------------------------------------------------------
# Standalone: python -m simulators.charger


async def _traffic(sim: ChargerSimulator, rng: random.Random) -> None:
    """A little day at the hub: trucks arrive, charge, sometimes pause, leave."""

    async def sim_sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / sim.time_scale)

    async def bay(i: int) -> None:
        while True:
            await sim_sleep(rng.uniform(5, 60))
            sim.plug(i, soc=rng.uniform(10, 50), battery_kwh=rng.choice([400, 600, 720]), max_power_w=rng.choice([350_000, 750_000, 1_000_000]))
            await sim_sleep(rng.uniform(2, 10))
            if sim.status(i) == HardwareStatus.PLUGGED:
                # Nobody drives this simulator: the scripted driver authorises itself.
                sim.local_command(i, "start", None)
            await sim_sleep(rng.uniform(300, 1800))
            if rng.random() < 0.3 and sim.status(i) == HardwareStatus.CHARGING:
                sim.pause_ev(i)
                await sim_sleep(rng.uniform(30, 120))
                sim.resume_ev(i)
            await sim_sleep(rng.uniform(300, 1800))
            if sim.status(i) != HardwareStatus.FINISHED:
                sim.local_command(i, "stop", None)
            await sim_sleep(rng.uniform(10, 120))
            sim.local_command(i, "unlock", None)
            if not sim.connectors[i].locked:
                sim.unplug(i)

    await asyncio.gather(*(bay(i) for i in range(len(sim.connectors))))


async def _main(args: argparse.Namespace) -> None:
    register_map = load_register_map(args.map)
    sims = []
    for n in range(args.chargers):
        sim = ChargerSimulator(register_map, args.connectors, host=args.host, port=args.port if n == 0 else 0, unit=args.unit,
                               time_scale=args.time_scale, ramp=Ramp() if args.ramp else None)
        port = await sim.start()
        sims.append(sim)
        print(f"charger_simulator_listening port={port} unit={args.unit} model={register_map.model!r} connectors={args.connectors}", flush=True)
    tasks = [asyncio.create_task(_traffic(s, random.Random(n))) for n, s in enumerate(sims)] if args.traffic else []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    for t in tasks:
        t.cancel()
    for sim in sims:
        with contextlib.suppress(Exception):
            await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.charger", description="Simulated DC charger on Modbus TCP.")
    parser.add_argument("--map", required=True, help="register map TOML file (config/register-maps/...)")
    parser.add_argument("--connectors", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit (device) id")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--chargers", type=int, default=1, help="how many chargers, each on its own port")
    parser.add_argument("--traffic", action="store_true", help="scripted trucks arrive, charge and leave")
    parser.add_argument("--ramp", action="store_true", help="trucks follow a changed power limit along a ramp, not at once")
    parser.add_argument("--quiet", action="store_true", help="do not log each command received")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
