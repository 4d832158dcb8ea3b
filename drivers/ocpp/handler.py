"""What the hub implements to hear its OCPP stations: ``StationHandler``.

The OCPP layer calls these methods from the station's own connection task,
one message at a time per station, and answers the station with what they
return. While a method runs, that station's next frame waits (other
stations do not): keep them short, and never await a command to the same
station from inside one (``Station``'s commands raise RuntimeError then:
the answer could never be read). To act on a message — trigger status after a boot, stop a
transaction a blocked card started — schedule a task and return.

Raising from a method answers the station InternalError: a station retries
a transaction message it got an error for, so raise only when the message
could not be recorded (the disk failed), never for a business reason (R-O3:
an unknown card, an unknown transaction, an odd meter value are recorded
and answered normally).
"""

from __future__ import annotations

from typing import Protocol

from drivers.ocpp.events import (
    AuthoriseRequest,
    ConnectorStatus,
    HandshakeRefused,
    Heartbeat,
    IdTokenDecision,
    MeterValues,
    Notification,
    StartAnswer,
    StationBooted,
    StationConnected,
    StationDisconnected,
    TransactionEnded,
    TransactionStarted,
    TransactionUpdated,
)


class StationHandler(Protocol):
    async def station_connected(self, event: StationConnected) -> None:
        """A configured station completed the handshake (R-O1) and its offline
        clock restarted. A station need not boot again after a reconnection:
        the hub asks it for its status now (``Station.trigger_status``, and
        ``trigger_meter_values`` for connectors in a transaction, R-O5) and
        re-sends its power limits, from a task, not from this method."""

    async def station_disconnected(self, event: StationDisconnected) -> None:
        """The connection ended (closed, dropped, replaced, or a frame over
        the size limit). The connectors keep their state until the station
        has been silent for ``offline_after_s`` (``Station.silent_for``);
        then the hub marks them Unavailable, reason charger offline (R-O5)."""

    async def handshake_refused(self, event: HandshakeRefused) -> None:
        """An unknown identity, a wrong or missing password, or a subprotocol
        the station is not configured for (R-O1). The layer has logged it
        with the identity and the remote address; the hub events it. Never
        reaches any station's state."""

    async def station_booted(self, event: StationBooted) -> None:
        """BootNotification: the layer answers Accepted with the configured
        heartbeat interval. The hub keeps vendor, model, serial and firmware
        (``hubctl chargers``) and, from a task, sends the fail-safe limit
        (R-E4) and the configuration it wants (heartbeat, meter interval)."""

    async def heartbeat(self, event: Heartbeat) -> None:
        """Heartbeat: answered with the hub's time. Every frame, not only
        heartbeats, restarts the offline clock; nothing else to do."""

    async def connector_status(self, event: ConnectorStatus) -> None:
        """A connector's state in R-C1 names, for the connector machine. 1.6:
        every StatusNotification; 2.0.1: every StatusNotification and every
        TransactionEvent that changes the state built from both. Events the
        station marks offline never move the state (they are history)."""

    async def authorise(self, request: AuthoriseRequest) -> IdTokenDecision:
        """The station's own card reader asks (R-O2): answer with the same
        decision as the hub's readers (local list, blocked, roaming check
        with its timeout, offline policy). Must answer within the station's
        own timeout (tens of seconds), so bound the roaming check."""

    async def transaction_started(self, event: TransactionStarted) -> StartAnswer:
        """A transaction began at the station. The hub records it durably
        (fsynced) BEFORE returning, and returns the card's decision and, for
        1.6, a transaction id unique and stable across restarts (R-O3). A
        replayed start (same ``event.key``) returns the id it got the first
        time. A start the hub did not ask for, an unknown card or a card the
        station's own list accepted while the hub was down is recorded, not
        refused; if the card is blocked the decision says so (the station
        then stops or suspends it) and the hub may also stop it from a task."""

    async def transaction_updated(self, event: TransactionUpdated) -> IdTokenDecision | None:
        """2.0.1 TransactionEvent Updated (meter values, charging state, a card
        presented during the transaction). Record once per ``event.key``;
        return a decision when the event carries an id token, else None. An
        Updated for a transaction never started here is recorded too."""

    async def transaction_ended(self, event: TransactionEnded) -> IdTokenDecision | None:
        """1.6 StopTransaction or 2.0.1 TransactionEvent Ended. Recorded durably
        before returning, once per ``event.key``, whatever the transaction id
        (an unknown id, or the 0/-1 a station uses when it never got its
        start answered, is recorded as such). Return a decision for the
        token, or None."""

    async def meter_values(self, event: MeterValues) -> None:
        """MeterValues (R-O4): readings for the connector and, when given, its
        transaction; signed values are kept with the session verbatim."""

    async def notification(self, event: Notification) -> None:
        """Firmware, diagnostics, security events, NotifyEvent/NotifyReport,
        log status, reservation status, DataTransfer (answered
        UnknownVendorId): logged by the hub and evented where
        ``event.technician`` says a technician would care."""
