"""Card authorisation in the daemon: RFID readers, tap decisions, roaming checks.

The part that plugs the pure decision logic (``edge.parts.cards.auth.Authorisation``) into
the hub. Readers (``drivers.nfc_reader.CardReader``, one thread each) hand
card taps to the loop; the connector changes, the cloud link, the cloud's
roaming answers and the clock feed the same logic; its decisions are carried
out here through the hub's public surface: start or stop a session, ask the
cloud, record ``auth.*`` events.

Rules: R-C3 (tap starts on a plugged connector, or authorises it for the
connection timeout), R-C4 (the same card stops; another does not), R-A1..R-A4
(token list, roaming checks with a timeout and a cache, offline policy,
debounce), R-B3 (a reserved connector refuses other tokens), R-P9 (charge-card
sessions carry no tariff: the cloud invoices them), R-S1 (the session records
the token and the method).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from drivers.device import DeviceFault, DeviceRecovered
from drivers.nfc_reader import CardReader, CardTap
from edge.parts.cards.auth import (
    AuthAccepted, AuthorisationLapsed, AuthorisedAwaitingPlug, Authorisation, AuthPolicy,
    AuthRejected, Decision, SendAuthRequest, StartCharging, StopSession, TokenBlockedInSession, TokenVerdict,
)
from units import parse_rfc3339, rfc3339
from edge.core.hub import Capability, Refused
from edge.parts.cards.store import TokenLists
from edge.parts.cards.tokens import CachedAuthorisation, TokenInfo, mask, normalise_uid

log = logging.getLogger("hubedge.cards")

CARD_METHODS = ("own_card", "emsp_card")


class LoopTokens:
    """The token store as the event loop sees it.

    Lookups go straight to the store's read connection (a keyed read, well
    under a millisecond, and never behind a list apply). Remembering a cloud
    answer is a write that may wait seconds behind a full list apply, so it
    runs in a worker thread; until it lands the answer is served from memory.
    """

    def __init__(self, store, spawn):
        self.store = store
        self._spawn = spawn
        self._fresh: dict[str, CachedAuthorisation] = {}

    def lookup(self, uid: str) -> TokenInfo | None:
        return self.store.lookup(uid)

    def cached(self, uid: str, now: datetime) -> CachedAuthorisation | None:
        fresh = self._fresh.get(normalise_uid(uid))
        if fresh is not None:
            return fresh if fresh.expires > now else None
        return self.store.cached(uid, now)

    def remember(self, answer: CachedAuthorisation, now: datetime) -> None:
        uid = normalise_uid(answer.uid)
        self._fresh[uid] = answer
        self._spawn(self._write(uid, answer, now))

    async def _write(self, uid: str, answer: CachedAuthorisation, now: datetime) -> None:
        try:
            await asyncio.to_thread(self.store.remember, answer, now)
        finally:
            if self._fresh.get(uid) is answer:
                del self._fresh[uid]


@dataclass
class ReaderPlace:
    reader: CardReader
    connector: str
    last_tap_mono: float | None = None
    taps: int = 0


def policy_from_config(cfg) -> AuthPolicy:
    a = cfg.auth
    return AuthPolicy(
        connection_timeout_s=a.connection_timeout_s,
        cloud_timeout_s=a.cloud_timeout_s,
        offline_unknown=a.unknown_offline,
        master_uids=frozenset(a.master_cards),
        stop_on_blocked=a.stop_on_blocked,
        debounce_s=a.debounce_s,
    )


class CardAuthorisation(Capability):
    name = "cards"

    def __init__(self, hub):
        super().__init__(hub)
        self.policy = policy_from_config(hub.cfg)
        self.lists = TokenLists(hub)
        for alarm in hub.tokens.alarms:
            hub.emit("device.alarm", {"alarm": "store_recovered", "message": alarm})
        self.tokens = LoopTokens(hub.tokens, hub.spawn)
        self.auth = Authorisation(self.tokens, self.policy)
        hub.token_decider = self.decide_token
        self.readers: dict[str, ReaderPlace] = {}
        self._reservations: dict[str, str | None] = {}  # connector -> booking id told to the logic
        self._token_list: tuple[int, int] = (hub.tokens.version, hub.tokens.count)
        self._awaiting: dict[str, datetime] = {}  # connector -> until when a tap before plugging holds
        self.counts: dict[str, dict[str, int]] = {"accepted": {}, "rejected": {}}  # verdict -> code -> taps
        self._token_checks: dict[str, tuple[str, asyncio.Future]] = {}  # request id -> (uid, answer) for decide_token

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        now = self.hub.clock.now()
        self.auth.online = self.hub.link_up
        if self.hub.downlink is not None:
            self.hub.downlink.register("auth_response", self._cloud_answer)
        self.hub.session_ended_hooks.append(self.session_ended)
        for c in self.hub.connectors.values():
            self._feed_connector(c, now)
            self._sync_reservation(c)
        for r in self.hub.cfg.readers:
            reader = CardReader(r.id, r.path, loop, lambda ev, rid=r.id: self._reader_event(rid, ev),
                                debounce_s=self.policy.debounce_s)
            reader.health.detail["connector"] = r.connector
            self.hub.devices[r.id] = reader.health
            self.readers[r.id] = ReaderPlace(reader, r.connector)
            reader.start()
            log.info("cards.reader_started reader=%s connector=%s path=%s", r.id, r.connector, r.path)

    async def stop(self) -> None:
        # Each join waits for at most one nfcpy poll (about 2 s on udp);
        # in threads and side by side, so the loop stays free meanwhile.
        results = await asyncio.gather(
            *(asyncio.to_thread(p.reader.stop, 3.0) for p in self.readers.values()), return_exceptions=True)
        for rid, ended in zip(self.readers, results):
            if ended is not True:
                log.warning("cards.reader_not_stopped reader=%s result=%s", rid, ended)

    # ----------------------------------------------------------------- inputs
    def _reader_event(self, reader_id: str, ev) -> None:
        """On the loop: a reader's CardTap or health change."""
        if isinstance(ev, (DeviceFault, DeviceRecovered)):
            self.hub.device_event(ev)
            return
        if not isinstance(ev, CardTap):
            return
        place = self.readers.get(reader_id)
        if place is None:
            return
        place.last_tap_mono = time.monotonic()
        place.taps += 1
        now = self.hub.clock.now()
        self._sync_reservation(self.hub.connectors[place.connector])
        self._carry_out(self.auth.card_tapped(place.connector, ev.uid_hex, now), now)

    def on_connector_changed(self, c, previous: str) -> None:
        now = self.hub.clock.now()
        self._sync_reservation(c)
        self._feed_connector(c, now)

    def on_link(self, up: bool) -> None:
        now = self.hub.clock.now()
        self._carry_out(self.auth.cloud_link(up, now), now)

    def tick(self, now: datetime) -> None:
        for c in self.hub.connectors.values():
            self._sync_reservation(c)
        held = (self.hub.tokens.version, self.hub.tokens.count)
        if held != self._token_list:
            # A list (full or delta) was applied: re-check running sessions (R-A1).
            self._token_list = held
            self._carry_out(self.auth.tokens_changed(now), now)
        self._carry_out(self.auth.tick(now), now)

    async def _cloud_answer(self, msg: dict) -> dict:
        now = self.hub.clock.now()
        expires = parse_rfc3339(msg["expires"]) if msg.get("expires") else None
        waiting = self._token_checks.pop(msg["id"], None)
        if waiting is not None:
            uid, answer = waiting
            verdict = self.auth.token_cloud_verdict(uid, msg["status"], now, expires=expires, group=msg.get("group"),
                                                    reference=msg.get("reference"))
            if not answer.done():
                answer.set_result(verdict)
            return {}
        decisions = self.auth.cloud_answer(msg["id"], msg["status"], now, expires=expires,
                                           group=msg.get("group"), reference=msg.get("reference"))
        self._carry_out(decisions, now)
        return {}

    def _feed_connector(self, c, now: datetime) -> None:
        session_id = token = None
        if c.session_id:
            s = self.hub.sessions.get(c.session_id)
            if s is not None:
                session_id = s.id
                # Only a charge card's uid can be matched by a later tap.
                token = s.token if s.method in CARD_METHODS else None
        self._carry_out(self.auth.connector_changed(c.id, c.state, now, session_id=session_id, token_uid=token), now)

    def _sync_reservation(self, c) -> None:
        """R-B3: tell the logic who holds a reserved connector (the booking's
        token when it names one)."""
        booking_id = c.reserved_for
        if self._reservations.get(c.id, None) == booking_id and c.id in self._reservations:
            return
        self._reservations[c.id] = booking_id
        token = None
        if booking_id is not None:
            booking = self.hub.bookings.get(booking_id)
            token = getattr(booking, "token_uid", None) if booking is not None else None
        self.auth.reservation(c.id, token, None)

    # -------------------------------------------------------------- decisions
    def _carry_out(self, decisions: list[Decision], now: datetime) -> None:
        for d in decisions:
            try:
                self._one(d, now)
            except Exception:
                log.exception("cards.decision_failed decision=%s", type(d).__name__)

    def _one(self, d: Decision, now: datetime) -> None:
        hub = self.hub
        if isinstance(d, StartCharging):
            hub.spawn(self._start(d))
        elif isinstance(d, StopSession):
            hub.spawn(self._stop(d))
        elif isinstance(d, SendAuthRequest):
            self._ask_cloud(d, now)
        elif isinstance(d, AuthorisedAwaitingPlug):
            self._awaiting[d.connector] = d.expires_at
        elif isinstance(d, AuthAccepted):
            self._count("accepted", d.code)
            data = {
                "connector": d.connector, "token": mask(d.token_uid), "code": d.code, "message": d.reason,
                "source": d.source, "offline": d.offline,
                "token_type": {"own_card": "own", "emsp_card": "emsp"}.get(d.method or ""),
            }
            if d.method:
                data["method"] = d.method
            if d.code == "authorised" and d.connector in self._awaiting:
                data["expires_at"] = rfc3339(self._awaiting.pop(d.connector))
            c = hub.connectors.get(d.connector)
            if d.code.startswith("stop") and c is not None and c.session_id:
                data["session"] = c.session_id
            self._emit("auth.accepted", data)
        elif isinstance(d, AuthRejected):
            self._count("rejected", d.code)
            self._emit("auth.rejected", {
                "connector": d.connector, "token": mask(d.token_uid), "code": d.code, "message": d.reason,
                "source": d.source, "token_type": d.token_type,
            })
        elif isinstance(d, AuthorisationLapsed):
            self._awaiting.pop(d.connector, None)
            self._emit("auth.lapsed", {"connector": d.connector, "token": mask(d.token_uid), "message": d.reason})
        elif isinstance(d, TokenBlockedInSession):
            self._emit("auth.blocked_in_session", {
                "connector": d.connector, "session": d.session_id, "token": mask(d.token_uid), "status": d.status,
                "stopping": d.stopping,
                "message": (f"card {mask(d.token_uid)} is now {d.status}: "
                            + ("its session is being stopped" if d.stopping
                               else "its session goes on ([auth] stop_on_blocked is off); stop it with "
                                    f"`hubctl session stop {d.session_id[:8]} --reason 'card blocked'` if needed")),
            })

    def _emit(self, type_: str, data: dict) -> None:
        """Record the verdict just after the loop's current turn: a start or
        stop spawned by the same tap then reaches the charger first, and the
        event's durable commit (an fsync) overlaps the Modbus round trip
        instead of delaying it."""
        try:
            asyncio.get_running_loop().call_soon(self.hub.emit, type_, data)
        except RuntimeError:  # no loop running (tests calling in directly)
            self.hub.emit(type_, data)

    def _count(self, verdict: str, code: str) -> None:
        per_code = self.counts[verdict]
        per_code[code] = per_code.get(code, 0) + 1

    async def _start(self, d: StartCharging) -> None:
        try:
            # R-P9: no tariff for a charge card; the cloud invoices the contract.
            await self.hub.start_session(d.connector, method=d.method, token=d.token_uid,
                                         token_masked=mask(d.token_uid),
                                         extra={"group": d.group} if d.group else None)
        except Refused as exc:
            self.auth.start_failed(d.connector)
            log.warning("cards.start_refused connector=%s token=%s reason=%s", d.connector, mask(d.token_uid), exc)
            self._count("rejected", "start_failed")
            self.hub.emit("auth.rejected", {
                "connector": d.connector, "token": mask(d.token_uid), "code": "start_failed",
                "message": f"the card was accepted but the session did not start: {exc}",
                "source": "connector", "token_type": "own" if d.method == "own_card" else "emsp",
            })

    async def _stop(self, d: StopSession) -> None:
        reason = "card" if d.reason == "card" else "token_blocked"
        try:
            await self.hub.stop_session(d.session_id, reason=reason)
        except Refused as exc:
            log.warning("cards.stop_refused session=%s connector=%s reason=%s", d.session_id, d.connector, exc)

    def _ask_cloud(self, d: SendAuthRequest, now: datetime) -> None:
        uplink = self.hub.uplink
        sent = False
        if uplink is not None:
            sent = uplink.publish_auth_request(
                {"v": 1, "id": d.request_id, "uid": d.uid, "token_type": d.token_type, "connector": d.connector})
        if sent:
            log.info("cards.auth_requested connector=%s token=%s request=%s", d.connector, mask(d.uid), d.request_id)
        else:
            self._carry_out(self.auth.request_not_sent(d.request_id, now), now)

    async def decide_token(self, uid: str, *, asked_at: str, timeout_s: float | None = None) -> TokenVerdict:
        """The decision for a card read by a charger's own reader (OCPP
        Authorize, or a start the station made from its own list): the same
        list, cache, roaming check and offline policy as a tap at the hub's
        readers (R-O2), with the roaming check bounded by [auth]
        cloud_timeout_s (or ``timeout_s`` when shorter). ``asked_at`` names
        where the card was read (a connector or charger id) for the cloud."""
        now = self.hub.clock.now()
        verdict = self.auth.token_verdict(uid, now)
        if verdict is not None:
            return verdict
        uid = normalise_uid(uid)
        local = self.tokens.lookup(uid)
        request_id = self.auth.new_request_id()
        answer = asyncio.get_running_loop().create_future()
        self._token_checks[request_id] = (uid, answer)
        uplink = self.hub.uplink
        sent = uplink is not None and uplink.publish_auth_request(
            {"v": 1, "id": request_id, "uid": uid, "token_type": local.type if local else "emsp",
             "connector": asked_at})
        if not sent:
            self._token_checks.pop(request_id, None)
            return self.auth.token_verdict_without_cloud(uid, self.hub.clock.now(), "cloud_offline")
        log.info("cards.auth_requested at=%s token=%s request=%s", asked_at, mask(uid), request_id)
        limit = self.policy.cloud_timeout_s if timeout_s is None else min(timeout_s, self.policy.cloud_timeout_s)
        try:
            return await asyncio.wait_for(asyncio.shield(answer), limit)
        except asyncio.TimeoutError:
            return self.auth.token_verdict_without_cloud(uid, self.hub.clock.now(), "cloud_timeout")
        finally:
            self._token_checks.pop(request_id, None)

    def session_ended(self, s) -> None:
        """A card start that never produced energy ends as a failed session
        with the connector still Preparing: free it for the next tap."""
        if s.method in CARD_METHODS and s.status == "failed":
            self.auth.start_failed(s.connector)

    # ------------------------------------------------------------------ views
    def status(self) -> dict:
        now = time.monotonic()
        readers = []
        for rid, p in self.readers.items():
            readers.append({
                "reader": rid,
                "connector": p.connector,
                "state": p.reader.health.state,
                "last_tap_age_s": None if p.last_tap_mono is None else round(now - p.last_tap_mono),
                "taps": p.taps,
            })
        return {
            "readers": readers,
            "token_list": {"version": self.hub.tokens.version, "count": self.hub.tokens.count},
            "card_taps": {"accepted": sum(self.counts["accepted"].values()),
                          "rejected": sum(self.counts["rejected"].values()),
                          "by_code": {k: dict(v) for k, v in self.counts.items()}},
        }

    def control_handlers(self) -> dict:
        return {"tokens": self._tokens_command}

    def sync_handlers(self) -> dict:
        return {"tokens": self.lists.sync}

    def resync_held(self) -> dict:
        return {"tokens": {"version": self.hub.tokens.version}}

    def backups(self) -> list:
        return [("tokens.sqlite3", self.hub.tokens.backup)]

    async def _tokens_command(self, args: dict, caller, progress) -> dict:
        from edge.core.control import ControlError

        action = args.get("action") or "lookup"
        held = {"version": self.hub.tokens.version, "count": self.hub.tokens.count}
        if action == "version":
            return {"list": held}
        if action != "lookup":
            raise ControlError("bad_request", f"unknown tokens action {action!r}: use lookup or version")
        uid = args.get("uid")
        if not isinstance(uid, str) or not uid.strip():
            raise ControlError("bad_request", "give the card's uid, e.g. `hubctl tokens lookup 04A1B2C3`")
        return token_answer(uid, self.tokens, self.hub.clock.now(), held)


def token_answer(uid: str, tokens, now: datetime, held: dict) -> dict:
    """What the hub knows of a card, and from where: the local list wins over
    the cache (R-A2); anything else is unknown here."""
    out = {"token": mask(normalise_uid(uid)), "list": held}
    info = tokens.lookup(uid)
    if info is not None:
        out.update(source="local_list", status=info.status_at(now), type=info.type, group=info.group,
                   reference=info.reference, expires=rfc3339(info.expires) if info.expires else None)
        return out
    cached = tokens.cached(uid, now)
    if cached is not None:
        out.update(source="cache", status=cached.status, type="emsp", group=cached.group,
                   reference=cached.reference, expires=rfc3339(cached.expires))
        return out
    out.update(source="unknown", status=None, type=None, group=None, reference=None, expires=None)
    return out
