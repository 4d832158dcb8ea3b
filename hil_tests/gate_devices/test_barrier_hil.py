"""Barrier driver vs the barrier simulator over Modbus TCP on 127.0.0.1.

Every test here also checks, at fixture teardown, that the simulator saw no
close command (R-G5)."""

from __future__ import annotations

import asyncio

import pytest

from drivers.barrier import BarrierPosition, BarrierUnavailable, VehiclePresent
from drivers.device import DeviceFault, DeviceRecovered, cancel_and_wait

pytestmark = pytest.mark.hil


def positions(rig) -> list[str]:
    return [e.position for e in rig.of(BarrierPosition)]


async def test_pulse_opens_and_the_barrier_closes_by_itself(barrier_rig):
    """R-G5: software pulses OPEN; closing is the barrier's own."""
    rig = barrier_rig
    await rig.wait_for(lambda: positions(rig) == ["closed"])
    await rig.driver.pulse_open()
    assert await rig.driver.open_confirmation is True
    await rig.wait_for(lambda: positions(rig)[-1:] == ["closed"] and "open" in positions(rig))
    seen = positions(rig)
    assert seen[:3] == ["closed", "moving", "open"]
    coils = [(c.coil, c.value) for c in rig.sim.commands]
    # The connection first puts both outputs at rest, then the impulse.
    assert coils == [("open", False), ("hold_open", False), ("open", True), ("open", False)]
    assert rig.of(DeviceFault) == [] and rig.of(DeviceRecovered) == []
    assert rig.driver.health.state == "ok"


async def test_presence_changes_are_emitted(barrier_rig):
    rig = barrier_rig
    await rig.wait_for(lambda: rig.of(VehiclePresent))
    rig.sim.vehicle_arrives()
    await rig.wait_for(lambda: rig.of(VehiclePresent)[-1].present is True)
    rig.sim.vehicle_leaves()
    await rig.wait_for(lambda: rig.of(VehiclePresent)[-1].present is False)
    assert [e.present for e in rig.of(VehiclePresent)] == [False, True, False]
    assert all(e.gate_id == "gate-in" for e in rig.events)


async def test_barrier_stays_open_while_the_vehicle_is_on_the_loop(barrier_rig):
    rig = barrier_rig
    rig.sim.vehicle_arrives()
    await rig.driver.pulse_open()
    assert await rig.driver.open_confirmation
    await asyncio.sleep(1.0)  # well past travel + dwell
    assert rig.sim.position == "open"
    rig.sim.vehicle_leaves()
    await rig.wait_for(lambda: rig.sim.position == "closed")


async def test_hold_open_keeps_it_open_after_the_loop_clears_and_release_lets_it_close(barrier_rig):
    rig = barrier_rig
    await rig.driver.hold_open()
    assert await rig.driver.open_confirmation
    rig.sim.vehicle_arrives()
    await asyncio.sleep(0.1)
    rig.sim.vehicle_leaves()
    await asyncio.sleep(1.0)  # more than twice the dwell
    assert rig.sim.position == "open"
    await rig.driver.release()
    await rig.wait_for(lambda: positions(rig)[-1:] == ["closed"])
    assert ("hold_open", False) in [(c.coil, c.value) for c in rig.sim.commands]


async def test_stuck_barrier_is_a_fault_of_that_gate_and_recovers_when_it_opens(barrier_rig):
    rig = barrier_rig
    rig.sim.stuck()
    await rig.driver.pulse_open()
    assert await rig.driver.open_confirmation is False
    faults = rig.of(DeviceFault)
    assert len(faults) == 1
    assert (faults[0].device_id, faults[0].device_class) == ("gate-in", "barrier")
    assert "open position" in faults[0].reason and "check" in faults[0].reason
    assert rig.driver.health.state == "fault"
    rig.sim.stuck(False)
    await rig.driver.pulse_open()
    assert await rig.driver.open_confirmation is True
    assert len(rig.of(DeviceRecovered)) == 1
    assert rig.driver.health.state == "ok"


async def test_silent_io_module_is_a_fault_and_never_stalls_the_caller(barrier_rig):
    rig = barrier_rig
    await rig.wait_for(lambda: positions(rig) == ["closed"])
    rig.sim.silence()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BarrierUnavailable) as info:
        await rig.driver.pulse_open()
    assert loop.time() - started < 2.0  # bounded by the request timeout
    assert "check" in info.value.reason
    await rig.wait_for(lambda: rig.of(DeviceFault))
    await rig.wait_for(lambda: positions(rig)[-1] == "unknown")
    # While it stays silent, further commands fail fast instead of queueing.
    started = loop.time()
    with pytest.raises(BarrierUnavailable):
        await rig.driver.hold_open()
    assert loop.time() - started < 1.0
    rig.sim.silence(False)
    await rig.wait_for(lambda: rig.of(DeviceRecovered), timeout=5.0)
    assert len(rig.of(DeviceFault)) == 1  # one fault per outage, not one per poll
    # The OPEN write that timed out may still land on the module: the driver
    # ends that impulse and drops the failed hold once the link is back, so
    # the barrier is not left held open by a command nobody saw succeed.
    await rig.wait_for(lambda: not rig.sim.mechanics.open_input_level and not rig.sim.mechanics.hold, timeout=3.0)
    await rig.wait_for(lambda: rig.sim.position == "closed", timeout=3.0)
    assert rig.driver.hold_wanted is False


