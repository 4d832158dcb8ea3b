"""The HTTP endpoint one camera posts its plate reads to, on aiohttp.

The camera is the client: it POSTs each read. aiohttp reads the HTTP
(request line, headers, Content-Length and chunked bodies, keep-alive,
pipelining); this module decides what is served. It authenticates the camera
(a shared secret and/or an allow list of source addresses), bounds every
request, answers 4xx to anything it does not like and calls ``emit`` once per
accepted read, on the loop.

The bounds, and why:

- body size (``max_body``, the gate's camera ``max_body_bytes``), else 413: a
  Hikvision read carries a scene picture of a megabyte or more. A multipart
  body streams through ``NotificationScan``, which keeps only the XML, so its
  pictures cost neither memory nor parsing; a bare XML or JSON body is read
  whole, up to the limit.
- head time (``head_timeout_s``): the request head must arrive within it from
  the connection's start (or from the first byte of a next request), else
  408; a head line is at most ``max_header`` bytes, else 431.
- body time (``body_timeout_s``), else 408; idle keep-alive
  (``idle_timeout_s``), then a silent close.
- connections: at most ``max_connections``, at most ``max_per_peer`` from one
  address, and ``camera_reserve`` of them kept for the lane's camera (the
  allow list's single addresses and the addresses reads were accepted from),
  so that slow peers holding connections open cannot lock the camera out.

A camera that half-closes after its request still gets its answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Iterable

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.streams import StreamReader

from drivers.anpr.axis import parse_axis
from drivers.anpr.hikvision import parse_hikvision, parse_isapi
from drivers.anpr.multipart import NotificationScan
from drivers.anpr.read import DEFAULT_MAX_BODY, PlateRead, PlateReadError, Vendor
from drivers.device import DeviceHealth, Emit, utcnow

log = logging.getLogger("hubedge.anpr")

MAX_HEADERS = 32  # a camera sends about ten
_KNOWN_CAMERAS = 4  # addresses remembered as the camera's, newest kept

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Refused(Exception):
    """Answer ``status`` with ``message`` and close the connection."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _BodyCut(Exception):
    """The camera stopped sending (closed its side) before its body was whole."""


def _answer(status: int, message: str, *, close: bool, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, text=message + "\n", headers={"Server": "hub-edge", **(headers or {})})
    if close:
        response.force_close()
    else:
        response.headers["Connection"] = "keep-alive"
    return response


def _raw_answer(status: int, message: str) -> bytes:
    """An answer written before any request was read (no aiohttp request to answer)."""
    body = (message + "\n").encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: hub-edge\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _refusal_of(exc: HttpProcessingError, max_header: int) -> tuple[int, str]:
    """Status and message for a request aiohttp could not read. The message
    is ours, never the parser's: that one quotes the request's bytes."""
    if isinstance(exc, LineTooLong):
        return 431, f"a request head line is longer than {max_header} bytes"
    if isinstance(exc, BadHttpMethod):
        return 400, "malformed request line (expected POST /path HTTP/1.1): this is no camera notification"
    if isinstance(exc, BadStatusLine):
        return 400, "malformed request line (expected POST /path HTTP/1.1)"
    if isinstance(exc, InvalidURLError):
        return 400, "malformed request target: post to the listener's path"
    if isinstance(exc, InvalidHeader):
        return 400, "malformed header line"
    if isinstance(exc, TransferEncodingError):
        return 400, "malformed chunked body"
    # The parser's own first line names the fault ("Missing 'Host' header in
    # request", "Duplicate Content-Length"); the request's bytes follow it.
    first = (exc.message or "").split("\n", 1)[0].rstrip(": ")[:100] or "unreadable request"
    return 400, f"malformed request ({first}): check the camera's HTTP notification settings"


