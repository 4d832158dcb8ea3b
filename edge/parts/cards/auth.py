"""Who may charge, and who may stop: card authorisation at the connectors.

``Authorisation`` holds no I/O. It is fed events (a card tapped, a connector
changed state, the cloud answered a roaming check, time passed, the cloud link
went up or down) and answers each with a list of plain decisions for the
caller to carry out: start charging, stop a session, ask the cloud, and the
accepted/rejected verdicts that become ``auth.accepted`` / ``auth.rejected``
events. The token list and the authorisation cache come in through a small
interface (``TokenSource``), so tests drive every race without sockets.

Rules: R-C3 (tap on a plugged connector starts; a tap before
plugging authorises the connector for a connection timeout), R-C4 (the same
card stops its session; a master card or a card of the same group may), R-A1
(Blocked and Expired refused, offline too), R-A2 (roaming cards checked with
the cloud with a timeout, answers cached; offline the list and cache decide;
unknown cards offline follow a policy, default refuse), R-A4 (repeated taps
count once), R-B3 (a reserved connector refuses other tokens).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Literal, Protocol

from edge.core.sessions import TokenVerdict
from edge.parts.cards.tokens import CLOUD_STATUSES, CachedAuthorisation, TokenInfo, mask, normalise_uid

CONNECTOR_STATES = (
    "Available", "Reserved", "Preparing", "Charging", "SuspendedEV",
    "SuspendedEVSE", "Finishing", "Unavailable", "Faulted",
)
_IN_SESSION = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE"})
_OUT_OF_ORDER = frozenset({"Unavailable", "Faulted"})

Method = Literal["own_card", "emsp_card"]


class TokenSource(Protocol):
    """What the decisions need from the token store (edge.parts.cards.tokens.TokenStore)."""

    def lookup(self, uid: str) -> TokenInfo | None: ...
    def cached(self, uid: str, now: datetime) -> CachedAuthorisation | None: ...
    def remember(self, answer: CachedAuthorisation, now: datetime) -> None: ...


@dataclass(frozen=True)
class AuthPolicy:
    connection_timeout_s: float = 60.0  # tap before plug: how long the connector stays authorised
    cloud_timeout_s: float = 5.0  # how long a roaming check may take
    cache_ttl_s: float = 86_400.0  # cache life of a cloud answer that gives no expiry
    offline_unknown: Literal["refuse", "accept"] = "refuse"  # OCPP AllowOfflineTxForUnknownId
    master_uids: frozenset[str] = frozenset()  # cards that may stop any session
    group_may_stop: bool = True  # a card of the session card's group may stop it
    stop_on_blocked: bool = False  # stop a running session whose card becomes Blocked/Expired
    check_emsp_online: bool = True  # roaming cards on the local list are still checked online
    debounce_s: float = 2.0  # repeated taps of one card within this count once

    def __post_init__(self):
        if self.offline_unknown not in ("refuse", "accept"):
            raise ValueError("offline_unknown must be refuse or accept")
        object.__setattr__(self, "master_uids", frozenset(normalise_uid(u) for u in self.master_uids))


# -- decisions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StartCharging:
    connector: str
    token_uid: str
    method: Method
    group: str | None = None
    reference: str | None = None


@dataclass(frozen=True)
class StopSession:
    session_id: str
    connector: str
    token_uid: str  # the card that asked for the stop
    reason: Literal["card", "blocked"] = "card"


@dataclass(frozen=True)
class SendAuthRequest:
    request_id: str
    uid: str
    token_type: Literal["own", "emsp"]
    connector: str


@dataclass(frozen=True)
class AuthorisedAwaitingPlug:
    connector: str
    token_uid: str
    expires_at: datetime


@dataclass(frozen=True)
class AuthorisationLapsed:
    connector: str
    token_uid: str
    reason: str


@dataclass(frozen=True)
class AuthAccepted:
    connector: str
    token_uid: str
    code: str  # start | authorised | stop_same_card | stop_master | stop_group
    reason: str
    method: Method | None = None
    source: str = "local_list"  # local_list | cache | cloud | offline_policy | session
    offline: bool = False


@dataclass(frozen=True)
class AuthRejected:
    connector: str
    token_uid: str
    code: str  # blocked | expired | invalid | unknown | unknown_offline | cloud_timeout | reserved | ...
    reason: str
    # What decided: local_list | cache | cloud | offline_policy | session | connector | reservation
    source: str = "connector"
    token_type: str | None = None  # own | emsp when known


@dataclass(frozen=True)
class TokenBlockedInSession:
    """A card went Blocked/Expired while its session runs; ``stopping`` says what happens."""

    session_id: str
    connector: str
    token_uid: str
    status: str
    stopping: bool


_STATUS_OF_CODE = {"blocked": "Blocked", "expired": "Expired", "unknown": "Unknown", "unknown_offline": "Unknown",
                   "cloud_timeout": "Unknown"}


def _token_verdict(v: "_Verdict | AuthRejected", uid: str, offline: bool) -> TokenVerdict:
    if isinstance(v, AuthRejected):
        return TokenVerdict(uid, _STATUS_OF_CODE.get(v.code, "Invalid"), v.code, v.reason, source=v.source,
                            offline=offline, token_type=v.token_type)
    return TokenVerdict(uid, "Accepted", "accepted", f"{_human(uid)} {v.reason}", v.method, v.group, v.source,
                        offline, "own" if v.method == "own_card" else "emsp")


Decision = (StartCharging | StopSession | SendAuthRequest | AuthorisedAwaitingPlug
            | AuthorisationLapsed | AuthAccepted | AuthRejected | TokenBlockedInSession)


# -- what the logic remembers ------------------------------------------------------------
@dataclass
class _Connector:
    state: str = "Available"
    session_id: str | None = None
    session_uid: str | None = None
    session_group: str | None = None
    starting: tuple[str, str | None] | None = None  # (uid, group) of a start we ordered
    preauth: tuple[str, Method, str | None, str | None, datetime] | None = None  # uid, method, group, ref, expires
    reservation: tuple[str | None, str | None] | None = None  # (uid, group) holding it


@dataclass
class _Verdict:
    ok: bool
    code: str
    reason: str
    method: Method | None = None
    group: str | None = None
    reference: str | None = None
    source: str = "local_list"


@dataclass
class _PendingCheck:
    connector: str
    uid: str
    token_type: Literal["own", "emsp"]
    deadline: datetime
    local: TokenInfo | None


def _human(uid: str) -> str:
    return f"card {mask(uid)}"


@dataclass
class Authorisation:
    tokens: TokenSource
    policy: AuthPolicy = field(default_factory=AuthPolicy)
    new_request_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    online: bool = False

    def __post_init__(self):
        self._connectors: dict[str, _Connector] = {}
        self._pending: dict[str, _PendingCheck] = {}  # request id -> check
        self._late: dict[str, tuple[str, datetime]] = {}  # timed-out request id -> (uid, when)
        self._last_tap: dict[str, datetime] = {}

    # -- inputs ------------------------------------------------------------------------
    def connector(self, connector: str) -> _Connector:
        return self._connectors.setdefault(connector, _Connector())

    def reservation(self, connector: str, token_uid: str | None, group: str | None) -> None:
        """Who holds a reserved connector (R-B3); both None ends the hold."""
        c = self.connector(connector)
        uid = normalise_uid(token_uid) if token_uid else None
        c.reservation = None if uid is None and group is None else (uid, group)

    def cloud_link(self, up: bool, now: datetime) -> list[Decision]:
        self.online = up
        if up:
            return []
        # Nobody will answer the checks in flight: decide them as offline now.
        out: list[Decision] = []
        for request_id, check in list(self._pending.items()):
            del self._pending[request_id]
            self._late[request_id] = (check.uid, now)
            out += self._decide_without_cloud(check, now, "cloud_offline")
        return out

    def card_tapped(self, connector: str, uid: str, now: datetime) -> list[Decision]:
        uid = normalise_uid(uid)
        last = self._last_tap.get(uid)
        self._last_tap[uid] = now
        if last is not None and (now - last).total_seconds() < self.policy.debounce_s:
            return []  # the same card seen again (held, or by a second reader): counts once (R-A4)
        c = self.connector(connector)

        if c.state in _IN_SESSION and c.session_id:
            return self._stop_request(connector, c, uid, now)
        if c.state in _OUT_OF_ORDER:
            return [AuthRejected(connector, uid, "connector_unavailable",
                                 f"connector {connector} is {c.state}; use another connector or call the operator")]
        if c.state == "Finishing":
            return [AuthRejected(connector, uid, "connector_finishing",
                                 f"the session on connector {connector} has ended; unplug, then plug in and tap again")]
        if c.starting is not None:
            return [AuthRejected(connector, uid, "connector_busy",
                                 f"connector {connector} is already starting a session; wait for it")]
        if any(p.connector == connector for p in self._pending.values()):
            return [AuthRejected(connector, uid, "check_in_progress",
                                 f"a card check is running on connector {connector}; wait a moment and tap again")]
        if c.reservation and c.reservation[0] and not c.reservation[1] and c.reservation[0] != uid:
            return [self._reserved_reject(connector, uid)]

        local = self.tokens.lookup(uid)
        if local is not None:
            status = local.status_at(now)
            if status != "Active":  # R-A1: refused whatever the link, whatever the cache
                return [self._reject_status(connector, uid, status, "local list", local.type)]
            if local.type == "own" or not (self.online and self.policy.check_emsp_online):
                verdict = _Verdict(True, "accepted", "on the local token list",
                                   "own_card" if local.type == "own" else "emsp_card",
                                   local.group, local.reference, "local_list")
                return self._grant(connector, uid, verdict, now)
        if self.online:
            request_id = self.new_request_id()
            token_type = local.type if local is not None else "emsp"
            self._pending[request_id] = _PendingCheck(
                connector, uid, token_type, now + timedelta(seconds=self.policy.cloud_timeout_s), local)
            return [SendAuthRequest(request_id, uid, token_type, connector)]
        check = _PendingCheck(connector, uid, "emsp", now, local)
        return self._decide_without_cloud(check, now, "cloud_offline")

    def cloud_answer(self, request_id: str, status: str, now: datetime, *, expires: datetime | None = None,
                     group: str | None = None, reference: str | None = None) -> list[Decision]:
        if status not in CLOUD_STATUSES:
            status = "Invalid"  # an answer we cannot read never lets a card charge
        check = self._pending.pop(request_id, None)
        if check is None:
            late = self._late.pop(request_id, None)
            if late is not None:  # too late for that tap, still worth remembering (R-A2)
                self._remember(late[0], status, now, expires, group, reference)
            return []
        self._remember(check.uid, status, now, expires, group, reference)
        if status != "Accepted":
            return [self._reject_status(check.connector, check.uid, status, "cloud", check.token_type)]
        if check.local is not None and check.local.type == "own":
            method: Method = "own_card"
        else:
            method = "emsp_card"
        verdict = _Verdict(True, "accepted", "accepted by the cloud", method,
                           group if group is not None else (check.local.group if check.local else None),
                           reference if reference is not None else (check.local.reference if check.local else None),
                           "cloud")
        return self._grant(check.connector, check.uid, verdict, now)

    def request_not_sent(self, request_id: str, now: datetime) -> list[Decision]:
        """The roaming check could not be sent (the link dropped under it):
        decide at once as offline, without waiting for the timeout."""
        check = self._pending.pop(request_id, None)
        if check is None:
            return []
        return self._decide_without_cloud(check, now, "cloud_offline")

    def start_failed(self, connector: str) -> None:
        """The start we ordered did not happen (the charger refused, the truck
        never drew power): the connector takes taps again."""
        c = self.connector(connector)
        c.starting = None

    def connector_changed(self, connector: str, state: str, now: datetime, *, session_id: str | None = None,
                          token_uid: str | None = None) -> list[Decision]:
        if state not in CONNECTOR_STATES:
            raise ValueError(f"connector state {state!r} unknown: expected one of {', '.join(CONNECTOR_STATES)}")
        c = self.connector(connector)
        c.state = state
        out: list[Decision] = []
        if state in _IN_SESSION:
            if session_id:
                uid = normalise_uid(token_uid) if token_uid else (c.starting[0] if c.starting else c.session_uid)
                if c.starting is not None and c.starting[0] == uid:
                    group = c.starting[1]
                elif c.session_id == session_id and c.session_uid == uid:
                    group = c.session_group
                else:  # a session we did not start here (e.g. found running after a restart)
                    group = self._group_of(uid, now) if uid else None
                c.session_id, c.session_uid, c.session_group = session_id, uid, group
            c.starting = None
            c.preauth = None
        elif state == "Preparing":
            if c.preauth is not None:
                uid, method, group, reference, expires_at = c.preauth
                c.preauth = None
                if now < expires_at:
                    c.starting = (uid, group)
                    out.append(StartCharging(connector, uid, method, group, reference))
                else:
                    out.append(AuthorisationLapsed(connector, uid, "the truck was not plugged in within the connection timeout"))
        else:
            c.session_id = c.session_uid = c.session_group = None
            c.starting = None
            if state in _OUT_OF_ORDER and c.preauth is not None:
                out.append(AuthorisationLapsed(connector, c.preauth[0], f"connector {connector} became {state}"))
                c.preauth = None
        return out

    def tick(self, now: datetime) -> list[Decision]:
        out: list[Decision] = []
        for name, c in self._connectors.items():
            if c.preauth is not None and now >= c.preauth[4]:
                out.append(AuthorisationLapsed(name, c.preauth[0], "the truck was not plugged in within the connection timeout"))
                c.preauth = None
        for request_id, check in list(self._pending.items()):
            if now >= check.deadline:
                del self._pending[request_id]
                self._late[request_id] = (check.uid, now)
                out += self._decide_without_cloud(check, now, "cloud_timeout")
        horizon = now - timedelta(seconds=max(self.policy.debounce_s, 1.0))
        if len(self._last_tap) > 256:
            self._last_tap = {u: t for u, t in self._last_tap.items() if t >= horizon}
        late_horizon = now - timedelta(seconds=max(60.0, 10 * self.policy.cloud_timeout_s))
        self._late = {r: v for r, v in self._late.items() if v[1] >= late_horizon}
        return out

    def tokens_changed(self, now: datetime) -> list[Decision]:
        """Re-check running sessions after the token list changed (R-A1)."""
        out: list[Decision] = []
        for name, c in self._connectors.items():
            if not (c.session_id and c.session_uid and c.state in _IN_SESSION):
                continue
            info = self.tokens.lookup(c.session_uid)
            if info is None or info.status_at(now) == "Active":
                continue
            stopping = self.policy.stop_on_blocked
            out.append(TokenBlockedInSession(c.session_id, name, c.session_uid, info.status_at(now), stopping))
            if stopping:
                out.append(StopSession(c.session_id, name, c.session_uid, "blocked"))
        return out

    # -- the rules -----------------------------------------------------------------------
    def _stop_request(self, connector: str, c: _Connector, uid: str, now: datetime) -> list[Decision]:
        stop = StopSession(c.session_id, connector, uid, "card")
        if uid == c.session_uid:
            return [stop, AuthAccepted(connector, uid, "stop_same_card",
                                       f"{_human(uid)} started session {c.session_id}: stopping it", source="session")]
        if uid in self.policy.master_uids:
            return [stop, AuthAccepted(connector, uid, "stop_master",
                                       f"master {_human(uid)} stops session {c.session_id}", source="session")]
        if self.policy.group_may_stop and c.session_group:
            info = self.tokens.lookup(uid)
            group = status = None
            if info is not None:
                group, status = info.group, info.status_at(now)
            else:
                cached = self.tokens.cached(uid, now)
                if cached is not None:
                    group, status = cached.group, ("Active" if cached.status == "Accepted" else cached.status)
            if group == c.session_group and status == "Active":
                return [stop, AuthAccepted(connector, uid, "stop_group",
                                           f"{_human(uid)} is in the group of the card that started session "
                                           f"{c.session_id}: stopping it", source="session")]
        return [AuthRejected(connector, uid, "not_session_card",
                             f"{_human(uid)} did not start the session on connector {connector}; "
                             "tap the card that started it, or ask the operator to stop it", "session")]

    def _decide_without_cloud(self, check: _PendingCheck, now: datetime, why: str) -> list[Decision]:
        """Offline, or the cloud did not answer in time: the list, then the cache, then the policy."""
        v = self._offline_verdict(check, now, why)
        if isinstance(v, AuthRejected):
            return [v]
        return self._grant(check.connector, check.uid, v, now, offline=True)

    def _offline_verdict(self, check: _PendingCheck, now: datetime, why: str) -> "_Verdict | AuthRejected":
        offline = why == "cloud_offline"
        if check.local is not None and check.local.status_at(now) == "Active":
            return _Verdict(True, "accepted", "on the local token list (cloud not reachable)",
                            "own_card" if check.local.type == "own" else "emsp_card",
                            check.local.group, check.local.reference, "local_list")
        cached = self.tokens.cached(check.uid, now)
        if cached is not None:
            if cached.status != "Accepted":
                return self._reject_status(check.connector, check.uid, cached.status, "cache", check.token_type)
            return _Verdict(True, "accepted", "accepted earlier by the cloud (cache)", "emsp_card",
                            cached.group, cached.reference, "cache")
        if self.policy.offline_unknown == "accept":
            return _Verdict(True, "accepted", "unknown card accepted by the offline policy", "emsp_card",
                            None, None, "offline_policy")
        if offline:
            return AuthRejected(check.connector, check.uid, "unknown_offline",
                                f"{_human(check.uid)} is not known here and the cloud is not reachable; "
                                "try again later or pay at the terminal", "offline_policy", check.token_type)
        return AuthRejected(check.connector, check.uid, "cloud_timeout",
                            f"the cloud did not confirm {_human(check.uid)} within "
                            f"{self.policy.cloud_timeout_s:g} s; tap again or pay at the terminal",
                            "offline_policy", check.token_type)

    # -- a card with no connector in view (a charger's own reader, R-O2) ------------------
    def token_verdict(self, uid: str, now: datetime) -> TokenVerdict | None:
        """What the list, the cache and the offline policy say of ``uid``, as
        for a tap; None when the cloud must be asked (it is up): send the
        request, then call ``token_cloud_verdict`` or, past the timeout,
        ``token_verdict_without_cloud``."""
        uid = normalise_uid(uid)
        local = self.tokens.lookup(uid)
        if local is not None:
            status = local.status_at(now)
            if status != "Active":  # R-A1: refused whatever the link, whatever the cache
                return _token_verdict(self._reject_status("", uid, status, "local list", local.type), uid,
                                      not self.online)
            if local.type == "own" or not (self.online and self.policy.check_emsp_online):
                return _token_verdict(_Verdict(True, "accepted", "on the local token list",
                                               "own_card" if local.type == "own" else "emsp_card",
                                               local.group, local.reference, "local_list"), uid, not self.online)
        if self.online:
            return None
        return self.token_verdict_without_cloud(uid, now, "cloud_offline")

    def token_verdict_without_cloud(self, uid: str, now: datetime, why: str) -> TokenVerdict:
        uid = normalise_uid(uid)
        local = self.tokens.lookup(uid)
        check = _PendingCheck("", uid, local.type if local is not None else "emsp", now, local)
        return _token_verdict(self._offline_verdict(check, now, why), uid, True)

    def token_cloud_verdict(self, uid: str, status: str, now: datetime, *, expires: datetime | None = None,
                            group: str | None = None, reference: str | None = None) -> TokenVerdict:
        """The cloud's answer for a card asked about with ``token_verdict``; remembered like any answer (R-A2)."""
        uid = normalise_uid(uid)
        if status not in CLOUD_STATUSES:
            status = "Invalid"
        self._remember(uid, status, now, expires, group, reference)
        local = self.tokens.lookup(uid)
        token_type = local.type if local is not None else "emsp"
        if status != "Accepted":
            return _token_verdict(self._reject_status("", uid, status, "cloud", token_type), uid, False)
        method: Method = "own_card" if local is not None and local.type == "own" else "emsp_card"
        return _token_verdict(_Verdict(True, "accepted", "accepted by the cloud", method,
                                       group if group is not None else (local.group if local else None),
                                       reference, "cloud"), uid, False)

    def _grant(self, connector: str, uid: str, v: _Verdict, now: datetime, offline: bool = False) -> list[Decision]:
        c = self.connector(connector)
        if not self._reservation_allows(c, uid, v.group):
            return [self._reserved_reject(connector, uid)]
        if c.state in _IN_SESSION or c.starting is not None:
            return [AuthRejected(connector, uid, "connector_busy",
                                 f"connector {connector} started another session meanwhile; use another connector")]
        if c.state in _OUT_OF_ORDER or c.state == "Finishing":
            return [AuthRejected(connector, uid, "connector_unavailable",
                                 f"connector {connector} is {c.state}; use another connector")]
        offline = offline or not self.online
        if c.state == "Preparing":
            c.starting = (uid, v.group)
            return [StartCharging(connector, uid, v.method, v.group, v.reference),
                    AuthAccepted(connector, uid, "start", f"{_human(uid)} {v.reason}: starting", v.method, v.source, offline)]
        expires_at = now + timedelta(seconds=self.policy.connection_timeout_s)
        c.preauth = (uid, v.method, v.group, v.reference, expires_at)
        return [AuthorisedAwaitingPlug(connector, uid, expires_at),
                AuthAccepted(connector, uid, "authorised",
                             f"{_human(uid)} {v.reason}: plug in within {self.policy.connection_timeout_s:g} s",
                             v.method, v.source, offline)]

    def _reservation_allows(self, c: _Connector, uid: str, group: str | None) -> bool:
        if c.reservation is None:
            return True
        holder_uid, holder_group = c.reservation
        return uid == holder_uid or (holder_group is not None and group == holder_group)

    def _reserved_reject(self, connector: str, uid: str) -> AuthRejected:
        return AuthRejected(connector, uid, "reserved",
                            f"connector {connector} is reserved for another booking; use a free connector",
                            "reservation")

    def _reject_status(self, connector: str, uid: str, status: str, source: str,
                       token_type: str | None = None) -> AuthRejected:
        what = {
            "Blocked": ("blocked", f"{_human(uid)} is blocked; the driver should contact the card issuer"),
            "Expired": ("expired", f"{_human(uid)} has expired; the driver should contact the card issuer"),
            "Invalid": ("invalid", f"{_human(uid)} is not valid for charging; pay at the terminal or use another card"),
            "Unknown": ("unknown", f"{_human(uid)} is not known to the card issuer; pay at the terminal or use another card"),
        }.get(status, ("invalid", f"{_human(uid)} was refused ({status}); pay at the terminal or use another card"))
        code_of = {"local list": "local_list", "cloud": "cloud", "cache": "cache"}
        return AuthRejected(connector, uid, what[0], f"{what[1]} (from the {source})",
                            code_of.get(source, source), token_type)

    def _remember(self, uid: str, status: str, now: datetime, expires: datetime | None,
                  group: str | None, reference: str | None) -> None:
        until = expires if expires is not None else now + timedelta(seconds=self.policy.cache_ttl_s)
        if until > now:
            self.tokens.remember(CachedAuthorisation(uid, status, until, group, reference), now)

    def _group_of(self, uid: str, now: datetime) -> str | None:
        info = self.tokens.lookup(uid)
        if info is not None:
            return info.group
        cached = self.tokens.cached(uid, now)
        return cached.group if cached is not None else None