async def test_unreachable_module_reports_a_fault_and_run_keeps_going(barrier_rig):
    rig = barrier_rig
    await rig.sim.stop()
    await rig.wait_for(lambda: rig.of(DeviceFault), timeout=5.0)
    assert "barrier I/O module" in rig.of(DeviceFault)[0].reason
    with pytest.raises(BarrierUnavailable):
        await asyncio.wait_for(rig.driver.read(), 2.0)


async def _left_on_by_a_dead_daemon(sim, *coils: int) -> None:
    """What a daemon SIGKILLed during a pulse or a hold leaves on the module."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port)
    await client.connect()
    for address in coils:
        await client.write_coil(address, True, device_id=1)
    client.close()


async def _driver(sim, events: list, **kw):
    from drivers.barrier import BarrierDriver

    driver = BarrierDriver("gate-out", "127.0.0.1", sim.port, 1, None, events.append, open_confirm_s=1.0, pulse_ms=100,
                           poll_interval_s=0.05, request_timeout_s=0.3, backoff_cap_s=0.5, **kw)
    return driver, asyncio.get_running_loop().create_task(driver.run())


async def _until(predicate, timeout: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.parametrize("module_away_at_start", [False, True], ids=["at_start", "on_reconnection"])
async def test_r_g5_an_open_impulse_left_on_by_a_dead_daemon_is_ended_and_the_barrier_closes_by_itself(module_away_at_start):
    """The daemon was SIGKILLed during a pulse: the OPEN relay stays on and
    the barrier stays open for good. The next driver puts it at rest on its
    first connection, or, when the I/O module cannot be reached at the start
    (its network is down, its relays stay as they were), as soon as it is
    reached again; a hold nobody keeps is dropped too. The barrier then
    closes by itself, not onto the vehicle on its loop (R-G5, R-G6), and
    software never writes a close."""
    from simulators.barrier import BarrierSimulator

    sim = BarrierSimulator(travel_s=0.3, dwell_s=0.4, tick_s=0.02)
    await sim.start()
    await _left_on_by_a_dead_daemon(sim, 0, 1)
    assert sim.mechanics.open_input_level and sim.mechanics.hold
    assert await _until(lambda: sim.position == "open")
    sim.vehicle_arrives()  # the truck let out is still under the boom
    if module_away_at_start:
        await sim.stop()  # the module keeps its relays (sim.mechanics); nothing reaches it
    events: list = []
    driver, poll = await _driver(sim, events)
    try:
        if module_away_at_start:
            assert await _until(lambda: driver.health.state == "fault")
            await asyncio.sleep(0.5)
            assert sim.mechanics.open_input_level
            await sim.start()  # reached again, on the same port
        assert await _until(lambda: not sim.mechanics.open_input_level and not sim.mechanics.hold)
        await asyncio.sleep(1.0)  # more than twice the dwell
        assert sim.position == "open", "the barrier closed onto the truck on its loop"
        sim.vehicle_leaves()
        assert await _until(lambda: sim.position == "closed")
        assert sim.close_commands == []
    finally:
        await cancel_and_wait([poll])
        await driver.close()
        await sim.stop()


async def test_r_g5_a_hold_the_hub_keeps_is_applied_on_connection_and_an_impulse_left_on_ended():
    """A technician's hold-open the hub kept across the restart (the driver
    starts with ``hold_open=True``) is in force on the module from the
    first connection, while the OPEN impulse left on is ended."""
    from simulators.barrier import BarrierSimulator

    sim = BarrierSimulator(travel_s=0.3, dwell_s=0.4, tick_s=0.02)
    await sim.start()
    await _left_on_by_a_dead_daemon(sim, 0)
    events: list = []
    driver, poll = await _driver(sim, events, hold_open=True)
    try:
        assert await _until(lambda: not sim.mechanics.open_input_level and sim.mechanics.hold)
        assert driver.hold_wanted
        await asyncio.sleep(1.0)
        assert sim.position == "open"
        await driver.release()
        assert await _until(lambda: sim.position == "closed")
    finally:
        await cancel_and_wait([poll])
        await driver.close()
        await sim.stop()
