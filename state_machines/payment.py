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

review is a settlement whose outcome is unknown: a booking went to the
terminal and its answer never came (a time-out, a lost link, an answer that
was not the booking's, a restart during the call). The money may have been
booked, so the hold is never released from here, not even by the 24-hour
backstop. The hub keeps asking the terminal about that one reservation: a
booking it takes now, or its word that the reservation is no longer open
after the hub's booking reached it, settles it. A technician sees it in
`hubctl payments`, can ask again at once (`hubctl payment retry`) and, when
the terminal can no longer tell, records what the acquirer's records show
(`hubctl payment resolve`: booked settles it, not booked lapses it).

The ledger (edge/parts/payments/ledger.py) keeps one row per hold and moves it only along
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
REVIEW = "review"
SETTLED = "settled"
RELEASING = "releasing"
RELEASED = "released"
LAPSED = "lapsed"
FOUND = "found"

STATES: list[str] = [REQUESTED, DECLINED, HELD, CHARGING, SETTLING, REVIEW, SETTLED, RELEASING, RELEASED, LAPSED, FOUND]
INITIAL = REQUESTED
FINAL_STATES: frozenset[str] = frozenset({DECLINED, SETTLED, RELEASED, LAPSED})
# States in which money may be reserved on the card: the terminal must end them.
HOLDING_STATES: frozenset[str] = frozenset({HELD, CHARGING, SETTLING, REVIEW, RELEASING, FOUND})
# States with a terminal call still to make (retried with backoff until done).
PENDING_STATES: frozenset[str] = frozenset({SETTLING, REVIEW, RELEASING})

# Trigger names are verbs no model method uses (transitions 0.9 silently skips
# binding a trigger that shadows a method).
TRANSITIONS: list[dict] = [
    {"trigger": "approve", "source": REQUESTED, "dest": HELD},
    {"trigger": "decline", "source": REQUESTED, "dest": DECLINED},
    {"trigger": "begin_charging", "source": HELD, "dest": CHARGING},
    {"trigger": "bill", "source": [HELD, CHARGING], "dest": SETTLING},
    {"trigger": "doubt", "source": [SETTLING, RELEASING], "dest": REVIEW},
    {"trigger": "confirm_settlement", "source": [SETTLING, REVIEW], "dest": SETTLED},
    {"trigger": "lapse", "source": [SETTLING, REVIEW], "dest": LAPSED},
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
