"""Connector lifecycle (R-C1) as a `transitions` machine.

States are the OCPP 1.6 connector statuses. Triggers come from two places:
what the charger reports (plugged, energy flowing, paused, finished, fault,
silence) and what people or the cloud ask (reserve, unavailable, available).
The machine holds no I/O: the hub core feeds it hardware readings through
``apply_hardware`` and carries out what the session logic decides.

Why the hardware reading drives most transitions: after a restart, a lost
poll or a fault, the connector's state is re-derived from the charger (R-C6,
R-C9), so the same mapping serves normal operation and recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from transitions import Machine

STATES = [
    "Available",
    "Reserved",
    "Preparing",
    "Charging",
    "SuspendedEV",
    "SuspendedEVSE",
    "Finishing",
    "Unavailable",
    "Faulted",
]

ACTIVE = ("Charging", "SuspendedEV", "SuspendedEVSE")

# What the charger says about a connector (drivers normalise their registers
# to these; see drivers/register_map.py).
HardwareStatus = Literal[
    "unplugged", "plugged", "charging", "suspended_ev", "suspended_evse", "finished", "fault"
]

TRANSITIONS = [
    # Truck plugs in (plug first, R-C2).
    {"trigger": "plug_in", "source": ["Available", "Reserved"], "dest": "Preparing"},
    # Truck unplugs: a session still running ends (the core records why).
    {"trigger": "unplug", "source": ["Preparing", "Finishing", *ACTIVE], "dest": "Reserved", "conditions": "is_reserved"},
    {"trigger": "unplug", "source": ["Preparing", "Finishing", *ACTIVE], "dest": "Available"},
    # Energy flows after an authorised start, or resumes after a pause.
    {"trigger": "energy_flowing", "source": ["Preparing", "SuspendedEV", "SuspendedEVSE"], "dest": "Charging"},
    {"trigger": "ev_paused", "source": ["Charging", "SuspendedEVSE", "Preparing"], "dest": "SuspendedEV"},
    {"trigger": "evse_paused", "source": ["Charging", "SuspendedEV", "Preparing"], "dest": "SuspendedEVSE"},
    # Charging ended (stop command, full battery, cost cap): cable still in.
    {"trigger": "charge_ended", "source": [*ACTIVE, "Preparing"], "dest": "Finishing"},
    # Reservations (R-B3).
    {"trigger": "reserve", "source": "Available", "dest": "Reserved"},
    {"trigger": "release_reservation", "source": "Reserved", "dest": "Available"},
    # Technician or maintenance window (R-C7). Never pulled from under a
    # running session: the core defers it until the session ends.
    {"trigger": "take_out_of_service", "source": ["Available", "Reserved", "Preparing", "Finishing", "Faulted"], "dest": "Unavailable"},
    {"trigger": "return_to_service", "source": "Unavailable", "dest": "Faulted", "conditions": "hw_fault"},
    {"trigger": "return_to_service", "source": "Unavailable", "dest": "Preparing", "conditions": "hw_plugged"},
    {"trigger": "return_to_service", "source": "Unavailable", "dest": "Reserved", "conditions": "is_reserved"},
    {"trigger": "return_to_service", "source": "Unavailable", "dest": "Available"},
    # Faults: the charger reports one, polls fail N times (R-C6), or an
    # unlock failed after its retries (R-C5).
    {"trigger": "fault", "source": [s for s in STATES if s != "Faulted"], "dest": "Faulted"},
    # Recovery re-derives the state from the hardware, in this order.
    {"trigger": "recover", "source": "Faulted", "dest": "Unavailable", "conditions": "is_admin_unavailable"},
    {"trigger": "recover", "source": "Faulted", "dest": "Charging", "conditions": ["hw_charging", "has_session"]},
    {"trigger": "recover", "source": "Faulted", "dest": "SuspendedEV", "conditions": ["hw_suspended_ev", "has_session"]},
    {"trigger": "recover", "source": "Faulted", "dest": "SuspendedEVSE", "conditions": ["hw_suspended_evse", "has_session"]},
    {"trigger": "recover", "source": "Faulted", "dest": "Finishing", "conditions": ["hw_finished"]},
    {"trigger": "recover", "source": "Faulted", "dest": "Finishing", "conditions": ["hw_plugged", "had_session"]},
    {"trigger": "recover", "source": "Faulted", "dest": "Preparing", "conditions": "hw_plugged"},
    {"trigger": "recover", "source": "Faulted", "dest": "Reserved", "conditions": "is_reserved"},
    {"trigger": "recover", "source": "Faulted", "dest": "Available"},
]


@dataclass
class Connector:
    """One charger connector: its state plus what the state is derived from."""

    id: str
    state: str = "Available"
    hw: str = "unplugged"  # last HardwareStatus seen
    session_id: str | None = None  # session in progress (charging or paused)
    last_session_id: str | None = None  # the session that just ended, while Finishing
    reserved_for: str | None = None  # booking id holding the connector
    admin_unavailable: str | None = None  # reason, when a technician or maintenance took it out
    fault_reason: str | None = None
    fault_kind: str | None = None  # comm | hardware | unlock: decides how it recovers
    since: datetime | None = None
    history: list[str] = field(default_factory=list, repr=False)

    # --- conditions (names distinct from triggers, as the transitions library requires) ---
    def is_reserved(self) -> bool:
        return self.reserved_for is not None

    def hw_plugged(self) -> bool:
        return self.hw in ("plugged", "charging", "suspended_ev", "suspended_evse", "finished")

    def hw_charging(self) -> bool:
        return self.hw == "charging"

    def hw_suspended_ev(self) -> bool:
        return self.hw == "suspended_ev"

    def hw_suspended_evse(self) -> bool:
        return self.hw == "suspended_evse"

    def hw_finished(self) -> bool:
        return self.hw == "finished"

    def hw_fault(self) -> bool:
        return self.hw == "fault"

    def has_session(self) -> bool:
        return self.session_id is not None

    def had_session(self) -> bool:
        return self.last_session_id is not None

    def is_admin_unavailable(self) -> bool:
        return self.admin_unavailable is not None

    def record_change(self) -> None:
        self.history.append(self.state)


def build_machine(model: Connector, initial: str | None = None) -> Machine:
    """Attach the connector machine to ``model``, starting in ``initial``
    (the persisted state after a restart) or the model's own state."""
    start = initial or model.state
    if start not in STATES:
        start = "Available"
    return Machine(
        model=model,
        states=STATES,
        transitions=TRANSITIONS,
        initial=start,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        after_state_change="record_change",
        model_attribute="state",
    )


