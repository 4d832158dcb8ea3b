"""The hub core: one asyncio event loop owns every piece of state.

Data flows one way: drivers report readings and events; the core feeds them
to the state machines and the decision logic; what they decide goes back to
drivers as commands, to the ledgers as records and to the outbox as events.
The uplink drains the outbox beside the hardware loops and never blocks them.

Each charger is polled by its own supervised loop, so a silent charger only
ever delays itself (R-C6), and an error in one round is counted and the next
round tries again (edge/core/supervision.py). A state change and the events that
report it are one commit; every change that matters is on disk before it is
acted on (``Store.durable``), so a restart picks up where the hub stopped
(R-C9).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable

from drivers.device import DeviceHealth
from edge.core import supervision
from units import Clock, parse_rfc3339, rfc3339
from edge.core.config import HubConfig
from edge.core.sessions import Session, SessionLedger
from edge.core.store import DiskError, Store
from edge.core.supervision import Supervisor
from state_machines.connector import ACTIVE, Connector, apply_hardware, build_machine

log = logging.getLogger("hubedge.hub")

VERSION = "0.1.0"

CONNECTOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS token_list_parts (
    version INTEGER NOT NULL,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (version, part)
);
CREATE TABLE IF NOT EXISTS booking_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at);
CREATE TABLE IF NOT EXISTS connector_state (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    session_id TEXT,
    reserved_for TEXT,
    admin_unavailable TEXT,
    fault_kind TEXT,
    fault_reason TEXT,
    since TEXT NOT NULL
);
"""


class Refused(Exception):
    """An action the hub will not carry out; the message says why and what to do."""

    code = "refused"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


class NotFound(Refused):
    code = "not_found"


class Capability:
    """A part of the hub plugged into the core: card authorisation, payment
    terminals, site access (gates and bookings). It reads and changes hub
    state only through the Hub's methods and runs on the hub's event loop.
    Every method has a do-nothing default so a part implements only what it
    needs."""

    name = "capability"

    def __init__(self, hub: "Hub"):
        self.hub = hub

    async def start(self) -> None:
        """Open devices, start tasks: ``spawn_loop`` for a loop that runs as
        long as the hub, ``hub.spawn`` for a one-off."""

    async def stop(self) -> None:
        """Close devices; tasks spawned with hub.spawn or spawn_loop are cancelled by the hub."""

    def spawn_loop(self, name: str, loop: Callable[[], Awaitable[None]], *, critical: bool = True) -> None:
        """Run ``loop()``, a coroutine function that loops until the hub
        stops, supervised (edge/core/supervision.py): if it ends or raises it is
        reported and started again after a back-off, and it shows in
        `hubctl devices` as "<part>: <name>". A critical loop that stays down
        (or, once it has called ``hub.beat()``, stops calling it) withholds
        the systemd watchdog's pings, so systemd restarts the hub."""
        self.hub.supervise(f"{self.name}: {name}", loop, critical=critical)

    def tick(self, now: datetime) -> None:
        """Once a second: timeouts, retries, schedules."""

    def on_connector_changed(self, c: Connector, previous: str) -> None:
        """After every connector state change (already persisted and emitted)."""

    def on_link(self, up: bool) -> None:
        """The cloud link went up or down."""

    def status(self) -> dict:
        """Sections merged into `hubctl status` (e.g. {"gates": [...]})."""
        return {}

    def control_handlers(self) -> dict:
        """Extra control-socket commands: name -> async handler(args, caller, progress)."""
        return {}

    def booked_slot(self, connector_id: str) -> tuple[datetime, datetime] | None:
        """The slot (start, end) of the booking whose truck is at this
        connector, when this part knows of one (site power asks, R-E3)."""
        return None


# The parts of the hub, in start order. Each module exposes a Capability
# subclass; a part with nothing configured stays idle.
CAPABILITIES = (
    "edge.parts.cards.part:CardAuthorisation",
    "edge.parts.payments.part:Payments",
    "edge.parts.site.part:SiteAccess",
    "edge.parts.chargers.ocpp.part:OcppPart",
    "edge.parts.power.part:SitePower",
)


def load_capabilities(hub: "Hub") -> list[Capability]:
    import importlib

    parts = []
    for spec in CAPABILITIES:
        module_name, cls_name = spec.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # part not built into this release
            raise
        parts.append(getattr(module, cls_name)(hub))
    return parts


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


