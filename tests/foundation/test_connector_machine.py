"""Connector state machine (R-C1, R-C5, R-C6, R-C7, R-C9): every transition
from the hardware, and the races."""

import itertools

import pytest
from transitions import MachineError

from state_machines.connector import (
    ACTIVE,
    STATES,
    TRANSITIONS,
    Connector,
    apply_hardware,
    build_machine,
    hardware_trigger,
)

HW = ["unplugged", "plugged", "charging", "suspended_ev", "suspended_evse", "finished", "fault"]


def make(state="Available", **kw) -> Connector:
    c = Connector("C1", **kw)
    build_machine(c, state)
    return c


def test_r_c1_states_are_the_ocpp_connector_statuses():
    assert STATES == [
        "Available", "Reserved", "Preparing", "Charging", "SuspendedEV",
        "SuspendedEVSE", "Finishing", "Unavailable", "Faulted",
    ]


def test_r_c1_plug_charge_stop_unplug_walks_the_normal_path():
    c = make()
    assert apply_hardware(c, "plugged").after == "Preparing"
    # Plugged but not authorised: stays Preparing however long it waits (R-C2).
    assert apply_hardware(c, "plugged").trigger is None
    c.session_id = "s1"
    step = apply_hardware(c, "charging")
    assert (step.after, step.energy_started) == ("Charging", True)
    assert apply_hardware(c, "suspended_ev").after == "SuspendedEV"
    assert apply_hardware(c, "charging").after == "Charging"
    assert apply_hardware(c, "suspended_evse").after == "SuspendedEVSE"
    step = apply_hardware(c, "finished")
    assert (step.after, step.session_ended) == ("Finishing", True)
    assert apply_hardware(c, "unplugged").after == "Available"
    assert c.history == ["Preparing", "Charging", "SuspendedEV", "Charging", "SuspendedEVSE", "Finishing", "Available"]


def test_r_c2_energy_without_a_session_does_not_leave_preparing():
    c = make("Preparing", hw="plugged")
    assert hardware_trigger(c, "charging") is None


@pytest.mark.parametrize("state", ["Preparing", *ACTIVE, "Finishing"])
def test_unplug_in_every_plugged_state_returns_to_available(state):
    c = make(state, hw="plugged", session_id="s1" if state in ACTIVE else None)
    step = apply_hardware(c, "unplugged")
    assert step.after == "Available"
    assert step.session_ended == (state in ACTIVE)


def test_r_b3_unplug_on_a_reserved_connector_goes_back_to_reserved():
    c = make("Preparing", hw="plugged", reserved_for="BK-1")
    assert apply_hardware(c, "unplugged").after == "Reserved"


def test_race_unplug_during_start_leaves_no_session_running():
    """Start sent (session 'starting'), the truck unplugs before energy flows."""
    c = make("Preparing", hw="plugged", session_id="s1")
    step = apply_hardware(c, "unplugged")
    assert step.after == "Available"
    assert not step.session_ended  # it never charged: the core records a failed start


def test_race_stop_during_suspend_ends_in_finishing():
    c = make("SuspendedEV", hw="suspended_ev", session_id="s1")
    step = apply_hardware(c, "finished")
    assert (step.after, step.session_ended) == ("Finishing", True)


def test_race_fault_during_finishing_recovers_to_finishing_or_available():
    c = make("Finishing", hw="finished", last_session_id="s1")
    assert apply_hardware(c, "fault").after == "Faulted"
    assert apply_hardware(c, "finished").after == "Finishing"
    c2 = make("Finishing", hw="finished", last_session_id="s1")
    apply_hardware(c2, "fault")
    assert apply_hardware(c2, "unplugged").after == "Available"


def test_r_c6_recovery_rederives_the_state_from_the_hardware():
    cases = {
        ("charging", True): "Charging",
        ("suspended_ev", True): "SuspendedEV",
        ("suspended_evse", True): "SuspendedEVSE",
        ("finished", False): "Finishing",
        ("plugged", False): "Preparing",
        ("unplugged", False): "Available",
    }
    for (hw, session), expected in cases.items():
        c = make("Faulted", session_id="s1" if session else None)
        assert apply_hardware(c, hw).after == expected, hw


def test_r_c6_recovery_keeps_a_technicians_unavailable():
    c = make("Faulted", admin_unavailable="technician: cable")
    assert apply_hardware(c, "unplugged").after == "Unavailable"


def test_r_c6_recovery_keeps_a_reservation():
    c = make("Faulted", reserved_for="BK-9")
    assert apply_hardware(c, "unplugged").after == "Reserved"


def test_r_c6_a_fault_still_reported_keeps_the_connector_faulted():
    c = make("Faulted")
    assert apply_hardware(c, "fault").trigger is None


def test_r_c7_unavailable_and_back_follows_the_plug():
    c = make("Available")
    c.trigger("take_out_of_service")
    assert c.state == "Unavailable"
    # Hardware changes while out of service do not move it.
    assert apply_hardware(c, "plugged").trigger is None
    c.trigger("return_to_service")
    assert c.state == "Preparing"
    c2 = make("Unavailable", hw="unplugged")
    c2.trigger("return_to_service")
    assert c2.state == "Available"


def test_r_c7_a_charging_connector_cannot_be_taken_out_of_service_directly():
    c = make("Charging", hw="charging", session_id="s1")
    with pytest.raises(MachineError):
        c.trigger("take_out_of_service")


def test_reservation_and_its_release():
    c = make()
    c.trigger("reserve")
    assert c.state == "Reserved"
    c.trigger("release_reservation")
    assert c.state == "Available"


@pytest.mark.parametrize("state", STATES)
def test_r_c9_restart_in_every_state_reconciles_with_every_reading(state):
    """After a restart the persisted state meets whatever the charger says;
    every combination lands in a valid state without an exception."""
    for hw in HW:
        for has_session in (False, True):
            c = make(state, session_id="s1" if has_session else None)
            step = apply_hardware(c, hw)
            assert c.state in STATES
            if hw == "fault" and state != "Unavailable":
                assert c.state == "Faulted"
            if hw == "unplugged" and state not in ("Unavailable", "Faulted", "Reserved"):
                assert c.state in ("Available",), (state, hw, c.state)
            if state in ACTIVE and hw == {"Charging": "charging", "SuspendedEV": "suspended_ev", "SuspendedEVSE": "suspended_evse"}[state]:
                assert step.trigger is None  # a running session goes on untouched


def test_every_transition_in_the_table_is_reachable_by_a_trigger():
    seen = set()
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for src in sources:
            seen.add((src, t["trigger"]))
    for state, hw in itertools.product(STATES, HW):
        c = make(state, session_id="s1")
        trig = hardware_trigger(c, hw)
        if trig:
            assert (state, trig) in seen, (state, hw, trig)