def _networks(allow: Iterable[str | Network] | None) -> list[Network] | None:
    if allow is None:
        return None
    return [ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n for n in allow]


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class _CameraConnection(web.RequestHandler):
    """One connection: aiohttp's request handling, plus what aiohttp leaves to
    its user: admission, the head deadline, and an answer after a half-close."""

    def __init__(self, listener: "AnprListener", manager: web.Server, loop: asyncio.AbstractEventLoop):
        super().__init__(
            manager, loop=loop, keepalive_timeout=listener.idle_timeout_s, access_log=None, logger=log,
            max_line_size=listener.max_header, max_field_size=listener.max_header, max_headers=MAX_HEADERS,
            # A refused body is not read to its end: the connection closes.
            lingering_time=0,
            # A camera never compresses; a compressed body is refused as unreadable, never inflated.
            auto_decompress=False,
        )
        self.listener = listener
        self.loop = loop
        self.peer_ip = "?"
        self.admitted = False
        self.peer_done = False  # the camera closed its side: answer what came, then close
        self._body: StreamReader | None = None  # the body of the request in hand
        self._unread = False  # bytes came while no request was in hand
        self._head_deadline: asyncio.TimerHandle | None = None
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            address = _address(str(peer[0]))  # an IPv4 camera on a dual-stack socket is its IPv4 address
            self.peer_ip = str(address) if address is not None else str(peer[0])
        refusal = self.listener._admit(self)
        if refusal is not None:
            self.answer_and_close(*refusal)
            return
        self.admitted = True
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        if self.admitted:
            self.admitted = False
            self.listener._release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._body is None and data:  # the start of a next request: its head has a deadline too
            self._unread = True
            if self._head_deadline is None and self.admitted:
                self._arm_head_deadline()
        super().data_received(data)

    def eof_received(self) -> bool:
        self.peer_done = True
        if self._body is not None:
            if not self._body.is_eof():
                self._body.set_exception(_BodyCut())
        else:
            # aiohttp may hold a request it read but has not handed over yet:
            # decide once it had its turn.
            self.loop.call_soon(self._settle_eof)
        return True  # keep our side open for the answer

    def _settle_eof(self) -> None:
        if self.transport is None or self._body is not None:
            return
        if self._unread:
            self.listener._refused(self.peer_ip, 400, "connection closed inside the request head")
            self.answer_and_close(400, "connection closed inside the request head")
        else:
            self.force_close()

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.listener.head_timeout_s, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._body is None and self.transport is not None:
            message = f"request head not complete within {self.listener.head_timeout_s:g} s"
            self.listener._refused(self.peer_ip, 408, message)
            self.answer_and_close(408, message)

    def answer_and_close(self, status: int, message: str) -> None:
        """Answer outside any request (none was read) and close."""
        if self.transport is not None and not self._answered:
            self._answered = True
            self.transport.write(_raw_answer(status, message))
        self.force_close()

    def request_started(self, body: StreamReader) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        self._body = body
        self._unread = False
        if self.peer_done and not body.is_eof():
            body.set_exception(_BodyCut())

    def request_done(self) -> None:
        self._body = None

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp could not read the request, or the handler failed."""
        self.request_done()
        if isinstance(exc, HttpProcessingError):
            status, reason = _refusal_of(exc, self.listener.max_header)
            self.listener._refused(self.peer_ip, status, reason)
        else:
            log.error("anpr.internal_error camera=%s peer=%s", self.listener.camera_id, self.peer_ip, exc_info=exc)
            status, reason = 500, "hub could not take the request; retry"
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way; the connection is dropped")
        return _answer(status, reason, close=True)


class AnprListener:
    """HTTP/1.1 endpoint one camera posts its reads to.

    ``emit`` is called on the loop with each accepted ``PlateRead``. A
    request that is not authenticated (secret and/or source address), not
    well-formed, too big or too slow gets a 4xx and emits nothing.
    """

    def __init__(
        self,
        camera_id: str,
        host: str,
        port: int,
        vendor: Vendor,
        emit: Emit,
        *,
        secret: str | None = None,
        allow: Iterable[str | Network] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        path: str = "/anpr",
        max_header: int = 8190,
        head_timeout_s: float = 5.0,
        body_timeout_s: float = 10.0,
        idle_timeout_s: float = 30.0,
        max_connections: int = 8,
        camera_reserve: int = 2,
        max_per_peer: int = 4,
    ):
        if vendor not in ("hikvision", "axis"):
            raise ValueError(f"camera {camera_id}: vendor {vendor!r} unknown; use 'hikvision' or 'axis'")
        if not secret and allow is None:
            raise ValueError(
                f"camera {camera_id}: the plate listener needs a shared secret or an allow list "
                "of camera addresses, else anyone on the network could post plates; set one"
            )
        if not 0 <= camera_reserve < max_connections:
            raise ValueError(f"camera {camera_id}: camera_reserve must be below max_connections ({max_connections})")
        self.camera_id = camera_id
        self.host = host
        self.port = port
        self.vendor: Vendor = vendor
        self._emit = emit
        self._secret = secret.encode("utf-8") if secret else None
        self._allow = _networks(allow)
        self.max_body = max_body
        self.path = path
        self.max_header = max_header
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.camera_reserve = camera_reserve
        self.max_per_peer = max_per_peer
        self._server: asyncio.Server | None = None
        self._http: web.Server | None = None
        self._connections: set[_CameraConnection] = set()
        # The lane's camera, as far as we know it: the allow list's single
        # addresses, then the addresses reads were accepted from.
        self._cameras: dict[str, None] = {
            str(net.network_address): None for net in self._allow or () if net.num_addresses == 1
        }
        self.last_seen: datetime | None = None
        self.reads = 0
        self.rejected = 0
        # A quiet camera is not a fault (nights are quiet): health is "ok"
        # once listening; last_seen tells the technician how quiet it is.
        self.health = DeviceHealth(camera_id, "camera")

    # -- lifecycle

    def connection(self) -> _CameraConnection:
        """A new connection's protocol (the server makes one per accepted
        connection; the fuzzer feeds one bytes in memory). On the loop."""
        if self._http is None:
            self._http = web.Server(self._handle, request_factory=self._request, access_log=None)
        return _CameraConnection(self, self._http, asyncio.get_running_loop())

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self.connection, self.host, self.port)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"camera {self.camera_id}: cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                "free the port or change the gate's camera listen address",
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self.health.mark_ok()
        log.info("anpr.listening camera=%s host=%s port=%d vendor=%s", self.camera_id, self.host, self.port, self.vendor)
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._http is not None:
            await self._http.shutdown(1.0)
        await self._server.wait_closed()
        self._server = None
        log.info("anpr.stopped camera=%s", self.camera_id)

    def quiet_for(self, now: datetime | None = None) -> timedelta | None:
        """How long since the camera last posted anything authenticated."""
        if self.last_seen is None:
            return None
        return (now or utcnow()) - self.last_seen

    def status(self) -> dict:
        detail = {
            "last_seen": self.last_seen.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if self.last_seen
            else None,
            "reads": self.reads,
            "rejected": self.rejected,
        }
        self.health.detail = detail
        return self.health.as_dict()

    # -- connections

    def _admit(self, conn: _CameraConnection) -> tuple[int, str] | None:
        """None to serve the connection, else the status and message to refuse it with."""
        ip = conn.peer_ip
        if not self._source_allowed(ip):
            refusal = 403, "source address not allowed: add the camera's address to the gate's camera allow list"
        elif sum(1 for c in self._connections if c.peer_ip == ip) >= self.max_per_peer:
            refusal = 503, f"more than {self.max_per_peer} connections from this address; retry shortly"
        elif len(self._connections) >= self.max_connections:
            refusal = 503, "too many connections; retry shortly"
        elif ip not in self._cameras and (
            sum(1 for c in self._connections if c.peer_ip not in self._cameras)
            >= self.max_connections - self.camera_reserve
        ):
            refusal = 503, "too many connections (the rest is kept for the gate's camera); retry shortly"
        else:
            self._connections.add(conn)
            return None
        self._refused(ip, *refusal)
        return refusal

    def _release(self, conn: _CameraConnection) -> None:
        self._connections.discard(conn)

    def _camera_at(self, ip: str) -> None:
        self._cameras.pop(ip, None)
        self._cameras[ip] = None
        while len(self._cameras) > _KNOWN_CAMERAS:
            del self._cameras[next(iter(self._cameras))]

    def _source_allowed(self, ip: str) -> bool:
        if self._allow is None:
            return True
        addr = _address(ip)
        return addr is not None and any(addr.version == net.version and addr in net for net in self._allow)

    def _refused(self, peer_ip: str, status: int, message: str) -> None:
        self.rejected += 1
        log.warning("anpr.refused camera=%s peer=%s status=%d reason=%r", self.camera_id, peer_ip, status, message)

    # -- one request

    def _request(self, message, payload: StreamReader, protocol: _CameraConnection, writer, task) -> web.BaseRequest:
        protocol.request_started(payload)
        return web.BaseRequest(message, payload, protocol, writer, task, protocol.loop, client_max_size=self.max_body)

    def _authenticated(self, request: web.BaseRequest) -> bool:
        if self._secret is None:
            return True
        # X-Hub-Secret first, else HTTP Basic (the cameras' own credentials
        # setting); a header given twice is refused rather than guessed at.
        secrets = request.headers.getall("X-Hub-Secret", [])
        basics = request.headers.getall("Authorization", [])
        if secrets:
            if len(secrets) != 1:
                return False
            offered = secrets[0].encode("utf-8", "surrogateescape")  # the header's bytes as sent
        elif len(basics) == 1 and basics[0][:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(basics[0][6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            offered = decoded.partition(b":")[2]
        else:
            return False
        return hmac.compare_digest(offered, self._secret)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        conn: _CameraConnection = request.protocol  # type: ignore[assignment]
        try:
            if request.version not in (HttpVersion11, HttpVersion10):
                # aiohttp answers in the request's version ("HTTP/0.9 505",
                # "HTTP/2.0 505"), which no client reads: answer in HTTP/1.1.
                message = "only HTTP/1.1 and HTTP/1.0 are served"
                self._refused(conn.peer_ip, 505, message)
                conn.answer_and_close(505, message)
                return web.Response()  # never sent: the connection is closed
            response = await self._serve(request, conn.peer_ip)
        except _Refused as refusal:
            self._refused(conn.peer_ip, refusal.status, refusal.message)
            response = _answer(refusal.status, refusal.message, close=True, headers=refusal.headers)
        finally:
            conn.request_done()
        if conn.peer_done:
            response.force_close()
        return response

    async def _serve(self, request: web.BaseRequest, peer_ip: str) -> web.StreamResponse:
        if request.raw_path.split("?", 1)[0] != self.path:
            raise _Refused(404, f"post plate events to {self.path}")
        if request.method != "POST":
            raise _Refused(405, "only POST is accepted", {"Allow": "POST"})
        if not self._authenticated(request):
            raise _Refused(
                401,
                "missing or wrong secret: configure the camera's HTTP credentials as set for this gate",
                {"WWW-Authenticate": 'Basic realm="hub-edge anpr"'},
            )
        self.last_seen = utcnow()  # authenticated: the camera is alive, whatever its body holds
        length = request.content_length
        if length is None and "Transfer-Encoding" not in request.headers:
            raise _Refused(411, "send the body with a Content-Length or chunked")
        if length is not None and length > self.max_body:
            raise self._too_large(f"body of {length} bytes")
        if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        ctype = request.headers.get("Content-Type", "")
        multipart = self.vendor == "hikvision" and ctype.strip().lower().startswith("multipart/")
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await (self._scan(request.content, ctype) if multipart else self._read(request.content))
            received = self.last_seen = utcnow()
            if multipart:
                read = parse_isapi(body, camera_id=self.camera_id, received_at=received)
            elif self.vendor == "hikvision":
                read = parse_hikvision(body, ctype, camera_id=self.camera_id, received_at=received)
            else:
                read = parse_axis(body, camera_id=self.camera_id, received_at=received)
        except TimeoutError:
            raise _Refused(408, f"request body not complete within {self.body_timeout_s:g} s") from None
        except (_BodyCut, web.RequestPayloadError, HttpProcessingError, ConnectionError):
            raise _Refused(400, "connection closed or chunked coding broken before the whole body arrived") from None
        except PlateReadError as exc:
            self.rejected += 1
            log.warning("anpr.bad_event camera=%s peer=%s status=400 reason=%r", self.camera_id, peer_ip, exc.reason)
            return _answer(400, exc.reason, close=True)
        keep = request.keep_alive
        if read is None:
            log.debug("anpr.ignored camera=%s", self.camera_id)
            return _answer(200, "ignored", close=not keep)
        return self._hand_over(read, peer_ip, keep)

    def _hand_over(self, read: PlateRead, peer_ip: str, keep: bool) -> web.StreamResponse:
        try:
            self._emit(read)
        except Exception:
            log.exception("anpr.emit_failed camera=%s event=%s", self.camera_id, read.event_id)
            return _answer(500, "hub could not take the read; retry", close=True)
        self.reads += 1
        self._camera_at(peer_ip)
        log.info(
            "anpr.read camera=%s event=%s plate=%s confidence=%.2f class=%s direction=%s",
            self.camera_id, read.event_id, read.plate_masked, read.confidence, read.vehicle_class, read.direction,
        )
        return _answer(200, "ok", close=not keep)

    def _too_large(self, what: str) -> _Refused:
        return _Refused(
            413, f"{what} is over the {self.max_body}-byte limit: raise the gate's camera max_body_bytes "
            "or lower the camera's picture size",
        )

    async def _read(self, content: StreamReader) -> bytes:
        chunks, size = [], 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large("body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _scan(self, content: StreamReader, content_type: str) -> bytes:
        """The notification XML of a multipart body, pictures streamed past."""
        scan = NotificationScan(content_type)
        size = 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large("body")
            scan.feed(chunk)
        return scan.close()
