"""The MQTT link to the cloud: drains the outbox, keeps the retained online
status with a last will (R-M4), receives syncs and commands (R-M3), over TLS
with client certificates when the URL says mqtts:// (R-M5). Each received
message goes to ``on_message`` with its signature (the hubedge-sig user
property, edge/cloud/signing.py), which the downlink checks.

Why a fresh paho client per connection: paho keeps QoS 1 messages it could not
deliver in memory and resends them itself after a reconnect, which would race
our own resend from the outbox and double every message. With one client per
connection the outbox is the only source of resends: on each new connection
the drain starts again from the oldest undelivered entry, with the same ids.
The broker session itself is persistent (same client id, clean start off,
session expiry) so QoS 1 downlink messages wait while the hub is away.

Downlink messages are acknowledged by hand (paho's manual ack): a PUBACK
goes to the broker only once ``on_message``'s work - applying the message
and recording its answer, made durable - is done. A crash, or a lost link,
before that leaves the message unacknowledged, and the broker delivers it
again on the next connection; the downlink's record of handled ids makes
that second delivery a duplicate when the first had been applied. Because a
broker keeps only so much (a session may expire, a queue may overflow),
``on_session`` is told of every connection - the first since the start, one
where the broker kept no session, a reconnect - so the hub can ask the cloud
for a resync of what it may have missed.

Threads: paho runs its network loop on its own thread; every callback only
hands its arguments to the asyncio loop (call_soon_threadsafe). Connecting
(DNS, TCP, TLS handshake) runs in an executor, so a dead broker never blocks
the loop, and nothing here touches hardware.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import collections
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from units import Clock, rfc3339
from edge.cloud.envelope import TELEMETRY_STREAM, topic_for
from edge.core.outbox import Outbox
from edge.cloud.signing import SIGNATURE_PROPERTY
from drivers.device import cancel_and_wait

log = logging.getLogger("hubedge.uplink")


def parse_broker_url(url: str) -> dict[str, Any]:
    """mqtt://[user[:password]@]host[:port] or mqtts://... -> connection parts."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL {redact_url(url)!r}: use mqtt://host:port or mqtts://host:port")
    if not parts.hostname:
        raise ValueError(f"broker URL {redact_url(url)!r} names no host: use mqtt://host:port")
    tls = parts.scheme == "mqtts"
    return {"host": parts.hostname, "port": parts.port or (8883 if tls else 1883), "tls": tls,
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}


def redact_url(url: str) -> str:
    """The URL without its password, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


class _Connection:
    """State of one paho client / one TCP connection."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.connack: asyncio.Future = loop.create_future()
        self.lost = asyncio.Event()
        self.inflight: dict[int, tuple[int, str]] = {}  # mid -> (outbox pos, entry id)
        self.waiters: dict[int, asyncio.Future] = {}  # mid -> future, for messages someone awaits
        self.cursor = 0  # outbox position of the last entry handed to paho
        self.session_present = False  # the broker kept our session (CONNACK flag)
        # PUBACKs gathered on paho's thread and handed over in bunches: one
        # wake-up of the loop per bunch instead of one per message.
        self.acks: collections.deque = collections.deque()
        self.acks_scheduled = False


