"""The connectors' side of the hub: what chargers report and what it does
to the connectors.

Readings come in through the charger sink (edge/core/charger.py): each
steps its connector's machine (state_machines/connector.py), and the state
change, the session step it makes and their events are one commit; if that
commit fails, ``_changing`` puts the connector back as the database has it
and the next reading makes the same change anew (R-C9). A charger that goes
silent faults its connectors (R-C6); after a restart what a commit set going
is resumed. Unlocking (R-C5) and availability (R-C7, maintenance, bookings'
holds) live here too. ``Hub`` (edge/core/hub.py) is built from this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from edge.core.sessions import TokenVerdict
from state_machines.connector import ACTIVE, Connector, apply_hardware

log = logging.getLogger("hubedge.hub")


class Refused(Exception):
    """An action the hub will not carry out; the message says why and what to do."""

    code = "refused"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


class NotFound(Refused):
    code = "not_found"


# What a connector's state is made of in memory; a failed commit puts it back.
_CONNECTOR_FIELDS = ("state", "hw", "session_id", "last_session_id", "reserved_for", "admin_unavailable",
                     "fault_reason", "fault_kind", "since")


@contextlib.contextmanager
def _changing(*connectors: Connector):
    """Undo the in-memory side of a change whose commit fails: the connector
    is again what the database says, so the next reading or call makes the
    same change anew (with its event) instead of finding it already made."""
    saved = [(c, {k: getattr(c, k) for k in _CONNECTOR_FIELDS}) for c in connectors]
    try:
        yield
    except BaseException:
        for c, fields in saved:
            for k, v in fields.items():
                setattr(c, k, v)
        raise


@dataclass
class ConnectorPlace:
    charger_id: str
    index: int
    bay: str | None
    free_vend: bool


class ConnectorSide:
    """The Hub's methods for chargers and connectors (a part of ``Hub``)."""

    # ------------------------------------------------------- the charger sink
    def charger_reported(self, charger_id: str, readings: dict) -> None:
        """ChargerSink: fresh readings from a charger that reports by itself (OCPP)."""
        try:
            self._poll_ok(charger_id, readings)
        except Exception:
            log.exception("charger.reading_failed charger=%s: the next report tries again", charger_id)

    def charger_lost(self, charger_id: str, reason: str) -> None:
        """ChargerSink: the charger went silent (an OCPP station past
        offline_after_s): its connectors become Unavailable with ``reason``
        (R-O5); one in a session, which cannot be taken out of service under
        it, is Faulted with the same reason until the charger is back."""
        for cid, place in self.places.items():
            if place.charger_id != charger_id:
                continue
            c = self.connectors[cid]
            if c.state in ACTIVE:
                with _changing(c):
                    self._fault(c, "comm", reason, "charger_offline")
            elif c.state != "Unavailable":
                self._set_unavailable(c, reason)

    def charger_ready(self, charger_id: str) -> None:
        """ChargerSink: the charger answers again; what its silence took out
        of service comes back (a technician's hold stays)."""
        self._polled.add(charger_id)
        for cid, place in self.places.items():
            if place.charger_id != charger_id:
                continue
            c = self.connectors[cid]
            if c.admin_unavailable == "charger offline":
                self.set_availability(cid, True, "charger back online")
            elif c.state == "Faulted" and c.fault_kind == "comm":
                reading = self.readings.get(cid)
                if reading is not None:
                    self._apply_reading(c, reading)
        self._resume_starts(charger_id)

    async def authorise(self, uid: str, *, asked_at: str, timeout_s: float | None = None) -> TokenVerdict:
        """A card read by a charger's own reader (OCPP Authorize, a start the
        station made from its own list): decided by the cards part, by the
        same rules as a tap at the hub's readers (R-O2)."""
        if self.token_decider is None:
            return TokenVerdict(uid, "Invalid", "invalid", "this hub has no card authorisation part", source="connector")
        return await self.token_decider(uid, asked_at=asked_at, timeout_s=timeout_s)

    # ------------------------------------------------------------------ polls
    def charger_polled(self, charger_id: str, readings: dict) -> None:
        """ChargerSink: a round of polling (Modbus); an error in applying the
        readings is raised, so the round counts as failed and the next one
        tries again (edge/core/supervision.py)."""
        try:
            self._poll_ok(charger_id, readings)
        finally:
            self._heard(charger_id)

    def charger_unanswered(self, charger_id: str, reason: str) -> None:
        """ChargerSink: a round of polling got no answer."""
        try:
            self._poll_failed(charger_id, reason)
        finally:
            self._heard(charger_id)

    def _heard(self, charger_id: str) -> None:
        self._polled.add(charger_id)
        if len(self._polled) == len(self.chargers):
            self.ready.set()

    def _poll_failed(self, charger_id: str, reason: str) -> None:
        driver = self.chargers[charger_id]
        if driver.health.state != "fault":
            return  # not yet N failed polls
        ours = [self.connectors[cid] for cid, place in self.places.items() if place.charger_id == charger_id]
        # Its connectors' faults and the device fault: one commit.
        with _changing(*ours), self.store.transaction():
            for c in ours:
                self._fault(c, "comm", f"charger {charger_id} not answering: {reason}", "charger_unreachable")
            if charger_id not in self._faults_reported:
                self.emit(
                    "device.fault",
                    {"device": charger_id, "class": "charger", "reason": f"no answer to {self.cfg.charging.fault_after_polls} polls: {reason}; check its power and network"},
                )
                self.store.after_commit(lambda: self._faults_reported.add(charger_id))

    def _fault(self, c: Connector, kind: str, why: str, reason: str) -> None:
        """Put a connector in fault (unless it is already): ``kind`` decides
        how it recovers, ``why`` is shown to people, ``reason`` goes with
        its event."""
        if c.state == "Faulted":
            return
        prev = c.state
        c.fault_kind = kind
        c.fault_reason = why
        c.trigger("fault")
        self._changed(c, prev, reason)

    def _poll_ok(self, charger_id: str, readings: dict) -> None:
        if charger_id in self._faults_reported:
            health = self.devices[charger_id]
            down = health.last_down_s if health.last_down_s is not None else 0
            self.emit("device.recovered", {"device": charger_id, "class": "charger", "down_for_s": max(0, round(down))})
            self._faults_reported.discard(charger_id)
        failed: Exception | None = None
        for cid, reading in readings.items():
            if cid not in self.connectors:
                continue
            self.readings[cid] = reading
            try:
                self._apply_reading(self.connectors[cid], reading)
            except Exception as exc:  # the charger's other connectors are still followed
                failed = failed or exc
        if failed is not None:
            raise failed
        if charger_id not in self._starts_resumed:
            self._starts_resumed.add(charger_id)
            self._resume_starts(charger_id)

    def _apply_reading(self, c: Connector, reading) -> None:
        """Feed one reading to the connector's machine. The state change, the
        session step it makes (started, stopped) and their events are one
        commit; if it fails, the connector is as before and the next reading
        tries again."""
        hw = getattr(reading.status, "value", reading.status)
        if c.state == "Faulted":
            kind = c.fault_kind
            if kind == "unlock" and hw != "unplugged":
                return  # stays faulted until unlocked or the cable is out (R-C5)
        with _changing(c):
            prev = c.state
            step = apply_hardware(c, hw)
            if step.trigger is None:
                return
            reason = None
            if step.trigger == "fault":
                c.fault_kind = "hardware"
                c.fault_reason = getattr(reading, "problem", None) or f"charger reports a fault on connector {c.id} (status code {getattr(reading, 'raw_status', '?')})"
                reason = "charger_fault"
            elif step.trigger == "recover":
                c.fault_kind = None
                c.fault_reason = None
                reason = "recovered"
            with self.store.transaction():
                self._changed(c, prev, reason)
                self._after_step(c, prev, reading)

    def _after_step(self, c: Connector, prev: str, reading) -> None:
        """The session side of a connector step, inside its transaction; what
        it sets going (hooks, unlock, a free-vend start) starts once the
        transaction has committed."""
        place = self.places[c.id]
        later = self.store.after_commit
        s = self.sessions.get(c.session_id) if c.session_id else None
        if s and s.status == "starting" and c.state in ACTIVE:
            s.status = "active"
            if s.meter_start_wh is None:
                s.meter_start_wh = reading.energy_wh
            with self.store.transaction():  # the session row and its event
                self.sessions.update(s, self.clock.now())
                self.emit("session.started", self._session_event(s))
                self._record_hooks(self.session_started_records, s)
            later(lambda: self._run_hooks(self.session_started_hooks, s))
        if s and c.state not in ("Preparing", "Faulted", *ACTIVE):
            # Finishing (charge ended) or Available/Reserved (unplugged).
            default = "ev_disconnected" if c.state in ("Available", "Reserved") else "ev_finished"
            self._end_session(c, s, self._stop_reasons.get(s.id, default), reading)
            later(lambda: self._stop_reasons.pop(s.id, None))
        if c.state == "Finishing" and prev != "Finishing":
            later(lambda: self._spawn(self._unlock(c, retries=self.cfg.charging.unlock_retries)))
        if c.state == "Preparing" and prev != "Preparing" and not c.session_id and place.free_vend:
            later(lambda: self._spawn(self._start_free_vend(c.id)))
        if c.state in ("Available", "Finishing") and c.id in self._pending_unavailable and not c.session_id:
            self._set_unavailable(c, self._pending_unavailable[c.id])
            later(lambda: self._pending_unavailable.pop(c.id, None))

    async def _start_free_vend(self, connector_id: str) -> None:
        try:
            await self.start_session(connector_id, method="free_vend")
        except Refused as exc:
            log.warning("session.not_started connector=%s reason=%s", connector_id, exc)

    def _resume_starts(self, charger_id: str) -> None:
        """After a restart, what a commit set going may never have left
        (R-C9): a session written as 'starting' whose charger is not charging
        yet gets its start sent again; one already charging simply goes on.
        A connector found Finishing with its session ended gets the unlock it
        is owed (R-C5), and a free-vend connector found Preparing with no
        session gets its start. Each command is safe to repeat."""
        for cid, place in self.places.items():
            if place.charger_id != charger_id:
                continue
            c = self.connectors[cid]
            s = self.sessions.get(c.session_id) if c.session_id else None
            if s and s.status == "starting" and c.state == "Preparing" and c.hw == "plugged":
                age = (self.clock.now() - s.started_at).total_seconds()
                if age < self.cfg.charging.start_timeout_s:
                    log.info("session.start_resent session=%s connector=%s", s.id, cid)
                    self._spawn(self._send(place.charger_id, "start", cid))
            elif c.state == "Finishing" and not c.session_id:
                log.info("connector.unlock_resumed connector=%s", cid)
                self._spawn(self._unlock(c, retries=self.cfg.charging.unlock_retries))
            elif c.state == "Preparing" and not c.session_id and place.free_vend and c.hw_plugged():
                log.info("session.free_vend_resumed connector=%s", cid)
                self._spawn(self._start_free_vend(cid))

    # --------------------------------------------------------------- unlock
    async def _unlock(self, c: Connector, *, retries: int) -> bool:
        """R-C5: unlock after a stop; retried, then reported as a fault."""
        if c.id in self._unlocking:
            return False
        self._unlocking.add(c.id)
        place = self.places[c.id]
        try:
            for attempt in range(retries + 1):
                try:
                    ok = await self.chargers[place.charger_id].unlock(c.id)
                except Exception as exc:
                    log.warning("connector.unlock_error connector=%s attempt=%d error=%s", c.id, attempt + 1, exc)
                    ok = False
                if ok:
                    if c.state == "Faulted" and c.fault_kind == "unlock":
                        with _changing(c):
                            prev = c.state
                            c.fault_kind = None
                            c.fault_reason = None
                            c.trigger("recover")
                            self._changed(c, prev, "unlocked")
                    log.info("connector.unlocked connector=%s attempt=%d", c.id, attempt + 1)
                    return True
                if attempt < retries:
                    await asyncio.sleep(self.cfg.charging.unlock_retry_s)
            with _changing(c), self.store.transaction():  # the failure and the fault it causes, one commit
                self.emit(
                    "connector.unlock_failed",
                    {"connector": c.id, "attempts": retries + 1, "message": "the connector stayed locked: a technician can run `hubctl connector unlock " + c.id + "`"},
                )
                self._fault(c, "unlock", f"unlock failed after {retries + 1} attempts", "unlock_failed")
            return False
        finally:
            self._unlocking.discard(c.id)

    async def unlock(self, connector_id: str) -> bool:
        c = self._connector(connector_id)
        if c.session_id:
            raise Refused(f"connector {connector_id} has session {c.session_id} running: stop it first with `hubctl session stop {c.session_id[:8]} --reason 'truck cannot unplug'`")
        return await self._unlock(c, retries=0)

    # --------------------------------------------------------- availability
    def _connector(self, connector_id: str) -> Connector:
        c = self.connectors.get(connector_id)
        if c is None:
            raise NotFound(f"no connector {connector_id!r} at this hub; `hubctl status` lists them")
        return c

    def _set_unavailable(self, c: Connector, reason: str) -> None:
        with _changing(c), self.store.transaction():
            prev = c.state
            c.admin_unavailable = reason
            if c.state != "Unavailable":
                if c.state == "Faulted":
                    self._persist(c)  # stays Faulted; recovery goes to Unavailable
                    return
                c.trigger("take_out_of_service")
                self._changed(c, prev, reason)
            else:
                self._persist(c)

    def reserve_connector(self, connector_id: str, booking_id: str) -> bool:
        """Hold a connector for a booking (R-B3). Available becomes Reserved;
        in any other state the hold is remembered and shows once it is free."""
        c = self._connector(connector_id)
        with _changing(c), self.store.transaction():
            c.reserved_for = booking_id
            if c.state == "Available":
                prev = c.state
                c.trigger("reserve")
                self._changed(c, prev, f"reserved for booking {booking_id}")
            else:
                self._persist(c)
        return c.state == "Reserved"

    def release_connector(self, connector_id: str, booking_id: str | None = None) -> None:
        """End a booking's hold (fulfilled, cancelled, no-show, reassigned)."""
        c = self._connector(connector_id)
        if booking_id is not None and c.reserved_for != booking_id:
            return
        with _changing(c), self.store.transaction():
            c.reserved_for = None
            if c.state == "Reserved":
                prev = c.state
                c.trigger("release_reservation")
                self._changed(c, prev, "reservation ended")
            else:
                self._persist(c)

    def set_availability(self, connector_id: str, available: bool, reason: str) -> str:
        """R-C7. Returns what happened, for the person who asked."""
        c = self._connector(connector_id)
        if not available:
            if c.session_id:
                self._pending_unavailable[c.id] = reason
                return f"connector {c.id} has a session running; it becomes Unavailable when the session ends"
            self._set_unavailable(c, reason)
            return f"connector {c.id} is now {c.state}"
        self._pending_unavailable.pop(c.id, None)
        with _changing(c), self.store.transaction():
            if c.state == "Unavailable":
                prev = c.state
                c.admin_unavailable = None
                c.trigger("return_to_service")
                self._changed(c, prev, "available")
                if c.state == "Preparing" and self.places[c.id].free_vend:
                    self.store.after_commit(lambda: self._spawn(self._start_free_vend(c.id)))
            else:
                c.admin_unavailable = None
                self._persist(c)
        return f"connector {c.id} is now {c.state}"
