"""The hub's OCPP-J endpoint: ``ws(s)://HOST:PORT/ocpp/{charger_id}`` (R-O1).

Per request, before the websocket is accepted: the identity (percent-decoded)
must be a configured station, the HTTP Basic user must be that identity and
the password must pass the hub's check (compared in constant time; never
logged); otherwise HTTP 401. Then the subprotocol: the station must offer
its configured version; when it offers others only, the handshake completes
without a subprotocol and the connection is closed, as OCPP-J says. Each
connection runs in its own task with a frame size limit (a larger frame
closes only that connection, 1009) and websocket pings.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping

from aiohttp import BasicAuth, hdrs, web

from drivers.ocpp.events import HandshakeRefused
from drivers.ocpp.handler import StationHandler
from drivers.ocpp.station import Station, StationConfig

log = logging.getLogger("hubedge.ocpp")

PATH = "/ocpp/{cid}"
CredentialCheck = Callable[[str, bytes], bool]  # (station id, password bytes as sent) -> right?
# The two plain-RSA suites the OCPP 1.6 security whitepaper lists for a
# central system, after the modern ones: older stations offer nothing else.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:AES128-GCM-SHA256:AES256-GCM-SHA384"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ListenerSettings:
    host: str = "0.0.0.0"
    port: int = 9000
    heartbeat_interval_s: int = 300  # sent in the BootNotification answer
    offline_after_s: float = 600.0  # silent this long: the hub marks the connectors Unavailable (R-O5)
    max_frame_bytes: int = 65536
    ping_interval_s: float | None = 30.0  # websocket ping; no pong within half of it closes the connection
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self):
        if self.max_frame_bytes < 1024:
            raise ValueError(f"max_frame_bytes {self.max_frame_bytes} is too small for OCPP (at least 1024)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")


def password_check(passwords: Mapping[str, bytes]) -> CredentialCheck:
    """A credential check over passwords the hub loaded (one per station):
    constant-time, and an unknown station costs the same as a wrong password."""
    def check(station_id: str, password: bytes) -> bool:
        expected = passwords.get(station_id)
        ok = hmac.compare_digest(expected if expected is not None else b"\0" * 20, password)
        return ok and expected is not None
    return check


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Security profile 2: the hub's certificate, TLS 1.2 or newer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.load_cert_chain(cert, key)
    return ctx


def offered_protocols(request: web.Request) -> list[str]:
    header = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
    return [p.strip() for p in header.split(",") if p.strip()]


class OcppListener:
    """The listener and its stations. ``handler`` hears every station;
    ``credentials`` checks Basic passwords (see ``password_check``)."""

    def __init__(self, settings: ListenerSettings, stations: Iterable[StationConfig], handler: StationHandler,
                 credentials: CredentialCheck, *, clock: Callable[[], datetime] = utcnow):
        self.settings = settings
        self.handler = handler
        self.credentials = credentials
        self.clock = clock
        self.stations: dict[str, Station] = {}
        for config in stations:
            if config.id in self.stations:
                raise ValueError(f"station {config.id!r} is configured twice")
            if config.security_profile == 2 and not settings.tls_cert:
                raise ValueError(f"station {config.id!r} has security_profile 2, which needs [ocpp] tls_cert and "
                                 "tls_key")
            self.stations[config.id] = Station(config, handler, clock=clock,
                                               heartbeat_interval_s=settings.heartbeat_interval_s,
                                               max_frame_bytes=settings.max_frame_bytes)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.refused = 0

    @property
    def scheme(self) -> str:
        return "wss" if self.settings.tls_cert else "ws"

    def url(self, station_id: str, host: str | None = None) -> str:
        from urllib.parse import quote
        return f"{self.scheme}://{host or self.settings.host}:{self.port}/ocpp/{quote(station_id, safe='')}"

    def station(self, station_id: str) -> Station:
        return self.stations[station_id]

    def offline(self) -> list[str]:
        """Stations silent longer than ``offline_after_s`` (or never heard):
        their connectors are Unavailable, reason charger offline (R-O5)."""
        return [sid for sid, st in self.stations.items() if st.offline(self.settings.offline_after_s)]

    async def start(self) -> int:
        """Listen; returns the port (a free one when settings.port is 0)."""
        app = web.Application(handler_args={"max_field_size": 8190})
        app.router.add_get(PATH, self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        ctx = tls_context(self.settings.tls_cert, self.settings.tls_key) if self.settings.tls_cert else None
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("ocpp_listening url=%s://%s:%d/ocpp/{charger_id} stations=%d", self.scheme, self.settings.host,
                 self.port, len(self.stations))
        return self.port

    async def stop(self) -> None:
        for station in self.stations.values():
            if station.connection is not None:
                await station.connection.close("the hub is shutting down", 1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- one request
    async def _serve(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        remote = _remote(request)
        station = self.stations.get(cid)
        if station is None:
            self._password(cid, request)  # checked all the same: an unknown id answers as slowly as a wrong password
            return await self._refuse(cid, remote, "unknown station")
        why = self._authenticate(station, request)
        if why:
            return await self._refuse(cid, remote, why)
        version = station.config.version
        ws = web.WebSocketResponse(protocols=[version], max_msg_size=self.settings.max_frame_bytes,
                                   heartbeat=self.settings.ping_interval_s, autoping=True, compress=True)
        ready = ws.can_prepare(request)
        if not ready.ok:
            return web.Response(status=400, text="this endpoint speaks OCPP-J over a websocket only\n")
        offered = offered_protocols(request)
        if ready.protocol is None:
            if offered or "assume_subprotocol" not in station.config.leniencies:
                # OCPP-J: no common subprotocol -> complete the handshake without one, then close.
                await ws.prepare(request)
                await self._report(HandshakeRefused(cid[:100], remote, 101, f"subprotocol mismatch: offered "
                                                    f"{','.join(offered) or 'none'}, configured {version}",
                                                    self.clock()))
                await ws.close(code=1002, message=f"subprotocol {version} required".encode())
                return ws
            log.warning("ocpp_leniency station=%s leniency=assume_subprotocol repaired=no subprotocol offered, "
                        "taken as %s", cid, version)
        await ws.prepare(request)
        conn = await station.attach(ws, remote)
        log.info("ocpp_connected station=%s remote=%s version=%s", cid, remote, version)
        try:
            await conn.serve()
        finally:
            await station.detach(conn)
            log.info("ocpp_disconnected station=%s remote=%s reason=%s", cid, remote, conn.end_reason)
        return ws

    def _password(self, station_id: str, request: web.Request) -> bool:
        try:
            auth = BasicAuth.decode(request.headers.get(hdrs.AUTHORIZATION, ""), encoding="latin1")
        except ValueError:
            return False
        return self.credentials(station_id, auth.password.encode("latin1"))

    def _authenticate(self, station: Station, request: web.Request) -> str | None:
        if station.config.security_profile == 0:
            return None
        header = request.headers.get(hdrs.AUTHORIZATION)
        if not header:
            return "no credentials (HTTP Basic expected)"
        try:
            auth = BasicAuth.decode(header, encoding="latin1")
        except ValueError:
            return "unreadable Authorization header"
        password = auth.password.encode("latin1")
        candidates = [password]
        if "hex_basic_password" in station.config.leniencies and _hex(auth.password):
            candidates.append(bytes.fromhex(auth.password))
        right = [self.credentials(station.id, p) for p in candidates]  # every candidate checked: same time
        if auth.login != station.id:
            return "Basic user is not the station identity"
        if not any(right):
            return "wrong password"
        if right[0] is False:
            log.warning("ocpp_leniency station=%s leniency=hex_basic_password repaired=password matched in its "
                        "hex-decoded form", station.id)
        return None

    async def _refuse(self, cid: str, remote: str, reason: str) -> web.Response:
        await self._report(HandshakeRefused(cid[:100], remote, 401, reason, self.clock()))
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="hub-edge OCPP"'},
                            text="401: unknown station or wrong password\n")

    async def _report(self, event: HandshakeRefused) -> None:
        self.refused += 1
        log.warning("ocpp_refused station=%r remote=%s status=%d reason=%s", event.station, event.remote,
                    event.status, event.reason)
        try:
            await self.handler.handshake_refused(event)
        except Exception:
            log.exception("ocpp_handler_failed method=handshake_refused")


def _remote(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(request.remote or "?")


def _hex(text: str) -> bool:
    return len(text) % 2 == 0 and len(text) >= 2 and all(c in "0123456789abcdefABCDEF" for c in text)
