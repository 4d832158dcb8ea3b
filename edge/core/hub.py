"""The hub core: one asyncio event loop owns every piece of state.

Data flows one way: drivers report readings and events; the core feeds them
to the state machines and the decision logic; what they decide goes back to
drivers as commands, to the ledgers as records and to the outbox as events.
The uplink drains the outbox beside the hardware loops and never blocks them.

Each charger runs its own supervised loop behind the charger interface
(edge/core/charger.py), so a silent charger only ever delays itself (R-C6);
a polled one (edge/parts/chargers/modbus.py) has an error in one round
counted and the next round tries again (edge/core/supervision.py). A state change and the events that
report it are one commit; every change that matters is on disk before it is
acted on (``Store.durable``), so a restart picks up where the hub stopped
(R-C9).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any, Awaitable, Callable

from drivers.device import DeviceHealth, cancel_and_wait
from edge.core import VERSION, supervision  # noqa: F401  (VERSION: edge.core.hub.VERSION as before)
from units import Clock, parse_rfc3339, rfc3339
from edge.core.cloud_link import CloudSide
from edge.core.config import HubConfig
from edge.core.connectors import ConnectorPlace, ConnectorSide, NotFound, Refused, _changing
from edge.core.registry import load_parts
from edge.core.sessions import Session, SessionLedger, TokenVerdict
from edge.core.store import DiskError, Store
from edge.core.supervision import Supervisor
from edge.core.views import StatusViews
from state_machines.connector import ACTIVE, Connector, build_machine

log = logging.getLogger("hubedge.hub")

CONNECTOR_SCHEMA = """
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

    def sync_handlers(self) -> dict:
        """The cloud's sync kinds this part keeps (tokens, bookings, tariffs):
        kind -> handler(message) -> reply counts, raising downlink.Rejected
        to refuse a batch (edge/cloud/downlink.py)."""
        return {}

    def resync_held(self) -> dict:
        """What this part holds of its synced kinds, sent with a resync
        request (e.g. {"tokens": {"version": 7}})."""
        return {}

    def backups(self) -> list[tuple[str, Callable[[], None]]]:
        """(file name, blocking copy function) of each database this part
        keeps beside the hub's; run in a thread every [storage] backup_interval_min."""
        return []

    def booked_slot(self, connector_id: str) -> tuple[datetime, datetime] | None:
        """The slot (start, end) of the booking whose truck is at this
        connector, when this part knows of one (site power asks, R-E3)."""
        return None


def load_capabilities(hub: "Hub") -> list[Capability]:
    """One Capability of each part that has one (edge/parts/__init__.py), in start order."""
    return [getattr(module, cls_name)(hub) for module, cls_name in load_parts() if cls_name]


class Hub(ConnectorSide, CloudSide, StatusViews):
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
        # The decision for a card read by a charger's own reader: set by the part that keeps the cards.
        self.token_decider: Callable[..., Awaitable[TokenVerdict]] | None = None
        # Called inside the commit that records a session's start or end,
        # each in a savepoint of its own: records and events that belong to
        # that step (a booking charging, fulfilled), no I/O. A crash keeps
        # both or neither; a hook that fails leaves the session's commit as
        # it is.
        self.session_started_records: list[Callable[[Session], None]] = []
        self.session_ended_records: list[Callable[[Session], None]] = []
        self.stopping = False
        self.supervisor = Supervisor(clock=self.clock, spawn=self._spawn, alarm=self._task_alarm,
                                     stopping=lambda: self.stopping)
        self._writer_state = ("ok", self.clock.now())
        self.events_put = 0
        self.last_sync: dict[str, datetime] = {}
        self._build_connectors()
        for alarm in self.store.alarms:
            self.emit("device.alarm", {"alarm": "store_recovered", "message": alarm})
        self.capabilities: list[Capability] = load_capabilities(self)

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
            self._build_charger(ch)
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
        """A charger of a protocol part (Modbus, OCPP ...), built by the
        factory its part registered in PROTOCOLS; it reports through this
        hub as its ChargerSink."""
        from edge.core.charger import PROTOCOLS

        load_parts()  # each protocol part registers its names

        charger = PROTOCOLS[ch.protocol](self, ch)
        self.chargers[ch.id] = charger
        if charger.health is not None:
            self.devices[ch.id] = charger.health

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

    # ------------------------------------------------------------------- run
    async def start(self) -> None:
        self._start_cloud()
        for charger_id, charger in self.chargers.items():
            if not charger.ready_after_first_report:  # reports by itself (OCPP): it does not hold up readiness
                self._polled.add(charger_id)
            self.supervisor.run(charger.task_name, lambda ch=charger: ch.run(self), stall_after_s=charger.stall_after_s)
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
            backups = [("hub.sqlite3", self.store.backup)] + [b for part in self.capabilities for b in part.backups()]
            for name, backup in backups:
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
        await cancel_and_wait(list(self._tasks))
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
