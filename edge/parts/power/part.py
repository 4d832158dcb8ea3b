"""Site power as a part of the hub: the grid meter, the control loop and
their faces (R-E1..R-E6).

``SitePower`` wires the pure decisions (allocation.py, control.py) to the
hub: it reads the grid meter every second in a supervised loop, steps the
controller every second and at once on a plug, an unplug, a limit change or
a meter jump, and sends each charger its share through the charger
interface (``edge.core.charger.PowerLimits``), never through a protocol.

- Inputs per connector: its session (a plugged truck without one yet counts
  as a session about to start, so its minimum is in force before it draws),
  its measured power and the limit it reports, its booked slot (asked of the
  hub, which asks the part that keeps bookings) and its rated power and
  minimum from ``[power]``.
- A limit counts as confirmed when the charger reports it back (a Modbus
  register) or, for a charger that reports no limit, when the command was
  taken. A charger that does not confirm, or that cannot take limits at all,
  is counted at its rated power (R-E4); so is one whose charger refused its
  last limit, whatever the charger reports, until it takes one.
- Commands of one step go out lowerings first, all at once; raises only once
  every lowering has been answered (R-E2). A station that takes only amps
  is sent what its 0.1 A steps allow, rounded down.
- At start, and until each charger has taken it, every charger is given its
  fail-safe limit (R-E4).
- Faces: the retained ``hub/{id}/state/power`` (on change, at most once a
  second), events ``power.limited`` / ``power.fallback`` /
  ``power.restored``, the signed ``cmd/set_power_limit`` (a curtailment kept
  across restarts and ended by itself at ``until``), ``hubctl power``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timedelta

from units import parse_rfc3339, rfc3339
from edge.core.charger import PowerLimits
from edge.core.hub import Capability, Refused
from edge.parts.power.allocation import Priority, SharePolicy
from edge.parts.power.control import (
    ConnectorInput,
    LimitCommand,
    MeterSample,
    PowerController,
    PowerEvent,
    PowerSettings,
    StepResult,
)
from edge.parts.power.settings import rated_kw

log = logging.getLogger("hubedge.power")

SCHEMA = """
CREATE TABLE IF NOT EXISTS power_curtailment (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kw REAL NOT NULL,
    until TEXT,
    set_at TEXT NOT NULL
);
"""

PLUGGED = ("Preparing",)  # a truck plugged in, no session yet: held at its minimum from now on
MAX_CURTAILMENT = timedelta(hours=48)
FAIL_SAFE_RETRY_S = 30.0
WARN_EVERY_S = 60.0


class SitePower(Capability):
    name = "power"

    def __init__(self, hub):
        super().__init__(hub)
        self.cfg = hub.cfg.power
        self.controller: PowerController | None = None
        self._wake: asyncio.Event | None = None
        if self.cfg is None:
            return
        p = self.cfg
        self.settings = PowerSettings(
            grid_limit_kw=p.grid_limit_kw, margin_kw=p.margin_kw, fallback_kw=p.fallback_kw,
            stale_after_s=p.stale_after_s, frozen_after_s=p.frozen_after_s, confirm_within_s=p.confirm_within_s,
            unbooked_stay_s=p.unbooked_stay_min * 60 if p.unbooked_stay_min else None,
            policy=SharePolicy(buffer_kw=p.buffer_kw))
        self.controller = PowerController(self.settings)
        self._sections = {ch.id: ch for ch in hub.cfg.chargers}
        self.rated: dict[str, float] = {}
        self.minimum: dict[str, float] = {}
        for cid, place in hub.places.items():
            self.rated[cid] = rated_kw(hub.cfg, place.charger_id) or 0.0
            self.minimum[cid] = min(p.connector_min_kw(place.charger_id), self.rated[cid])
        self.meter = self._build_meter()
        hub.devices[self.meter.meter_id] = self.meter.health
        self.reading = None  # the last good MeterReading
        self.meter_error: str | None = None
        self.acked: dict[str, float] = {}  # kW the charger last took without a limit to report back
        self.refused: set[str] = set()  # connectors whose charger refused their last limit
        self.last: StepResult | None = None
        self.inputs: list[ConnectorInput] = []
        self.confirmed: dict[str, float | None] = {}
        self.steps = 0
        self.step_s = 0.0  # time spent deciding, for the loop's cost
        self._published_at = -math.inf
        self._publish_due = False
        self._fail_safe = {ch: -math.inf for ch in hub.chargers}  # charger -> when last tried; absent: taken
        self._warned: dict[str, float] = {}
        hub.store.db.executescript(SCHEMA)
        self._load_curtailment()

    # ------------------------------------------------------------ lifecycle
    def _build_meter(self):
        from drivers.grid_meter import GridMeterDriver
        from drivers.meter_map import load_meter_map

        m = self.cfg.meter
        host, port = m.address.rsplit(":", 1)
        return GridMeterDriver("grid-meter", host, int(port), m.unit, load_meter_map(self.hub.cfg.resolve(m.register_map)),
                               timeout=m.timeout_s, max_power_w=m.max_kw * 1000 if m.max_kw else None,
                               emit=self.hub.device_event, clock=self.hub.clock)

    async def start(self) -> None:
        if self.controller is None:
            return
        self._wake = asyncio.Event()
        if self.hub.downlink is not None:
            self.hub.downlink.register("cmd:set_power_limit", self._set_power_limit_command)
        self.spawn_loop("grid meter", self._meter_loop)
        self.spawn_loop("control", self._control_loop)
        log.info("power.started grid_limit_kw=%g margin_kw=%g fallback_kw=%g connectors=%d",
                 self.cfg.grid_limit_kw, self.cfg.margin_kw, self.cfg.fallback_kw, len(self.rated))

    async def stop(self) -> None:
        if self.controller is not None:
            await self.meter.close()

    def wake(self) -> None:
        """Step at once rather than at the next second."""
        if self._wake is not None:
            self._wake.set()

    def on_connector_changed(self, c, previous: str) -> None:
        self.wake()  # a plug, an unplug, a start or an end changes the shares

    # ----------------------------------------------------------------- loops
    async def _meter_loop(self) -> None:
        while True:
            begun = time.monotonic()
            await self.read_meter()
            self.hub.beat()
            await asyncio.sleep(max(0.0, self.cfg.interval_s - (time.monotonic() - begun)))

    async def read_meter(self) -> None:
        from drivers.grid_meter import MeterUnavailable

        try:
            reading = await self.meter.read()
        except MeterUnavailable as exc:
            self.meter_error = exc.reason
            return
        previous = self.reading.power_w / 1000 if self.reading is not None else None
        self.reading, self.meter_error = reading, None
        if self.controller.meter_jumped(previous, reading.power_w / 1000):
            self.wake()

    async def _control_loop(self) -> None:
        while True:
            self._wake.clear()
            await self.step()
            self.hub.beat()
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.interval_s)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ step
    def meter_sample(self) -> MeterSample | None:
        r = self.reading
        if r is None:
            return None
        return MeterSample(r.power_w / 1000, max(0.0, self.hub.clock.monotonic() - r.monotonic), r.unchanged_s)

    def connector_inputs(self, now: datetime) -> list[ConnectorInput]:
        out = []
        for cid, c in self.hub.connectors.items():
            session = c.session_id or (f"plugged:{c.since.isoformat() if c.since else ''}" if c.state in PLUGGED else None)
            r = self.hub.readings.get(cid)
            priority, departure = Priority.AD_HOC, None
            if session is not None:
                slot = self.hub.booked_slot(cid)
                if slot is not None and now < slot[1]:
                    departure = slot[1]
                    if self.cfg.booked_first and slot[0] <= now:
                        priority = Priority.BOOKED
            measured = (getattr(r, "power_w", None) or 0) / 1000
            out.append(ConnectorInput(cid, session, priority, departure, self.minimum[cid], self.rated[cid],
                                      max(0.0, measured)))
        return out

    def confirmed_limits(self) -> dict[str, float | None]:
        """The limit each charger has in force as far as the hub knows (kW):
        the one it reports, else the last one it took; None when neither is
        known or the charger cannot take limits (counted at rated, R-E4)."""
        out: dict[str, float | None] = {}
        for cid, place in self.hub.places.items():
            if not isinstance(self.hub.chargers.get(place.charger_id), PowerLimits):
                out[cid] = None
                continue
            if cid in self.refused:  # whatever it reports, it said no to the last one
                out[cid] = None
                continue
            r = self.hub.readings.get(cid)
            reported = getattr(r, "power_limit_w", None)
            out[cid] = reported / 1000 if reported is not None else self.acked.get(cid)
        return out

    async def step(self) -> StepResult:
        now = self.hub.clock.now()
        begun = time.perf_counter()
        self.inputs = self.connector_inputs(now)
        self.confirmed = self.confirmed_limits()
        result = self.controller.step(now, self.meter_sample(), self.inputs, self.confirmed)
        self.step_s += time.perf_counter() - begun
        self.steps += 1
        self.last = result
        if result.events:
            with self.hub.store.transaction():
                for ev in result.events:
                    self._emit(ev)
                if any(ev.data.get("reason") == "curtailment_ended" for ev in result.events):
                    self.hub.store.db.execute("DELETE FROM power_curtailment")
        self._publish(result)
        await self._send(result.commands)
        self._fail_safe_limits()
        return result

    def _emit(self, ev: PowerEvent) -> None:
        log.info("%s %s", ev.kind, ev.data.get("message", ""))
        self.hub.emit(ev.kind, ev.data)

    def _publish(self, result: StepResult) -> None:
        self._publish_due = self._publish_due or result.view_changed
        mono = time.monotonic()
        if self._publish_due and mono - self._published_at >= 1.0:
            self._publish_due = False
            self._published_at = mono
            if self.hub.uplink is not None:
                self.hub.uplink.publish_retained("state/power", result.view)

    async def _send(self, commands: list[LimitCommand]) -> None:
        lowering = [c for c in commands if c.lowering]
        raising = [c for c in commands if not c.lowering]
        if lowering:
            await asyncio.gather(*(self._send_one(c) for c in lowering))
        if raising:
            await asyncio.gather(*(self._send_one(c) for c in raising))

    def watts_for(self, cmd: LimitCommand) -> int:
        """The limit in whole watts; for a station that takes limits only in
        amps (its [[chargers]] entry: leniency limits_in_amps, voltage_v,
        phases), cut to the 0.1 A steps it is sent in, never rounded up."""
        watts = max(0, math.floor(cmd.kw * 1000 + 1e-6))
        section = self._sections.get(self.hub.places[cmd.connector_id].charger_id)
        if section is not None and "limits_in_amps" in (getattr(section, "leniencies", None) or ()) \
                and getattr(section, "voltage_v", None) and getattr(section, "phases", None):
            step = section.voltage_v * section.phases / 10  # watts per 0.1 A
            watts = math.floor(math.floor(watts / step + 1e-9) * step)
        return watts

    async def _send_one(self, cmd: LimitCommand) -> None:
        charger_id = self.hub.places[cmd.connector_id].charger_id
        charger = self.hub.chargers.get(charger_id)
        if not isinstance(charger, PowerLimits):
            self._warn(cmd.connector_id, f"charger {charger_id} cannot take a power limit: connector {cmd.connector_id} "
                                         "is counted at its rated power; use a charger or register map with a power limit")
            return
        watts = self.watts_for(cmd)
        try:
            await asyncio.wait_for(charger.set_power_limit(cmd.connector_id, watts),
                                   max(0.5, self.settings.confirm_within_s))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.acked.pop(cmd.connector_id, None)
            self.refused.add(cmd.connector_id)
            self._warn(cmd.connector_id, f"connector {cmd.connector_id} did not take its limit of {watts} W "
                                         f"({exc or type(exc).__name__}); it is counted at its rated power and sent "
                                         "its limit again; check the charger")
            return
        self.acked[cmd.connector_id] = cmd.kw
        self.refused.discard(cmd.connector_id)
        log.info("power.limit_sent connector=%s watts=%d reason=%s", cmd.connector_id, watts, cmd.reason)

    def _warn(self, key: str, text: str) -> None:
        mono = time.monotonic()
        if mono - self._warned.get(key, -math.inf) >= WARN_EVERY_S:
            self._warned[key] = mono
            log.warning("power.limit_not_taken %s", text)

    def _fail_safe_limits(self) -> None:
        """R-E4: each charger's own limit for when it loses the hub, sent at
        start and again every 30 s until the charger has taken it."""
        mono = time.monotonic()
        for charger_id, tried in list(self._fail_safe.items()):
            if mono - tried < FAIL_SAFE_RETRY_S:
                continue
            self._fail_safe[charger_id] = mono
            charger = self.hub.chargers.get(charger_id)
            if not isinstance(charger, PowerLimits):
                del self._fail_safe[charger_id]
                log.warning("power.no_fail_safe charger=%s reason=%r", charger_id,
                            "the charger cannot take power limits; it draws up to its rated power if the hub stops")
                continue
            self.hub.spawn(self._send_fail_safe(charger_id, charger))

    async def _send_fail_safe(self, charger_id: str, charger) -> None:
        connectors = len(self.hub.places)
        watts = max(0, math.floor(self.cfg.fail_safe_per_connector_kw(connectors) * 1000))
        try:
            await charger.set_fail_safe_limit(watts)
        except Exception as exc:
            if getattr(exc, "outcome", None) == "not_supported":
                self._fail_safe.pop(charger_id, None)
                log.warning("power.no_fail_safe charger=%s reason=%r", charger_id, str(exc))
            else:
                log.warning("power.fail_safe_not_taken charger=%s error=%r action=%r", charger_id, str(exc),
                            "tried again in 30 s")
            return
        self._fail_safe.pop(charger_id, None)
        log.info("power.fail_safe_set charger=%s watts_per_connector=%d", charger_id, watts)

    # ------------------------------------------------------------ curtailment
    def _load_curtailment(self) -> None:
        row = self.hub.store.db.execute("SELECT kw, until FROM power_curtailment WHERE id = 1").fetchone()
        if row is None:
            return
        now = self.hub.clock.now()
        until = parse_rfc3339(row[1]) if row[1] else None
        try:
            self.controller.set_limit(row[0], until, now)
        except ValueError as exc:  # ended while the hub was down, or the connection's limit changed
            log.info("power.curtailment_dropped reason=%r", str(exc))
            with self.hub.store.transaction() as db:
                db.execute("DELETE FROM power_curtailment")
                self.hub.emit("power.restored", {
                    "grid_limit_kw": round(self.cfg.grid_limit_kw, 3), "previous_kw": round(row[0], 3),
                    "reason": "curtailment_ended",
                    "message": f"the curtailment to {row[0]:g} kW ended while the hub was stopped; "
                               f"site limit back to {self.cfg.grid_limit_kw:g} kW"})
            return
        log.info("power.curtailment_resumed kw=%g until=%s", row[0], row[1])

    def set_limit(self, kw: float | None, until: datetime | None, user: str, reason: str = "") -> dict:
        """Lower the site limit until ``until`` or, with ``kw`` None or the
        connection's own limit, restore it now. The change, its event and its
        audit are one commit. Refused with a sentence on a bad value."""
        if self.controller is None:
            raise Refused("this hub has no [power] section: there is no site limit to change", code="not_configured")
        now = self.hub.clock.now()
        full = self.cfg.grid_limit_kw
        if kw is None or kw >= full:
            with self.hub.store.transaction() as db:
                events = self.controller.restore_limit(now)
                db.execute("DELETE FROM power_curtailment")
                for ev in events:
                    self._emit(ev)
                self.hub.audit(user, "power.restore", self.hub.hub_id, reason,
                               f"site limit {full:g} kW" + ("" if events else " (was not curtailed)"))
            self.wake()
            return {"grid_limit_kw": full, "until": None, "curtailed": False}
        if until is None:
            raise Refused("a lowered limit needs `until`, when the connection's own limit comes back by itself",
                          code="bad_value")
        if until - now > MAX_CURTAILMENT:
            raise Refused(f"until {rfc3339(until)} is more than {MAX_CURTAILMENT.total_seconds() / 3600:.0f} h ahead; "
                          "send a nearer end and renew it", code="bad_value")
        try:
            with self.hub.store.transaction() as db:
                events = self.controller.set_limit(kw, until, now)
                db.execute("INSERT OR REPLACE INTO power_curtailment (id, kw, until, set_at) VALUES (1, ?, ?, ?)",
                           (float(kw), rfc3339(until), rfc3339(now)))
                for ev in events:
                    self._emit(ev)
                self.hub.audit(user, "power.limit", self.hub.hub_id, reason, f"{kw:g} kW until {rfc3339(until)}")
        except ValueError as exc:
            raise Refused(str(exc), code="bad_value") from None
        self.wake()
        return {"grid_limit_kw": kw, "until": rfc3339(until), "curtailed": True}

    async def _set_power_limit_command(self, msg: dict) -> dict:
        from edge.cloud.downlink import Rejected

        args = msg.get("args") or {}
        until = args.get("until")
        try:
            until_ts = parse_rfc3339(until) if until else None
        except ValueError:
            raise Rejected("schema", f"until {until!r} is not an RFC 3339 time; nothing was changed") from None
        try:
            result = self.set_limit(args.get("kw"), until_ts, "cloud", str(args.get("reason") or ""))
        except Refused as exc:
            raise Rejected("refused", f"{exc}; the limit is unchanged", {"reason": exc.code}) from None
        await self.hub.store.durable()
        return result

    # ----------------------------------------------------------------- views
    def view(self) -> dict:
        """What `hubctl power` shows: the retained state and, per connector,
        why its share is what it is."""
        if self.controller is None:
            return {"configured": False}
        now = self.hub.clock.now()
        last = self.last
        state = dict(last.view) if last else {
            "v": 1, "ts": rfc3339(now), "grid_limit_kw": self.controller.limit_kw, "site_load_kw": None,
            "charging_kw": 0.0, "mode": self.controller.mode, "allocations": {}}
        curtailment = self.controller._curtailment
        connectors = []
        for ci in self.inputs:
            counted = last.allocation.counted_kw.get(ci.connector_id) if last else None
            waiting = last is not None and ci.connector_id in last.allocation.waiting
            connectors.append({
                "connector": ci.connector_id,
                "charging": ci.session_id is not None,
                "priority": "booked" if ci.priority is Priority.BOOKED else "ad_hoc",
                "departure": rfc3339(ci.departure) if ci.departure else None,
                "share_kw": state["allocations"].get(ci.connector_id, 0.0),
                "measured_kw": round(ci.measured_kw, 1),
                "limit_kw": None if self.confirmed.get(ci.connector_id) is None else round(self.confirmed[ci.connector_id], 1),
                "counted_kw": None if counted is None else round(counted, 1),
                "min_kw": ci.min_kw, "rated_kw": ci.rated_kw,
                "waiting": waiting,
            })
        r = self.reading
        return {
            "configured": True, **state,
            "connection_kw": self.cfg.grid_limit_kw, "margin_kw": self.cfg.margin_kw, "fallback_kw": self.cfg.fallback_kw,
            "available_kw": round(last.allocation.available_kw, 1) if last else None,
            "curtailed_until": rfc3339(curtailment.until) if curtailment and curtailment.until else None,
            "meter": {"device": self.meter.meter_id, "address": self.cfg.meter.address,
                      "age_s": None if r is None else round(self.hub.clock.monotonic() - r.monotonic, 1),
                      "kw": None if r is None else round(r.power_w / 1000, 1), "error": self.meter_error},
            "note": last.allocation.reason if last else None,
            "connectors": connectors,
            "loop": {"steps": self.steps, "avg_step_ms": round(1000 * self.step_s / self.steps, 3) if self.steps else None},
        }

    def status(self) -> dict:
        if self.controller is None:
            return {}
        v = self.last.view if self.last else None
        return {"power": v} if v else {}

    def control_handlers(self) -> dict:
        return {"power": self._power_command}

    async def _power_command(self, args: dict, caller, progress) -> dict:
        from edge.core.control import ControlError

        action = args.get("action") or "show"
        if action == "show":
            return self.view()
        if action in ("limit", "restore"):
            until = None
            if args.get("until"):
                try:
                    until = parse_rfc3339(args["until"])
                except ValueError:
                    raise ControlError("bad_request", f"until {args['until']!r} is not a time such as 2026-06-01T18:00:00Z")
            try:
                out = self.set_limit(None if action == "restore" else args.get("kw"), until, caller.user,
                                     str(args.get("reason") or ""))
            except Refused as exc:
                raise ControlError("refused", str(exc))
            await self.hub.store.durable()
            return out
        raise ControlError("bad_request", f"unknown power action {action!r}: use show, limit or restore")
