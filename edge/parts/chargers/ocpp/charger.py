"""One OCPP station behind the hub's charger interface (R-O1..R-O5).

``OcppCharger`` is what connectors, sessions, payments, bookings and site
power see of a station: the same ``Charger`` as a Modbus charger, plus
reservations and power limits. Below it, ``drivers.ocpp.Station`` speaks
OCPP; the part's ``OcppSite`` (part.py) routes each station's events here.

Station to hub: StatusNotification (and the 2.0.1 TransactionEvent charging
states the layer folds into it) becomes a ``Reading`` for the connector
machine; meter values update the reading and keep signed values with the
session; transaction messages open and close sessions in the ledger, once
per content key and on disk before the station is answered.

Hub to station: every command goes through the station's call queue with a
timeout; an answer other than Accepted raises ``CommandFailed`` with the
outcome (the hub carries on) and is evented as ``device.command_failed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from drivers.device import DeviceHealth
from drivers.ocpp.events import (
    CallOutcome,
    ConnectorStatus,
    IdTokenDecision,
    MeterValues,
    Notification,
    PowerLimit,
    StartAnswer,
    StationBooted,
    StationConnected,
    StationDisconnected,
    TransactionEnded,
    TransactionStarted,
    TransactionUpdated,
)
from drivers.ocpp.station import StationConfig
from units import rfc3339
from edge.core.charger import Charger, CommandFailed, Reading
from edge.core.sessions import mask
from edge.parts.chargers.ocpp import ledger
from edge.parts.chargers.ocpp.store import TxRecord

log = logging.getLogger("hubedge.ocpp.charger")

# R-C1 names (what the layer reports) -> the hardware words of the connector machine.
HW_OF_STATUS = {
    "Available": "unplugged",
    "Reserved": "unplugged",  # holds are the hub's: the machine keeps Reserved itself
    "Preparing": "plugged",
    "Charging": "charging",
    "SuspendedEV": "suspended_ev",
    "SuspendedEVSE": "suspended_evse",
    "Finishing": "finished",
    "Faulted": "fault",
}
OUTCOME_OF_KIND = {"Rejected": "rejected", "NotSupported": "not_supported", "Timeout": "unreachable",
                   "Error": "error"}
ID_TAG_MAX = 20  # 1.6 idTag; 2.0.1 allows 36
BOOT_GRACE_S = 5.0  # a station that boots on connecting sends its BootNotification within this
EVENT_EVERY_S = 300.0  # the same failed command of one charger is evented at most this often (always logged)


@dataclass
class PendingStart:
    """A remote start the hub sent: the session it belongs to, waiting for
    the station's StartTransaction / TransactionEvent Started."""

    session_id: str | None
    id_tag: str
    remote_start_id: int
    stop_when_started: bool = False


