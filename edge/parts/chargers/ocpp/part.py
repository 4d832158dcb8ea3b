"""The hub as CSMS: one OCPP listener for every OCPP charger of the site.

``OcppSite`` is the hub's ``StationHandler`` (drivers/ocpp/handler.py): the
layer hands it each station's events and it routes them to that station's
``OcppCharger``. It builds the listener once, from the ``[ocpp]`` section
and every charger the factory made, when the first charger's loop starts.
Importing this module registers the factory for ``ocpp1.6`` and
``ocpp2.0.1`` in ``PROTOCOLS``.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from datetime import timedelta

from drivers.ocpp.events import HandshakeRefused
from drivers.ocpp.listener import ListenerSettings, OcppListener, password_check
from units import rfc3339
from edge.core.config import ocpp_password
from edge.core.charger import CommandFailed, register
from edge.core.hub import Capability
from edge.parts.chargers.ocpp.charger import OcppCharger
from edge.parts.chargers.ocpp.store import OcppStore

log = logging.getLogger("hubedge.ocpp.site")
AUTHORIZE_LIMIT_S = 10.0  # a station's own timeout for Authorize is tens of seconds: the roaming check stays within this


class OcppSite:
    """Every OCPP charger of one hub, its listener and its records."""

    def __init__(self, hub):
        self.hub = hub
        self.ocpp_store = OcppStore(hub.store)
        self.chargers: dict[str, OcppCharger] = {}
        self.listener: OcppListener | None = None
        self._starting: asyncio.Task | None = None
        self.refused = 0

    @classmethod
    def of(cls, hub) -> "OcppSite":
        site = getattr(hub, "ocpp_site", None)
        if site is None:
            site = cls(hub)
            hub.ocpp_site = site
        return site

    def add(self, cfg) -> OcppCharger:
        if self.listener is not None:
            raise RuntimeError("OCPP chargers are added before the listener starts")
        charger = OcppCharger(self, cfg)
        self.chargers[cfg.id] = charger
        return charger

    def _settings(self) -> ListenerSettings:
        o = self.hub.cfg.ocpp
        host, port = o.listen.rsplit(":", 1)
        cfg = self.hub.cfg
        return ListenerSettings(host=host.strip("[]"), port=int(port), heartbeat_interval_s=o.heartbeat_interval_s,
                                offline_after_s=o.offline_after_s, max_frame_bytes=o.max_frame_bytes,
                                tls_cert=str(cfg.resolve(o.tls_cert)) if o.tls_cert else None,
                                tls_key=str(cfg.resolve(o.tls_key)) if o.tls_key else None)

    def _passwords(self) -> dict[str, bytes]:
        out = {}
        for ch in self.hub.cfg.chargers:
            if ch.id in self.chargers and ch.password_file:
                out[ch.id] = ocpp_password(self.hub.cfg.resolve(ch.password_file))
        return out

    async def ensure_started(self) -> None:
        """Listen, once, whichever charger's loop gets here first."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        listener = OcppListener(self._settings(), [c.config for c in self.chargers.values()], self,
                                password_check(self._passwords()), clock=self.hub.clock.now)
        for cid, charger in self.chargers.items():
            charger.station = listener.station(cid)
        try:
            await listener.start()
        except OSError as exc:
            self._starting = None
            raise RuntimeError(f"the OCPP listener cannot listen on {self.hub.cfg.ocpp.listen} ({exc.strerror}); "
                               "check [ocpp] listen and that no other program uses the port") from None
        self.listener = listener

    async def stop(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.stop()

    @property
    def port(self) -> int | None:
        return self.listener.port if self.listener else None

    # ------------------------------------------------------------ the decision for a charger's own reader
    async def decide_token(self, uid: str, asked_at: str):
        return await self.hub.authorise(uid, asked_at=asked_at, timeout_s=AUTHORIZE_LIMIT_S)

    # ------------------------------------------------------------ StationHandler
    async def station_connected(self, event):
        await self.chargers[event.station].connected_event(event)

    async def station_disconnected(self, event):
        await self.chargers[event.station].disconnected_event(event)

    async def handshake_refused(self, event: HandshakeRefused):
        self.refused += 1
        self.hub.emit("device.handshake_refused", {
            "charger": event.station[:64] or "?", "remote": event.remote, "status": event.status,
            "reason": event.reason, "at": rfc3339(event.at),
            "message": f"an OCPP connection as {event.station[:64]!r} from {event.remote} was refused "
                       f"({event.reason}); if this is one of the site's stations, check its identity, password "
                       f"and subprotocol against the hub's config"})

    async def station_booted(self, event):
        await self.chargers[event.station].booted_event(event)

    async def heartbeat(self, event):
        return None

    async def connector_status(self, event):
        await self.chargers[event.station].status_event(event)

    async def authorise(self, request):
        return await self.chargers[request.station].authorise_event(request)

    async def transaction_started(self, event):
        return await self.chargers[event.station].started_event(event)

    async def transaction_updated(self, event):
        return await self.chargers[event.station].updated_event(event)

    async def transaction_ended(self, event):
        return await self.chargers[event.station].ended_event(event)

    async def meter_values(self, event):
        await self.chargers[event.station].meter_event(event)

    async def notification(self, event):
        await self.chargers[event.station].notification_event(event)


def reservation_id(booking_id: str) -> int:
    """The OCPP reservation id of a booking: stable across restarts (ReserveNow, CancelReservation)."""
    return zlib.crc32(booking_id.encode()) & 0x7FFFFFFF or 1


class OcppPart(Capability):
    """What the hub's own decisions ask of its OCPP stations: a bay held for
    a booking becomes a ReserveNow (so the station's own reader cannot start
    another card there, R-B3), a connector taken out of service a
    ChangeAvailability (maintenance windows, hubctl, R-C7). Also `hubctl
    chargers`. Idle on a hub without OCPP chargers."""

    name = "ocpp"

    def __init__(self, hub):
        super().__init__(hub)
        self.site: OcppSite | None = getattr(hub, "ocpp_site", None)
        self.held: dict[str, int] = {}  # connector -> reservation id sent

    def _charger(self, connector_id: str) -> OcppCharger | None:
        if self.site is None:
            return None
        place = self.hub.places.get(connector_id)
        return self.site.chargers.get(place.charger_id) if place else None

    def on_connector_changed(self, c, previous: str) -> None:
        charger = self._charger(c.id)
        if charger is None:
            return
        if c.state == "Reserved" and previous != "Reserved" and c.reserved_for:
            self.hub.spawn(self._reserve(charger, c.id, c.reserved_for))
        elif previous == "Reserved" and c.state in ("Available", "Unavailable", "Faulted") and c.id in self.held:
            self.hub.spawn(self._cancel(charger, c.id))
        if c.state == "Unavailable" and previous != "Unavailable" and c.admin_unavailable != "charger offline":
            self.hub.spawn(self._availability(charger, c.id, False))
        elif previous == "Unavailable" and c.state != "Unavailable" and charger.connected:
            self.hub.spawn(self._availability(charger, c.id, True))

    async def _reserve(self, charger: OcppCharger, connector_id: str, booking_id: str) -> None:
        booking = self.hub.bookings.get(booking_id) if getattr(self.hub, "bookings", None) else None
        until = booking.slot_end if booking is not None else self.hub.clock.now() + timedelta(hours=2)
        token = (booking.token_uid if booking is not None and booking.token_uid else f"BK{booking_id}")
        rid = reservation_id(booking_id)
        charger.reserved_tags[connector_id] = token[:20].upper()
        try:
            await charger.reserve(connector_id, rid, until, token)
            self.held[connector_id] = rid
        except CommandFailed as exc:
            log.warning("ocpp_reserve_failed connector=%s booking=%s %s: the hub still holds the bay itself",
                        connector_id, booking_id, exc)

    async def _cancel(self, charger: OcppCharger, connector_id: str) -> None:
        rid = self.held.pop(connector_id, None)
        charger.reserved_tags.pop(connector_id, None)
        if rid is None:
            return
        try:
            await charger.cancel_reservation(rid)
        except CommandFailed as exc:
            log.warning("ocpp_cancel_reservation_failed connector=%s %s", connector_id, exc)

    async def _availability(self, charger: OcppCharger, connector_id: str, available: bool) -> None:
        try:
            await charger.set_available(connector_id, available)
        except CommandFailed as exc:
            log.warning("ocpp_availability_failed connector=%s available=%s %s", connector_id, available, exc)

    def status(self) -> dict:
        if self.site is None:
            return {}
        return {"ocpp": {"listening": self.site.port is not None, "port": self.site.port,
                         "stations": len(self.site.chargers),
                         "connected": sum(1 for c in self.site.chargers.values() if c.connected),
                         "handshakes_refused": self.site.refused}}


def make_charger(hub, cfg) -> OcppCharger:
    """PROTOCOLS factory: the charger for one ``[[chargers]]`` entry."""
    return OcppSite.of(hub).add(cfg)


register("ocpp1.6", make_charger)
register("ocpp2.0.1", make_charger)
