"""Gate and bay-assignment benchmarks (`python -m bench gate`).

1. Plate read -> gate decision (plate lookup plus the policy) with 10,000
   bookings over six months and 40 bays, p99 in ms; baseline: the same
   decision by a linear scan of every booking comparing raw plate strings.
2. Assigning bays to 10,000 bookings over six months in one pass, seconds;
   baseline: for each booking, check every booking already assigned.
3. Plate event to barrier: a camera's HTTP POST until the OPEN coil is
   written at the barrier I/O simulator (Modbus TCP), through the hub's own
   site-access part (ANPR listener, gate policy, bay view, barrier driver)
   with 10,000 bookings and 40 bays, p99 in ms; baseline: a bare HTTP POST
   to a trivial asyncio server that writes the coil with a bare pymodbus
   client, same simulator, same loop.
4. Camera read: a Hikvision camera's POST (multipart: the notification and
   its plate picture, then the same with a 200 kB scene picture) until the
   ANPR listener hands the PlateRead to the hub, p50 and p99 in ms; baseline:
   the same POSTs, interleaved, to a trivial asyncio server that reads the
   body by its Content-Length and hands it over.

Quick mode uses 2,000 bookings and fewer reads so it runs in a few seconds;
the goals hold for the full size.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import Result, percentile
from edge.parts.site.bay_assignment import AssignmentSettings, BayAssigned, BayCondition, review
from edge.parts.site.bookings import Bay, Booking, BookingBook
from edge.parts.site.gate_policy import Direction, GateRole, GateSettings, PlateRead, SiteView, decide_at_gate

START = datetime(2026, 1, 5, 0, 0, tzinfo=timezone.utc)
SECRET = b"bench-site-secret"
GROUPS = [("CCS", "left"), ("CCS", "right"), ("MCS", "left"), ("MCS", "right")]
LETTERS = "ABCDEFGHJKLMNPRSTVXZ"


def _bays() -> list[Bay]:
    return [Bay(f"bay{i:02d}", *GROUPS[i % 4], 25.25 if i % 3 else 18.75) for i in range(40)]


def _plate(rng: random.Random) -> str:
    return f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}-{rng.randint(100, 999)}-{rng.choice(LETTERS)}"


def _book(n: int, rng: random.Random, bays: list[Bay] | None = None) -> tuple[BookingBook, list[Booking]]:
    book = BookingBook(bays or _bays(), SECRET)
    slots = 183 * 96  # quarter hours in six months
    i = 0
    while len(book) < n:
        start = START + timedelta(minutes=15 * rng.randrange(slots))
        item = {
            "id": f"bk{i}", "slot_start": start.isoformat(), "customer_id": "fleet",
            "slot_end": (start + timedelta(minutes=rng.choice([45, 60, 90, 120]))).isoformat(),
            "connector_type": rng.choice(("CCS", "MCS")), "side": rng.choice(("left", "right")),
            "plates": [_plate(rng)], "vehicle_length_m": rng.choice([None, 16.5, 18.75, 24.0]),
        }
        book.upsert(item, START)
        i += 1
    return book, book.all()


# ---- naive baselines


def _naive_gate(read: PlateRead, bookings: list[Booking], bays: list[Bay], conditions: dict, now: datetime,
                settings: GateSettings) -> bool:
    for b in bookings:  # raw string comparison, every booking
        if read.plate in b.plates and b.is_active and b.window_open(now, settings.early_arrival_grace):
            return True
    held = sum(1 for b in bookings if b.status in ("confirmed", "assigned")
               and b.slot_start <= now + settings.hold_horizon and b.slot_end > now)
    free = sum(1 for bay in bays if conditions.get(bay.id, BayCondition.FREE) == BayCondition.FREE)
    return free - held >= 1


def _naive_assign(bookings: list[Booking], bays: list[Bay]) -> int:
    placed: list[tuple[Booking, str]] = []
    for b in sorted(bookings, key=lambda x: (x.slot_start, x.seq)):
        busy = {bay for other, bay in placed if other.overlaps(b.slot_start, b.slot_end)}
        for bay in bays:
            if (bay.connector_type, bay.side) == b.group and bay.fits(b.vehicle_length_m) and bay.id not in busy:
                placed.append((b, bay.id))
                break
    return len(placed)


# ---- figures


def _gate_figure(book: BookingBook, bookings: list[Booking], reads: int, rng: random.Random, n: int) -> Result:
    bays = _bays()
    settings = GateSettings()
    cases = []
    for _ in range(reads):
        b = rng.choice(bookings)
        now = b.slot_start - timedelta(minutes=rng.randint(0, 40))
        conditions = {bay.id: rng.choice([BayCondition.FREE, BayCondition.OCCUPIED]) for bay in bays}
        plate = b.plates[0] if rng.random() < 0.7 else _plate(rng)
        cases.append((PlateRead(plate, 0.95, "truck", Direction.IN), conditions, now))

    ours: list[float] = []
    for read, conditions, now in cases:
        t0 = time.perf_counter()
        decide_at_gate(read, GateRole.ENTRY, book, SiteView(tuple(bays), conditions), now, settings)
        ours.append((time.perf_counter() - t0) * 1000)
    naive: list[float] = []
    for read, conditions, now in cases[: max(50, reads // 10)]:
        t0 = time.perf_counter()
        _naive_gate(read, bookings, bays, conditions, now, settings)
        naive.append((time.perf_counter() - t0) * 1000)
    return Result(
        name=f"gate decision p99 ({n} bookings, 40 bays)", value=round(percentile(ours, 99), 4), unit="ms",
        baseline="linear scan of all bookings comparing raw plates", baseline_value=round(percentile(naive, 99), 4),
        goal=20.0, command="python -m bench gate")


def _assign_figure(book: BookingBook, bookings: list[Booking], n: int) -> Result:
    rules = AssignmentSettings(lead_time=timedelta(days=184))
    t0 = time.perf_counter()
    decisions = review(book, {}, START, rules)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_placed = _naive_assign(bookings, _bays())
    naive = time.perf_counter() - t0
    placed = sum(1 for d in decisions if isinstance(d, BayAssigned))
    if placed != len(bookings) or naive_placed != len(bookings):
        raise RuntimeError(f"bench gate: placed {placed} (naive {naive_placed}) of {len(bookings)} bookings")
    return Result(
        name=f"assign bays to {n} bookings over six months", value=round(ours, 4), unit="s",
        baseline="for each booking, check every booking already assigned", baseline_value=round(naive, 4),
        goal=1.0, command="python -m bench gate")


# ---- plate event to OPEN coil, end to end


def _site_config(tmp: Path, listen: int, barrier: int) -> str:
    maps = Path(__file__).resolve().parents[1] / "config" / "register-maps" / "hubcharge-mcs1200.toml"
    chargers = "".join(
        f'[[chargers]]\nid = "CH{c}"\naddress = "127.0.0.1:9"\nregister_map = "{maps}"\nconnectors = ['
        + ", ".join(f'{{ id = "C{c * 4 + k:02d}", index = {k + 1} }}' for k in range(4)) + "]\n"
        for c in range(10))
    bays = "".join(
        f'[[bays]]\nid = "bay{i:02d}"\nconnector = "C{i:02d}"\nconnector_type = "{GROUPS[i % 4][0]}"\n'
        f'side = "{GROUPS[i % 4][1]}"\nlength_m = {25.25 if i % 3 else 18.75}\n' for i in range(40))
    return f"""
