"""A barrier gate behind a Modbus TCP I/O module, device side (R-H1).

``BarrierMechanics`` is the barrier itself, as pure time-stepped logic: an
OPEN impulse (or HOLD-OPEN) raises the boom over ``travel_s``; it stays up
while the presence loop is occupied or HOLD-OPEN is set, and lowers by
itself ``dwell_s`` after the loop is clear. Its own safety logic never lowers
the boom onto a vehicle: presence during closing reverses it.

``BarrierSimulator`` puts that barrier behind a pymodbus TCP server (the
SimDevice API of pymodbus 3.16, no deprecated datastore) with the same
wiring a real I/O module would have, plus a CLOSE coil that the real
barrier controller offers and that our software must never use (R-G5): every
coil write is recorded so tests can prove it.

Fault injection: ``stuck()`` (the boom ignores OPEN), ``silence()`` (the
module stops answering), and vehicle_arrives()/vehicle_leaves() drive the
presence loop.

Standalone: ``python -m simulators.barrier --port 5020``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.device import utcnow

log = logging.getLogger("hubedge.sim.barrier")

FC_READ_COILS = 1
FC_READ_INPUTS = 2
FC_WRITE_COIL = 5
FC_WRITE_COILS = 15


@dataclass(frozen=True)
class SimWiring:
    """Coil and input addresses of the simulated I/O module. The defaults
    are the hub's default barrier wiring; ``close_coil`` exists only so that
    a close command, which software must never send, can be seen."""

    open_coil: int = 0
    hold_open_coil: int = 1
    close_coil: int = 2
    presence_input: int = 0
    open_input: int = 1
    closed_input: int = 2

    def coil_name(self, address: int) -> str:
        names = {self.open_coil: "open", self.hold_open_coil: "hold_open", self.close_coil: "close"}
        return names.get(address, f"coil{address}")


class BarrierMechanics:
    """The boom and its controller. Position 0.0 = closed, 1.0 = open."""

    def __init__(self, *, travel_s: float = 1.0, dwell_s: float = 3.0, now: float = 0.0):
        self.travel_s = travel_s
        self.dwell_s = dwell_s
        self.position = 0.0
        self.motion = 0  # +1 raising, -1 lowering, 0 still
        self.presence = False
        self.hold = False
        self.open_input_level = False
        self.stuck = False
        self._clear_since: float | None = now  # loop clear and boom up since
        self._t = now

    @property
    def is_open(self) -> bool:
        return self.position >= 1.0

    @property
    def is_closed(self) -> bool:
        return self.position <= 0.0

    def open_impulse(self, now: float) -> None:
        self.step(now)
        if not self.stuck and not self.is_open:
            self.motion = +1

    def set_open_input(self, level: bool, now: float) -> None:
        rising = level and not self.open_input_level
        self.open_input_level = level
        if rising:
            self.open_impulse(now)
        else:
            self.step(now)

    def set_hold(self, on: bool, now: float) -> None:
        self.step(now)
        self.hold = on
        if on and not self.stuck and not self.is_open:
            self.motion = +1
        self._clear_since = now

    def set_presence(self, present: bool, now: float) -> None:
        self.step(now)
        self.presence = present
        if present and self.motion < 0 and not self.stuck:
            self.motion = +1  # safety: never lower onto a vehicle
        if not present:
            self._clear_since = now

    def close_command(self, now: float) -> bool:
        """A close input, as real controllers have: obeyed only with the loop
        clear (EN 12453). Returns whether the boom started lowering."""
        self.step(now)
        if self.presence or self.stuck or self.is_closed:
            return False
        self.motion = -1
        return True

    def _kept_open(self) -> bool:
        return self.presence or self.hold or self.open_input_level

    def step(self, now: float) -> None:
        dt = max(0.0, now - self._t)
        self._t = now
        if self.stuck:
            self.motion = 0
            return
        rate = 1.0 / self.travel_s if self.travel_s > 0 else float("inf")
        if self.motion > 0:
            self.position = min(1.0, self.position + dt * rate)
            if self.position >= 1.0:
                self.motion = 0
                self._clear_since = now
        elif self.motion < 0:
            if self.presence:
                self.motion = +1
            else:
                self.position = max(0.0, self.position - dt * rate)
                if self.position <= 0.0:
                    self.motion = 0
        if self.motion == 0 and self.is_open:
            if self._kept_open():
                self._clear_since = now
            elif self._clear_since is not None and now - self._clear_since >= self.dwell_s:
                self.motion = -1


@dataclass(frozen=True)
class CoilWrite:
    coil: str  # open | hold_open | close | coilN
    address: int
    value: bool
    ts: datetime = field(default_factory=utcnow)


class BarrierSimulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unit: int = 1,
        wiring: SimWiring | None = None,
        travel_s: float = 1.0,
        dwell_s: float = 3.0,
        tick_s: float = 0.02,
    ):
        self.host = host
        self.port = port
        self.unit = unit
        self.wiring = wiring or SimWiring()
        self.tick_s = tick_s
        self.mechanics = BarrierMechanics(travel_s=travel_s, dwell_s=dwell_s)
        self.commands: list[CoilWrite] = []
        self._speaking = asyncio.Event()
        self._speaking.set()
        self._server: ModbusTcpServer | None = None
        self._ticker: asyncio.Task | None = None
        self._published: tuple[bool, bool, bool] | None = None

    # -- test controls

    def vehicle_arrives(self) -> None:
        self.mechanics.set_presence(True, self._now())

    def vehicle_leaves(self) -> None:
        self.mechanics.set_presence(False, self._now())

    def stuck(self, on: bool = True) -> None:
        """The boom is jammed: it ignores OPEN and never moves."""
        self.mechanics.step(self._now())
        self.mechanics.stuck = on

    def silence(self, on: bool = True) -> None:
        """The I/O module stops answering: requests hang unanswered, and a
        write that came in while it was silent is lost, as on a cut line or
        a module without power (it never opens the boom later)."""
        if on:
            self._speaking.clear()
        else:
            self._speaking.set()

    @property
    def close_commands(self) -> list[CoilWrite]:
        return [c for c in self.commands if c.coil == "close" and c.value]

    @property
    def position(self) -> str:
        m = self.mechanics
        return "open" if m.is_open else "closed" if m.is_closed else "moving"

    # -- lifecycle

    async def start(self) -> int:
        w = self.wiring
        coil_top = max(w.open_coil, w.hold_open_coil, w.close_coil)
        input_top = max(w.presence_input, w.open_input, w.closed_input)
        device = SimDevice(
            self.unit,
            simdata=(
                [SimData(0, count=coil_top + 1, values=False, datatype=DataType.BITS)],
                [SimData(0, count=input_top + 1, values=False, datatype=DataType.BITS)],
                [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._on_access,
        )
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        self.mechanics._t = self._now()
        self.mechanics._clear_since = self._now()
        await self._publish()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="barrier-sim-tick")
        log.info("sim.barrier.listening host=%s port=%d unit=%d", self.host, self.port, self.unit)
        return self.port

    async def stop(self) -> None:
        self._speaking.set()  # let hung requests finish so the server can close
        if self._ticker:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        if self._server:
            await self._server.shutdown()
            self._server = None

    # -- device side

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def _tick(self) -> None:
        while True:
            self.mechanics.step(self._now())
            await self._publish()
            await asyncio.sleep(self.tick_s)

    async def _publish(self) -> None:
        m, w = self.mechanics, self.wiring
        levels = (m.presence, m.is_open, m.is_closed)
        if levels == self._published or self._server is None:
            return
        self._published = levels
        for address, level in zip((w.presence_input, w.open_input, w.closed_input), levels):
            await self._server.async_setValues(self.unit, FC_READ_INPUTS, address, [level])

    async def _on_access(self, function_code, _start, address, _count, _registers, values):
        if function_code == FC_READ_INPUTS and values is not None:
            return None  # our own input update from _publish
        lost = not self._speaking.is_set()
        await self._speaking.wait()
        if lost:
            return None
        if function_code in (FC_WRITE_COIL, FC_WRITE_COILS) and values is not None:
            now = self._now()
            for offset, value in enumerate(values):
                self._coil_written(address + offset, bool(value), now)
            await self._publish()
        return None

    def _coil_written(self, address: int, value: bool, now: float) -> None:
        w, m = self.wiring, self.mechanics
        name = w.coil_name(address)
        self.commands.append(CoilWrite(name, address, value))
        log.info("sim.barrier.coil coil=%s value=%s", name, int(value))
        if address == w.open_coil:
            m.set_open_input(value, now)
        elif address == w.hold_open_coil:
            m.set_hold(value, now)
        elif address == w.close_coil and value:
            m.close_command(now)


async def _main(args: argparse.Namespace) -> None:
    sims = []
    for n in range(args.count):
        sim = BarrierSimulator(args.host, args.port if args.count == 1 else 0, unit=args.unit,
                               travel_s=args.travel, dwell_s=args.dwell)
        port = await sim.start()
        sims.append(sim)
        print(f"barrier simulator: Modbus TCP on {args.host}:{port} unit {args.unit} port={port}; Ctrl-C to stop", flush=True)
    try:
        last = None
        while True:
            state = [(sim.position, sim.mechanics.presence) for sim in sims]
            if state != last and not args.quiet:
                for n, (position, presence) in enumerate(state):
                    print(f"barrier={n} position={position} presence={int(presence)}", flush=True)
                last = state
            await asyncio.sleep(0.1)
    finally:
        for sim in sims:
            await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated barrier gate behind a Modbus TCP I/O module.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020, help="TCP port (0 picks a free one)")
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit (device) id")
    parser.add_argument("--travel", type=float, default=2.0, help="seconds the boom takes to rise or fall")
    parser.add_argument("--dwell", type=float, default=5.0, help="seconds the boom stays up after the loop clears")
    parser.add_argument("--count", type=int, default=1, help="how many barriers (each on its own free port when more than one)")
    parser.add_argument("--quiet", action="store_true", help="print the ports only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
