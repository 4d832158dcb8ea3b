"""The booking state machine (transitions 0.9.3) and its committed diagram."""

from __future__ import annotations

from pathlib import Path

import pytest
from transitions import MachineError

from state_machines import booking as lifecycle
from state_machines.booking import BookingLifecycle, booking_machine, next_status, render_diagram

ROOT = Path(__file__).resolve().parents[2]


def test_happy_path_r_b2_r_b3_through_fulfilled():
    m = BookingLifecycle("k1")
    booking_machine(m)
    m.assign_bay()
    m.reassign_bay()  # R-B4: the bay changes, the state does not
    assert m.state == "assigned"
    m.register_arrival()
    m.begin_charging()
    m.complete_booking()
    assert m.state == "fulfilled"


def test_r_b3_no_show_only_before_arrival():
    m = BookingLifecycle()
    booking_machine(m, initial="assigned")
    m.declare_no_show()
    assert m.state == "no_show"
    late = BookingLifecycle()
    booking_machine(late, initial="arrived")
    with pytest.raises(MachineError):
        late.declare_no_show()


def test_final_states_accept_no_trigger():
    for state in lifecycle.FINAL_STATES:
        for trigger in lifecycle.TRIGGERS:
            assert next_status(state, trigger) is None, (state, trigger)


def test_every_trigger_is_bound_to_the_model():
    """transitions skips binding a trigger that shadows a model method
    (a known habit of the library): every trigger must exist on the model
    after set-up."""
    m = BookingLifecycle()
    booking_machine(m)
    for trigger in lifecycle.TRIGGERS:
        assert callable(getattr(m, trigger)), trigger
        assert trigger not in vars(BookingLifecycle)


def test_table_follows_the_machine():
    assert next_status("confirmed", "assign_bay") == "assigned"
    assert next_status("assigned", "release_bay") == "confirmed"
    assert next_status("charging", "cancel_booking") is None
    assert next_status("arrived", "reassign_bay") == "arrived"


def test_committed_diagram_matches_the_code():
    committed = (ROOT / "docs" / "state-machines" / "booking.md").read_text(encoding="utf-8")
    assert committed == render_diagram(), "regenerate with: python -m state_machines.booking"


def test_diagram_is_mermaid_with_every_transition():
    text = render_diagram()
    assert "```mermaid" in text and "stateDiagram-v2" in text and "title: Booking lifecycle" in text
    for t in lifecycle.TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for s in sources:
            # The renderer joins triggers between the same two states with " | ".
            edge = next((line for line in text.splitlines() if line.strip().startswith(f"{s} --> {t['dest']}: ")), "")
            assert t["trigger"] in edge.split(": ", 1)[-1].split(" | "), (s, t)
