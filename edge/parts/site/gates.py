"""Site access at the gates: each gate's camera listener and barrier, plate
reads through the gate policy, the records made before a barrier moves, and
the openings owed to a barrier that was silent (R-G1..R-G8).

``Gates`` is the gate half of ``edge.parts.site.part.SiteAccess``: it uses the
part's booking book, bay conditions and booking arrivals (``_site_view``,
``_release_stale``, ``_arrived``, ``_left``) and keeps the gates' runtime in
``self.gates``. Raw plates never reach an event or a log line (R-G8).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from drivers.anpr import AnprListener
from drivers.anpr import PlateRead as CameraRead
from drivers.barrier import BarrierDriver, BarrierPosition, BarrierUnavailable, VehiclePresent
from drivers.device import DeviceFault, DeviceHealth, DeviceRecovered
from units import rfc3339
from edge.parts.site.gate_policy import (
    Direction,
    GateAction,
    GateDecision,
    GateReason,
    GateRole,
    PlateRead,
    decide_at_gate,
)
from edge.parts.site.plates import log_ref
from edge.core.store import DiskError

log = logging.getLogger("hubedge.site")

# A vehicle on the entry's presence loop with no read for this long goes to
# the operator (R-G4): the camera normally reads well within a second.
# A presence this soon after a decision at the same gate is the vehicle that
# was just decided on, driving through: not a new arrival.
PASSING_S = 30.0

# The same plate at the same gate within this time is the same vehicle (a
# camera resending, or Axis sending NEW then UPDATE): one decision.
SAME_VEHICLE_S = 10.0

# An admitted ad-hoc truck counts against the free bays until it plugs in
# or this long has passed (it parked elsewhere or left).
ON_WAY_S = 900.0

EVENT_OF_ACTION = {
    GateAction.OPEN: "gate.opened",
    GateAction.REFUSE: "gate.refused",
    GateAction.MANUAL_REVIEW: "gate.manual_review",
}

_DIRECTION = {"approach": Direction.IN, "leave": Direction.OUT}

def policy_read(read: CameraRead) -> PlateRead:
    """The camera's read in the gate policy's terms (the raw plate stays in
    memory only)."""
    return PlateRead(
        plate=read.plate_raw or None,
        confidence=read.confidence,
        vehicle_class=read.vehicle_class,
        direction=_DIRECTION.get(read.direction, Direction.UNKNOWN),
        country=read.country,
    )

class TrucksOnWay:
    """Ad-hoc trucks admitted at the entry that have not plugged in yet, so
    that two trucks a minute apart do not both get the last bay (R-G3)."""

    def __init__(self, ttl_s: float = ON_WAY_S):
        self.ttl_s = ttl_s
        self._admitted: list[float] = []  # monotonic times, oldest first

    def admit(self, mono: float) -> None:
        self._admitted.append(mono)

    def plugged(self) -> None:
        if self._admitted:
            self._admitted.pop(0)

    def count(self, mono: float) -> int:
        self._admitted = [t for t in self._admitted if mono - t < self.ttl_s]
        return len(self._admitted)

@dataclass
class GateRuntime:
    """One gate's devices and what it last saw and decided."""

    id: str
    role: GateRole
    barrier: BarrierDriver | None = None
    camera: AnprListener | None = None
    camera_id: str | None = None
    position: str = "unknown"
    presence: bool = False
    presence_mono: float | None = None
    presence_handled: bool = True
    open_pending: bool = False  # an opening failed on a silent I/O module and is still owed
    last_action: str | None = None
    last_reason: str | None = None
    last_mono: float | None = None
    last_open_mono: float | None = None
    recent: dict[str, tuple[float, str]] = field(default_factory=dict)  # plate hash / read id -> (mono, action)

    def seen_recently(self, keys: Iterable[str], mono: float) -> bool:
        """Whether one of `keys` was decided here in the last few seconds with
        a final answer (a manual review may be followed by a better read)."""
        self.recent = {k: v for k, v in self.recent.items() if mono - v[0] < SAME_VEHICLE_S}
        return any(k in self.recent and self.recent[k][1] != GateAction.MANUAL_REVIEW for k in keys)

