"""The life of one payment hold at an arch terminal (R-P1..R-P4).

A driver picks a Preparing connector on the arch screen: the ledger writes
the intent (requested) before the terminal is asked to pre-authorise. An
approval makes a hold (held); the session starting on the connector makes it
charging. When the session ends the amount is written (settling) before the
terminal books it (settled). A hold whose session never started or drew no
energy, or that has been open for 24 hours, is written as releasing before
the terminal is asked to release it (released). A reservation the terminal
holds but the ledger never knew (a crash between the terminal's approval and
the ledger's write) enters as found and is released.

declined covers a decline, a terminal error and a time-out alike: nothing
was held and nothing starts. lapsed is a settlement the terminal could no
longer take because the reservation was gone before the hub booked anything
(closed by the terminal itself): the cloud must bill the session another way.

The ledger (edge/payments.py) keeps one row per hold and moves it only along
these transitions; `next_state` answers from this machine's table, so the
diagram, the tests and the ledger follow one definition.
"""

from __future__ import annotations

from transitions import Machine

from state_machines.table import transition_table

REQUESTED = "requested"
DECLINED = "declined"
HELD = "held"
CHARGING = "charging"
SETTLING = "settling"
SETTLED = "settled"
RELEASING = "releasing"
RELEASED = "released"
LAPSED = "lapsed"
FOUND = "found"

STATES: list[str] = [REQUESTED, DECLINED, HELD, CHARGING, SETTLING, SETTLED, RELEASING, RELEASED, LAPSED, FOUND]
INITIAL = REQUESTED
FINAL_STATES: frozenset[str] = frozenset({DECLINED, SETTLED, RELEASED, LAPSED})
# States in which money may be reserved on the card: the terminal must end them.
HOLDING_STATES: frozenset[str] = frozenset({HELD, CHARGING, SETTLING, RELEASING, FOUND})
# States with a terminal call still to make (retried with backoff until done).
PENDING_STATES: frozenset[str] = frozenset({SETTLING, RELEASING})

# Trigger names are verbs no model method uses (transitions 0.9 silently skips
# binding a trigger that shadows a method).
TRANSITIONS: list[dict] = [
    {"trigger": "approve", "source": REQUESTED, "dest": HELD},
    {"trigger": "decline", "source": REQUESTED, "dest": DECLINED},
    {"trigger": "begin_charging", "source": HELD, "dest": CHARGING},
    {"trigger": "bill", "source": [HELD, CHARGING], "dest": SETTLING},
    {"trigger": "confirm_settlement", "source": SETTLING, "dest": SETTLED},
    {"trigger": "lapse", "source": SETTLING, "dest": LAPSED},
    {"trigger": "release", "source": [HELD, CHARGING, SETTLING, FOUND], "dest": RELEASING},
    {"trigger": "confirm_release", "source": RELEASING, "dest": RELEASED},
]

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(t["trigger"] for t in TRANSITIONS))


class PaymentHold:
    """Model for one hold's machine (tests and the diagram)."""

    def __init__(self, payment_id: str = ""):
        self.payment_id = payment_id


def payment_machine(model: PaymentHold, initial: str = INITIAL) -> Machine:
    return Machine(
        model=model,
        states=STATES,
        transitions=TRANSITIONS,
        initial=initial,
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )


_NEXT = transition_table(STATES, TRANSITIONS, INITIAL)


def next_state(state: str, trigger: str) -> str | None:
    """Where ``trigger`` takes a hold in ``state``, or None when it may not."""
    return _NEXT.get((trigger, state))
