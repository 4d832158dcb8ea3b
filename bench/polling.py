"""Polling 40 connectors at 1 Hz: what the charger driver costs the hub computer.

Ten simulated HubCharge MCS1200 chargers with four connectors each run in
separate processes (with scripted truck traffic), so the CPU measured here is
the poller's alone. The cycle latency includes the simulators' answering
time, which on a loaded machine dominates it; the baseline shares that cost. Each second every charger is polled at once; a cycle ends
when the slowest charger has answered.

Baseline, measured in the same run against the same simulators: bare
pymodbus clients issuing the same read requests (same count, same sizes)
with no decoding, health keeping, locking or backoff.

Goals (issue "Foundation"): CPU share of one core <= 3 %, cycle p99 <= 100 ms.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from bench.common import Result, cpu_seconds, percentile
from drivers.charger_modbus import ChargerDriver
from drivers.register_map import load_register_map

ROOT = Path(__file__).resolve().parents[1]
MAP_FILE = ROOT / "config" / "register-maps" / "hubcharge-mcs1200.toml"
CHARGERS = 10
CONNECTORS = 4
SIM_PROCESSES = 2
COMMAND = "python -m bench polling"


def _start_simulators() -> tuple[list[subprocess.Popen], list[int]]:
    """Two simulator processes of five chargers each: real chargers answer in
    parallel, and one Python process answering all 80 requests of a cycle
    would make the figure the simulator's more than the poller's."""
    procs, ports = [], []
    for _ in range(SIM_PROCESSES):
        proc, more = _start_simulator_process(CHARGERS // SIM_PROCESSES)
        procs.append(proc)
        ports += more
    return procs, ports


def _start_simulator_process(chargers: int) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "simulators.charger",
            "--map", str(MAP_FILE),
            "--connectors", str(CONNECTORS),
            "--chargers", str(chargers),
            "--traffic", "--time-scale", "20", "--quiet",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    ports = []
    while len(ports) < chargers:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise RuntimeError("the charger simulators did not start; run python -m simulators.charger by hand to see why")
        if match := re.search(r"port=(\d+)", line):
            ports.append(int(match.group(1)))
    return proc, ports


async def _cycles(poll_all, seconds: float) -> tuple[list[float], float, float]:
    """Run 1 Hz poll cycles for ``seconds``; returns cycle latencies (ms), CPU s, wall s."""
    await poll_all()  # connect and warm up outside the measurement
    pid = os.getpid()
    latencies: list[float] = []
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    next_tick = wall0
    while next_tick - wall0 < seconds:
        started = time.monotonic()
        await poll_all()
        latencies.append((time.monotonic() - started) * 1000)
        next_tick += 1.0
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    return latencies, cpu_seconds(pid) - cpu0, time.monotonic() - wall0


async def _measure(ports: list[int], seconds: float) -> dict[str, tuple[list[float], float, float]]:
    register_map = load_register_map(MAP_FILE)
    connectors = {f"{i + 1}": i for i in range(CONNECTORS)}
    out = {}

    # Baseline: the same requests through bare pymodbus.
    plans = [register_map.read_plan(i, tuple(n for n in register_map.registers if n != "ocmf")) for i in range(CONNECTORS)]
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1.0, retries=0, reconnect_delay=0) for p in ports]
    for client in clients:
        await client.connect()

    async def bare_charger(client):
        for plan in plans:
            for span in plan:
                call = client.read_input_registers if span.kind == "input" else client.read_holding_registers
                await call(span.address, count=span.count, device_id=1)

    async def bare_all():
        await asyncio.gather(*(bare_charger(c) for c in clients))

    out["baseline"] = await _cycles(bare_all, seconds)
    for client in clients:
        client.close()

    drivers = [
        ChargerDriver(f"bench-{n}", "127.0.0.1", p, 1, register_map, connectors, timeout=1.0)
        for n, p in enumerate(ports)
    ]

    async def driver_all():
        await asyncio.gather(*(d.poll() for d in drivers), return_exceptions=True)

    out["driver"] = await _cycles(driver_all, seconds)
    for d in drivers:
        await d.close()
    return out


def run(quick: bool) -> list[Result]:
    seconds = 10.0 if quick else 60.0
    procs, ports = _start_simulators()
    try:
        figures = asyncio.run(_measure(ports, seconds))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()
    lat_d, cpu_d, wall_d = figures["driver"]
    lat_b, cpu_b, wall_b = figures["baseline"]
    command = COMMAND + (" --quick" if quick else "")
    what = f"bare pymodbus reads, same {CHARGERS}x{CONNECTORS} connectors and requests"
    return [
        Result(
            name=f"polling.cpu_share_{CHARGERS * CONNECTORS}_connectors_1hz",
            value=round(100 * cpu_d / wall_d, 3),
            unit="% of one core",
            baseline=what,
            baseline_value=round(100 * cpu_b / wall_b, 3),
            goal=3.0,
            command=command,
        ),
        Result(
            name="polling.cycle_p99",
            value=round(percentile(lat_d, 99), 2),
            unit="ms",
            baseline=what,
            baseline_value=round(percentile(lat_b, 99), 2),
            goal=100.0,
            command=command,
        ),
    ]


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result.as_dict())
