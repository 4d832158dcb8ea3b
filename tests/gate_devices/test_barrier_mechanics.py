"""The simulated barrier's own logic, and the driver's pure parts (no sockets)."""

from __future__ import annotations

import inspect

import pytest

from drivers.barrier import BarrierDriver, BarrierInputs, BarrierIoMap, next_backoff
from simulators.barrier import BarrierMechanics, SimWiring


def run_until(m: BarrierMechanics, t0: float, t1: float, step: float = 0.05) -> float:
    t = t0
    while t < t1:
        t = round(t + step, 6)
        m.step(t)
    return t


def test_open_impulse_raises_the_boom_through_the_middle():
    m = BarrierMechanics(travel_s=1.0, dwell_s=2.0)
    m.set_open_input(True, 0.0)
    m.set_open_input(False, 0.5)
    assert not m.is_closed and not m.is_open  # neither switch made mid-travel
    run_until(m, 0.5, 1.1)
    assert m.is_open


def test_boom_closes_by_itself_after_dwell_once_the_loop_is_clear():
    m = BarrierMechanics(travel_s=1.0, dwell_s=2.0)
    m.open_impulse(0.0)
    run_until(m, 0.0, 2.9)
    assert m.is_open  # opened at 1.0, dwell until 3.0
    run_until(m, 2.9, 4.2)
    assert m.is_closed


def test_boom_stays_open_while_a_vehicle_is_on_the_loop():
    """R-G5: closing is the barrier's own; it never closes on a present vehicle."""
    m = BarrierMechanics(travel_s=1.0, dwell_s=1.0)
    m.open_impulse(0.0)
    m.set_presence(True, 0.5)
    run_until(m, 0.5, 10.0)
    assert m.is_open
    m.set_presence(False, 10.0)
    run_until(m, 10.0, 10.9)
    assert m.is_open
    run_until(m, 10.9, 12.5)
    assert m.is_closed


def test_presence_during_closing_reverses_the_boom():
    m = BarrierMechanics(travel_s=1.0, dwell_s=0.5)
    m.open_impulse(0.0)
    run_until(m, 0.0, 1.8)  # open at 1.0, closing from 1.5
    assert m.motion < 0
    m.set_presence(True, 1.8)
    run_until(m, 1.8, 3.0)
    assert m.is_open


def test_hold_open_keeps_it_up_and_release_lets_it_close():
    m = BarrierMechanics(travel_s=1.0, dwell_s=1.0)
    m.set_hold(True, 0.0)
    run_until(m, 0.0, 20.0)
    assert m.is_open
    m.set_hold(False, 20.0)
    run_until(m, 20.0, 22.5)
    assert m.is_closed


def test_stuck_boom_ignores_open():
    m = BarrierMechanics(travel_s=1.0, dwell_s=1.0)
    m.stuck = True
    m.open_impulse(0.0)
    run_until(m, 0.0, 3.0)
    assert m.is_closed


def test_close_input_refused_with_a_vehicle_present():
    m = BarrierMechanics(travel_s=1.0, dwell_s=10.0)
    m.open_impulse(0.0)
    run_until(m, 0.0, 1.5)
    m.set_presence(True, 1.5)
    assert m.close_command(1.6) is False
    run_until(m, 1.6, 3.0)
    assert m.is_open


def test_driver_has_no_close_command():
    """R-G5: software never commands a close; the driver offers no way to."""
    public = {name for name, _ in inspect.getmembers(BarrierDriver) if not name.startswith("_")}
    assert not {n for n in public if "close" in n.lower() and n != "close"}
    # ``close`` exists only to end the Modbus connection; it writes nothing.
    source = inspect.getsource(BarrierDriver.close)
    assert "write" not in source
    assert {"pulse_open", "hold_open", "release", "read", "run"} <= public


def test_default_io_map_matches_the_simulated_module_wiring():
    io, wiring = BarrierIoMap(), SimWiring()
    assert (io.open_coil, io.hold_open_coil) == (wiring.open_coil, wiring.hold_open_coil)
    assert (io.presence_input, io.open_input, io.closed_input) == (
        wiring.presence_input, wiring.open_input, wiring.closed_input)


@pytest.mark.parametrize(
    "bad", [{"open_coil": 3, "hold_open_coil": 3}, {"presence_input": 1}, {"closed_input": 70000}, {"open_input": 500}]
)
def test_io_map_refuses_impossible_wiring(bad):
    with pytest.raises(ValueError, match="io_map"):
        BarrierIoMap.from_dict(bad)


@pytest.mark.parametrize(
    "inputs, position",
    [((False, True, False), "open"), ((False, False, True), "closed"), ((True, False, False), "moving"),
     ((False, True, True), "unknown")],
)
def test_position_from_end_switches(inputs, position):
    assert BarrierInputs(*inputs).position == position


def test_reconnect_backoff_doubles_up_to_the_cap():
    delays, d = [], 0.0
    for _ in range(8):
        d = next_backoff(d, first=0.5, cap=10.0)
        delays.append(d)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
