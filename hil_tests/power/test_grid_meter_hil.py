"""The grid meter driver against the simulated meter over real Modbus TCP
(R-H1, R-E1, R-E4), and the power control loop closed over real Modbus: meter
read, chargers polled and limited, a curtailment met in time (R-E2, R-E5)."""

from __future__ import annotations

import ast
import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drivers.device import DeviceFault, DeviceRecovered
from drivers.grid_meter import GridMeterDriver, MeterUnavailable
from drivers.meter_map import load_meter_map
from drivers.register_map import HardwareStatus
from edge.parts.power.control import ConnectorInput, MeterSample, PowerController, PowerSettings
from hil_tests.power.conftest import METER_MAPS, ROOT
from simulators.charger import Ramp

pytestmark = [pytest.mark.hil,
              pytest.mark.sim_only(reason="drives the meter simulator's side (site load, faults)", devices=["meter"])]


async def charging_truck(rig, kw: float = 300.0, ramp=None):
    sim, driver = await rig.charger(ramp=ramp)
    sim.plug(0, soc=20, battery_kwh=1000, max_power_w=kw * 1000)
    sim.local_command(0, "start")
    return sim, driver


@pytest.mark.parametrize("map_name", METER_MAPS)
async def test_reading_is_the_chargers_plus_the_sites_other_load(power_rig, map_name):
    charger, _ = await charging_truck(power_rig, 300.0)
    meter, driver = await power_rig.meter(map_name, noise_kw=0.0)
    reading = await driver.read()
    site_w = meter.site_w()
    assert reading.power_w == pytest.approx(site_w, abs=500)  # SunSpec: 100 W steps at this size
    assert reading.power_w > 300_000 and charger.drawn_w() == 300_000
    assert sum(reading.phase_power_w) == pytest.approx(reading.power_w, abs=1000)
    assert reading.energy_import_wh >= 150_000_000 and reading.ts.tzinfo is not None
    assert reading.unchanged_s == 0 and reading.values["frequency"] == pytest.approx(50, abs=0.05)
    assert driver.health.state == "ok"
    charger.plug(1, soc=20, battery_kwh=1000, max_power_w=200_000)
    charger.local_command(1, "start")
    more = await driver.read()
    assert more.power_w == pytest.approx(reading.power_w + 200_000, abs=2_000)


async def test_sunspec_chain_found_at_another_base_and_model(power_rig):
    _, driver = await power_rig.meter("sunspec-meter", sim_kw={"sunspec_base": 50000, "sunspec_model": 204})
    reading = await driver.read()
    assert reading.power_w > 0 and driver.health.detail["sunspec_model"] == 204
    assert reading.energy_export_wh is None  # acc32 0: not accumulated, so absent


async def test_a_meter_that_is_not_sunspec_is_named_so(power_rig):
    meter, _ = await power_rig.meter("carlo-gavazzi-em24-e1")
    sunspec = load_meter_map(ROOT / "config" / "meter-maps" / "sunspec-meter.toml")
    wrong = GridMeterDriver("wrong-map", "127.0.0.1", meter.port, 1, sunspec, timeout=0.3)
    power_rig.meter_drivers.append(wrong)
    with pytest.raises(MeterUnavailable, match="no SunSpec marker at 40000, 50000, 0"):
        await wrong.read()


async def test_r_e4_silent_meter_faults_with_a_sentence_and_recovers(power_rig):
    events = []
    meter, driver = await power_rig.meter(emit=events.append, fault_after=2)
    await driver.read()
    await meter.silence("no_answer")
    started = time.monotonic()
    with pytest.raises(MeterUnavailable, match=r"no answer .*\(check the meter's power, network and unit id 1"):
        await driver.read()
    assert time.monotonic() - started < 1.5  # bounded by the timeout, never a hang
    for _ in range(20):
        try:
            await driver.read()
        except MeterUnavailable:
            pass
        if events:
            break
        await asyncio.sleep(0.05)
    assert isinstance(events[0], DeviceFault) and events[0].device_class == "meter" and driver.health.state == "fault"
    await meter.speak()
    for _ in range(40):
        try:
            await driver.read()
            break
        except MeterUnavailable:
            await asyncio.sleep(0.05)
    assert isinstance(events[-1], DeviceRecovered) and driver.health.state == "ok"


async def test_a_closed_port_says_cannot_connect(power_rig):
    meter, driver = await power_rig.meter("carlo-gavazzi-em24-e1")
    await driver.read()
    await meter.silence("refuse")
    with pytest.raises(MeterUnavailable):
        await driver.read()
    await asyncio.sleep(0.25)
    with pytest.raises(MeterUnavailable, match="cannot connect to 127.0.0.1"):
        await driver.read()


@pytest.mark.parametrize("map_name", METER_MAPS)
async def test_r_e4_frozen_meter_reads_but_its_age_of_values_grows_and_the_controller_falls_back(power_rig, map_name):
    charger, _ = await charging_truck(power_rig, 300.0)
    meter, driver = await power_rig.meter(map_name)
    await driver.read()
    meter.freeze()
    first = await driver.read()
    charger.local_command(0, "stop")  # the site changes; the frozen meter does not show it
    await asyncio.sleep(0.6)
    later = await driver.read()
    assert later.power_w == first.power_w and later.unchanged_s >= 0.5
    ctl = PowerController(PowerSettings(2500, 50, 1500, frozen_after_s=0.5))
    step = ctl.step(later.ts, MeterSample(later.power_w / 1000, 0.1, later.unchanged_s), [], {})
    assert step.mode == "fallback" and "frozen" in step.events[0].data["message"]
    meter.freeze(False)
    await asyncio.sleep(0.05)
    assert (await driver.read()).unchanged_s == 0


