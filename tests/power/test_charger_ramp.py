"""The simulated charger follows its power limit along a ramp and a truck's
taper (R-H1; the physics the power control is tested against): a lowered
limit is met within the 5 s IEC 61851-1 gives a vehicle, energy is the area
under the ramp, and a truck whose pack starts tapering earlier takes less."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.register_map import HardwareStatus, load_register_map
from simulators.charger import ChargerSimulator, Ramp, follow, taper

MCS = load_register_map(Path(__file__).resolve().parents[2] / "config" / "register-maps" / "hubcharge-mcs1200.toml")


def charging(ramp=Ramp(), **plug) -> ChargerSimulator:
    sim = ChargerSimulator(MCS, 2, time_scale=0.0, ramp=ramp)
    sim.plug(0, **{"soc": 20, "battery_kwh": 1000, "max_power_w": 1_000_000, **plug})
    sim.local_command(0, "start")
    return sim


def test_follow_is_a_straight_ramp_with_its_area_as_energy():
    ramp = Ramp(up_w_per_s=100_000, down_w_per_s=500_000)
    assert follow(0, 1_000_000, 4, ramp) == (400_000, pytest.approx(400_000 * 4 / 2 / 3600))
    power, wh = follow(1_000_000, 0, 4, ramp)  # reaches 0 after 2 s, then nothing
    assert power == 0 and wh == pytest.approx(1_000_000 * 2 / 2 / 3600)
    power, wh = follow(100_000, 300_000, 10, ramp)  # 2 s up, 8 s flat
    assert power == 300_000 and wh == pytest.approx((200_000 * 2 + 300_000 * 8) / 3600)
    assert follow(5, 7, 3, None) == (7, pytest.approx(7 * 3 / 3600))  # no ramp: at once
    with pytest.raises(ValueError, match="positive"):
        Ramp(up_w_per_s=0)


def test_a_started_truck_ramps_up_instead_of_jumping():
    sim = charging()
    sim.advance(1)
    assert sim.connectors[0].power_w == pytest.approx(100_000)
    sim.advance(20)
    assert sim.connectors[0].power_w == pytest.approx(1_000_000)


def test_a_lowered_limit_is_met_within_five_seconds_and_a_raise_is_slower():
    sim = charging()
    sim.advance(30)
    sim.local_command(0, "power_limit", 200_000)
    sim.advance(0.5)
    assert 200_000 < sim.drawn_w() < 1_000_000  # on its way down, not there at once
    sim.advance(1.5)
    assert sim.drawn_w() == pytest.approx(200_000)  # 800 kW down at 600 kW/s: within 2 s, inside 5 s
    sim.local_command(0, "power_limit", 1_200_000)
    sim.advance(2)
    assert sim.drawn_w() == pytest.approx(400_000)
    sim.local_command(0, "power_limit", 0)
    sim.advance(5)
    assert sim.drawn_w() == 0 and sim.status(0) is HardwareStatus.SUSPENDED_EVSE


def test_energy_is_the_area_under_the_ramp():
    sim = charging()
    before = sim.connectors[0].energy_wh
    sim.advance(60)  # 10 s ramp to 1 MW, then 50 s flat
    assert sim.connectors[0].energy_wh - before == pytest.approx((1_000_000 * 10 / 2 + 1_000_000 * 50) / 3600, rel=1e-6)


def test_stop_ends_power_at_once_and_drawn_w_sums_the_connectors():
    sim = charging()
    sim.plug(1, soc=50, max_power_w=300_000)
    sim.local_command(1, "start")
    sim.advance(30)
    assert sim.drawn_w() == pytest.approx(1_300_000)
    sim.local_command(0, "stop")
    assert sim.drawn_w() == pytest.approx(300_000)  # contactors open: no ramp on a stop


def test_a_truck_whose_pack_tapers_earlier_takes_less():
    assert taper(70, knee=60) < taper(70) == 1.0
    assert taper(100, knee=60) == pytest.approx(0.15)
    early, late = charging(soc=65, taper_from=60), charging(soc=65)
    early.advance(30)
    late.advance(30)
    assert early.drawn_w() < late.drawn_w() == pytest.approx(1_000_000)
