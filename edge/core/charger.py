"""A charger as the hub sees it, whatever it speaks.

Connectors, sessions, payments, bookings and site power talk to "a charger"
through this interface, never to Modbus or OCPP. A protocol part (Modbus
register maps, OCPP 1.6J, OCPP 2.0.1) provides one ``Charger`` per
``[[chargers]]`` entry of the configuration and registers its factory in
``PROTOCOLS`` under the ``protocol`` names the configuration accepts.

Readings flow up as calls on a ``ChargerSink`` (the hub), on the hub's event
loop; commands flow down as awaited methods that either return or raise
``CommandFailed`` with what happened in words a technician can act on.
Optional abilities (reservations, power limits) are separate protocols a
charger may also implement; the hub asks ``isinstance`` before using them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

# What a charger reports about one connector, normalised across protocols
# (the connector machine maps these to the OCPP connector states, R-C1).
HW_STATES = ("unplugged", "plugged", "charging", "suspended_ev", "suspended_evse", "finished", "fault")


@dataclass(frozen=True)
class Reading:
    """One connector's latest state as its charger reported it."""

    connector_id: str
    status: str  # one of HW_STATES
    energy_wh: int | None = None  # lifetime energy register; None when the charger did not say
    power_w: int | None = None
    soc: int | None = None
    raw_status: Any = None  # the protocol's own word for the state, for fault texts
    power_limit_w: int | None = None  # the limit the charger says it applies
    signed_meter_value: str | None = None  # OCMF (or other signed format) verbatim
    problem: str | None = None  # why a value could not be read; status is then "fault"
    extra: dict = field(default_factory=dict)  # protocol details worth keeping (transaction id, phase currents)


class CommandFailed(Exception):
    """A command to a charger did not do what was asked.

    ``outcome`` is one of: "unreachable" (no connection, timeout),
    "rejected" (the charger said no), "not_supported" (the charger cannot do
    this), "error" (it answered with an error). ``str(exc)`` says what
    happened and what to check."""

    OUTCOMES = ("unreachable", "rejected", "not_supported", "error")

    def __init__(self, charger_id: str, command: str, outcome: str, detail: str):
        if outcome not in self.OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.charger_id = charger_id
        self.command = command
        self.outcome = outcome
        self.detail = detail
        super().__init__(f"charger {charger_id}: {command} {outcome}: {detail}")


class ChargerSink(Protocol):
    """What a charger tells the hub. Called on the hub's event loop."""

    def charger_reported(self, charger_id: str, readings: dict[str, Reading]) -> None:
        """Fresh readings for some or all of the charger's connectors."""

    def charger_lost(self, charger_id: str, reason: str) -> None:
        """The charger stopped answering (polls failed, station offline past
        its limit): its connectors become Faulted or Unavailable with
        ``reason`` shown to technicians."""

    def charger_ready(self, charger_id: str) -> None:
        """The charger answers again (first good poll, a station's
        reconnection): the hub resends what it owes it (pending starts,
        unlocks, limits)."""

    def charger_polled(self, charger_id: str, readings: dict[str, Reading]) -> None:
        """A round of polling read these: applied at once. Raises when one
        could not be applied; the poller counts the round as failed and the
        next round applies the readings again."""

    def charger_unanswered(self, charger_id: str, reason: str) -> None:
        """A round of polling got no answer. Once the charger's ``health``
        says fault (N rounds in a row), its connectors are Faulted with
        ``reason`` and one device.fault goes out."""


class Charger(abc.ABC):
    """One charger with one or more connectors (hub connector ids)."""

    protocol: str = "?"
    # The hub is ready (sd_notify READY) once every charger that sets this
    # has been heard from once (a first round of polling, good or not).
    ready_after_first_report: bool = False
    # How long ``run`` may go without a heartbeat (supervision.beat, or a
    # round of supervision.rounds) before the watchdog counts it as stuck.
    stall_after_s: float = 60.0

    def __init__(self, charger_id: str, connectors: list[str]):
        self.id = charger_id
        self.connectors = list(connectors)

    @property
    def task_name(self) -> str:
        """How its supervised loop shows in `hubctl devices`."""
        return f"charger {self.id}"

    @abc.abstractmethod
    async def run(self, sink: ChargerSink) -> None:
        """Follow the charger until cancelled: poll it or serve its
        connection, and report through ``sink``. Runs as a supervised loop:
        it may raise; it is started again after a back-off."""

    @abc.abstractmethod
    async def start(self, connector_id: str, *, token: str | None = None, session_id: str | None = None) -> None:
        """Start charging on a connector the hub has authorised."""

    @abc.abstractmethod
    async def stop(self, connector_id: str, *, session_id: str | None = None) -> None:
        """Stop the charge running on a connector."""

    @abc.abstractmethod
    async def unlock(self, connector_id: str) -> bool:
        """Release the cable lock. True when the charger says it is unlocked."""

    @abc.abstractmethod
    async def set_available(self, connector_id: str, available: bool) -> None:
        """Take a connector out of service or back (maintenance, hubctl)."""

    @abc.abstractmethod
    def view(self) -> dict:
        """What `hubctl chargers` shows: protocol, address, state and, where
        known, vendor, model, serial and firmware."""

    async def close(self) -> None:
        """Release the connection (hub stopping)."""

    @property
    def health(self):
        """A drivers.device.DeviceHealth for `hubctl devices`, or None."""
        return None


@runtime_checkable
class Reservations(Protocol):
    """A charger that can hold a connector for a booking itself (R-B3)."""

    async def reserve(self, connector_id: str, reservation_id: int, expires_at, token: str) -> None: ...

    async def cancel_reservation(self, reservation_id: int) -> None: ...


@runtime_checkable
class PowerLimits(Protocol):
    """A charger that takes a power limit per connector (site power, R-E2)."""

    async def set_power_limit(self, connector_id: str, watts: int) -> None:
        """Apply at most ``watts`` on the connector; raise CommandFailed if
        the charger did not take it (the hub then counts it at rated power, R-E4)."""

    async def set_fail_safe_limit(self, watts_per_connector: int) -> None:
        """The limit the charger applies by itself when it loses the hub (R-E4)."""


# protocol name (the ``protocol`` key of ``[[chargers]]``) -> factory(hub, charger config) -> Charger.
# Filled by the protocol parts when they are imported.
PROTOCOLS: dict[str, Callable[[Any, Any], Charger]] = {}


def register(protocol: str, factory: Callable[[Any, Any], Charger]) -> None:
    PROTOCOLS[protocol] = factory
