"""The simulated charger's truck model, without sockets (R-H1): energy is
monotonic and consistent with power over time, the power curve tapers with
state of charge, and commands follow what a real charger allows."""

from __future__ import annotations

import pytest

from drivers.register_map import HardwareStatus, load_register_map
from simulators.charger import ChargerSimulator, SimulatorError, taper


@pytest.fixture
def sim(map_paths):
    return ChargerSimulator(load_register_map(map_paths["hubcharge-mcs1200"]), 2, time_scale=0.0)


def test_taper_is_flat_then_falls():
    assert taper(10) == taper(79) == 1.0
    assert taper(90) < taper(85) < 1.0
    assert taper(100) == pytest.approx(0.15)


def test_energy_follows_power_over_time(sim):
    sim.plug(0, soc=20, battery_kwh=600, max_power_w=500_000)
    sim.local_command(0, "start")
    before = sim.connectors[0].energy_wh
    sim.advance(360)  # six minutes at a flat 500 kW
    assert sim.connectors[0].energy_wh - before == pytest.approx(50_000, rel=1e-6)
    assert sim.connectors[0].power_w == 500_000
    assert sim.connectors[0].truck.soc == pytest.approx(20 + 50 / 6)


def test_power_limit_caps_and_zero_suspends(sim):
    sim.plug(0, soc=20, max_power_w=1_000_000)
    sim.local_command(0, "start")
    sim.local_command(0, "power_limit", 200_000)
    sim.advance(10)
    assert sim.connectors[0].power_w == 200_000
    sim.local_command(0, "power_limit", 0)
    assert sim.status(0) is HardwareStatus.SUSPENDED_EVSE


def test_charging_to_full_tapers_and_finishes_monotonically(sim):
    sim.plug(1, soc=70, battery_kwh=400, max_power_w=1_200_000)
    sim.local_command(1, "start")
    energies, powers = [], []
    while sim.status(1) is HardwareStatus.CHARGING:
        sim.advance(30)
        energies.append(sim.connectors[1].energy_wh)
        powers.append(sim.connectors[1].power_w)
    assert sim.status(1) is HardwareStatus.FINISHED
    assert energies == sorted(energies)
    assert max(powers) == 1_200_000 and min(p for p in powers if p) < 1_200_000
    assert sim.connectors[1].energy_wh - sim.connectors[1].session_start_wh == pytest.approx(120_000, rel=1e-6)


def test_truck_pause_and_full(sim):
    sim.plug(0, soc=50)
    sim.local_command(0, "start")
    sim.pause_ev(0)
    e = sim.connectors[0].energy_wh
    sim.advance(600)
    assert sim.status(0) is HardwareStatus.SUSPENDED_EV and sim.connectors[0].energy_wh == e
    sim.resume_ev(0)
    assert sim.status(0) is HardwareStatus.CHARGING
    sim.full(0)
    assert sim.status(0) is HardwareStatus.FINISHED


def test_start_only_when_plugged_and_unlock_not_under_load(sim):
    """R-C5 groundwork: the lock holds while charging and after stop, until unlocked."""
    sim.local_command(0, "start")
    assert sim.command_count(0, "start", accepted=False, source="local") == 1
    sim.plug(0)
    sim.local_command(0, "start")
    sim.local_command(0, "unlock")
    assert sim.connectors[0].locked
    with pytest.raises(SimulatorError, match="locked"):
        sim.unplug(0)
    sim.local_command(0, "stop")
    assert sim.status(0) is HardwareStatus.FINISHED and sim.connectors[0].locked
    sim.stuck_lock(0)
    sim.local_command(0, "unlock")
    assert sim.connectors[0].locked
    sim.stuck_lock(0, False)
    sim.local_command(0, "unlock")
    sim.unplug(0)
    assert sim.status(0) is HardwareStatus.UNPLUGGED


def test_signed_meter_values_at_begin_and_end(sim):
    sim.plug(0)
    sim.local_command(0, "start")
    assert sim.connectors[0].ocmf.startswith("OCMF|") and '"TX":"B"' in sim.connectors[0].ocmf
    sim.local_command(0, "stop")
    assert '"TX":"E"' in sim.connectors[0].ocmf
    assert len(sim.connectors[0].ocmf) <= 400  # fits the map's 200-register string
