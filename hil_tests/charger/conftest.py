"""Charger rig for the hardware-in-the-loop tests: simulated chargers on real
Modbus TCP sockets (127.0.0.1, free ports picked at run time) and drivers
pointed at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.charger_modbus import ChargerDriver
from drivers.register_map import load_register_map
from simulators.charger import ChargerSimulator

MAPS_DIR = Path(__file__).resolve().parents[2] / "config" / "register-maps"
MAP_NAMES = ["hubcharge-mcs1200", "voltflow-ccs400"]


class ChargerRig:
    def __init__(self):
        self.sims: list[ChargerSimulator] = []
        self.drivers: list[ChargerDriver] = []

    async def charger(self, map_name: str = "hubcharge-mcs1200", connectors: int = 2, *, unit: int = 1, time_scale: float = 60.0, **driver_kw):
        """A simulator and a driver for it; connectors are named A, B, ..."""
        register_map = load_register_map(MAPS_DIR / f"{map_name}.toml")
        sim = ChargerSimulator(register_map, connectors, unit=unit, time_scale=time_scale)
        port = await sim.start()
        self.sims.append(sim)
        driver_kw.setdefault("timeout", 0.3)
        driver_kw.setdefault("reconnect_min", 0.05)
        driver_kw.setdefault("reconnect_max", 0.2)
        driver_kw.setdefault("unlock_confirm_s", 0.5)
        driver = ChargerDriver(
            f"charger-{len(self.drivers) + 1}",
            "127.0.0.1",
            port,
            unit,
            register_map,
            {chr(ord("A") + i): i for i in range(connectors)},
            **driver_kw,
        )
        self.drivers.append(driver)
        return sim, driver

    async def close(self):
        for driver in self.drivers:
            await driver.close()
        for sim in self.sims:
            await sim.stop()


@pytest.fixture
async def rig():
    rig = ChargerRig()
    yield rig
    await rig.close()