# A technician's hold-open (R-G5, R-T3), kept so a restart re-applies it.
GATE_HOLDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS gate_holds (
    gate TEXT PRIMARY KEY,
    since TEXT NOT NULL,
    user TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


class Gates:
    """The gates of the site access part (mixed into SiteAccess)."""

    def _barrier(self, g, held: set[str]) -> BarrierDriver:
        """A gate's barrier driver; a technician's hold-open still in force
        when the hub stopped is wanted again from its first connection (the
        driver puts every output where it wants it on each connection)."""
        host, port = g.barrier.address.rsplit(":", 1)
        if g.id in held:
            log.warning("gate.hold_restored gate=%s action=%r", g.id, f"held open by a technician before the restart; "
                        f"`hubctl gate release {g.id}` ends it")
        return BarrierDriver(g.id, host.strip("[]"), int(port), g.barrier.unit, None,
                             lambda ev, gid=g.id: self._on_barrier(gid, ev),
                             open_confirm_s=self.hub.cfg.gate.open_confirm_s,
                             pulse_ms=self.hub.cfg.gate.pulse_ms, hold_open=g.id in held)

    def held_gates(self) -> set[str]:
        """Gates a technician holds open (`hubctl gate hold-open G-IN`), as stored."""
        return {gid for (gid,) in self.hub.store.db.execute("SELECT gate FROM gate_holds")}

    def _store_hold(self, gate_id: str, held: bool, user: str = "", reason: str = "") -> None:
        with self.hub.store.transaction() as db:
            if held:
                db.execute("INSERT OR REPLACE INTO gate_holds (gate, since, user, reason) VALUES (?,?,?,?)",
                           (gate_id, rfc3339(self.hub.clock.now()), user, reason))
            else:
                db.execute("DELETE FROM gate_holds WHERE gate = ?", (gate_id,))

    async def _start_camera(self, rt: GateRuntime, cam) -> None:
        rt.camera_id = f"{rt.id}-camera"
        host, port = cam.listen.rsplit(":", 1)
        try:
            rt.camera = AnprListener(rt.camera_id, host.strip("[]"), int(port), cam.vendor,
                                     lambda read, gid=rt.id: self._on_read(gid, read),
                                     secret=cam.secret, allow=cam.allow or None, max_body=cam.max_body_bytes)
            self.hub.devices[rt.camera_id] = rt.camera.health
            await rt.camera.start()
        except (ValueError, OSError) as exc:
            # One camera that cannot listen is that camera's fault: the gate
            # still opens on presence at the exit and by `hubctl gate open`.
            rt.camera = None
            health = DeviceHealth(rt.camera_id, "camera")
            health.mark_fault(str(exc))
            self.hub.devices[rt.camera_id] = health
            self.hub.device_event(DeviceFault(rt.camera_id, "camera", f"{exc}"))

    # -------------------------------------------------------------- plates
    def _on_read(self, gate_id: str, read: CameraRead) -> None:
        """A camera's read, on the loop, inside the listener's request: an
        exception here answers 500 and the camera sends the read again."""
        rt = self.gates[gate_id]
        now = self.hub.clock.now()
        mono = self.hub.clock.monotonic()
        plate_hash = None
        if read.plate_raw:
            try:
                plate_hash = self.book.plate_hash_of(read.plate_raw, read.country)
            except ValueError:
                plate_hash = None  # no letters or digits: the policy treats it as a no-read
        keys = [read.event_id] + ([plate_hash] if plate_hash else [])
        if rt.seen_recently(keys, mono):
            log.info("gate.same_vehicle gate=%s read=%s plate=%s", gate_id, read.event_id,
                     log_ref(plate_hash) if plate_hash else "-")
            return
        # A cancel applied a moment ago must free its bay before bays are counted.
        self._release_stale(now)
        decision = decide_at_gate(policy_read(read), rt.role, self.book, self._site_view(), now, self.gate_settings)
        for k in keys:
            rt.recent[k] = (mono, decision.action)
        self._carry_out(rt, decision, now, trigger="plate_read", read=read, plate_hash=plate_hash)

    def _carry_out(self, rt: GateRuntime, decision: GateDecision, now: datetime, *, trigger: str,
                   read: CameraRead | None = None, plate_hash: str | None = None) -> None:
        mono = self.hub.clock.monotonic()
        rt.last_action, rt.last_reason, rt.last_mono = decision.action.value, decision.reason_code.value, mono
        rt.presence_handled = True
        if decision.reason_code == GateReason.ADHOC_ADMITTED:
            self.on_way.admit(mono)  # now, not with the records: the next read must count it
        if decision.open and rt.barrier is not None:
            # The records first: the decision's event and the booking's
            # arrival (or leaving) are one commit, on disk before the barrier
            # moves, so a truck let through is never unrecorded after a crash.
            rt.last_open_mono = mono  # a presence right behind this read is the same vehicle
            self._record(rt, decision, now, trigger, read, plate_hash)

            def failed(reason: str) -> None:
                self._record(rt, decision, now, trigger, read, plate_hash, reason)

            self.hub.spawn(self._open(rt, failed))
        else:
            asyncio.get_running_loop().call_soon(self._record, rt, decision, now, trigger, read, plate_hash)

    async def _open(self, rt: GateRuntime, failed) -> None:
        """Pulse the barrier open once the records made for the opening are
        durable (one fsync of the store's writer, shared with every commit
        made meanwhile); ``failed(reason)`` says the I/O module did not take
        it. A disk that fails the records does not keep the barrier shut
        (R-G6): the store has raised its alarm, the vehicle goes through."""
        try:
            await self.hub.store.durable()
        except DiskError as exc:
            log.error("gate.record_not_durable gate=%s error=%r", rt.id, str(exc))
        try:
            await rt.barrier.pulse_open()
            rt.open_pending = False
        except BarrierUnavailable as exc:
            # The driver has reported the fault; the event says the opening
            # did not happen so the operator can let the vehicle through. The
            # opening is owed: once the I/O module answers again, a vehicle
            # still on the loop gets it (R-G6: the exit never traps anyone).
            rt.open_pending = True
            rt.last_open_mono = None
            log.warning("gate.open_failed gate=%s reason=%r", rt.id, exc.reason)
            failed(exc.reason)

    def _record(self, rt: GateRuntime, decision: GateDecision, now: datetime, trigger: str,
                read: CameraRead | None, plate_hash: str | None, failure: str | None = None) -> None:
        try:
            self._record_decision(rt, decision, now, trigger, read, plate_hash, failure)
        except Exception:
            log.exception("gate.record_failed gate=%s reason=%s", rt.id, decision.reason_code.value)

    def _record_decision(self, rt: GateRuntime, decision: GateDecision, now: datetime, trigger: str,
                         read: CameraRead | None, plate_hash: str | None, failure: str | None = None) -> None:
        """The decision's event and booking records, one commit. ``failure``:
        the barrier did not take the opening recorded just before, so
        gate.open_failed follows (with the decision's reason in its detail);
        the booking records stand, as the vehicle was decided on and the
        opening is owed."""
        data: dict = {"gate": rt.id, "role": rt.role.value, "reason": decision.reason_code.value,
                      "message": decision.reason, "trigger": trigger}
        if decision.booking_id:
            data["booking"] = decision.booking_id
        if plate_hash:
            data["plate_hash"] = plate_hash
        if read is not None:
            data.update(camera=read.camera_id, read=read.event_id, confidence=round(read.confidence, 3),
                        vehicle_class=read.vehicle_class, direction=read.direction)
        if decision.detail:
            data["detail"] = {k: v for k, v in decision.detail.items() if isinstance(v, (str, int, float, bool, list))}
        if failure is not None:
            data["detail"] = {**data.get("detail", {}), "decision": data["reason"], "decision_message": data["message"]}
            data.update(reason="barrier_unavailable",
                        message=f"{failure}: the barrier did not open; let the vehicle through by hand or over "
                                f"the intercom (the hub opens it as soon as the I/O module answers again)")
            self.hub.emit("gate.open_failed", data)
            return
        with self.hub.store.transaction():
            self.hub.emit(EVENT_OF_ACTION[decision.action], data)
            if rt.role == GateRole.ENTRY:
                if decision.booking_id and decision.marks_arrival:
                    self._arrived(decision.booking_id, rt.id, now)
            elif decision.booking_id:
                self._left(decision.booking_id, rt.id, now)
        log.info("gate.decided gate=%s action=%s reason=%s booking=%s plate=%s trigger=%s", rt.id,
                 decision.action.value, decision.reason_code.value, decision.booking_id or "-",
                 log_ref(plate_hash) if plate_hash else "-", trigger)

    # ------------------------------------------------------------ barriers
    def _on_barrier(self, gate_id: str, ev) -> None:
        rt = self.gates[gate_id]
        if isinstance(ev, (DeviceFault, DeviceRecovered)):
            self.hub.device_event(ev)
            if isinstance(ev, DeviceRecovered) and rt.open_pending and (rt.presence or rt.role == GateRole.EXIT):
                self._owed_open(rt, "the barrier answers again and the vehicle is still waiting")
        elif isinstance(ev, BarrierPosition):
            rt.position = ev.position
        elif isinstance(ev, VehiclePresent):
            rising = ev.present and not rt.presence
            rt.presence = ev.present
            if not rising:
                return
            mono = self.hub.clock.monotonic()
            rt.presence_mono = mono
            passing = rt.last_mono is not None and mono - rt.last_mono < PASSING_S
            if rt.role == GateRole.EXIT:
                # R-G6: the exit never traps a vehicle, read or no read; a read
                # that opened it a moment ago already let this one out.
                if rt.last_open_mono is None or mono - rt.last_open_mono >= self.hub.cfg.gate.no_read_review_s:
                    now = self.hub.clock.now()
                    decision = decide_at_gate(None, GateRole.EXIT, self.book, self._site_view(), now, self.gate_settings)
                    self._carry_out(rt, decision, now, trigger="presence")
            else:
                rt.presence_handled = passing

    def _owed_open(self, rt: GateRuntime, why: str) -> None:
        """Open a gate whose opening failed while its I/O module was silent:
        recorded first, like every opening."""
        rt.open_pending = False
        rt.last_open_mono = self.hub.clock.monotonic()
        log.info("gate.owed_open gate=%s why=%r", rt.id, why)
        self.hub.emit("gate.opened", {"gate": rt.id, "role": rt.role.value, "reason": "owed_after_fault",
                                      "message": f"opened late: {why}", "trigger": "barrier_recovered"})

        def failed(reason: str) -> None:
            self.hub.emit("gate.open_failed", {
                "gate": rt.id, "role": rt.role.value, "reason": "barrier_unavailable", "trigger": "barrier_recovered",
                "message": f"{reason}: the owed opening failed again; let the vehicle through by hand or over the intercom"})

        self.hub.spawn(self._open(rt, failed))

    def _check_waiting(self, now: datetime) -> None:
        """R-G4: a vehicle on the entry loop that no read has decided on
        goes to the operator, once."""
        mono = self.hub.clock.monotonic()
        for rt in self.gates.values():
            if rt.role != GateRole.ENTRY or not rt.presence or rt.presence_handled:
                continue
            if rt.presence_mono is not None and mono - rt.presence_mono >= self.hub.cfg.gate.no_read_review_s:
                decision = decide_at_gate(None, GateRole.ENTRY, self.book, self._site_view(), now, self.gate_settings)
                self._carry_out(rt, decision, now, trigger="presence")