[hub]
id = "BENCH-GATE"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{tmp / 'control.sock'}"
{chargers}{bays}
[[gates]]
id = "G-IN"
role = "entry"
barrier = {{ address = "127.0.0.1:{barrier}" }}
camera = {{ listen = "127.0.0.1:{listen}", vendor = "hikvision", secret = "bench" }}
"""


class _CoilClock:
    """Stamps each OPEN coil write as the simulator takes it."""

    def __init__(self, sim):
        self.stamps: list[float] = []
        original = sim._coil_written

        def written(address, value, now):
            if address == sim.wiring.open_coil and value:
                self.stamps.append(time.perf_counter())
            original(address, value, now)

        sim._coil_written = written

    async def next_after(self, count: int, timeout: float = 5.0) -> float:
        deadline = time.perf_counter() + timeout
        while len(self.stamps) <= count:
            if time.perf_counter() > deadline:
                raise RuntimeError("bench gate: the barrier simulator never saw the OPEN coil")
            await asyncio.sleep(0)
        return self.stamps[count]


async def _end_to_end(n: int, reads: int, rng: random.Random, background=None) -> tuple[list[float], list[float]]:
    """``background(hub)``, if given, is a coroutine run beside the reads
    (bench/stall.py: bursts of events)."""
    import tempfile

    from pymodbus.client import AsyncModbusTcpClient

    from units import FakeClock
    from edge.core.config import parse_config
    from edge.core.hub import Hub
    from simulators.barrier import BarrierSimulator
    from simulators.broker import free_port
    from simulators.camera import CameraSimulator, hikvision_multipart, hikvision_xml

    tmp = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    # The daemon logs every decision at info level: keep that cost, into a file.
    import logging

    from edge.core.journal import setup_logging

    log_file = open(tmp / "hubedge.log", "w")
    setup_logging("info", stream=log_file)
    sim = BarrierSimulator(travel_s=0.05, dwell_s=0.5, tick_s=0.02)
    await sim.start()
    coils = _CoilClock(sim)
    listen = free_port()
    clock = FakeClock(START)
    import tomllib

    hub = Hub(parse_config(tomllib.loads(_site_config(tmp, listen, sim.port)), tmp / "hub.toml"), clock=clock)
    bays = list(hub.bookings.bays.values())
    hub.bookings, bookings = _book(n, rng, bays)
    site = next(p for p in hub.capabilities if p.name == "site")
    ours: list[float] = []
    base: list[float] = []
    extra = asyncio.get_running_loop().create_task(background(hub)) if background else None
    try:
        await site.start()
        rt = site.gates["G-IN"]
        rt.barrier.pulse_s = 0.005  # a short impulse so reads can follow each other
        camera = CameraSimulator(f"http://127.0.0.1:{listen}/anpr", "hikvision", "bench")
        for _ in range(200):  # the barrier driver connects in the background
            if rt.barrier.health.state == "ok":
                break
            await asyncio.sleep(0.02)
        for i in range(reads + 10):
            b = rng.choice(bookings)
            clock._now = b.slot_start - timedelta(minutes=rng.randint(0, 25))
            clock._mono += 10_000  # earlier ad-hoc admissions are no longer on their way
            plate = b.plates[0] if rng.random() < 0.7 else _plate(rng)
            body, ctype = camera.plate_body(plate, 0.95)
            seen = len(coils.stamps)
            t0 = time.perf_counter()
            reply = await camera.post(body, ctype)
            if reply.status != 200:
                raise RuntimeError(f"bench gate: listener answered {reply.status}")
            if rt.last_action != "open":
                continue  # refused or for the operator: no coil to time
            t1 = await coils.next_after(seen)
            if i >= 10:  # warm-up
                ours.append((t1 - t0) * 1000)
            if rt.barrier.open_confirmation:
                await rt.barrier.open_confirmation
            await asyncio.sleep(0.01)
        await site.stop()

        # Baseline: a trivial HTTP server that writes the coil with a bare client.
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port)
        await client.connect()

        async def trivial(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
            await reader.readexactly(length)
            await client.write_coil(sim.wiring.open_coil, True, device_id=1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            await client.write_coil(sim.wiring.open_coil, False, device_id=1)

        server = await asyncio.start_server(trivial, "127.0.0.1", 0)
        bare = CameraSimulator(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/anpr", "hikvision")
        body, ctype = hikvision_multipart(hikvision_xml("NL-AB-123-C", 0.95))
        for i in range(reads + 10):
            seen = len(coils.stamps)
            t0 = time.perf_counter()
            await bare.post(body, ctype)
            t1 = await coils.next_after(seen)
            if i >= 10:
                base.append((t1 - t0) * 1000)
            await asyncio.sleep(0.01)
        server.close()
        client.close()
    finally:
        if extra is not None:
            extra.cancel()
        hub.store.close()
        await sim.stop()
        logging.getLogger().handlers.clear()
        log_file.close()
    return ours, base


def _open_figure(n: int, reads: int, rng: random.Random) -> Result:
    ours, base = asyncio.run(_end_to_end(n, reads, rng))
    return Result(
        name=f"plate POST to OPEN coil p99 ({n} bookings, 40 bays)", value=round(percentile(ours, 99), 3), unit="ms",
        baseline="bare HTTP POST to a trivial asyncio server + bare pymodbus coil write",
        baseline_value=round(percentile(base, 99), 3), goal=20.0, command="python -m bench gate")


# ---- camera read: plate POST to the PlateRead handed to the hub

SCENE_PICTURE = 200 * 1024


async def _trivial_listener(handed: list[float]) -> asyncio.Server:
    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
        await reader.readexactly(length)
        handed.append(time.perf_counter())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def _camera_reads(reads: int, scene_picture: int) -> tuple[list[float], list[float]]:
    from drivers.anpr import AnprListener
    from simulators.camera import CameraSimulator

    ours_handed: list[float] = []
    base_handed: list[float] = []
    listener = AnprListener("bench-cam", "127.0.0.1", 0, "hikvision",
                            lambda read: ours_handed.append(time.perf_counter()), secret="bench")
    port = await listener.start()
    server = await _trivial_listener(base_handed)
    cameras = [
        (CameraSimulator(f"http://127.0.0.1:{port}/anpr", "hikvision", "bench", scene_picture=scene_picture),
         ours_handed, []),
        (CameraSimulator(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/anpr", "hikvision", "bench",
                         scene_picture=scene_picture), base_handed, []),
    ]
    try:
        for i in range(reads + 10):
            for camera, handed, times in cameras:  # interleaved, so both see the same machine
                body, ctype = camera.plate_body("NL-AB-123-C", 0.95)
                seen = len(handed)
                t0 = time.perf_counter()
                reply = await camera.post(body, ctype)
                if reply.status != 200 or len(handed) != seen + 1:
                    raise RuntimeError(f"bench gate: camera read answered {reply.status}, {len(handed) - seen} handed")
                if i >= 10:  # warm-up
                    times.append((handed[seen] - t0) * 1000)
    finally:
        await listener.stop()
        server.close()
        await server.wait_closed()
    return cameras[0][2], cameras[1][2]


def _camera_figures(reads: int) -> list[Result]:
    results = []
    for picture, label in ((0, "plate picture only"), (SCENE_PICTURE, "with a 200 kB scene picture")):
        ours, base = asyncio.run(_camera_reads(reads, picture))
        for p, goal in ((50, 5.0), (99, 20.0)):
            results.append(Result(
                name=f"camera POST to PlateRead handed over p{p} (Hikvision multipart, {label})",
                value=round(percentile(ours, p), 3), unit="ms",
                baseline="the same POSTs to a trivial asyncio server reading the body by Content-Length",
                baseline_value=round(percentile(base, p), 3), goal=goal, command="python -m bench gate"))
    return results


def run(quick: bool) -> list[Result]:
    rng = random.Random(20260105)
    n = 2_000 if quick else 10_000
    book, bookings = _book(n, rng)
    return [
        _gate_figure(book, bookings, 300 if quick else 3_000, rng, n),
        _assign_figure(book, bookings, n),
        _open_figure(n, 100 if quick else 300, random.Random(20260106)),
        *_camera_figures(100 if quick else 400),
    ]


if __name__ == "__main__":
    for r in run(quick=False):
        print(f"{r.name}: {r.value} {r.unit} (baseline {r.baseline_value} {r.unit}, {r.baseline}; "
              f"ratio {r.ratio:.3f}; goal {r.goal}: {'ok' if r.ok else 'MISSED'})")