@dataclass(frozen=True)
class Step:
    """What applying a hardware reading did."""

    trigger: str | None
    before: str
    after: str
    session_ended: bool = False  # the truck left or the charger ended a running session
    energy_started: bool = False


def hardware_trigger(c: Connector, hw: str, polls_ok: bool = True) -> str | None:
    """Which trigger a hardware reading calls for in the connector's state.

    Pure, so every (state, reading) pair is testable. ``None`` means the
    reading changes nothing (e.g. still charging)."""
    state = c.state
    if state == "Faulted":
        return "recover" if hw != "fault" and polls_ok else None
    if hw == "fault":
        return "fault"
    if state == "Unavailable":
        return None  # the hardware is still read (meter, plug) but the state waits for a technician
    plugged = hw != "unplugged"
    if not plugged:
        return "unplug" if state in ("Preparing", "Finishing", *ACTIVE) else None
    if state in ("Available", "Reserved"):
        return "plug_in"
    if state == "Preparing":
        if c.session_id is None:
            return None  # plugged, waiting for authorisation
        return {
            "charging": "energy_flowing",
            "suspended_ev": "ev_paused",
            "suspended_evse": "evse_paused",
            "finished": "charge_ended",
        }.get(hw)
    if state in ACTIVE:
        return {
            ("Charging", "suspended_ev"): "ev_paused",
            ("Charging", "suspended_evse"): "evse_paused",
            ("SuspendedEV", "charging"): "energy_flowing",
            ("SuspendedEV", "suspended_evse"): "evse_paused",
            ("SuspendedEVSE", "charging"): "energy_flowing",
            ("SuspendedEVSE", "suspended_ev"): "ev_paused",
        }.get((state, hw)) or ("charge_ended" if hw in ("finished", "plugged") else None)
    return None  # Finishing: stays until the truck unplugs


def apply_hardware(c: Connector, hw: str) -> Step:
    """Feed one hardware reading into the machine."""
    before = c.state
    c.hw = hw
    trigger = hardware_trigger(c, hw)
    if trigger is None:
        return Step(None, before, before)
    c.trigger(trigger)
    after = c.state
    return Step(
        trigger,
        before,
        after,
        session_ended=before in ACTIVE and trigger in ("unplug", "charge_ended"),
        energy_started=after == "Charging" and before == "Preparing",
    )