class Hub:
    def __init__(self, cfg: HubConfig, *, clock: Clock | None = None):
        from edge.core.outbox import Outbox

        self.cfg = cfg
        self.hub_id = cfg.hub.id
        self.clock = clock or Clock(rtc=cfg.hub.rtc)
        self.state_dir = cfg.resolve(cfg.storage.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.state_dir, clock=self.clock)
        self.outbox = Outbox(
            self.store,
            self.hub_id,
            clock=self.clock,
            quota_bytes=int(cfg.storage.outbox_quota_mb * 1024 * 1024),
            near_ratio=cfg.storage.outbox_near_ratio,
        )
        self.sessions = SessionLedger(self.store.db, self.hub_id, transaction=self.store.transaction)
        self.store.db.executescript(CONNECTOR_SCHEMA)

        self.connectors: dict[str, Connector] = {}
        self.places: dict[str, ConnectorPlace] = {}
        self.readings: dict[str, Any] = {}
        self.chargers: dict[str, Any] = {}
        self.devices: dict[str, DeviceHealth] = {}
        self.uplink = None
        self.downlink = None
        self.link_up = False
        self.started_mono = time.monotonic()
        self.ready = asyncio.Event()
        self._polled: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._unlocking: set[str] = set()
        self._stop_reasons: dict[str, str] = {}  # session id -> why it is being stopped
        self._idle_reported: set[str] = set()
        self._pending_unavailable: dict[str, str] = {}
        self._starts_resumed: set[str] = set()
        self._faults_reported: set[str] = set()
        self._meter_at: datetime | None = None  # when the last meter samples went out
        self.session_started_hooks: list[Callable[[Session], Awaitable[None] | None]] = []
        self.session_ended_hooks: list[Callable[[Session], Awaitable[None] | None]] = []
        # Called inside the commit that records a session's start or end,
        # each in a savepoint of its own: records and events that belong to
        # that step (a booking charging, fulfilled), no I/O. A crash keeps
        # both or neither; a hook that fails leaves the session's commit as
        # it is.
        self.session_started_records: list[Callable[[Session], None]] = []
        self.session_ended_records: list[Callable[[Session], None]] = []
        self.tokens_applied_hooks: list[Callable[[Any], None]] = []  # called with the ApplyResult, on the loop
        self._tokens_lock = asyncio.Lock()
        self._bookings_lock = asyncio.Lock()
        self.stopping = False
        self.supervisor = Supervisor(clock=self.clock, spawn=self._spawn, alarm=self._task_alarm,
                                     stopping=lambda: self.stopping)
        self._writer_state = ("ok", self.clock.now())
        self.events_put = 0
        self.last_sync: dict[str, datetime] = {}
        self._build_connectors()
        self._open_sync_stores()
        self.capabilities: list[Capability] = load_capabilities(self)
        for alarm in self.store.alarms + self.tokens.alarms:
            self.emit("device.alarm", {"alarm": "store_recovered", "message": alarm})

    # ------------------------------------------------------------------ setup
    def _build_connectors(self) -> None:
        persisted = {
            row[0]: row
            for row in self.store.db.execute(
                "SELECT id, state, session_id, reserved_for, admin_unavailable, fault_kind, fault_reason, since FROM connector_state"
            )
        }
        open_sessions = {s.connector: s for s in self.sessions.open_sessions()}
        for ch in self.cfg.chargers:
            if ch.protocol != "modbus":
                self._build_charger(ch)
            else:
                self._build_modbus(ch)
            for ref in ch.connectors:
                bay = self.cfg.bay_for_connector(ref.id)
                index = ref.index if ref.index is not None else ref.evse
                self.places[ref.id] = ConnectorPlace(ch.id, index, bay.id if bay else None, ref.free_vend)
                row = persisted.get(ref.id)
                c = Connector(ref.id)
                if row:
                    _, state, _sid, reserved, admin, fkind, freason, since = row
                    c.reserved_for = reserved
                    c.admin_unavailable = admin
                    c.fault_reason = freason
                    c.since = parse_rfc3339(since)
                    c.fault_kind = fkind
                else:
                    state = "Available"
                    c.fault_kind = None
                    c.since = self.clock.now()
                s = open_sessions.get(ref.id)
                c.session_id = s.id if s else None
                build_machine(c, state)
                self.connectors[ref.id] = c

    def _build_charger(self, ch) -> None:
        """A charger of a protocol part (OCPP ...), built by the factory
        its part registered in PROTOCOLS; it reports through this hub as
        its ChargerSink."""
        import edge.parts.chargers.ocpp.part  # noqa: F401  (registers ocpp1.6 and ocpp2.0.1)
        from edge.core.charger import PROTOCOLS

        charger = PROTOCOLS[ch.protocol](self, ch)
        self.chargers[ch.id] = charger
        if charger.health is not None:
            self.devices[ch.id] = charger.health

    def _build_modbus(self, ch) -> None:
        from drivers.charger_modbus import ChargerDriver
        from drivers.register_map import load_register_map

        host, port = ch.address.rsplit(":", 1)
        rmap = load_register_map(self.cfg.resolve(ch.register_map))
        driver = ChargerDriver(
            ch.id,
            host,
            int(port),
            ch.unit,
            rmap,
            {c.id: c.index - 1 for c in ch.connectors},  # config counts from 1, the driver from 0
            timeout=self.cfg.charging.modbus_timeout_s,
            fault_after=self.cfg.charging.fault_after_polls,
        )
        self.chargers[ch.id] = driver
        self.devices[ch.id] = driver.health

    def _persist(self, c: Connector) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO connector_state VALUES (?,?,?,?,?,?,?,?)",
                (
                    c.id,
                    c.state,
                    c.session_id,
                    c.reserved_for,
                    c.admin_unavailable,
                    c.fault_kind,
                    c.fault_reason,
                    rfc3339(c.since or self.clock.now()),
                ),
            )

    # ----------------------------------------------------------------- events
    def emit(self, type_: str, data: dict) -> None:
        """Record an event in the outbox (the uplink sends it once durable).
        Inside a store.transaction() it commits with the state change it
        reports, or not at all."""
        with self.store.transaction():
            env = self.outbox.put(type_, data, offline=not self.link_up)
            self.store.after_commit(lambda: self._emitted(type_, data, env.seq))
        alarm = self.outbox.take_quota_alarm()
        if alarm:
            self.outbox.put("device.alarm", alarm, offline=not self.link_up)
            self.events_put += 1

    def _emitted(self, type_: str, data: dict, seq: int) -> None:
        if type_ == "sync.applied" and data.get("kind"):
            self.last_sync[data["kind"]] = self.clock.now()
        self.events_put += 1
        brief = " ".join(f"{k}={data[k]}" for k in ("connector", "status", "session", "device", "reason", "action") if data.get(k) is not None)
        log.info("event type=%s seq=%s %s", type_, seq, brief)

    def _publish_state(self, c: Connector) -> None:
        if self.uplink is not None:
            self.uplink.publish_state(c.id, self.connector_view(c))

    def connector_view(self, c: Connector) -> dict:
        r = self.readings.get(c.id)
        if c.state == "Faulted" and c.fault_kind == "comm":
            r = None  # the last reading is stale while the charger is silent
        place = self.places[c.id]
        return {
            "v": 1,
            "connector": c.id,
            "bay": place.bay,
            "status": c.state,
            "since": rfc3339(c.since) if c.since else None,
            "session": c.session_id,
            "reserved_for": c.reserved_for,
            "unavailable_reason": c.admin_unavailable,
            "fault": c.fault_reason if c.state == "Faulted" else None,
            "power_w": getattr(r, "power_w", None),
            "energy_wh": getattr(r, "energy_wh", None),
            "soc": getattr(r, "soc", None),
            "ts": rfc3339(self.clock.now()),
        }

    def _changed(self, c: Connector, previous: str, reason: str | None = None) -> None:
        """Record a state change the machine made: the state and its event in
        one commit (joining the caller's transaction, if any); the retained
        state and the parts hear of it once that commit stands. Callers make
        the change inside ``_changing(c)``."""
        c.since = self.clock.now()
        data = {"connector": c.id, "status": c.state, "previous": previous}
        if reason:
            data["reason"] = reason
        if c.session_id:
            data["session"] = c.session_id
        with self.store.transaction():
            self._persist(c)
            self.emit("connector.status", data)
            self.store.after_commit(lambda: self._after_change(c, previous))

    def _after_change(self, c: Connector, previous: str) -> None:
        self._publish_state(c)
        if c.state != "Finishing":
            self._idle_reported.discard(c.id)
        for part in self.capabilities:
            try:
                part.on_connector_changed(c, previous)
            except Exception:
                log.exception("capability.failed part=%s hook=connector_changed", part.name)

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

    # ------------------------------------------------------------------ polls
    async def _poll_once(self, charger_id: str) -> None:
        """One round of a charger's polling (a supervised loop: an error in
        applying the readings is counted and the next round tries again)."""
        try:
            try:
                readings = await self.chargers[charger_id].poll()
            except Exception as exc:  # ChargerUnavailable, or a driver bug: the charger is not answering
                self._poll_failed(charger_id, str(exc) or type(exc).__name__)
            else:
                self._poll_ok(charger_id, readings)
        finally:
            self._polled.add(charger_id)
            if len(self._polled) == len(self.chargers):
                self.ready.set()

    def _poll_stall_s(self) -> float:
        """How long a charger's polling may go without a good round before
        the watchdog counts it as stuck: ten rounds and three timeouts."""
        charging = self.cfg.charging
        return max(5.0, 10 * charging.poll_interval_s + 3 * charging.modbus_timeout_s)

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

    # -------------------------------------------------------------- sessions
    def _session_event(self, s: Session) -> dict:
        d = {
            "session": s.id,
            "connector": s.connector,
            "bay": s.bay,
            "method": s.method,
            "token": s.token_masked,
            "meter_start_wh": s.meter_start_wh if s.meter_start_wh is not None else 0,
            "started_at": rfc3339(s.started_at),
        }
        if s.booking_id:
            d["booking"] = s.booking_id
        if s.payment_id:
            d["payment"] = s.payment_id
        return d

    async def start_session(
        self,
        connector_id: str,
        *,
        method: str,
        token: str | None = None,
        token_masked: str | None = None,
        booking_id: str | None = None,
        payment_id: str | None = None,
        tariff=None,
        extra: dict | None = None,
    ) -> Session:
        c = self.connectors.get(connector_id)
        if c is None:
            raise NotFound(f"no connector {connector_id!r} at this hub; `hubctl status` lists them")
        if c.state != "Preparing":
            raise Refused(f"connector {connector_id} is {c.state}, not Preparing: plug the truck in first (R-C2)")
        if c.session_id:
            raise Refused(f"connector {connector_id} already has session {c.session_id}")
        ok, why = self.outbox.accepting_sessions()
        if not ok:
            raise Refused(why, code="outbox_full")
        place = self.places[connector_id]
        reading = self.readings.get(connector_id)
        now = self.clock.now()
        s = Session(
            id=self.sessions.new_id(),
            hub=self.hub_id,
            connector=connector_id,
            bay=place.bay,
            method=method,
            status="starting",
            started_at=now,
            token=token,
            token_masked=token_masked,
            booking_id=booking_id,
            payment_id=payment_id,
            meter_start_wh=getattr(reading, "energy_wh", None),
            signed_start=getattr(reading, "signed_meter_value", None),
            currency=self.cfg.hub.currency,
            extra=extra or {},
        )
        if tariff is not None:
            s.tariff_id = tariff.id
            s.price_per_kwh = tariff.price_per_kwh
            s.vat_rate = tariff.vat_rate
            s.currency = tariff.currency
        # Write-ahead: the ledger knows about the start before the charger
        # does; session and connector in one commit, on disk before the
        # charger hears of it.
        with _changing(c), self.store.transaction():
            c.session_id = s.id
            self.sessions.insert(s, now)
            self._persist(c)
        log.info("session.starting session=%s connector=%s method=%s", s.id, connector_id, method)
        try:
            await self.store.durable()
        except DiskError as exc:
            self._fail_start(c, s, f"the hub could not record the start on disk: {exc}")
            raise Refused(f"the start was not sent: {exc}", code="disk_failed") from None
        try:
            await self.chargers[place.charger_id].start(connector_id)
        except Exception as exc:
            self._fail_start(c, s, f"charger did not accept the start: {exc}")
            raise Refused(f"charger {place.charger_id} did not accept the start ({exc}); try again or call a technician") from None
        return s

    def _fail_start(self, c: Connector, s: Session, reason: str) -> None:
        """A session that never charged ends as failed: its row, the
        connector and session.stopped in one commit."""
        s.status = "failed"
        s.stop_reason = reason
        s.stopped_at = self.clock.now()
        s.energy_wh = 0
        with _changing(c), self.store.transaction():
            self.sessions.update(s, self.clock.now())
            if c.session_id == s.id:
                c.session_id = None
                self._persist(c)
            self.emit("session.stopped", self._stopped_event(s))
            self._record_hooks(self.session_ended_records, s)
            self.store.after_commit(lambda: self._run_hooks(self.session_ended_hooks, s))

    def _stopped_event(self, s: Session) -> dict:
        d = {
            "session": s.id,
            "connector": s.connector,
            "bay": s.bay,
            "reason": s.stop_reason or "unknown",
            "status": s.status,
            "meter_stop_wh": s.meter_stop_wh if s.meter_stop_wh is not None else (s.meter_start_wh or 0),
            "energy_wh": s.energy_wh or 0,
            "stopped_at": rfc3339(s.stopped_at or self.clock.now()),
        }
        if s.cost_gross is not None:
            d["cost"] = {"amount": str(s.cost_gross), "currency": s.currency}
        if s.signed_stop:
            d["signed_meter_value"] = s.signed_stop
        return d

    def _end_session(self, c: Connector, s: Session, reason: str, reading) -> None:
        """The session's row with its energy, the connector and
        session.stopped (R-P9 invoices from it) in one commit."""
        now = self.clock.now()
        if s.status == "starting":
            self._fail_start(c, s, "truck unplugged before charging started" if reason == "ev_disconnected" else reason)
            c.last_session_id = None
            return
        s.status = "stopped"
        s.stop_reason = reason
        s.stopped_at = now
        stop = reading.energy_wh if reading.energy_wh is not None else s.meter_start_wh
        s.meter_stop_wh = stop
        s.signed_stop = getattr(reading, "signed_meter_value", None)
        start = s.meter_start_wh if s.meter_start_wh is not None else stop
        s.energy_wh = max(0, stop - start) if stop is not None else 0
        with _changing(c), self.store.transaction():
            self.sessions.update(s, now)
            c.last_session_id = s.id
            c.session_id = None
            self._persist(c)
            self.emit("session.stopped", self._stopped_event(s))
            self._record_hooks(self.session_ended_records, s)
            self.store.after_commit(lambda: self._session_ended(c, s))

    def _session_ended(self, c: Connector, s: Session) -> None:
        log.info("session.stopped session=%s connector=%s reason=%s energy_wh=%d", s.id, c.id, s.stop_reason, s.energy_wh)
        self._run_hooks(self.session_ended_hooks, s)

    async def stop_session(self, session_id: str, reason: str = "remote") -> Session:
        s = self.sessions.get(session_id)
        if s is None:
            raise NotFound(f"no session {session_id!r}; `hubctl sessions` lists them")
        if not s.is_open:
            raise Refused(f"session {session_id} has already ended ({s.status}, {s.stop_reason})", code="not_open")
        c = self.connectors[s.connector]
        self._stop_reasons[s.id] = reason
        place = self.places[s.connector]
        if s.status == "starting" and c.state == "Preparing":
            self._fail_start(c, s, f"stopped before charging began ({reason})")
            self._spawn(self._send(place.charger_id, "stop", s.connector))
            self._stop_reasons.pop(s.id, None)
            return s
        try:
            await self.chargers[place.charger_id].stop(s.connector)
        except Exception as exc:
            raise Refused(
                f"charger {place.charger_id} did not take the stop command ({exc}); the hub keeps the session open — try again, or unplug locally",
                code="device_unavailable",
            ) from None
        log.info("session.stopping session=%s reason=%s", s.id, reason)
        return s

    def _record_hooks(self, hooks, s: Session) -> None:
        for hook in hooks:
            try:
                with self.store.transaction():
                    hook(s)
            except Exception:
                log.exception("hook.failed session=%s", s.id)

    def _run_hooks(self, hooks, s: Session) -> None:
        for hook in hooks:
            try:
                res = hook(s)
                if asyncio.iscoroutine(res):
                    self._spawn(res)
            except Exception:
                log.exception("hook.failed session=%s", s.id)

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

    # ----------------------------------------------------------------- ticks
    def _tick_once(self) -> None:
        self.tick(self.clock.now())
        self.supervisor.check()

    def tick(self, now: datetime) -> None:
        charging = self.cfg.charging
        for c in self.connectors.values():
            # Start that never produced energy: end it, so no hold or token stays tied up.
            if c.session_id and c.state == "Preparing":
                s = self.sessions.get(c.session_id)
                if s and s.status == "starting" and (now - s.started_at).total_seconds() > charging.start_timeout_s:
                    self._fail_start(c, s, f"the truck did not start charging within {charging.start_timeout_s:.0f} s")
                    self._spawn(self._send(self.places[c.id].charger_id, "stop", c.id))
            # R-C8: idle in bay.
            if c.state == "Finishing" and c.since and c.id not in self._idle_reported:
                idle = (now - c.since).total_seconds()
                if idle >= charging.idle_in_bay_after_s:
                    self.emit(
                        "connector.idle_in_bay",
                        {"connector": c.id, "bay": self.places[c.id].bay, "idle_s": int(idle), "session": c.last_session_id},
                    )
                    self._idle_reported.add(c.id)
        self._apply_maintenance(now)
        self._meter_samples(now)
        for part in self.capabilities:
            try:
                part.tick(now)
            except Exception:
                log.exception("capability.failed part=%s hook=tick", part.name)

    def _meter_samples(self, now: datetime) -> None:
        """hub/{id}/telemetry/meter: energy and power of every charging
        connector, every [charging] meter_interval_s, on the outbox's
        telemetry stream, the one the quota sheds oldest first (R-M6)."""
        if self._meter_at is not None and (now - self._meter_at).total_seconds() < self.cfg.charging.meter_interval_s:
            return
        samples = []
        for cid, c in self.connectors.items():
            r = self.readings.get(cid)
            if c.state not in ACTIVE or r is None or r.energy_wh is None:
                continue  # a charger that has not said its meter yet (an OCPP station before MeterValues)
            sample = {"connector": cid, "ts": rfc3339(now), "energy_wh": int(r.energy_wh), "power_w": float(r.power_w or 0)}
            if getattr(r, "soc", None) is not None:
                sample["soc"] = float(r.soc)
            if c.session_id:
                sample["session"] = c.session_id
            samples.append(sample)
        # Nothing charging: the next session's first sample goes at once.
        self._meter_at = now if samples else None
        if samples:
            self.outbox.put_telemetry({"samples": samples})

    def _apply_maintenance(self, now: datetime) -> None:
        from edge.cloud.downlink import maintenance_in_force, maintenance_windows

        windows = maintenance_windows(self.store)
        for c in self.connectors.values():
            w = maintenance_in_force(windows, c.id, now)
            tag = f"maintenance:{w['id']}" if w else None
            if w and c.admin_unavailable != tag and not (c.admin_unavailable or "").startswith("maintenance:"):
                if c.session_id:
                    self._pending_unavailable[c.id] = tag
                else:
                    self._set_unavailable(c, tag)
            elif not w and (c.admin_unavailable or "").startswith("maintenance:"):
                self.set_availability(c.id, True, "maintenance window ended")

    # ------------------------------------------------------------- commands
    async def _send(self, charger_id: str, command: str, connector_id: str) -> None:
        try:
            await getattr(self.chargers[charger_id], command)(connector_id)
        except Exception as exc:
            log.warning("charger.command_failed charger=%s command=%s connector=%s error=%s", charger_id, command, connector_id, exc)

    def spawn(self, coro) -> asyncio.Task:
        """Run a one-off coroutine on the hub's loop; cancelled when the hub
        stops, and a failure is logged rather than lost. A loop that runs as
        long as the hub goes through ``supervise`` instead."""
        return self._spawn(coro)

    def supervise(self, name: str, loop: Callable[[], Awaitable[None]], *, critical: bool = True) -> asyncio.Task:
        """Run ``loop()`` until the hub stops, restarted if it ends
        (Capability.spawn_loop says more)."""
        return self.supervisor.run(name, loop, critical=critical)

    def beat(self) -> None:
        """Called by a supervised loop once per round of work: its heartbeat."""
        supervision.beat()

    def health_problems(self) -> list[str]:
        """Why the hub is not making progress, in sentences; empty when it
        is. The daemon pings the systemd watchdog only while this is empty."""
        problems = self.supervisor.problems()
        disk = self.store.disk_problem()
        return problems + ([f"store writer: {disk}"] if disk else [])

    def _task_alarm(self, code: str, message: str) -> None:
        self.emit("device.alarm", {"alarm": code, "message": message})

    def device_event(self, ev) -> None:
        """A driver's DeviceFault / DeviceRecovered, on the loop: the device
        shows in `hubctl devices` and the cloud gets device.fault/recovered."""
        from drivers.device import DeviceFault, DeviceRecovered

        if isinstance(ev, DeviceFault):
            self.emit("device.fault", {"device": ev.device_id, "class": ev.device_class, "reason": ev.reason})
        elif isinstance(ev, DeviceRecovered):
            health = self.devices.get(ev.device_id)
            down = health.last_down_s if health and health.last_down_s is not None else 0
            self.emit("device.recovered", {"device": ev.device_id, "class": ev.device_class, "down_for_s": max(0, round(down))})

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        try:
            self._tasks.remove(task)
        except ValueError:
            pass
        if not task.cancelled() and task.exception() is not None:
            log.error("task.failed error=%r", task.exception())

    # ---------------------------------------------------------------- cloud
    def _start_cloud(self) -> None:
        from edge.cloud.downlink import Downlink

        loop = asyncio.get_running_loop()
        keys = self._command_keys()
        from datetime import timedelta

        cloud = self.cfg.cloud
        self.downlink = Downlink(self.hub_id, self.store, clock=self.clock, reply=self._reply, on_event=self.emit,
                                 keys=keys, allow_unsigned=cloud.allow_unsigned, currency=self.cfg.hub.currency,
                                 command_max_age=timedelta(seconds=cloud.command_max_age_s),
                                 clock_skew=timedelta(seconds=cloud.clock_skew_s))
        self._register_commands()
        if not self.cfg.cloud.broker:
            log.info("cloud.disabled reason=no_broker_configured")
            return
        if not keys and cloud.allow_unsigned:
            log.warning("cloud.commands_unverified reason=allow_unsigned action=%r",
                        "syncs and commands from the broker are obeyed unsigned: for a test bench only; on a site "
                        "set [cloud] command_key_file to the cloud's command key for this hub (docs/deploy.md)")
        elif not keys:
            log.warning("cloud.commands_refused reason=no_command_key_file action=%r",
                        "every sync and command from the cloud is refused (bad_signature): set [cloud] "
                        "command_key_file to the cloud's command key for this hub (docs/deploy.md)")
        from edge.cloud.uplink import Uplink

        tls = None
        if self.cfg.cloud.broker.startswith("mqtts://"):
            tls = {
                "ca": str(self.cfg.resolve(self.cfg.cloud.ca_file)),
                "cert": str(self.cfg.resolve(self.cfg.cloud.cert_file)),
                "key": str(self.cfg.resolve(self.cfg.cloud.key_file)),
            }
        self.uplink = Uplink(
            self.hub_id,
            self.cfg.cloud.broker,
            client_id=self.cfg.cloud.client_id or f"hubedge-{self.hub_id}",
            outbox=self.outbox,
            clock=self.clock,
            tls=tls,
            version=VERSION,
            on_message=self._on_cloud_message,
            on_link=self._on_link,
            on_session=self._on_cloud_session,
            loop=loop,
            keepalive=self.cfg.cloud.keepalive_s,
        )
        self.uplink.start()

    def _command_keys(self) -> tuple[bytes, ...]:
        """The cloud's command keys (edge/cloud/signing.py), none when not configured.
        The config check has read the file already; a file spoilt since then
        stops the start with the same message."""
        from edge.core.config import ConfigError
        from edge.cloud.signing import KeyFileError, load_keys

        if not self.cfg.cloud.command_key_file:
            return ()
        try:
            keys = load_keys(self.cfg.resolve(self.cfg.cloud.command_key_file))
        except KeyFileError as exc:
            raise ConfigError(self.cfg.source or "<config>", [f"cloud.command_key_file: {exc}"]) from None
        log.info("cloud.commands_signed keys=%d", len(keys))
        return keys

    def _reply(self, payload: dict) -> None:
        if self.uplink is not None:
            self.uplink.publish_reply(payload)

    def _on_cloud_message(self, topic: str, payload: bytes, sig: str | None) -> asyncio.Task | None:
        # The uplink acknowledges the message to the broker once this task
        # has applied and recorded it durably (edge/cloud/uplink.py).
        if self.downlink is not None:
            return self._spawn(self.downlink.handle(topic, payload, sig))
        return None

    def _on_cloud_session(self, reason: str) -> None:
        # At start and after the link was away, the cloud resends what the
        # broker may not have kept (edge/cloud/downlink.py: ask_resync).
        if self.downlink is not None:
            self.downlink.ask_resync(reason, held={"tokens": {"version": self.tokens.version}})

    def _on_link(self, up: bool) -> None:
        self.link_up = up
        log.info("cloud.link up=%s", up)
        if up:
            for c in self.connectors.values():
                self._publish_state(c)
        for part in self.capabilities:
            try:
                part.on_link(up)
            except Exception:
                log.exception("capability.failed part=%s hook=link", part.name)

    def _register_commands(self) -> None:
        """The cloud's commands (docs/cloud-contract.md). Their args were
        checked against edge/cloud/schemas/cmd/ before they get here; a refusal is
        answered in the cloud's terms (reply codes of edge/cloud/schemas/reply.json,
        no advice meant for a technician's hubctl)."""
        from edge.cloud.downlink import Rejected

        def refusal(exc: Refused) -> Rejected:
            text = "; ".join(part for part in str(exc).split("; ") if "hubctl" not in part)
            if isinstance(exc, NotFound):
                return Rejected("not_found", text, {"reason": exc.code})
            return Rejected("refused", text, {"reason": exc.code})

        def connector_of(cid: str) -> Connector:
            if cid not in self.connectors:
                raise Rejected("not_found", f"no connector {cid!r} at hub {self.hub_id}: it has "
                                            f"{', '.join(self.connectors) or 'none'}; nothing was done")
            return self.connectors[cid]

        async def unlock_connector(msg: dict) -> dict:
            cid = msg["args"]["connector"]
            c = connector_of(cid)
            if c.session_id:
                raise Rejected("refused", f"connector {cid} has session {c.session_id} running: send stop_session "
                                          f"for it first, then unlock_connector", {"session": c.session_id})
            try:
                ok = await self.unlock(cid)
            except Refused as exc:
                raise refusal(exc)
            if not ok:
                raise Rejected("unlock_failed", f"connector {cid} stayed locked; send a technician")
            self.audit("cloud", "connector.unlock", cid, "", "done")
            return {"connector": cid}

        async def set_availability(msg: dict) -> dict:
            args = msg["args"]
            cid, available = args["connector"], args["available"]
            connector_of(cid)
            try:
                with self.store.transaction():  # the change and its audit event, one commit
                    result = self.set_availability(cid, available, str(args.get("reason") or "cloud command"))
                    self.audit("cloud", "connector.available" if available else "connector.unavailable", cid,
                               str(args.get("reason") or ""), result)
            except Refused as exc:
                raise refusal(exc)
            return {"connector": cid, "message": result}

        async def stop_session(msg: dict) -> dict:
            sid = msg["args"]["session"]
            if self.sessions.get(sid) is None:
                raise Rejected("not_found", f"no session {sid!r} at hub {self.hub_id}; nothing was done")
            try:
                await self.stop_session(sid, reason="remote")
            except Refused as exc:
                raise refusal(exc)
            self.audit("cloud", "session.stop", sid, "", "stopping")
            return {"session": sid}

        async def resync(msg: dict) -> dict:
            # The cloud asks for the hub's state again: retained status and
            # every connector's state are published anew.
            for c in self.connectors.values():
                self._publish_state(c)
            self.audit("cloud", "hub.resync", self.hub_id, "", "states republished")
            return {"connectors": len(self.connectors)}

        self.downlink.register("cmd:resync", resync)
        self._register_sync_stores()
        self.downlink.register("cmd:unlock_connector", unlock_connector)
        self.downlink.register("cmd:set_availability", set_availability)
        self.downlink.register("cmd:stop_session", stop_session)

    # ------------------------------------------------------- synced stores
    def _plate_secret(self) -> bytes:
        """The site's key for hashing plates (R-G8): from the configured file,
        or made once and kept in the state directory (mode 0600)."""
        from edge.core.store import atomic_write

        if self.cfg.hub.plate_secret_file:
            return self.cfg.resolve(self.cfg.hub.plate_secret_file).read_bytes().strip()
        path = self.state_dir / "plate.key"
        if not path.exists():
            atomic_write(path, os.urandom(32).hex().encode(), mode=0o600)
        return path.read_bytes().strip()

    def _open_sync_stores(self) -> None:
        from datetime import timedelta as _td

        from edge.parts.site.bookings import Bay, BookingBook, BookingRules
        from edge.parts.cards.tokens import TokenStore

        self.tokens = TokenStore(self.state_dir / "tokens.sqlite3", clock=self.clock)
        bays = [
            Bay(b.id, b.connector_type, b.side, b.length_m, b.bookable, b.connector)
            for b in self.cfg.bays
        ]
        self.bookings = BookingBook(bays, self._plate_secret(), BookingRules(horizon=_td(days=self.cfg.bookings.horizon_days)))
        try:
            # The last full write of the book, then every lifecycle change
            # journalled since (in order): nothing acknowledged is lost to a
            # power cut between two full writes.
            docs = {d["id"]: d for d in self.store.documents("bookings").all()}
            for _id, doc in self.store.db.execute("SELECT id, doc FROM booking_journal ORDER BY seq"):
                docs[_id] = json.loads(doc)
            self.bookings.load(docs.values())
        except Exception as exc:
            self.emit("device.alarm", {"alarm": "bookings_unreadable", "message": f"stored bookings could not be loaded ({exc}); ask the cloud to resend with hubctl resync"})

    def _register_sync_stores(self) -> None:
        """Token lists (R-A3) and bookings (R-B1) arrive here and are kept;
        the card and gate logic read them from these stores."""
        from edge.cloud.downlink import Rejected

        async def tokens(msg: dict) -> dict:
            # A full list of a million tokens takes seconds: off the loop,
            # one list at a time and in the order they arrived (a delta must
            # not overtake the list it builds on).
            async with self._tokens_lock:
                msg = self._token_list_part(msg)
                if msg.get("staged"):
                    return msg  # a part of a chunked full list, kept until the last one
                result = await asyncio.to_thread(self.tokens.apply, msg)
            if result.ok:
                for hook in self.tokens_applied_hooks:
                    try:
                        hook(result)
                    except Exception:
                        log.exception("hook.failed hook=tokens_applied")
            if not result.ok:
                raise Rejected("rejected", "; ".join(result.reasons[:5]) + (f" (+{len(result.reasons) - 5} more)" if len(result.reasons) > 5 else ""))
            return {"version": result.version, "counts": {"upserted": result.upserted, "removed": result.removed}}

        async def bookings(msg: dict) -> dict:
            outcome = self.bookings.apply_sync(msg, self.clock.now())
            if not outcome.ok:  # the schema check lets none through: kept in the reply codes all the same
                raise Rejected("wrong_version" if outcome.code == "unsupported_version" else "schema", outcome.reason)
            await self.save_bookings()
            results = [
                {"booking": r.booking_id, "op": r.op, "ok": r.accepted, "code": r.code, "reason": r.reason}
                for r in outcome.results
            ]
            for r in outcome.refused:
                self.emit("booking.rejected", {"booking": r.booking_id, "op": r.op, "code": r.code, "reason": r.reason})
            accepted = sum(1 for r in outcome.results if r.accepted)
            return {"results": results, "counts": {"accepted": accepted, "refused": len(results) - accepted}}

        self.downlink.register("tokens", tokens)
        self.downlink.register("bookings", bookings)

    def journal_booking(self, booking_id: str) -> None:
        """Record one booking's current state at once (a small SQLite append,
        durable with the store's next group commit); the next full write of
        the book folds the journal in."""
        b = self.bookings.get(booking_id)
        if b is None:
            return
        with self.store.transaction() as db:
            db.execute("INSERT INTO booking_journal (id, doc) VALUES (?, ?)",
                       (b.id, json.dumps(b.to_document(), separators=(",", ":"))))

    def _token_list_part(self, msg: dict) -> dict:
        """A full token list larger than one MQTT message arrives in parts
        (`part` 1..`parts` of one `version`): each is kept durably; the last
        one brings them together and the list applies whole (R-A3, R-M3).
        Anything else passes through unchanged."""
        from edge.cloud.downlink import Rejected

        parts = msg.get("parts")
        if parts is None:
            return msg
        part = msg.get("part")
        if msg.get("kind") != "full" or not isinstance(parts, int) or not isinstance(part, int) \
                or isinstance(parts, bool) or isinstance(part, bool) or not 1 <= part <= parts <= 10_000:
            raise Rejected("schema", "a chunked token list is a full list with whole numbers 1 <= part <= parts <= 10000")
        version = msg.get("version")
        db = self.store.db
        with self.store.transaction():
            # Parts of an older version are dropped: a newer list replaces it.
            db.execute("DELETE FROM token_list_parts WHERE version != ?", (version,))
            db.execute("INSERT OR REPLACE INTO token_list_parts (version, part, parts, body) VALUES (?,?,?,?)",
                       (version, part, parts, json.dumps({"upsert": msg.get("upsert") or [], "remove": msg.get("remove") or []})))
        have = db.execute("SELECT COUNT(*) FROM token_list_parts WHERE version = ? AND parts = ?", (version, parts)).fetchone()[0]
        if have < parts:
            return {"staged": True, "version": version, "part": part, "parts": parts, "received": have,
                    "message": f"part {part} of {parts} of token list version {version} kept; the list applies when all have come"}
        upsert: list = []
        remove: list = []
        for (body,) in db.execute("SELECT body FROM token_list_parts WHERE version = ? ORDER BY part", (version,)):
            b = json.loads(body)
            upsert += b["upsert"]
            remove += b["remove"]
        with self.store.transaction():
            db.execute("DELETE FROM token_list_parts WHERE version = ?", (version,))
        whole = {k: v for k, v in msg.items() if k not in ("part", "parts")}
        whole.update(upsert=upsert, remove=remove)
        return whole

    async def save_bookings(self) -> None:
        """The one writer of the stored bookings. The book is snapshotted on
        the loop and written off it (10,000 bookings are megabytes of JSON,
        and the atomic document storage rewrites the whole file); writes
        never overlap, and a change made while one runs is written by the
        next."""
        from edge.parts.site.bookings import documents_of

        async with self._bookings_lock:
            journalled = self.store.db.execute("SELECT COALESCE(MAX(seq), 0) FROM booking_journal").fetchone()[0]
            snapshot = self.bookings.snapshot()
            docs = await asyncio.to_thread(documents_of, snapshot)

            def write() -> None:
                with self.store.documents_batch("bookings") as db:
                    db.truncate()
                    db.insert_multiple(docs)

            await asyncio.to_thread(write)
            # The file is written by the store's writer: the journal it folds
            # in may go only once the file is on disk.
            await self.store.durable()
            with self.store.transaction() as db:
                db.execute("DELETE FROM booking_journal WHERE seq <= ?", (journalled,))

    async def request_resync(self, user: str, progress, timeout: float = 60.0) -> dict:
        """Ask the cloud for a full resend of every synced kind and follow
        which have arrived (sync.applied) until all have or the time is up."""
        from edge.cloud.downlink import SYNC_KINDS

        asked_at = self.clock.now()
        with self.store.transaction():  # the request and its audit, one commit
            if self.downlink is not None:
                self.downlink.ask_resync("technician", requested_by=user, held={"tokens": {"version": self.tokens.version}})
            else:
                self.emit("sync.resync_requested", {"kinds": list(SYNC_KINDS), "requested_by": user, "reason": "technician"})
            self.audit(user, "hub.resync", self.hub_id, "", "requested")
        deadline = time.monotonic() + timeout
        done: list[str] = []
        while True:
            done = [k for k in SYNC_KINDS if self.last_sync.get(k, asked_at) > asked_at]
            await progress({"received": done, "waiting": [k for k in SYNC_KINDS if k not in done], "link": self.link_up})
            if len(done) == len(SYNC_KINDS) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        return {"received": done, "complete": len(done) == len(SYNC_KINDS), "link": self.link_up}

    # ----------------------------------------------------------------- audit
    def audit(self, user: str, action: str, target: str, reason: str, result: str) -> None:
        """R-T1: every action is an audit.action event synced to the cloud, and
        a row of the append-only audit table that `hubctl audit` reads (the
        event leaves the outbox once delivered); both in one commit."""
        with self.store.transaction() as db:
            db.execute("INSERT INTO audit_log (at, user, action, target, reason, result) VALUES (?,?,?,?,?,?)",
                       (rfc3339(self.clock.now()), user, action, target, reason, result))
            self.emit("audit.action", {"user": user, "action": action, "target": target, "reason": reason, "result": result})

    def audit_entries(self, *, since: datetime | None = None, user: str | None = None, limit: int = 200) -> list[dict]:
        """The audited actions, newest first."""
        where, args = [], []
        if since is not None:
            where.append("at >= ?")
            args.append(rfc3339(since))
        if user:
            where.append("user = ?")
            args.append(user)
        sql = "SELECT at, user, action, target, reason, result FROM audit_log"
        sql += (" WHERE " + " AND ".join(where)) if where else ""
        rows = self.store.db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, int(limit))).fetchall()
        return [dict(zip(("at", "user", "action", "target", "reason", "result"), r)) for r in rows]

    # ------------------------------------------------------------------ views
    def status(self) -> dict:
        now = self.clock.now()
        connectors = []
        for cid, c in self.connectors.items():
            v = self.connector_view(c)
            s = self.sessions.get(c.session_id) if c.session_id else None
            if s:
                r = self.readings.get(cid)
                energy = getattr(r, "energy_wh", None)
                v["session_energy_wh"] = max(0, energy - (s.meter_start_wh or 0)) if energy is not None else None
                v["session_method"] = s.method
            connectors.append(v)
        return {
            "hub": self.hub_id,
            "version": VERSION,
            "ts": rfc3339(now),
            "timezone": self.cfg.hub.timezone,
            "uptime_s": round(time.monotonic() - self.started_mono),
            "ready": self.ready.is_set(),
            "clock": self.clock.view(),
            "connectors": connectors,
            "devices": self.device_views(),
            "cloud": self.cloud_view(),
            "outbox": self.outbox_view(),
            **self._part_sections(),
        }

    def device_views(self) -> list[dict]:
        """`hubctl devices`: every device with the connectors it serves, then
        the hub's own tasks and the store's writer (class ``task``)."""
        served: dict[str, list[str]] = {}
        for cid, place in self.places.items():
            served.setdefault(place.charger_id, []).append(cid)
        for t in self.cfg.terminals:
            served[t.id] = list(t.connectors)
        for r in self.cfg.readers:
            served[r.id] = [r.connector]
        rows = [d.as_dict() for d in self.devices.values()] + self.supervisor.views() + [self._writer_view()]
        return [{**row, "connectors": served.get(row["device"], [])} for row in rows]

    def _writer_view(self) -> dict:
        w = self.store.writer_view()
        problem = self.store.disk_problem()
        failing = w["failure"] is not None
        state = "fault" if failing or problem else "ok"
        if state != self._writer_state[0]:
            self._writer_state = (state, self.clock.now())
        return {
            "device": "store writer",
            "class": "task",
            "state": state,
            "since": rfc3339(self._writer_state[1]),
            "last_error": problem or (f"the card fails writes ({w['failure']}): they are kept and tried again; "
                                      f"check the SD card (dmesg, free space)" if failing else None),
            "detail": {"critical": True, **w},
        }

    def booked_slot(self, connector_id: str) -> tuple[datetime, datetime] | None:
        """The booked slot of the truck at a connector, from whichever part
        keeps bookings; None for a truck without one."""
        for part in self.capabilities:
            try:
                slot = part.booked_slot(connector_id)
            except Exception:
                log.exception("capability.failed part=%s hook=booked_slot", part.name)
                continue
            if slot is not None:
                return slot
        return None

    def _part_sections(self) -> dict:
        out: dict = {}
        for part in self.capabilities:
            try:
                out.update(part.status())
            except Exception:
                log.exception("capability.failed part=%s hook=status", part.name)
        return out

    def cloud_view(self) -> dict:
        if self.uplink is None:
            return {"configured": False, "connected": False}
        return {"configured": True, "broker": self.cfg.cloud.broker, **self.uplink.link_state()}

    def outbox_view(self) -> dict:
        from edge.core.outbox import outbox_summary

        out = outbox_summary(self.outbox, link=self.cloud_view(), now=self.clock.now())
        out["total_put"] = self.events_put
        return out

    # ------------------------------------------------------------------- run
    async def start(self) -> None:
        self._start_cloud()
        for charger_id, charger in self.chargers.items():
            if hasattr(charger, "poll"):
                self.supervisor.loop(f"charger {charger_id} polling", lambda cid=charger_id: self._poll_once(cid),
                                     every=self.cfg.charging.poll_interval_s, stall_after_s=self._poll_stall_s())
            else:  # reports by itself (OCPP): its own loop, and it does not hold up readiness
                self._polled.add(charger_id)
                self.supervisor.run(f"charger {charger_id}", lambda ch=charger: ch.run(self))
        if len(self._polled) == len(self.chargers):
            self.ready.set()
        self.supervisor.loop("ticks (timeouts, schedules)", self._tick_once, every=1.0, stall_after_s=15.0)
        if self.cfg.storage.backup_interval_min:
            self._spawn(self._backup_loop(self.cfg.storage.backup_interval_min * 60))
        for part in self.capabilities:
            await part.start()

    async def _backup_loop(self, interval_s: float) -> None:
        """Online copies of the databases ([storage] backup_interval_min), in
        a thread: what a damaged file found at start is restored from. The
        first soon after start, so a hub that keeps crashing still has one."""
        import sqlite3

        delay = min(interval_s, 60.0)
        while not self.stopping:
            await asyncio.sleep(delay)
            delay = interval_s
            for name, backup in (("hub.sqlite3", self.store.backup), ("tokens.sqlite3", self.tokens.backup)):
                try:
                    await asyncio.to_thread(backup)
                except sqlite3.DatabaseError as exc:
                    log.error("store.backup_refused file=%s error=%s", name, exc)
                    self.emit("device.alarm", {"alarm": "store_damaged", "message": f"{exc}; the hub runs on, "
                               f"restart it to move the damaged file aside and restore that backup"})
                except OSError as exc:
                    log.error("store.backup_failed file=%s error=%s action=%r", name, exc,
                              "check free space on the state directory")

    async def wait_ready(self, timeout: float) -> bool:
        if not self.chargers:
            self.ready.set()
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        self.stopping = True
        for part in reversed(self.capabilities):
            try:
                await part.stop()
            except Exception:
                log.exception("capability.failed part=%s hook=stop", part.name)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for driver in self.chargers.values():
            try:
                await driver.close()
            except Exception:
                pass
        if self.uplink is not None:
            try:
                await self.uplink.stop()
            except Exception:
                log.exception("uplink.stop_failed")
        self.store.close()