@pytest.mark.parametrize("map_name", METER_MAPS)
async def test_r_e4_garbage_is_never_taken_for_a_reading(power_rig, map_name):
    meter, driver = await power_rig.meter(map_name)
    good = await driver.read()
    meter.garbage()
    for _ in range(5):  # random registers: every one refused, none believed
        with pytest.raises(MeterUnavailable, match="disagree|do not hold a reading|not available|beyond|no grid's"):
            await driver.read()
    meter.garbage(False)
    assert (await driver.read()).power_w == pytest.approx(good.power_w, abs=5_000)


async def test_an_optional_register_the_meter_refuses_is_left_out(power_rig, caplog):
    _, driver = await power_rig.meter("carlo-gavazzi-em24-e1", sim_kw={"refuse": ("energy_export",)})
    first = await driver.read()
    second = await driver.read()
    assert first.energy_export_wh is None and second.power_w > 0 and first.energy_import_wh > 0
    assert sum("meter_reading_absent" in r.getMessage() for r in caplog.records) == 1  # said once, not every second


def test_the_driver_imports_nothing_of_the_hub():
    root = Path(__file__).resolve().parents[2]
    for module in ("drivers/grid_meter.py", "drivers/meter_map.py", "simulators/grid_meter.py"):
        tree = ast.parse((root / module).read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
                [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n and n.split(".")[0] == "edge"], module


# --------------------------------------------------------------------------
# The loop closed over real Modbus: what the power part will do, in a test.


class Site:
    """Reads the meter, polls the chargers, steps the controller and writes
    its commands in order, as fast as the test asks."""

    def __init__(self, rig, controller: PowerController, min_kw=100.0, rated_kw=1200.0):
        self.rig, self.ctl = rig, controller
        self.meter = rig.meter_drivers[0]
        self.min_kw, self.rated_kw = min_kw, rated_kw
        self.confirmed: dict[str, float] = {}
        self.written: list[tuple[float, str, float, bool]] = []  # (monotonic, connector, kW, lowering)
        self.site_kw: list[tuple[float, float]] = []

    async def step(self):
        reading = await self.meter.read()
        self.site_kw.append((time.monotonic(), reading.power_w / 1000))
        connectors, owner = [], {}
        for driver in self.rig.charger_drivers:
            for cid, r in (await driver.poll()).items():
                owner[cid] = driver
                session = f"s-{cid}" if r.status in (HardwareStatus.CHARGING, HardwareStatus.SUSPENDED_EV,
                                                     HardwareStatus.SUSPENDED_EVSE) else None
                connectors.append(ConnectorInput(cid, session, min_kw=self.min_kw, rated_kw=self.rated_kw,
                                                 measured_kw=r.power_w / 1000))
        result = self.ctl.step(datetime.now(timezone.utc), MeterSample(reading.power_w / 1000, 0.05), connectors,
                               self.confirmed)
        for cmd in result.commands:
            await owner[cmd.connector_id].set_power_limit(cmd.connector_id, round(cmd.kw * 1000))
            self.confirmed[cmd.connector_id] = cmd.kw
            self.written.append((time.monotonic(), cmd.connector_id, cmd.kw, cmd.lowering))
        return result

    async def run(self, seconds: float, every: float = 0.25):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.step()
            await asyncio.sleep(every)


@pytest.mark.sim_only(reason="drives the meter and charger simulators", devices=["meter", "charger"])
async def test_r_e2_r_e5_a_curtailment_is_told_within_1_s_and_met_within_5_s_over_modbus(power_rig):
    sim, _ = await power_rig.charger(connectors=2, ramp=Ramp(up_w_per_s=300_000))
    for i in (0, 1):
        sim.plug(i, soc=20, battery_kwh=1000, max_power_w=1_000_000)
        sim.local_command(i, "start")
    await power_rig.meter("sunspec-meter", base_kw=100.0)
    site = Site(power_rig, PowerController(PowerSettings(2500, 50, 1500, stale_after_s=3)))
    await site.run(6)
    assert min(c.power_w for c in sim.connectors) > 500_000  # both ramped up under control
    assert max(kw for _, kw in site.site_kw) <= 2500
    new_limit = 900.0
    site.ctl.set_limit(new_limit, datetime.now(timezone.utc) + timedelta(minutes=5), datetime.now(timezone.utc))
    t0 = time.monotonic()
    await site.step()  # at once on a limit change
    lowered = {cid: t - t0 for t, cid, kw, low in site.written if t >= t0 and low}
    assert set(lowered) == {"C1A", "C1B"} and max(lowered.values()) <= 1.0
    await site.run(5)
    under = next(t - t0 for t, kw in site.site_kw if t > t0 and kw <= new_limit)
    assert under <= 5.0
    assert all(kw <= new_limit for t, kw in site.site_kw if t > t0 + 5.0)
