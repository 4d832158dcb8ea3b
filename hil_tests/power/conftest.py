"""Power rig for the hardware-in-the-loop tests: a simulated grid meter and
simulated chargers on real Modbus TCP sockets (127.0.0.1, free ports), the
meter reading what the chargers draw plus the site's other load, and the
drivers pointed at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.charger_modbus import ChargerDriver
from drivers.grid_meter import GridMeterDriver
from drivers.meter_map import load_meter_map
from drivers.register_map import load_register_map
from simulators.charger import ChargerSimulator, Ramp
from simulators.grid_meter import BaseLoad, GridMeterSimulator

ROOT = Path(__file__).resolve().parents[2]
METER_MAPS = ["sunspec-meter", "carlo-gavazzi-em24-e1"]


class PowerRig:
    def __init__(self):
        self.chargers: list[ChargerSimulator] = []
        self.charger_drivers: list[ChargerDriver] = []
        self.meters: list[GridMeterSimulator] = []
        self.meter_drivers: list[GridMeterDriver] = []

    def drawn_w(self) -> float:
        return sum(sim.drawn_w() for sim in self.chargers)

    async def meter(self, map_name: str = "sunspec-meter", *, base_kw: float = 150.0, noise_kw: float = 2.0,
                    sim_kw: dict | None = None, **driver_kw):
        meter_map = load_meter_map(ROOT / "config" / "meter-maps" / f"{map_name}.toml")
        sim = GridMeterSimulator(meter_map, draw_w=self.drawn_w,
                                 base_load=BaseLoad(peak_kw=base_kw, noise_kw=noise_kw, machines=0, seed=1),
                                 **(sim_kw or {}))
        port = await sim.start()
        self.meters.append(sim)
        driver_kw.setdefault("timeout", 0.3)
        driver_kw.setdefault("reconnect_min", 0.05)
        driver_kw.setdefault("reconnect_max", 0.2)
        driver_kw.setdefault("max_power_w", 10_000_000)  # the meter's range, as a hub's config gives it
        driver = GridMeterDriver(f"meter-{len(self.meter_drivers) + 1}", "127.0.0.1", port, 1, meter_map, **driver_kw)
        self.meter_drivers.append(driver)
        return sim, driver

    async def charger(self, map_name: str = "hubcharge-mcs1200", connectors: int = 2, *, ramp: Ramp | None = Ramp()):
        register_map = load_register_map(ROOT / "config" / "register-maps" / f"{map_name}.toml")
        sim = ChargerSimulator(register_map, connectors, ramp=ramp)
        port = await sim.start()
        self.chargers.append(sim)
        driver = ChargerDriver(f"charger-{len(self.charger_drivers) + 1}", "127.0.0.1", port, 1, register_map,
                               {f"C{len(self.charger_drivers) + 1}{chr(ord('A') + i)}": i for i in range(connectors)},
                               timeout=0.3, reconnect_min=0.05, reconnect_max=0.2)
        self.charger_drivers.append(driver)
        return sim, driver

    async def close(self):
        for driver in self.meter_drivers + self.charger_drivers:
            await driver.close()
        for sim in self.meters + self.chargers:
            await sim.stop()


@pytest.fixture
async def power_rig():
    rig = PowerRig()
    yield rig
    await rig.close()
