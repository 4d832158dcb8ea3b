"""Power rig for the hardware-in-the-loop tests: a simulated grid meter and
simulated chargers on real Modbus TCP sockets (127.0.0.1, free ports), the
meter reading what the chargers draw plus the site's other load, and the
drivers pointed at them."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from drivers.charger_modbus import ChargerDriver
from drivers.grid_meter import GridMeterDriver
from drivers.meter_map import load_meter_map
from drivers.register_map import load_register_map
from hil_tests.hub.conftest import DaemonUnderTest
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


# --------------------------------------------------------------------------
# The real daemon with site power: charger simulators and a grid meter
# simulator on real Modbus TCP, a real mosquitto, the cloud's signing key.

HUB = "HIL-01"  # the core daemon's test hub (hil_tests/hub/conftest.py)
COMMAND_KEY = bytes.fromhex("3c" * 32)
MAPS = ROOT / "config" / "register-maps"


class PowerDaemon(DaemonUnderTest):
    """The core HIL daemon (an MCS charger CH1 with C1 and C2, 1200 kW each,
    a CCS charger CH2 with C3, 400 kW; trucks start on plugging in) behind a
    1000 kW connection with a 50 kW margin and a 400 kW safe total: the
    trucks could draw 2.8 MW. Signed commands from the cloud's key."""

    needs_cloud = True

    def __init__(self, tmp: Path, ch1, ch2, meter, broker_url: str, key_file: Path, extra: str = ""):
        meter_map = ROOT / "config" / "meter-maps" / "sunspec-meter.toml"
        super().__init__(tmp, {"CH1": ch1, "CH2": ch2}, extra=f"""
[power]
grid_limit_kw = 1000
margin_kw = 50
fallback_kw = 400
min_kw = 20
stale_after_s = 2
confirm_within_s = 1.5
meter = {{ address = "127.0.0.1:{meter.port}", register_map = "{meter_map}", max_kw = 10000 }}
{extra}
""")
        self.config.write_text(f'[cloud]\nbroker = "{broker_url}"\ncommand_key_file = "{key_file}"\n'
                               + self.config.read_text())
        self.ch1, self.ch2, self.meter = ch1, ch2, meter

    def site_kw(self) -> float:
        return self.meter.site_w() / 1000

    async def power(self) -> dict:
        proc = await self.hubctl("--json", "power")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        import json

        return json.loads(proc.stdout)

    async def wait_power(self, predicate, timeout: float = 10.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.power()
            if predicate(last):
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"power never {what}: last {last}\n{self.log_tail(3000)}")


@pytest.fixture
async def power_site(tmp_path):
    """Start everything; yields (daemon, cloud client); stops it all."""
    from hil_tests.broker import Broker, CloudClient

    ch1 = ChargerSimulator(load_register_map(MAPS / "hubcharge-mcs1200.toml"), 2, ramp=Ramp())
    ch2 = ChargerSimulator(load_register_map(MAPS / "voltflow-ccs400.toml"), 1, ramp=Ramp())
    await ch1.start()
    await ch2.start()
    meter = GridMeterSimulator(load_meter_map(ROOT / "config" / "meter-maps" / "sunspec-meter.toml"),
                               draw_w=lambda: ch1.drawn_w() + ch2.drawn_w(),
                               base_load=BaseLoad(peak_kw=100, noise_kw=0.0, machines=0, seed=1))
    await meter.start()
    key_file = tmp_path / "command.key"
    key_file.write_text(COMMAND_KEY.hex() + "\n")
    os.chmod(key_file, 0o600)
    broker = Broker(tmp_path / "broker").start()
    cloud = CloudClient(broker.url, client_id="cloud-power-test", topics=(f"hub/{HUB}/#",)).start()
    d = PowerDaemon(tmp_path, ch1, ch2, meter, broker.url, key_file)
    d.start()
    try:
        await d.wait_ready()
        yield d, cloud
    finally:
        d.terminate()
        cloud.stop()
        broker.kill()
        for sim in (meter, ch1, ch2):
            await sim.stop()
