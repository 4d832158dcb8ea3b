"""Gate-device rigs over the real wire: HTTP for cameras, Modbus TCP for the
barrier, both on 127.0.0.1 with ports picked at run time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from drivers.anpr import AnprListener
from drivers.barrier import BarrierDriver
from drivers.device import cancel_and_wait
from simulators.barrier import BarrierSimulator
from simulators.camera import CameraSimulator

SECRET = "gate-camera-secret"


@dataclass
class CameraRig:
    listener: AnprListener
    camera: CameraSimulator
    reads: list = field(default_factory=list)


@pytest.fixture
async def camera_rig():
    """make(vendor, **listener options) -> CameraRig; everything stopped after the test."""
    started: list[AnprListener] = []

    async def make(vendor: str = "hikvision", *, hik_format: str = "multipart", secret: str | None = SECRET, **options):
        reads: list = []
        listener = AnprListener("gate-in-cam", "127.0.0.1", 0, vendor, reads.append, secret=secret, **options)
        port = await listener.start()
        started.append(listener)
        camera = CameraSimulator(f"http://127.0.0.1:{port}/anpr", vendor, secret, hik_format=hik_format)
        return CameraRig(listener, camera, reads)

    yield make
    for listener in started:
        await listener.stop()


@dataclass
class BarrierRig:
    sim: BarrierSimulator
    driver: BarrierDriver
    events: list

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, predicate, timeout: float = 3.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.02)


@pytest.fixture
async def barrier_rig():
    sim = BarrierSimulator(travel_s=0.3, dwell_s=0.4, tick_s=0.02)
    port = await sim.start()
    events: list = []
    driver = BarrierDriver(
        "gate-in", "127.0.0.1", port, 1, None, events.append,
        open_confirm_s=1.0, pulse_ms=100, poll_interval_s=0.05, request_timeout_s=0.3, backoff_cap_s=0.5,
    )
    poll = asyncio.get_running_loop().create_task(driver.run())
    rig = BarrierRig(sim, driver, events)
    try:
        yield rig
    finally:
        await cancel_and_wait([poll])
        await driver.close()
        await sim.stop()
    # R-G5, checked after every barrier test: software never wrote a close.
    assert sim.close_commands == []
