"""The transition table of a lifecycle, for code that follows it record by
record without building a machine per record (10,000 bookings or a year of
payment holds would cost memory and time on a Pi). The table is read from a
real `transitions` machine, so the diagram, the tests and the ledgers follow
one definition."""

from __future__ import annotations

from transitions import Machine


class _Probe:
    pass


def transition_table(states: list[str], transitions: list[dict], initial: str) -> dict[tuple[str, str], str]:
    """{(trigger, source state): destination} of the machine."""
    machine = Machine(model=_Probe(), states=states, transitions=transitions, initial=initial,
                      auto_transitions=False, ignore_invalid_triggers=False)
    table: dict[tuple[str, str], str] = {}
    for trigger, event in machine.events.items():
        for source, moves in event.transitions.items():
            for move in moves:
                table[(trigger, source)] = move.dest
    return table