class Uplink:
    def __init__(self, hub_id: str, broker_url: str, *, client_id: str, outbox: Outbox, clock: Clock | None = None,
                 tls: dict[str, str] | None = None, version: str,
                 on_message: Callable[[str, bytes, str | None], Awaitable | None],
                 on_link: Callable[[bool], None], loop: asyncio.AbstractEventLoop, keepalive: int = 30,
                 window: int = 1000, max_inflight: int = 100, backoff: tuple[float, float] = (1.0, 60.0), connect_timeout: float = 10.0,
                 session_expiry_s: int = 7 * 24 * 3600, on_session: Callable[[str], None] | None = None):
        self.hub_id = hub_id
        self.broker_url = broker_url
        self._broker = parse_broker_url(broker_url)
        self.client_id = client_id
        self.outbox = outbox
        self.clock = clock or Clock()
        self.tls = tls
        self.version = version
        # Returns what to wait for before the message is acknowledged (the
        # task applying it), or None to acknowledge at once.
        self.on_message = on_message
        self.on_link = on_link
        self.on_session = on_session  # called with "start", "session_lost" or "reconnect"
        self._sessions = 0
        self.loop = loop
        self.keepalive = keepalive
        # ``window`` entries are handed to paho at most; paho keeps up to
        # ``max_inflight`` of them unacknowledged on the wire and feeds the
        # rest itself as PUBACKs come, without waiting for our loop.
        self.window = max(1, window)
        self.max_inflight = max(1, min(max_inflight, self.window))
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.session_expiry_s = session_expiry_s
        self.root = f"hub/{hub_id}"
        self._conn: _Connection | None = None
        self._connected = False
        self._since: datetime = self.clock.now()
        self._last_error: str | None = None
        self._reconnects = 0
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._states: dict[str, bytes] = {}  # topic below hub/{id}/ -> latest retained state
        self._acked: list[int] = []  # outbox positions acknowledged, not yet deleted
        self._ack_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="uplink-ack")
        self._ack_task: asyncio.Task | None = None
        outbox.on_put(self._on_put)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = self.loop.create_task(self._run(), name="uplink")

    async def stop(self, timeout: float = 3.0) -> None:
        """Say goodbye: retained online:false (acknowledged, or given up after
        ``timeout``), a clean disconnect (so the broker does not fire the
        will), and the last acknowledged entries deleted."""
        self._stopping = True
        conn = self._conn
        if conn is not None and self._connected:
            try:
                mid = self._publish_status(conn, online=False)
                if mid is not None:
                    await asyncio.wait_for(self._wait_ack(conn, mid), timeout)
            except (asyncio.TimeoutError, OSError) as e:
                log.warning("uplink.stop_status_unconfirmed error=%s", type(e).__name__)
            conn.client.disconnect()
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if conn is not None:
            await self._teardown(conn)
        await self._flush_acks()
        self._set_link(False)

    # ------------------------------------------------------------- public
    def link_state(self) -> dict[str, Any]:
        return {"connected": self._connected, "since": rfc3339(self._since), "last_error": self._last_error,
                "reconnects": self._reconnects, "inflight": len(self._conn.inflight) if self._conn else 0,
                "broker": redact_url(self.broker_url)}

    def publish_state(self, connector_id: str, payload: dict[str, Any]) -> None:
        """Retained latest state of a connector."""
        self.publish_retained(f"state/connector/{connector_id}", payload)

    def publish_retained(self, subtopic: str, payload: dict[str, Any]) -> None:
        """A retained state below hub/{id}/ (a connector's, the site power's).
        Only the newest matters, so it is kept in memory (one per topic) and
        republished on reconnect."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        self._states[subtopic] = body
        conn = self._conn
        if conn is not None and self._connected:
            conn.client.publish(f"{self.root}/{subtopic}", body, qos=1, retain=True)

    def publish_telemetry(self, payload: dict[str, Any]) -> None:
        """Meter samples: queued in the outbox's droppable telemetry stream
        (shed oldest first under quota pressure), sent with QoS 0."""
        self.outbox.put_telemetry(payload)

    def publish_reply(self, payload: dict[str, Any]) -> str:
        """Answers to syncs and commands go through the outbox: the cloud may
        be waiting on one, so it must outlive a dropped link or a restart."""
        return self.outbox.put_reply(payload)

    def publish_auth_request(self, payload: dict[str, Any]) -> bool:
        """Roaming card check (R-A2). Not queued: an answer after the driver
        has walked away is useless, and the authorisation has its own timeout.
        Returns False when the link is down, so the caller decides offline at
        once."""
        conn = self._conn
        if conn is None or not self._connected:
            return False
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        info = conn.client.publish(f"{self.root}/auth/request", body, qos=1)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # ---------------------------------------------------------- internals
    def _on_put(self) -> None:
        # May run on the outbox's commit thread.
        if not self._wake.is_set():
            self.loop.call_soon_threadsafe(self._wake.set)

    def _set_link(self, up: bool) -> None:
        self.outbox.link_up = up
        if up != self._connected:
            self._connected = up
            self._since = self.clock.now()
            log.info("uplink.link up=%s broker=%s", up, redact_url(self.broker_url))
            try:
                self.on_link(up)
            except Exception:
                log.exception("uplink.on_link_failed up=%s", up)

    def _status_payload(self, online: bool) -> bytes:
        return json.dumps({"v": 1, "online": online, "ts": rfc3339(self.clock.now()), "version": self.version},
                          separators=(",", ":")).encode()

    def _make_client(self) -> _Connection:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             reconnect_on_failure=False, manual_ack=True)
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        if self._broker["username"]:
            client.username_pw_set(self._broker["username"], self._broker["password"])
        if self._broker["tls"]:
            tls = self.tls or {}
            client.tls_set(ca_certs=tls.get("ca"), certfile=tls.get("cert"), keyfile=tls.get("key"),
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.will_set(f"{self.root}/status", self._status_payload(False), qos=1, retain=True)
        conn = _Connection(client, self.loop)
        call = self.loop.call_soon_threadsafe

        def on_connect(_c, _u, flags, reason_code, _props):
            conn.session_present = bool(getattr(flags, "session_present", False))
            call(self._on_connack, conn, reason_code)

        def on_disconnect(_c, _u, _flags, reason_code, _props):
            call(self._on_lost, conn, str(reason_code))

        def on_publish(_c, _u, mid, reason_code, _props):
            conn.acks.append((mid, reason_code))
            if not conn.acks_scheduled:
                conn.acks_scheduled = True
                call(self._on_acks, conn)

        def on_message(_c, _u, message):
            call(self._deliver, conn, message.mid, message.qos, message.topic, bytes(message.payload),
                 _signature(message))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        return conn

    def _connect_blocking(self, conn: _Connection) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        conn.client.connect_timeout = self.connect_timeout
        conn.client.connect(self._broker["host"], self._broker["port"], keepalive=self.keepalive,
                            clean_start=False, properties=props)

    async def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stopping:
            conn = self._make_client()
            self._conn = conn
            try:
                await asyncio.wait_for(self.loop.run_in_executor(None, self._connect_blocking, conn),
                                       self.connect_timeout + 1)
                conn.client.loop_start()
                reason = await asyncio.wait_for(conn.connack, self.connect_timeout)
                if reason.is_failure:
                    raise ConnectionRefusedError(f"broker refused the connection: {reason}")
            except asyncio.CancelledError:
                await self._teardown(conn)
                raise
            except Exception as e:  # any failure to connect is retried; the hub runs on meanwhile (R-M1)
                self._last_error = _describe(e)
                self._reconnects += 1
                log.warning("uplink.connect_failed broker=%s error=%r retry_in_s=%.1f",
                            redact_url(self.broker_url), self._last_error, delay)
                await self._teardown(conn)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter: hubs must not reconnect in step
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            try:
                await self._session(conn)
            finally:
                await self._teardown(conn)
                self._set_link(False)
            if not self._stopping:
                self._reconnects += 1
                await asyncio.sleep(self.backoff[0] * random.random())

    async def _teardown(self, conn: _Connection) -> None:
        conn.lost.set()
        for future in conn.waiters.values():
            if not future.done():
                future.set_exception(ConnectionError("link lost before the broker acknowledged"))
        conn.waiters.clear()
        try:
            await self.loop.run_in_executor(None, _stop_client, conn.client)
        except Exception:
            log.exception("uplink.teardown_failed")

    async def _session(self, conn: _Connection) -> None:
        client = conn.client
        self._publish_status(conn, online=True)
        for subtopic, body in self._states.items():
            client.publish(f"{self.root}/{subtopic}", body, qos=1, retain=True)
        client.subscribe([(f"{self.root}/sync/+", 1), (f"{self.root}/cmd/+", 1), (f"{self.root}/auth/response", 1)])
        # Entries acknowledged on the previous connection but not yet deleted
        # would otherwise go out once more.
        await self._flush_acks()
        self._set_link(True)
        self._last_error = None
        self._sessions += 1
        if self.on_session is not None:
            reason = "start" if self._sessions == 1 else "reconnect" if conn.session_present else "session_lost"
            try:
                self.on_session(reason)
            except Exception:
                log.exception("uplink.on_session_failed reason=%s", reason)
        while not conn.lost.is_set():
            self._wake.clear()
            room = self.window - len(conn.inflight)
            # Refill in halves of the window: fewer, larger reads of the outbox.
            rows = self.outbox.rows_after(conn.cursor, room) if room * 2 >= self.window or not conn.inflight else []
            for pos, entry_id, stream, body in rows:
                info = client.publish(topic_for(self.hub_id, stream), body,
                                      qos=0 if stream == TELEMETRY_STREAM else 1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    conn.lost.set()  # the socket is gone; the next connection resends from the outbox
                    break
                conn.inflight[info.mid] = (pos, entry_id)
                conn.cursor = pos
            if len(rows) == room and len(conn.inflight) < self.window:
                continue  # more may be waiting: fill the window before sleeping
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)  # the timeout is only a safety net
            except asyncio.TimeoutError:
                pass

    def _publish_status(self, conn: _Connection, *, online: bool) -> int | None:
        info = conn.client.publish(f"{self.root}/status", self._status_payload(online), qos=1, retain=True)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    async def _wait_ack(self, conn: _Connection, mid: int) -> None:
        future = self.loop.create_future()
        conn.waiters[mid] = future
        await future

    # callbacks, on the loop thread
    def _on_connack(self, conn: _Connection, reason_code) -> None:
        if not conn.connack.done():
            conn.connack.set_result(reason_code)

    def _on_lost(self, conn: _Connection, reason: str) -> None:
        if not conn.lost.is_set():
            if not self._stopping:
                self._last_error = f"connection lost: {reason}"
                log.warning("uplink.connection_lost reason=%r inflight=%d", reason, len(conn.inflight))
            conn.lost.set()
            self._wake.set()
        if not conn.connack.done():
            conn.connack.set_exception(ConnectionError(f"connection closed before CONNACK: {reason}"))

    def _on_acks(self, conn: _Connection) -> None:
        while conn.acks:
            self._on_ack(conn, *conn.acks.popleft())
        if conn.inflight and not conn.lost.is_set():
            # While a burst is on the wire, collect its PUBACKs every few
            # milliseconds instead of waking the loop (a syscall and a GIL
            # hand-over that paho's thread waits for) once per PUBACK. paho
            # keeps sending the messages it holds meanwhile.
            self.loop.call_later(0.005, self._on_acks, conn)
            return
        conn.acks_scheduled = False  # then look again, so a PUBACK appended meanwhile is not left waiting
        if conn.acks:
            conn.acks_scheduled = True
            self.loop.call_soon(self._on_acks, conn)

    def _on_ack(self, conn: _Connection, mid: int, reason_code) -> None:
        waiter = conn.waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reason_code)
        entry = conn.inflight.pop(mid, None)
        if entry is None:
            return
        if reason_code is not None and reason_code.is_failure:
            # The broker took the packet but refused the message (v5 reason
            # code). Keep it; the next connection tries again, so nothing is
            # lost, and the log tells an operator why the backlog is stuck.
            self._last_error = f"broker refused a message: {reason_code}"
            log.error("uplink.publish_refused id=%s reason=%r action=reconnect_and_resend", entry[1], str(reason_code))
            conn.lost.set()
            self._wake.set()
            conn.client.disconnect()
            return
        self._acked.append(entry[0])
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = self.loop.create_task(self._flush_acks())
        # The drain refills in halves of the window: waking it earlier only
        # costs the loop (and paho's thread) time.
        if not self._wake.is_set() and len(conn.inflight) * 2 <= self.window:
            self._wake.set()

    async def _flush_acks(self) -> None:
        while self._acked:
            positions, self._acked = self._acked, []
            try:
                # Let the rest of this burst's PUBACKs join: one transaction
                # per few hundred deletions rather than per handful.
                if len(positions) < 200 and self._conn is not None and self._conn.inflight:
                    await asyncio.sleep(0.02)
                else:
                    await asyncio.sleep(0)
                positions += self._acked
                self._acked = []
                # Deleting is most of the drain's cost: on its own thread it
                # overlaps with publishing (SQLite lets go of the GIL), and
                # the store's lock keeps it in turn with the hub's puts.
                await self.loop.run_in_executor(self._ack_thread, functools.partial(
                    self.outbox.mark_delivered, positions=positions))
            except Exception:
                # Not deleted means sent again later with the same id: a
                # duplicate the cloud drops, never a loss.
                log.exception("uplink.mark_delivered_failed count=%d", len(positions))

    def _deliver(self, conn: _Connection, mid: int, qos: int, topic: str, payload: bytes, sig: str | None) -> None:
        try:
            pending = self.on_message(topic, payload, sig)
        except Exception:
            # Not acknowledged: the broker delivers it again on the next connection.
            log.exception("uplink.on_message_failed topic=%s", topic)
            return
        if pending is None:
            self._ack(conn, mid, qos)
            return
        asyncio.ensure_future(pending).add_done_callback(
            lambda done: self._ack(conn, mid, qos) if not done.cancelled() and done.exception() is None
            else log.warning("uplink.message_unacknowledged topic=%s reason=%s action=%r", topic,
                             "cancelled" if done.cancelled() else type(done.exception()).__name__,
                             "the broker delivers it again on the next connection"))

    def _ack(self, conn: _Connection, mid: int, qos: int) -> None:
        """PUBACK a message whose work is done. A message that came on an
        earlier connection is left alone: the broker has it back in the
        session and delivers it again (a duplicate the downlink answers)."""
        if qos == 0 or conn is not self._conn or conn.lost.is_set():
            return
        conn.client.ack(mid, qos)


def _signature(message: mqtt.MQTTMessage) -> str | None:
    """The message's hubedge-sig user property (the first, if sent twice)."""
    for name, value in getattr(message.properties, "UserProperty", None) or ():
        if name == SIGNATURE_PROPERTY:
            return value
    return None


def _stop_client(client: mqtt.Client) -> None:
    client.loop_stop()
    try:
        client.disconnect()
    except Exception:
        pass
    sock = client.socket()
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "broker did not answer in time: check the broker address and the network"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed ({e.reason or e}): check the CA, client certificate and key files"
    if isinstance(e, ConnectionRefusedError):
        return f"{e.strerror or e}: is the broker running and the port right?"
    if isinstance(e, OSError):
        return f"{e.strerror or e}: check the network and the broker address"
    return f"{type(e).__name__}: {e}"
