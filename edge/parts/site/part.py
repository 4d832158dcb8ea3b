"""Site access: gates, the booking lifecycle and bay holds (R-G1..R-G8, R-B1..R-B7).

The part of the hub that owns the gates and turns bookings into held bays.
Per `[[gates]]` entry it runs an ANPR listener (the camera posts its reads)
and a barrier driver (Modbus I/O module). Every plate read goes through the
gate policy (`edge.parts.site.gate_policy.decide_at_gate`) with the hub's live view of
its bays; an opening is recorded first (its event and the booking's arrival
in one commit) and the barrier pulsed once that commit is on disk, so a
truck let through is never unrecorded after a crash; the wait is one fsync
of the store's writer, shared with every commit made meanwhile. Once a second the booking book is
reviewed (`edge.parts.site.bay_assignment.review`): bays are assigned as slots
approach and their connectors show Reserved (R-B3), no-shows release them,
overstays are reported once (R-B6).

What this module decides itself (the rest is the policy's and the bay
assignment's): which holds are stale and must be released, which session
belongs to which booking, how many admitted ad-hoc trucks are still on their
way to a bay, when a vehicle standing at the entry with no read goes to the
operator, and which repeated reads are the same vehicle. Those pieces are
pure functions and small classes below, tested without sockets. The gates
themselves (camera listeners, barriers, the records made before a barrier
moves) are `edge.parts.site.gates.Gates`, mixed into `SiteAccess`.

Raw plates never reach an event or a log line (R-G8): events carry the keyed
hash of the plate, logs its short reference (`edge.parts.site.plates.log_ref`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping
from zoneinfo import ZoneInfo

from drivers.barrier import BarrierUnavailable
from edge.parts.site.bay_assignment import (
    AssignmentSettings,
    BayAssigned,
    BayCondition,
    BayReassigned,
    BayReleased,
    BookingDecision,
    NoBayAvailable,
    NoShow,
    Overstay,
    apply_decisions,
    on_arrival,
    review,
)
from edge.parts.site.bookings import BookingBook, BookingStateError
from units import rfc3339
from edge.parts.site.gate_policy import GateRole, GateSettings, SiteView
from edge.core.hub import Capability
from edge.parts.site.store import BookingStore
from state_machines import booking as lifecycle
from edge.parts.site.gates import GATE_HOLDS_SCHEMA, GateRuntime, Gates, TrucksOnWay

log = logging.getLogger("hubedge.site")

# Bookings are written at most this often (tinydb rewrites the whole file).
SAVE_EVERY_S = 5.0
PURGE_EVERY_S = 60.0
DUE_SOON = timedelta(hours=4)


CONDITION_OF_STATE = {
    "Available": BayCondition.FREE,
    "Reserved": BayCondition.RESERVED,
    "Preparing": BayCondition.OCCUPIED,
    "Charging": BayCondition.OCCUPIED,
    "SuspendedEV": BayCondition.OCCUPIED,
    "SuspendedEVSE": BayCondition.OCCUPIED,
    "Finishing": BayCondition.OCCUPIED,
    "Faulted": BayCondition.FAULTED,
    "Unavailable": BayCondition.UNAVAILABLE,
}


# ---------------------------------------------------------------- pure glue


def bay_conditions(connector_of_bay: Mapping[str, str], states: Mapping[str, str]) -> dict[str, BayCondition]:
    """Each bay's condition from its connector's state (R-B4: a plugged
    connector is an occupied bay). A bay whose connector the hub does not
    drive counts as unavailable, never as free."""
    return {
        bay: CONDITION_OF_STATE.get(states.get(cid, ""), BayCondition.UNAVAILABLE)
        for bay, cid in connector_of_bay.items()
    }


@dataclass(frozen=True)
class StaleHold:
    connector: str
    booking_id: str
    why: str  # cancelled | no_show | fulfilled | released | moved | unknown


def stale_holds(reserved: Mapping[str, str | None], book: BookingBook,
                bay_of_connector: Mapping[str, str]) -> list[StaleHold]:
    """Connector holds no booking stands behind any more: the booking was
    cancelled by the cloud, ended, lost its bay in an update, moved to another
    bay, or is not on this hub at all (a hold for an unknown booking would
    block the bay for ever)."""
    out = []
    for cid, bid in reserved.items():
        if not bid:
            continue
        b = book.get(bid)
        if b is None:
            out.append(StaleHold(cid, bid, "unknown"))
        elif b.status in lifecycle.FINAL_STATES:
            out.append(StaleHold(cid, bid, b.status))
        elif not b.holds_bay:
            out.append(StaleHold(cid, bid, "released"))
        elif b.bay_id != bay_of_connector.get(cid):
            out.append(StaleHold(cid, bid, "moved"))
    return out


def missing_holds(book: BookingBook, connector_of_bay: Mapping[str, str],
                  reserved: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """(connector, booking) for bookings holding a bay whose connector does
    not show the hold yet, e.g. after a restart or a reassignment; a
    connector already held for another booking is left alone."""
    out = []
    for b in book.holding():
        cid = connector_of_bay.get(b.bay_id or "")
        if cid is not None and cid in reserved and reserved[cid] is None:
            out.append((cid, b.id))
    return out


def _same_token(a: str | None, b: str | None) -> bool:
    return bool(a and b) and a.strip().upper() == b.strip().upper()


def booking_for_session(session_booking: str | None, session_token: str | None, reserved_for: str | None,
                        book: BookingBook, now: datetime, grace: timedelta, *, plates_read: bool = True) -> str | None:
    """The booking a starting session fulfils, or None.

    The card part may name it (the session's booking id). Otherwise a
    session on a connector held for a booking counts when it is the
    holder's: its token when the booking names one. A booking without a
    token is matched by its truck having passed the entry camera (status
    arrived); only where no entry camera reads plates does any session in
    the booking's window count, since plugging is then the only sign of
    arrival."""
    for bid in (session_booking, reserved_for):
        b = book.get(bid) if bid else None
        if b is None or b.status not in (lifecycle.CONFIRMED, lifecycle.ASSIGNED, lifecycle.ARRIVED):
            continue
        if bid == session_booking:
            return bid
        if b.token_uid:
            if _same_token(b.token_uid, session_token):
                return bid
        elif b.status == lifecycle.ARRIVED or (not plates_read and b.window_open(now, grace)):
            return bid
    return None


# ------------------------------------------------------------------- the part


class SiteAccess(Gates, Capability):
    name = "site"

    def __init__(self, hub):
        super().__init__(hub)
        self.stored = BookingStore(hub)
        cfg = hub.cfg
        tz = ZoneInfo(cfg.hub.timezone)
        bk = cfg.bookings
        self.gate_settings = GateSettings(
            confidence_threshold=cfg.gate.confidence_threshold,
            early_arrival_grace=timedelta(minutes=bk.early_grace_min),
            hold_horizon=timedelta(minutes=bk.hold_horizon_min),
            site_timezone=tz,
        )
        self.assign_settings = AssignmentSettings(
            lead_time=timedelta(minutes=bk.assign_lead_min),
            no_show_timeout=timedelta(minutes=bk.no_show_after_min),
            overstay_after=timedelta(minutes=bk.overstay_after_min),
            site_timezone=tz,
        )
        self.retention = timedelta(hours=cfg.gate.plate_retention_hours)
        self.connector_of_bay = {b.id: b.connector for b in cfg.bays}
        self.bay_of_connector = {b.connector: b.id for b in cfg.bays}
        self.gates: dict[str, GateRuntime] = {g.id: GateRuntime(g.id, GateRole(g.role)) for g in cfg.gates}
        self.on_way = TrucksOnWay()
        self._unplaced: set[str] = set()
        self._dirty = False
        self._saving = False
        self._last_save = 0.0
        self._last_purge = 0.0
        self._charging_at: dict[str, str] = {}  # connector -> booking charging there
        # The booking's step is in the commit of the session's own.
        hub.session_started_records.append(self._session_started)
        hub.session_ended_records.append(self._session_ended)
        hub.store.db.executescript(GATE_HOLDS_SCHEMA)

    @property
    def book(self) -> BookingBook:
        return self.hub.bookings

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        held = self.held_gates()
        for g in self.hub.cfg.gates:
            rt = self.gates[g.id]
            rt.barrier = self._barrier(g, held)
            self.hub.devices[g.id] = rt.barrier.health
            self.hub.spawn(rt.barrier.run())
            if g.camera is not None:
                await self._start_camera(rt, g.camera)
        if self.gates:
            log.info("site.started gates=%d bookings=%d", len(self.gates), len(self.book))

    async def stop(self) -> None:
        for rt in self.gates.values():
            if rt.camera is not None:
                await rt.camera.stop()
            if rt.barrier is not None:
                await rt.barrier.close()
        if self._dirty:
            await self.stored.save_bookings()
            self._dirty = False

    # ------------------------------------------------------------ live view
    def _conditions(self) -> dict[str, BayCondition]:
        states = {cid: c.state for cid, c in self.hub.connectors.items()}
        return bay_conditions(self.connector_of_bay, states)

    def _site_view(self) -> SiteView:
        return SiteView(tuple(self.book.bays.values()), self._conditions(), self.on_way.count(self.hub.clock.monotonic()))

    def _reserved(self) -> dict[str, str | None]:
        return {cid: c.reserved_for for cid, c in self.hub.connectors.items()}

    # ------------------------------------------------------------ bookings
    def _arrived(self, booking_id: str, gate_id: str, now: datetime) -> None:
        # The bay first (R-B4): a truck whose bay is taken gets another one
        # before it is marked arrived, as assignment is only allowed before.
        self._apply(on_arrival(self.book, booking_id, self._conditions(), now, self.assign_settings), now)
        try:
            b = self.book.mark_arrived(booking_id, now)
        except BookingStateError as exc:
            log.warning("booking.arrival_not_recorded booking=%s reason=%r", booking_id, str(exc))
            return
        self._changed(booking_id)
        self.hub.emit("booking.arrived", {"booking": booking_id, "gate": gate_id, "bay": b.bay_id,
                                          "connector": self.connector_of_bay.get(b.bay_id or "")})

    def _left(self, booking_id: str, gate_id: str, now: datetime) -> None:
        """A booked truck leaving without having charged: its booking is
        fulfilled and its bay free (a charging one is fulfilled at session end)."""
        b = self.book.get(booking_id)
        if b is None or b.status != lifecycle.ARRIVED:
            return
        b = self.book.mark_fulfilled(booking_id, now)
        self._changed(booking_id)
        self._release_hold(b.bay_id, booking_id)
        self.hub.emit("booking.fulfilled", {"booking": booking_id, "bay": b.bay_id, "gate": gate_id,
                                            "reason": "left", "message": "the truck left through the exit; its bay is free"})

    def _release_hold(self, bay_id: str | None, booking_id: str) -> None:
        cid = self.connector_of_bay.get(bay_id or "")
        if cid is not None and cid in self.hub.connectors:
            self.hub.release_connector(cid, booking_id)

    def _reserve(self, bay_id: str, booking_id: str) -> str | None:
        cid = self.connector_of_bay.get(bay_id)
        if cid is None or cid not in self.hub.connectors:
            return None
        self.hub.reserve_connector(cid, booking_id)
        return cid

    def _apply(self, decisions: list[BookingDecision], now: datetime) -> None:
        """Carry out bay decisions: each one's hold on the connector, its
        event and the booking's journal entry are one commit, so a restart
        never finds a decision announced but not recorded (made and
        announced again) or recorded but not announced."""
        for d in decisions:
            with self.hub.store.transaction():
                self._apply_one(d, now)

    def _apply_one(self, d: BookingDecision, now: datetime) -> None:
        b = self.book.get(d.booking_id)
        if isinstance(d, BayAssigned):
            cid = self._reserve(d.bay_id, d.booking_id)
            self._unplaced.discard(d.booking_id)
            self.hub.emit("booking.assigned", {
                "booking": d.booking_id, "bay": d.bay_id, "connector": cid,
                "slot_start": rfc3339(b.slot_start) if b else None, "slot_end": rfc3339(b.slot_end) if b else None,
                "reason": d.reason})
        elif isinstance(d, BayReassigned):
            self._release_hold(d.from_bay_id, d.booking_id)
            cid = self._reserve(d.to_bay_id, d.booking_id)
            self._unplaced.discard(d.booking_id)
            self.hub.emit("booking.reassigned", {"booking": d.booking_id, "from_bay": d.from_bay_id,
                                                 "bay": d.to_bay_id, "connector": cid, "reason": d.reason})
        elif isinstance(d, NoShow):
            self.hub.emit("booking.no_show", {"booking": d.booking_id, "bay": d.bay_id, "reason": d.reason})
        elif isinstance(d, BayReleased):
            self._release_hold(d.bay_id, d.booking_id)
        elif isinstance(d, Overstay):
            self.hub.emit("booking.overstay", {"booking": d.booking_id, "bay": d.bay_id,
                                               "overstay_s": int(d.overstay.total_seconds()), "reason": d.reason})
        elif isinstance(d, NoBayAvailable):
            if d.booking_id in self._unplaced:
                return  # reported once; review finds it again every second
            self._unplaced.add(d.booking_id)
            self.hub.emit("booking.unplaced", {"booking": d.booking_id, "reason": d.reason})
        try:
            apply_decisions(self.book, [d], now)
        except BookingStateError as exc:
            log.warning("booking.decision_not_recorded booking=%s kind=%s reason=%r", d.booking_id, d.kind, str(exc))
        self._changed(d.booking_id)

    def _release_stale(self, now: datetime) -> None:
        for h in stale_holds(self._reserved(), self.book, self.bay_of_connector):
            self.hub.release_connector(h.connector, h.booking_id)
            log.info("booking.hold_released booking=%s connector=%s why=%s", h.booking_id, h.connector, h.why)
            if h.why == lifecycle.CANCELLED:
                self.hub.emit("booking.cancelled", {"booking": h.booking_id, "bay": self.bay_of_connector.get(h.connector),
                                                    "connector": h.connector,
                                                    "message": "cancelled by the cloud; the bay's hold has ended"})

    def tick(self, now: datetime) -> None:
        self._check_waiting(now)
        book = self.book
        reserved = self._reserved()
        if not len(book) and not any(reserved.values()):
            return  # R-B7: no bookings, nothing to hold
        self._release_stale(now)
        for cid, bid in missing_holds(book, self.connector_of_bay, self._reserved()):
            self.hub.reserve_connector(cid, bid)
        decisions = review(book, self._conditions(), now, self.assign_settings)
        if decisions:
            self._apply(decisions, now)
        mono = self.hub.clock.monotonic()
        if mono - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = mono
            purged = book.purge_raw_plates(now - self.retention)
            if purged:
                log.info("booking.plates_purged bookings=%d retention_h=%g", purged, self.retention.total_seconds() / 3600)
                self._dirty = True
        if self._dirty and not self._saving and mono - self._last_save >= SAVE_EVERY_S:
            self._last_save = mono
            self.hub.spawn(self._save())

    # ------------------------------------------------------------ persistence
    def _changed(self, booking_id: str | None) -> None:
        """A booking's lifecycle moved: durable at once through the
        booking journal (R-C9: a power cut right after must not lose it), and the
        whole book rewritten on the next save."""
        if booking_id:
            self.stored.journal_booking(booking_id)
        self._dirty = True

    async def _save(self) -> None:
        """Write the book through the one writer of stored bookings."""
        book = self.book
        self._saving = True
        self._dirty = False
        version = book.version
        try:
            await self.stored.save_bookings()
        except Exception as exc:
            self._dirty = True
            log.error("booking.save_failed error=%r", exc)
        finally:
            self._saving = False
        if book.version != version:
            self._dirty = True  # changed while writing: the next tick writes it again

    # ------------------------------------------------------------ sessions
    def _session_started(self, s) -> None:
        c = self.hub.connectors.get(s.connector)
        now = self.hub.clock.now()
        plates_read = any(rt.role == GateRole.ENTRY and rt.camera_id for rt in self.gates.values())
        bid = booking_for_session(s.booking_id, s.token, c.reserved_for if c else None, self.book, now,
                                  self.gate_settings.early_arrival_grace, plates_read=plates_read)
        if bid is None:
            return
        try:
            b = self.book.mark_charging(bid, now)
        except BookingStateError as exc:
            log.warning("booking.charging_not_recorded booking=%s reason=%r", bid, str(exc))
            return
        self._changed(bid)
        self._charging_at[s.connector] = bid
        self.hub.emit("booking.charging", {"booking": bid, "session": s.id, "connector": s.connector, "bay": b.bay_id})

    def booked_slot(self, connector_id: str):
        """The slot of the booking charging at this connector (site power
        gives it its departure, R-E3): the one whose session started there,
        the session's own booking, or the one the connector is held for."""
        c = self.hub.connectors.get(connector_id)
        if c is None or not c.session_id:
            return None
        s = self.hub.sessions.get(c.session_id)
        for bid in (self._charging_at.get(connector_id), s.booking_id if s else None, c.reserved_for):
            b = self.book.get(bid) if bid else None
            if b is not None and b.status == lifecycle.CHARGING:
                return (b.slot_start, b.slot_end)
        return None

    def _session_ended(self, s) -> None:
        c = self.hub.connectors.get(s.connector)
        for bid in (s.booking_id, c.reserved_for if c else None):
            b = self.book.get(bid) if bid else None
            if b is not None and b.status == lifecycle.CHARGING:
                break
        else:
            return
        now = self.hub.clock.now()
        b = self.book.mark_fulfilled(b.id, now)
        self._changed(b.id)
        self._release_hold(b.bay_id, b.id)
        self.hub.emit("booking.fulfilled", {"booking": b.id, "bay": b.bay_id, "session": s.id, "reason": "charged",
                                            "energy_wh": int(s.energy_wh or 0),
                                            "message": "charging ended; the bay's hold has ended"})

    def on_connector_changed(self, c, previous: str) -> None:
        if c.state == "Preparing" and previous in ("Available", "Reserved"):
            self.on_way.plugged()

    # ------------------------------------------------------------ views
    def status(self) -> dict:
        if not self.gates and not len(self.book):
            return {}
        mono = self.hub.clock.monotonic()
        gates = []
        for rt in self.gates.values():
            gates.append({
                "gate": rt.id,
                "role": rt.role.value,
                "barrier": rt.position,
                "presence": rt.presence,
                "hold_open": bool(rt.barrier and rt.barrier.hold_wanted),
                "last_decision": f"{rt.last_action}:{rt.last_reason}" if rt.last_action else None,
                "decided_ago_s": round(mono - rt.last_mono) if rt.last_mono is not None else None,
            })
        now = self.hub.clock.now()
        soon = [b for b in self.book.running_at(now, now + DUE_SOON) if b.status not in lifecycle.FINAL_STATES][:20]
        out: dict = {"gates": gates} if gates else {}
        if len(self.book):
            out["bookings"] = [self._booking_row(b) for b in soon]
        return out

    def _booking_row(self, b) -> dict:
        return {"booking": b.id, "slot_start": rfc3339(b.slot_start), "slot_end": rfc3339(b.slot_end),
                "type": b.connector_type, "side": b.side, "bay": b.bay_id,
                "connector": self.connector_of_bay.get(b.bay_id or ""), "state": b.status}

    def sync_handlers(self) -> dict:
        return {"bookings": self.stored.sync}

    def control_handlers(self) -> dict:
        from edge.core.control import ControlError

        async def bookings(args: dict, caller, progress) -> list:
            upcoming = args.get("upcoming", False)
            if not isinstance(upcoming, bool):
                raise ControlError("bad_request", "upcoming must be true or false")
            now = self.hub.clock.now()
            if upcoming:
                rows = [b for b in self.book.running_at(now, now + timedelta(days=400))
                        if b.status in (lifecycle.CONFIRMED, lifecycle.ASSIGNED)][:200]
            else:
                rows = self.book.running_at(now - timedelta(hours=12), now + timedelta(hours=24))[:500]
            return [self._booking_row(b) for b in rows]

        async def gate(args: dict, caller, progress) -> dict:
            action, gid = args.get("action"), args.get("id")
            reason = args.get("reason") or ""
            if action not in ("open", "hold-open", "release"):
                raise ControlError("bad_request", f"unknown gate action {action!r}: use open, hold-open or release")
            if not isinstance(reason, str):
                raise ControlError("bad_request", "reason must be text")
            rt = self.gates.get(gid) if isinstance(gid, str) else None
            if rt is None or rt.barrier is None:
                known = ", ".join(self.gates) or "none configured"
                raise ControlError("not_found", f"no gate {gid!r} at this hub (gates: {known}); `hubctl status` lists them")
            if action == "hold-open" and not reason:
                raise ControlError("reason_required", "say why with --reason (it goes into the audit log), "
                                                      "e.g. --reason 'convoy arriving, barrier control by technician'")
            audit_action = "gate." + action.replace("-", "_")
            message = {"open": f"gate {gid} opened once; it closes by itself when the lane is clear",
                       "hold-open": f"gate {gid} held open until `hubctl gate release {gid}`, also across a restart "
                                    "of the hub",
                       "release": f"gate {gid} released: the barrier closes by itself once its loop and photocells "
                                  "are clear"}[action]
            opens = action != "release"
            # What the technician ordered is on disk before the barrier hears
            # of it, as for the hub's own decisions: a vehicle let through is
            # never unrecorded after a crash, and a restart re-applies a hold
            # (or keeps it dropped).
            with self.hub.store.transaction():
                if action != "open":
                    self._store_hold(gid, action == "hold-open", caller.user, reason)
                if opens:
                    rt.last_open_mono = rt.last_mono = self.hub.clock.monotonic()
                    rt.last_action, rt.last_reason = "open", "technician"
                    self.hub.emit("gate.opened", {"gate": gid, "role": rt.role.value, "reason": "technician",
                                                  "message": message, "trigger": action, "user": caller.user})
                self.hub.audit(caller.user, audit_action, gid, reason, message)
            await self.hub.store.durable()
            try:
                if action == "open":
                    await rt.barrier.pulse_open()
                elif action == "hold-open":
                    await rt.barrier.hold_open()
                else:
                    await rt.barrier.release()
            except BarrierUnavailable as exc:
                with self.hub.store.transaction():
                    if not rt.barrier.hold_wanted:
                        self._store_hold(gid, False)  # a hold the barrier never took is not kept
                    if opens:
                        rt.last_open_mono = None
                        self.hub.emit("gate.open_failed", {
                            "gate": gid, "role": rt.role.value, "reason": "barrier_unavailable", "trigger": action,
                            "user": caller.user, "message": f"{exc.reason}: the barrier did not open; let the vehicle "
                                                            "through by hand, or try again once the I/O module answers"})
                    self.hub.audit(caller.user, audit_action, gid, reason, "failed")
                raise ControlError("device_failed", f"gate {gid} did not take the command: {exc.reason}")
            return {"gate": gid, "action": action, "message": message}

        return {"bookings": bookings, "gate": gate}
