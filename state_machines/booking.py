"""The booking lifecycle as a `transitions` machine, and its diagram.

confirmed -> assigned (a bay is held, R-B2/R-B3) -> arrived (plate read at
the entry, or a plug on the bay) -> charging -> fulfilled. A booking may be
cancelled by the cloud until charging starts, and becomes a no-show when the
truck has not come by the no-show timeout (R-B3). Moving a booking to
another bay (R-B4) is the ``reassign_bay`` transition, not a state: the
booking stays assigned (or arrived) and only its bay changes.

Trigger names are verbs that no model method uses: transitions 0.9 silently
skips binding a trigger that shadows a method (a rule of the transitions library).

`BookingBook` does not build a machine per booking (10,000 machines cost
memory and time on a Pi); it asks `next_status`, whose table is read from
the one machine built here, so the diagram, the tests and the book all
follow the same definition.

Regenerate the diagram with ``python -m state_machines.diagrams``.
"""

from __future__ import annotations

import sys

from transitions import Machine

from state_machines.table import transition_table

CONFIRMED = "confirmed"
ASSIGNED = "assigned"
ARRIVED = "arrived"
CHARGING = "charging"
FULFILLED = "fulfilled"
CANCELLED = "cancelled"
NO_SHOW = "no_show"

STATES: list[str] = [CONFIRMED, ASSIGNED, ARRIVED, CHARGING, FULFILLED, CANCELLED, NO_SHOW]
FINAL_STATES: frozenset[str] = frozenset({FULFILLED, CANCELLED, NO_SHOW})
# States in which the booking holds its bay (R-B3).
HOLDING_STATES: frozenset[str] = frozenset({ASSIGNED, ARRIVED, CHARGING})

TRANSITIONS: list[dict] = [
    {"trigger": "assign_bay", "source": CONFIRMED, "dest": ASSIGNED},
    # A truck that came in when no fitting bay was free gets one as soon as
    # one frees up; it stays arrived.
    {"trigger": "assign_bay", "source": ARRIVED, "dest": ARRIVED},
    {"trigger": "reassign_bay", "source": ASSIGNED, "dest": ASSIGNED},
    # The cloud moved the slot or changed the truck so the held bay no
    # longer fits: the hold ends and the booking waits for a new bay.
    {"trigger": "release_bay", "source": ASSIGNED, "dest": CONFIRMED},
    {"trigger": "reassign_bay", "source": ARRIVED, "dest": ARRIVED},
    {"trigger": "register_arrival", "source": [CONFIRMED, ASSIGNED], "dest": ARRIVED},
    # A truck may plug in without the camera having read it (no ANPR, or the
    # gate was held open by a technician): plugging is arrival too.
    {"trigger": "begin_charging", "source": [CONFIRMED, ASSIGNED, ARRIVED], "dest": CHARGING},
    {"trigger": "complete_booking", "source": [ARRIVED, CHARGING], "dest": FULFILLED},
    {"trigger": "cancel_booking", "source": [CONFIRMED, ASSIGNED, ARRIVED], "dest": CANCELLED},
    {"trigger": "declare_no_show", "source": [CONFIRMED, ASSIGNED], "dest": NO_SHOW},
]

INITIAL = CONFIRMED
TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(t["trigger"] for t in TRANSITIONS))


class BookingLifecycle:
    """Model for one booking's machine (used by tests and the diagram)."""

    def __init__(self, booking_id: str = ""):
        self.booking_id = booking_id


def booking_machine(model: BookingLifecycle, initial: str = CONFIRMED) -> Machine:
    return Machine(
        model=model,
        states=STATES,
        transitions=TRANSITIONS,
        initial=initial,
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )


_NEXT = transition_table(STATES, TRANSITIONS, INITIAL)


def next_status(status: str, trigger: str) -> str | None:
    """Where `trigger` takes a booking in `status`, or None when it may not."""
    return _NEXT.get((trigger, status))


def render_diagram() -> str:
    """The Markdown page with the mermaid diagram, built from the machine."""
    from state_machines.diagrams import document

    return document("booking")


def main(argv: list[str] | None = None) -> int:
    from state_machines.diagrams import main as write_all

    return write_all(argv)


if __name__ == "__main__":
    sys.exit(main())
