"""Driver against the simulated charger over real Modbus TCP (R-H1)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.charger_modbus import ChargerUnavailable
from drivers.device import DeviceFault, DeviceRecovered
from drivers.register_map import HardwareStatus

pytestmark = pytest.mark.hil

MAPS_DIR = Path(__file__).resolve().parents[2] / "config" / "register-maps"
MAP_NAMES = ["hubcharge-mcs1200", "voltflow-ccs400"]


async def poll_until(driver, connector, predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        reading = (await driver.poll())[connector]
        if predicate(reading) or time.monotonic() > deadline:
            return reading
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("map_name", MAP_NAMES)
async def test_charging_session_plug_start_stop_unlock(rig, map_name):
    """Plug -> plugged; start -> charging with energy rising; stop -> finished;
    unlock confirmed from the lock state (R-C5)."""
    sim, driver = await rig.charger(map_name)
    assert (await driver.poll())["A"].status is HardwareStatus.UNPLUGGED
    assert driver.health.state == "ok"

    sim.plug(0, soc=30, battery_kwh=600, max_power_w=300_000)
    plugged = (await driver.poll())["A"]
    assert plugged.status is HardwareStatus.PLUGGED and plugged.soc == 30 and plugged.locked is False

    await driver.start("A")
    first = await poll_until(driver, "A", lambda r: r.status is HardwareStatus.CHARGING)
    assert first.status is HardwareStatus.CHARGING and first.locked is True
    second = await poll_until(driver, "A", lambda r: r.energy_wh > first.energy_wh + 500)
    assert second.energy_wh > first.energy_wh  # time_scale 60: ~5 kWh per real second
    assert second.power_w == 300_000
    assert sim.command_count(0, "start") == 1  # one start written, no second one

    await driver.stop("A")
    finished = (await driver.poll())["A"]
    assert finished.status is HardwareStatus.FINISHED and finished.power_w == 0
    assert finished.energy_wh >= second.energy_wh
    if map_name == "hubcharge-mcs1200":  # the model with signed meter values (R-S3)
        assert finished.signed_meter_value.startswith("OCMF|") and '"TX":"E"' in finished.signed_meter_value

    assert await driver.unlock("A") is True
    assert sim.connectors[0].locked is False
    sim.unplug(0)
    assert (await driver.poll())["A"].status is HardwareStatus.UNPLUGGED
    assert (await driver.poll())["B"].status is HardwareStatus.UNPLUGGED


async def test_stuck_lock_makes_unlock_return_false(rig):
    """R-C5: a failed unlock is reported (False) so the hub retries and reports."""
    sim, driver = await rig.charger("voltflow-ccs400")
    sim.plug(1)
    await driver.start("B")
    await driver.stop("B")
    sim.stuck_lock(1)
    started = time.monotonic()
    assert await driver.unlock("B") is False
    assert time.monotonic() - started < 1.5
    sim.stuck_lock(1, False)
    assert await driver.unlock("B") is True


async def test_power_limit_and_truck_pause(rig):
    sim, driver = await rig.charger("hubcharge-mcs1200")
    sim.plug(0, soc=20, max_power_w=1_000_000)
    await driver.start("A")
    await driver.set_power_limit("A", 150_000)
    r = await poll_until(driver, "A", lambda r: r.power_w == 150_000)
    assert r.power_w == 150_000 and r.power_limit_w == 150_000
    await driver.set_power_limit("A", 0)
    assert (await driver.poll())["A"].status is HardwareStatus.SUSPENDED_EVSE
    await driver.set_power_limit("A", 400_000)
    sim.pause_ev(0)
    assert (await driver.poll())["A"].status is HardwareStatus.SUSPENDED_EV
    sim.resume_ev(0)
    sim.full(0)
    assert (await driver.poll())["A"].status is HardwareStatus.FINISHED


@pytest.mark.parametrize("mode", ["no_answer", "refuse"])
async def test_silent_charger_faults_after_n_polls_and_recovers(rig, mode):
    """R-C6: lost contact -> fault after fault_after failed polls, each poll
    bounded by the timeout; contact back -> recovered by itself."""
    events = []
    sim, driver = await rig.charger("hubcharge-mcs1200", fault_after=3, emit=events.append)
    await driver.poll()
    await sim.silence(mode)
    for n in range(1, 4):
        started = time.monotonic()
        with pytest.raises(ChargerUnavailable) as err:
            await driver.poll()
        assert time.monotonic() - started < driver.timeout + 0.5
        assert "check" in str(err.value)
        assert driver.health.state == ("fault" if n == 3 else "ok")
        await asyncio.sleep(0.1)
    assert [type(e) for e in events] == [DeviceFault]
    with pytest.raises(ChargerUnavailable):
        await driver.poll()
    assert len(events) == 1  # still one fault event

    await sim.speak()
    recovered = False
    deadline = time.monotonic() + 3
    while not recovered and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        try:
            await driver.poll()
            recovered = True
        except ChargerUnavailable:
            pass
    assert recovered and driver.health.state == "ok"
    assert [type(e) for e in events] == [DeviceFault, DeviceRecovered]


async def test_silent_charger_does_not_slow_another(rig):
    """One dead charger is that charger's fault alone (R-C6): the other's poll
    takes its usual milliseconds while the silent one waits out its timeout."""
    silent_sim, silent = await rig.charger("hubcharge-mcs1200", timeout=1.0)
    _, healthy = await rig.charger("voltflow-ccs400", timeout=1.0)
    await silent.poll()
    await healthy.poll()
    await silent_sim.silence("no_answer")

    async def timed(coro):
        started = time.monotonic()
        try:
            await coro
        except ChargerUnavailable:
            pass
        return time.monotonic() - started

    silent_time, healthy_time = await asyncio.gather(timed(silent.poll()), timed(healthy.poll()))
    assert silent_time >= 0.9
    # Margin for a loaded CI machine; a shared client or lock would cost the full second.
    assert healthy_time < 0.5, f"healthy charger took {healthy_time:.3f} s next to a silent one"


async def test_exception_codes_and_slow_answers_are_survived(rig):
    sim, driver = await rig.charger("voltflow-ccs400", fault_after=3)
    await driver.poll()
    sim.fail_next(2, code=6)
    for _ in range(2):
        with pytest.raises(ChargerUnavailable, match="exception 6: device busy"):
            await driver.poll()
    assert driver.health.state == "ok"
    assert (await driver.poll())["A"].status is HardwareStatus.UNPLUGGED

    sim.fail_next(1, code=2)
    with pytest.raises(ChargerUnavailable, match="register map does not match"):
        await driver.start("A")

    sim.slow(0.1)  # slower than usual, within the timeout
    assert (await driver.poll())["A"].status is HardwareStatus.UNPLUGGED
    sim.slow(1.0)  # beyond it
    with pytest.raises(ChargerUnavailable, match="no answer"):
        await driver.poll()
    sim.slow(0)
    await asyncio.sleep(0.25)
    assert (await driver.poll())["B"].status is HardwareStatus.UNPLUGGED


async def test_garbage_status_reads_as_fault_not_crash(rig):
    sim, driver = await rig.charger("hubcharge-mcs1200")
    sim.plug(0)
    sim.garbage_status(0, 0xBEEF)
    reading = (await driver.poll())["A"]
    assert reading.status is HardwareStatus.FAULT and reading.raw_status == 0xBEEF
    assert "unknown status code" in reading.problem
    assert driver.health.state == "ok"  # the charger answers; only its value is wrong
    sim.garbage_status(0, None)
    assert (await driver.poll())["A"].status is HardwareStatus.PLUGGED


async def test_standalone_simulator_prints_its_port_and_serves(rig):
    """python -m simulators.charger, as the demo and rig builders run it."""
    from drivers.charger_modbus import ChargerDriver
    from drivers.register_map import load_register_map

    map_file = MAPS_DIR / "voltflow-ccs400.toml"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.charger", "--map", str(map_file), "--connectors", "2", "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        port = int(re.search(r"port=(\d+)", line).group(1))
        driver = ChargerDriver("standalone", "127.0.0.1", port, 1, load_register_map(map_file), {"A": 0, "B": 1}, timeout=1.0)
        rig.drivers.append(driver)
        readings = await driver.poll()
        assert readings["A"].status is HardwareStatus.UNPLUGGED and readings["A"].energy_wh > 0
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