class OcppCharger(Charger):
    """A station configured in ``[[chargers]]`` with protocol ocpp1.6 or
    ocpp2.0.1; also ``Reservations`` and ``PowerLimits``."""

    def __init__(self, site, cfg):
        super().__init__(cfg.id, [c.id for c in cfg.connectors])
        self.protocol = cfg.protocol
        self.site = site
        self.hub = site.hub
        self.config = StationConfig(cfg.id, cfg.protocol, security_profile=cfg.profile,
                                    leniencies=frozenset(cfg.leniencies), voltage_v=cfg.voltage_v, phases=cfg.phases)
        self.places: dict[str, tuple[int, int]] = {c.id: (c.evse, c.connector) for c in cfg.connectors}
        self._by_place = {v: k for k, v in self.places.items()}
        self.station = None  # drivers.ocpp.station.Station, set when the site builds its listener
        self.sink = None
        self.readings: dict[str, Reading] = {}
        self.transactions: dict[str, str] = {}  # connector -> running transaction id
        self.pending: dict[str, PendingStart] = {}  # connector -> remote start waiting for its transaction
        self.owed_stops: set[str] = set()  # transaction ids to stop when the station is back
        self.limits: dict[str, int] = {}  # connector -> last limit in W
        self.reserved_tags: dict[str, str] = {}  # connector -> idTag its station reservation is for
        self.fail_safe_w: int | None = None
        self.lost_reason: str | None = None
        self.booted: dict | None = None
        self.last_outcome: dict | None = None
        self._failed_at: dict[tuple[str, str], float] = {}
        self.health_ = DeviceHealth(cfg.id, "charger")
        self.health_.detail.update(protocol=cfg.protocol)
        for tx in site.ocpp_store.open_transactions(cfg.id):
            cid = self.connector_for(tx.evse, None)
            if cid is not None:
                self.transactions[cid] = tx.transaction_id
        self.booted = site.ocpp_store.boot(cfg.id)

    # ------------------------------------------------------------ naming
    def connector_for(self, evse: int | None, connector: int | None) -> str | None:
        if evse is None:
            return None
        if connector is not None and (evse, connector) in self._by_place:
            return self._by_place[(evse, connector)]
        return next((cid for cid, (e, _) in self.places.items() if e == evse), None)

    def _place(self, connector_id: str) -> tuple[int, int]:
        try:
            return self.places[connector_id]
        except KeyError:
            raise CommandFailed(self.id, "command", "error", f"connector {connector_id} is not on charger {self.id}")

    @property
    def health(self) -> DeviceHealth:
        return self.health_

    @property
    def connected(self) -> bool:
        return self.station is not None and self.station.connected

    # ------------------------------------------------------------ the supervised loop
    async def run(self, sink) -> None:
        """Start the listener (once for all stations) and follow this
        station's offline clock (R-O5)."""
        self.sink = sink
        await self.site.ensure_started()
        offline_after = self.hub.cfg.ocpp.offline_after_s
        began = asyncio.get_running_loop().time()
        while True:
            station = self.station
            silent = station.silent_for() if station else None
            # Never heard since the hub started: it gets offline_after_s to connect.
            waited = silent is not None or asyncio.get_running_loop().time() - began > offline_after
            if station is not None and waited and station.offline(offline_after) and self.lost_reason is None:
                never = silent is None
                self._lose("charger offline", f"no frame from station {self.id} "
                           + ("since the hub started" if never else f"for {silent:.0f} s")
                           + "; check its power and network, and its OCPP URL and password")
            self.hub.beat()
            await asyncio.sleep(min(1.0, offline_after / 4))

    def _lose(self, reason: str, detail: str) -> None:
        self.lost_reason = reason
        if self.health_.mark_fault(detail, self.hub.clock.now()):
            self.hub.emit("device.fault", {"device": self.id, "class": "charger", "reason": detail})
        log.warning("ocpp_charger_offline charger=%s %s", self.id, detail)
        if self.sink is not None:
            self.sink.charger_lost(self.id, reason)

    # ------------------------------------------------------------ station -> hub
    async def connected_event(self, ev: StationConnected) -> None:
        was_lost = self.lost_reason is not None
        self.lost_reason = None
        now = self.hub.clock.now()
        if self.health_.mark_ok(now) and was_lost:
            down = self.health_.last_down_s or 0
            self.hub.emit("device.recovered", {"device": self.id, "class": "charger", "down_for_s": max(0, round(down))})
        self.health_.detail.update(remote=ev.remote, connected_at=rfc3339(ev.at))
        if self.sink is not None:
            self.sink.charger_ready(self.id)
        self.hub.spawn(self._after_connect())
        if self.booted is None:
            self.hub.spawn(self._ask_identity())

    async def _ask_identity(self) -> None:
        """A station the hub never saw boot (a new hub, a restored state
        directory) that connects without booting is asked who it is, and
        is configured when it answers. One that boots does so at once."""
        await asyncio.sleep(BOOT_GRACE_S)
        if self.booted is None and self.connected:
            await self._call("trigger_boot", self.station.trigger_boot(), quiet=True)

    async def _after_connect(self) -> None:
        """R-O5: ask for the current state instead of trusting the old one;
        re-send the limits; send the stops owed from while it was away."""
        st = self.station
        for evse in sorted({e for e, _ in self.places.values()}):
            await self._call("trigger_status", st.trigger_status(evse), quiet=True)
        for cid, tx in list(self.transactions.items()):
            await self._call("trigger_meter_values", st.trigger_meter_values(self.places[cid][0]), quiet=True)
        if self.fail_safe_w is not None:
            await self._send_fail_safe()
        for cid, watts in list(self.limits.items()):
            if cid in self.transactions:
                await self._call("set_power_limit", st.set_power_limit(self._limit(cid, watts)), quiet=True)
        for tx in list(self.owed_stops):
            outcome = await self._call("remote_stop", st.remote_stop(tx))
            if outcome.ok:
                self.owed_stops.discard(tx)

    async def disconnected_event(self, ev: StationDisconnected) -> None:
        self.health_.detail.update(disconnected_at=rfc3339(ev.at), disconnect_reason=ev.reason)

    async def booted_event(self, ev: StationBooted) -> None:
        doc = {"vendor": ev.vendor, "model": ev.model, "serial": ev.serial, "firmware": ev.firmware,
               "reason": ev.reason, "meter_type": ev.meter_type, "meter_serial": ev.meter_serial,
               "booted_at": rfc3339(ev.at)}
        with self.hub.store.transaction():
            self.site.ocpp_store.put_boot(self.id, doc)
        self.booted = doc
        self.health_.detail.update(vendor=ev.vendor, model=ev.model, firmware=ev.firmware)
        self.hub.spawn(self._configure())

    async def _configure(self) -> None:
        o = self.hub.cfg.ocpp
        st = self.station
        await self._call("set_heartbeat_interval", st.set_heartbeat_interval(o.heartbeat_interval_s), quiet=True)
        await self._call("set_meter_interval", st.set_meter_interval(o.meter_interval_s), quiet=True)
        if self.fail_safe_w is not None:
            await self._send_fail_safe()

    async def status_event(self, ev: ConnectorStatus) -> None:
        cid = self.connector_for(ev.evse, ev.connector)
        if cid is None:
            if ev.evse == 0 and ev.status == "Faulted":
                self.hub.emit("device.fault", {"device": self.id, "class": "charger",
                                               "reason": f"station {self.id} reports itself Faulted "
                                                         f"({ev.error_code or 'no error code'}"
                                                         f"{': ' + ev.info if ev.info else ''}); check the station"})
            elif ev.evse != 0:
                log.warning("ocpp_status_unknown_connector charger=%s evse=%s connector=%s status=%s: not in the "
                            "config's connectors", self.id, ev.evse, ev.connector, ev.status)
            return
        if ev.status in ("Available", "Faulted", "Unavailable") and cid in self.pending:
            # The truck left (or the connector failed) before the remote start became a transaction.
            self.pending.pop(cid, None)
        if ev.status == "Unavailable":
            c = self.hub.connectors.get(cid)
            if c is not None and c.admin_unavailable:
                return  # the hub asked for it (ChangeAvailability)
            hw, problem = "fault", f"station {self.id} reports connector {cid} Unavailable without the hub asking"
        else:
            hw, problem = HW_OF_STATUS[ev.status], None
        if ev.error_code and ev.status != "Faulted":
            log.info("ocpp_status_error charger=%s connector=%s status=%s error=%s info=%s", self.id, cid,
                     ev.status, ev.error_code, ev.info)
        old = self.readings.get(cid)
        raw = ev.status if not ev.error_code else f"{ev.status}/{ev.error_code}"
        self._report(cid, Reading(cid, hw, energy_wh=getattr(old, "energy_wh", None),
                                  power_w=getattr(old, "power_w", None) if hw in ("charging", "suspended_evse",
                                                                                  "suspended_ev") else 0,
                                  soc=getattr(old, "soc", None), raw_status=raw, problem=problem,
                                  power_limit_w=self.limits.get(cid),
                                  extra={"transaction_id": self.transactions.get(cid)}))

    def _report(self, cid: str, reading: Reading) -> None:
        self.readings[cid] = reading
        if self.sink is not None:
            self.sink.charger_reported(self.id, {cid: reading})

    async def meter_event(self, ev: MeterValues) -> None:
        cid = self.connector_for(ev.evse, ev.connector)
        if cid is None:
            return  # the station's main meter (evse 0): not a connector's
        if ev.transaction_id is not None:
            self._keep_signed(ev.transaction_id, ev.readings)
        self._meter(cid, ev.readings)

    def _meter(self, cid: str, readings) -> None:
        if not readings:
            return
        r = readings[-1]
        old = self.readings.get(cid) or Reading(cid, "unplugged")
        signed = next((s.data for m in readings for s in m.signed), None)
        self._report(cid, Reading(
            cid, old.status,
            energy_wh=int(r.energy_wh) if r.energy_wh is not None else old.energy_wh,
            power_w=int(r.power_w) if r.power_w is not None else old.power_w,
            soc=int(r.soc_percent) if r.soc_percent is not None else old.soc,
            raw_status=old.raw_status, power_limit_w=self.limits.get(cid),
            signed_meter_value=signed or old.signed_meter_value,
            extra={"transaction_id": self.transactions.get(cid)}))

    def _keep_signed(self, transaction_id: str, readings) -> str | None:
        """Signed values kept verbatim with the transaction's session (R-O4, R-S3); returns the last one."""
        signed = [(m.at, s) for m in readings for s in m.signed]
        if not signed:
            return None
        tx = self.site.ocpp_store.transaction(self.id, transaction_id)
        with self.hub.store.transaction():
            for at, s in signed:
                self.site.ocpp_store.keep_signed(tx.session_id if tx else None, self.id, transaction_id, at, s)
        return signed[-1][1].data

    async def authorise_event(self, req) -> IdTokenDecision:
        asked_at = self.connectors[0] if len(self.connectors) == 1 else self.id
        verdict = await self.site.decide_token(req.id_token, asked_at)
        self._auth_event(asked_at, verdict, "authorised")
        return IdTokenDecision(verdict.status, group=verdict.group)

    def _auth_event(self, where: str, verdict, code: str) -> None:
        data = {"connector": where, "token": mask(verdict.uid), "message": verdict.reason, "source": verdict.source,
                "token_type": verdict.token_type, "charger": self.id}
        if verdict.accepted:
            self.hub.emit("auth.accepted", {**data, "code": code, "offline": verdict.offline,
                                            **({"method": verdict.method} if verdict.method else {})})
        else:
            self.hub.emit("auth.rejected", {**data, "code": verdict.code})

    # ------------------------------------------------------------ transactions (R-O3)
    async def started_event(self, ev: TransactionStarted) -> StartAnswer:
        store = self.site.ocpp_store
        answered = store.answered(ev.key)
        if answered is not None:  # a replay after a lost answer: the same answer, recorded once
            return StartAnswer(IdTokenDecision(answered["status"], group=answered.get("group")),
                               answered.get("transaction_id"))
        cid = self.connector_for(ev.evse, ev.connector)
        pending = self._take_pending(cid, ev)
        if pending is not None or not ev.id_token:
            verdict = None
            decision = IdTokenDecision("Accepted")
        else:
            verdict = await self.site.decide_token(ev.id_token, cid or self.id)
            decision = IdTokenDecision(verdict.status, group=verdict.group)
        now = self.hub.clock.now()
        method = "remote"
        if pending is None and verdict is not None:
            method = verdict.method or ("own_card" if verdict.token_type == "own" else "emsp_card")
        with self.hub.store.transaction():
            tx_id = str(store.new_transaction_id(self.id, now)) if ev.transaction_id is None else ev.transaction_id
            extra = {"ocpp": {"charger": self.id, "transaction_id": tx_id, "offline": ev.offline,
                              "started_by": "hub" if pending else "station"}}
            session = None
            if cid is not None:
                if pending is not None and pending.session_id:
                    method = self.hub.sessions.get(pending.session_id).method
                session = ledger.open_session(self.hub, cid, session_id=pending.session_id if pending else None,
                                              method=method, token=ev.id_token, started_at=ev.at,
                                              meter_start_wh=ev.meter_start_wh, extra=extra)
            else:
                log.warning("ocpp_transaction_unknown_connector charger=%s evse=%s transaction=%s: recorded without "
                            "a session; add the connector to the config", self.id, ev.evse, tx_id)
            store.put_transaction(TxRecord(self.id, tx_id, session.id if session else None, ev.evse, ev.id_token,
                                           ev.seq_no, False), now)
            answer = {"status": decision.status, "group": decision.group, "transaction_id": int(tx_id) if ev.transaction_id is None else None}
            store.remember_answer(ev.key, self.id, answer, now)
            self._seq_gaps(ev.transaction_id, ev.missing_seq_nos)
            if ev.readings:
                self._keep_signed(tx_id, ev.readings)
        await self.hub.store.durable()  # on disk before the station hears the id (R-O3)
        if cid is not None:
            self.transactions[cid] = tx_id
            self._meter(cid, ev.readings)
            old = self.readings.get(cid)
            if old is not None:
                self._report(cid, old)  # the machine may now go Charging with its session
        if verdict is not None and not verdict.accepted:
            self._auth_event(cid or self.id, verdict, "start")
            log.warning("ocpp_start_refused_card charger=%s transaction=%s token=%s status=%s: recorded, now stopped",
                        self.id, tx_id, mask(ev.id_token), verdict.status)
            self.hub.spawn(self._stop_tx(tx_id, "token_blocked"))
        elif pending is not None and pending.stop_when_started:
            self.hub.spawn(self._stop_tx(tx_id, "remote"))
        return StartAnswer(decision, int(tx_id) if ev.transaction_id is None else None)

    def _take_pending(self, cid: str | None, ev: TransactionStarted) -> PendingStart | None:
        if cid is None:
            return None
        p = self.pending.get(cid)
        if p is None:
            return None
        if ev.remote_start_id is not None and ev.remote_start_id == p.remote_start_id:
            return self.pending.pop(cid)
        if ev.id_token and ev.id_token == p.id_tag:
            return self.pending.pop(cid)
        return None

    def _seq_gaps(self, transaction_id: str | None, missing) -> None:
        if missing:
            log.warning("ocpp_seq_gap charger=%s transaction=%s missing=%s: messages the station never sent or "
                        "lost; the session is kept with what arrived", self.id, transaction_id, list(missing)[:20])
            self.hub.emit("device.transaction_gap", {"charger": self.id, "transaction": str(transaction_id),
                                              "missing": [int(n) for n in list(missing)[:100]],
                                              "message": "transaction messages missing from the station's sequence; "
                                                         "the session keeps what arrived, check the station's log"})

    async def updated_event(self, ev: TransactionUpdated) -> IdTokenDecision | None:
        store = self.site.ocpp_store
        if store.answered(ev.key) is not None:
            return None
        cid = self.connector_for(ev.evse, ev.connector)
        now = self.hub.clock.now()
        tx = store.transaction(self.id, ev.transaction_id)
        with self.hub.store.transaction():
            if tx is None:  # an Updated for a transaction never started here: recorded too (R-O3)
                tx = TxRecord(self.id, ev.transaction_id, None, ev.evse, ev.id_token, ev.seq_no, False)
            tx.last_seq = max(tx.last_seq or 0, ev.seq_no or 0)
            store.put_transaction(tx, now)
            store.remember_answer(ev.key, self.id, {}, now)
            self._seq_gaps(ev.transaction_id, ev.missing_seq_nos)
            self._keep_signed(ev.transaction_id, ev.readings)
        if cid is None and tx.evse is not None:
            cid = self.connector_for(tx.evse, None)
        if cid is not None and not ev.offline:
            self.transactions.setdefault(cid, ev.transaction_id)
            self._meter(cid, ev.readings)
        if ev.id_token:
            verdict = await self.site.decide_token(ev.id_token, cid or self.id)
            return IdTokenDecision(verdict.status, group=verdict.group)
        return None

    async def ended_event(self, ev: TransactionEnded) -> IdTokenDecision | None:
        store = self.site.ocpp_store
        if store.answered(ev.key) is not None:
            return IdTokenDecision("Accepted") if ev.id_token else None
        now = self.hub.clock.now()
        tx = store.transaction(self.id, ev.transaction_id)
        cid = self.connector_for(ev.evse if ev.evse is not None else (tx.evse if tx else None), ev.connector)
        reason = ledger.STOP_REASONS.get(ev.reason, ev.reason.lower() if ev.reason else "local")
        with self.hub.store.transaction():
            signed = self._keep_signed(ev.transaction_id, ev.readings)
            if tx is None:  # unknown id (or the 0/-1 of a start never answered): recorded as such (R-O3)
                log.warning("ocpp_stop_unknown_transaction charger=%s transaction=%s: recorded; no session to end",
                            self.id, ev.transaction_id)
                tx = TxRecord(self.id, ev.transaction_id, None, ev.evse, ev.id_token, ev.seq_no, True)
            tx.ended = True
            tx.last_seq = max(tx.last_seq or 0, ev.seq_no or 0)
            store.put_transaction(tx, now)
            if tx.session_id:
                s = self.hub.sessions.get(tx.session_id)
                if s is not None:
                    ledger.close_session(self.hub, s, meter_stop_wh=ev.meter_stop_wh, stopped_at=ev.at,
                                         reason=reason, signed_stop=signed)
            store.remember_answer(ev.key, self.id, {}, now)
            self._seq_gaps(ev.transaction_id, ev.missing_seq_nos)
        await self.hub.store.durable()
        self.owed_stops.discard(ev.transaction_id)
        if cid is not None and self.transactions.get(cid) == ev.transaction_id:
            del self.transactions[cid]
            self.limits.pop(cid, None)
        if ev.id_token:
            verdict = await self.site.decide_token(ev.id_token, cid or self.id)
            return IdTokenDecision(verdict.status, group=verdict.group)
        return None

    async def notification_event(self, ev: Notification) -> None:
        log.info("ocpp_notification charger=%s kind=%s action=%s %s", self.id, ev.kind, ev.action, ev.summary)
        if ev.technician:
            self.hub.emit("device.notification", {"charger": self.id, "kind": ev.kind, "action": ev.action,
                                                   "message": ev.summary[:500]})

    # ------------------------------------------------------------ hub -> station
    async def _call(self, command: str, pending, *, quiet: bool = False) -> CallOutcome:
        outcome: CallOutcome = await pending
        self.last_outcome = {"command": command, "kind": outcome.kind, "message": outcome.message,
                             "at": rfc3339(self.hub.clock.now())}
        if not outcome.ok:
            log.warning("ocpp_command_failed charger=%s command=%s outcome=%s %s", self.id, command, outcome.kind,
                        outcome.message)
            mono = time.monotonic()
            repeated = mono - self._failed_at.get((command, outcome.kind), -EVENT_EVERY_S) < EVENT_EVERY_S
            if not repeated:
                self._failed_at[(command, outcome.kind)] = mono
            # A limit site power sends again and again is evented once per EVENT_EVERY_S, not at every step.
            if not repeated and (outcome.kind != "Error" or self.connected):
                self.hub.emit("device.command_failed", {
                    "charger": self.id, "command": command, "outcome": outcome.kind, "status": outcome.status,
                    "message": f"{outcome.message}; the hub carries on"
                               + ("" if quiet else ", check the station or run the command again")})
        return outcome

    async def _must(self, command: str, pending) -> CallOutcome:
        outcome = await self._call(command, pending)
        if not outcome.ok:
            raise CommandFailed(self.id, command, OUTCOME_OF_KIND.get(outcome.kind, "error"), outcome.message)
        return outcome

    def _station(self, command: str):
        if not self.connected:
            raise CommandFailed(self.id, command, "unreachable",
                                f"station {self.id} is not connected; check its power and network")
        return self.station

    async def start(self, connector_id: str, *, token: str | None = None, session_id: str | None = None) -> None:
        """Remote start (bank-card and booked starts): the session the hub
        wrote is bound to the transaction the station then starts."""
        evse, _ = self._place(connector_id)
        st = self._station("remote_start")
        if session_id is None:  # the hub writes the session before it sends the start
            session_id = self.hub.connectors[connector_id].session_id
        s = self.hub.sessions.get(session_id) if session_id else None
        if token is None and s is not None and s.method in ("own_card", "emsp_card"):
            token = s.token
        if token is None and s is not None and s.booking_id and connector_id in self.reserved_tags:
            token = self.reserved_tags[connector_id]  # the station lets only its reservation's idTag start there
        id_tag = (token or f"HUB{(session_id or '').replace('-', '')}")[:ID_TAG_MAX].upper() or "HUB"
        rid = st.next_remote_start_id()
        self.pending[connector_id] = PendingStart(session_id, id_tag, rid)
        watts = self.limits.get(connector_id)
        limit = PowerLimit(float(watts), "tx", evse) if watts else None
        try:
            await self._must("remote_start", st.remote_start(evse, id_tag, remote_start_id=rid, limit=limit))
        except CommandFailed:
            self.pending.pop(connector_id, None)
            raise

    async def stop(self, connector_id: str, *, session_id: str | None = None) -> None:
        """Remote stop of the connector's transaction (cost cap R-P2,
        technician, cloud). A start still waiting for its transaction is
        stopped as soon as the transaction exists."""
        self._place(connector_id)
        tx = self.transactions.get(connector_id)
        if tx is None and session_id:
            rec = self.site.ocpp_store.transaction_of_session(session_id)
            tx = rec.transaction_id if rec and not rec.ended else None
        if tx is None:
            p = self.pending.get(connector_id)
            if p is not None:
                p.stop_when_started = True
                return
            raise CommandFailed(self.id, "remote_stop", "error",
                                f"no transaction is running on connector {connector_id} at station {self.id}")
        if not self.connected:
            self.owed_stops.add(tx)
            raise CommandFailed(self.id, "remote_stop", "unreachable",
                                f"station {self.id} is not connected; the stop is sent when it reconnects")
        await self._stop_tx(tx, None, must=True)

    async def _stop_tx(self, tx: str, reason: str | None, must: bool = False) -> None:
        if not self.connected:
            self.owed_stops.add(tx)
            return
        outcome = await self._call("remote_stop", self.station.remote_stop(tx))
        if not outcome.ok:
            if outcome.kind in ("Timeout", "Error"):
                self.owed_stops.add(tx)
            if must:
                raise CommandFailed(self.id, "remote_stop", OUTCOME_OF_KIND.get(outcome.kind, "error"),
                                    outcome.message)

    async def unlock(self, connector_id: str) -> bool:
        evse, conn = self._place(connector_id)
        outcome = await self._call("unlock", self._station("unlock").unlock(evse, conn))
        if outcome.kind in ("Timeout", "Error"):
            raise CommandFailed(self.id, "unlock", OUTCOME_OF_KIND[outcome.kind], outcome.message)
        return outcome.ok

    async def set_available(self, connector_id: str, available: bool) -> None:
        evse, _ = self._place(connector_id)
        await self._must("set_available", self._station("set_available").set_available(evse, available))

    async def reserve(self, connector_id: str, reservation_id: int, expires_at, token: str) -> None:
        evse, _ = self._place(connector_id)
        await self._must("reserve", self._station("reserve").reserve(evse, reservation_id, token[:ID_TAG_MAX],
                                                                     expires_at))

    async def cancel_reservation(self, reservation_id: int) -> None:
        await self._must("cancel_reservation", self._station("cancel_reservation").cancel_reservation(reservation_id))

    def _limit(self, connector_id: str, watts: int) -> PowerLimit:
        evse, _ = self.places[connector_id]
        tx = self.transactions.get(connector_id)
        if tx is not None:
            return PowerLimit(float(watts), "tx", evse, transaction_id=tx)
        return PowerLimit(float(watts), "tx_default", evse)

    async def set_power_limit(self, connector_id: str, watts: int) -> None:
        """Site power (R-E2): a TxProfile on the running transaction, else a
        TxDefaultProfile for the connector's evse."""
        self._place(connector_id)
        self.limits[connector_id] = int(watts)
        st = self._station("set_power_limit")
        await self._must("set_power_limit", st.set_power_limit(self._limit(connector_id, int(watts))))

    async def set_fail_safe_limit(self, watts_per_connector: int) -> None:
        """R-E4: what the station applies by itself without the hub: a
        TxDefaultProfile for the whole station and a ChargePointMaxProfile
        (ChargingStationMaxProfile) for the sum; sent again after every boot."""
        self.fail_safe_w = int(watts_per_connector)
        self._station("set_fail_safe_limit")
        await self._send_fail_safe(must=True)

    async def _send_fail_safe(self, must: bool = False) -> None:
        st = self.station
        watts = float(self.fail_safe_w)
        call = self._must if must else self._call
        await call("set_fail_safe_limit", st.set_power_limit(PowerLimit(watts, "tx_default", 0)))
        await call("set_fail_safe_limit", st.set_power_limit(PowerLimit(watts * len(self.connectors), "station_max", 0)))

    # ------------------------------------------------------------ views
    def view(self) -> dict:
        st = self.station
        boot = self.booted or {}
        return {
            "charger": self.id,
            "protocol": self.protocol,
            "address": f"/ocpp/{self.id}",
            "connected": self.connected,
            "state": "offline" if self.lost_reason else ("connected" if self.connected else "not connected"),
            "vendor": boot.get("vendor"),
            "model": boot.get("model"),
            "serial": boot.get("serial"),
            "firmware": boot.get("firmware"),
            "booted_at": boot.get("booted_at"),
            "last_frame": rfc3339(st.last_frame_at) if st is not None and st.last_frame_at else None,
            "remote": self.health_.detail.get("remote"),
            "connectors": {cid: {"evse": e, "connector": c, "transaction": self.transactions.get(cid)}
                           for cid, (e, c) in self.places.items()},
            "last_command": self.last_outcome,
        }

    async def close(self) -> None:
        await self.site.stop()
