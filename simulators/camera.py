"""An ANPR camera, device side (R-H1): it POSTs plate reads to a listener.

Formats are the cameras' own: Hikvision ISAPI ``EventNotificationAlert`` XML,
bare or as multipart/form-data with plate and scene pictures, and Axis
License Plate Verifier push JSON (new, update, lost). The HTTP client is a
few lines over asyncio streams so that fault injection can send exactly the
bytes a broken or hostile camera would: garbage, oversized bodies, wrong
credentials, a request dribbled byte by byte, connections held open from
other addresses. A Hikvision camera may attach a scene picture of a real
camera's size (``scene_picture``, bytes) and send its body chunked.

Standalone:
``python -m simulators.camera --url http://127.0.0.1:PORT/anpr --vendor hikvision --plate "NL-12-ABC"``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

# Smallest well-formed JPEG-looking blob: SOI, an APP0/JFIF header, filler, EOI.
FAKE_JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + bytes(range(256)) * 4
    + b"\xff\xd9"
)

_HIK_DIRECTION = {"approach": "forward", "leave": "reverse", "unknown": "unknown"}
_AXIS_DIRECTION = {"approach": "in", "leave": "out", "unknown": "unknown"}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


def hikvision_xml(
    plate: str,
    confidence: float,
    *,
    vehicle_class: str = "truck",
    direction: str = "approach",
    channel: int = 1,
    counter: int = 1,
    when: datetime | None = None,
    country: str = "NL",
    namespace: str | None = "http://www.hikvision.com/ver20/XMLSchema",
) -> bytes:
    """An ISAPI ANPR notification; ``confidence`` 0..1 becomes 0..100."""
    ts = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    xmlns = f' version="2.0" xmlns="{namespace}"' if namespace else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        f"<EventNotificationAlert{xmlns}>\r\n"
        "<ipAddress>192.0.2.20</ipAddress>\r\n<portNo>80</portNo>\r\n<protocol>HTTP</protocol>\r\n"
        "<macAddress>00:00:5e:00:53:01</macAddress>\r\n"
        f"<channelID>{channel}</channelID>\r\n<dateTime>{ts}</dateTime>\r\n"
        f"<activePostCount>{counter}</activePostCount>\r\n<eventType>ANPR</eventType>\r\n"
        "<eventState>active</eventState>\r\n<eventDescription>ANPR</eventDescription>\r\n"
        "<channelName>gate</channelName>\r\n<ANPR>\r\n"
        f"<country>{escape(country)}</country>\r\n<licensePlate>{escape(plate)}</licensePlate>\r\n"
        f"<line>1</line>\r\n<direction>{_HIK_DIRECTION.get(direction, 'unknown')}</direction>\r\n"
        f"<confidenceLevel>{round(confidence * 100)}</confidenceLevel>\r\n"
        "<plateType>unknown</plateType>\r\n<plateColor>yellow</plateColor>\r\n"
        f"<vehicleType>{escape(vehicle_class)}</vehicleType>\r\n"
        "<detectDir>8</detectDir>\r\n<detectType>0</detectType>\r\n"
        "<pictureInfoList>\r\n<pictureInfo>\r\n<fileName>licensePlatePicture.jpg</fileName>\r\n"
        "<type>licensePlatePicture</type>\r\n</pictureInfo>\r\n</pictureInfoList>\r\n"
        "</ANPR>\r\n<UUID>00000000-0000-4000-8000-000000000000</UUID>\r\n<picNum>2</picNum>\r\n"
        "</EventNotificationAlert>\r\n"
    ).encode("utf-8")


def fake_jpeg(size: int) -> bytes:
    """A JPEG-looking blob of ``size`` bytes (at least the smallest one)."""
    if size <= len(FAKE_JPEG):
        return FAKE_JPEG
    filler = bytes(range(256)) * (size // 256 + 1)
    return FAKE_JPEG[:-2] + filler[: size - len(FAKE_JPEG)] + b"\xff\xd9"


def hikvision_multipart(
    xml: bytes, *, boundary: str | None = None, form_data: bool = True, scene_picture: int = 0
) -> tuple[bytes, str]:
    """(body, content type): the XML as ``anpr.xml`` next to two JPEGs, the
    scene picture (``detectionPicture.jpg``) of ``scene_picture`` bytes when
    given, as a real camera's 2 to 8 megapixel picture is."""
    boundary = boundary or f"boundary{random.randrange(16**12):012x}"
    scene = fake_jpeg(scene_picture) if scene_picture else FAKE_JPEG[:200] + b"\xff\xd9"
    parts = [
        ("anpr.xml", "application/xml; charset=\"UTF-8\"", xml),
        ("licensePlatePicture.jpg", "image/jpeg", FAKE_JPEG),
        ("detectionPicture.jpg", "image/jpeg", scene),
    ]
    chunks = []
    for name, ctype, payload in parts:
        disposition = f'form-data; name="{name}"; filename="{name}"' if form_data else f'attachment; filename="{name}"'
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode("ascii")
            + payload
            + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode("ascii")
    kind = "form-data" if form_data else "mixed"
    return body, f"multipart/{kind}; boundary={boundary}"


def axis_json(
    plate: str,
    confidence: float,
    *,
    state: str = "new",
    vehicle_class: str = "truck",
    direction: str = "approach",
    car_id: int = 1,
    counter: int = 1,
    when: datetime | None = None,
    country: str = "NLD",
) -> bytes:
    ts = when or datetime.now(timezone.utc)
    millis = int(ts.timestamp() * 1000)
    event = {
        "packetCounter": str(counter),
        "capture_timestamp": str(millis),
        "datetime": ts.strftime("%Y%m%d %H%M%S") + f"{millis % 1000:03d}",
        "plateText": plate,
        "plateUTF8": plate,
        "plateASCII": plate.encode("ascii", "replace").decode(),
        "plateCountry": country,
        "plateConfidence": f"{confidence:.6f}",
        "carState": state,
        "vehicleType": vehicle_class.upper(),
        "carMoveDirection": _AXIS_DIRECTION.get(direction, "unknown"),
        "carID": str(car_id),
        "roiID": "1",
        "imageType": "plate",
        "plateCoordinates": [420, 180, 356, 66],
        "camera_info": {"SerialNumber": "SIMAXIS00001", "ProdShortName": "simulated LPV camera"},
    }
    return json.dumps(event).encode("utf-8")


class CameraSimulator:
    """POSTs reads to ``url`` as a ``vendor`` camera would. With ``secret``
    it authenticates with HTTP Basic (user ``camera``), as the cameras'
    HTTP notification settings do."""

    def __init__(
        self, url: str, vendor: str, secret: str | None = None, *, hik_format: str = "multipart",
        scene_picture: int = 0, source: str | None = None,
    ):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"camera URL {url!r}: expected http://HOST:PORT/PATH")
        if vendor not in ("hikvision", "axis"):
            raise ValueError(f"vendor {vendor!r}: use hikvision or axis")
        if hik_format not in ("xml", "multipart", "mixed"):
            raise ValueError("hik_format: use xml, multipart or mixed")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.vendor = vendor
        self.secret = secret
        self.hik_format = hik_format
        self.scene_picture = scene_picture
        self.source = source  # the address to post from (a camera on another host), else the system's choice
        self._counter = itertools.count(1)

    def _auth_headers(self, secret: str | None) -> dict[str, str]:
        if secret is None:
            return {}
        token = base64.b64encode(f"camera:{secret}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def plate_body(
        self, plate: str, confidence: float, vehicle_class: str = "truck", direction: str = "approach", *, state: str = "new"
    ) -> tuple[bytes, str]:
        n = next(self._counter)
        if self.vendor == "axis":
            return axis_json(plate, confidence, state=state, vehicle_class=vehicle_class, direction=direction,
                             car_id=n, counter=n), "application/json"
        xml = hikvision_xml(plate, confidence, vehicle_class=vehicle_class, direction=direction, counter=n)
        if self.hik_format == "xml":
            return xml, "application/xml; charset=\"UTF-8\""
        return hikvision_multipart(xml, form_data=self.hik_format == "multipart", scene_picture=self.scene_picture)

    async def send_plate(
        self, plate: str, confidence: float, vehicle_class: str = "truck", direction: str = "approach", *, state: str = "new"
    ) -> Reply:
        body, ctype = self.plate_body(plate, confidence, vehicle_class, direction, state=state)
        return await self.post(body, ctype)

    async def post(
        self, body: bytes, content_type: str, *, secret: str | None | bool = True, extra_headers: dict | None = None,
        timeout_s: float = 10.0, chunk: int | None = None,
    ) -> Reply:
        """POST ``body``; ``secret=True`` uses the camera's own secret. With
        ``chunk`` the body goes chunked (Transfer-Encoding), ``chunk`` bytes
        a chunk, as cameras that stream their pictures send it."""
        headers = {
            "Host": f"{self.host}:{self.port}",
            "Content-Type": content_type,
            "Connection": "close",
            **self._auth_headers(self.secret if secret is True else (secret or None)),
            **(extra_headers or {}),
        }
        if chunk:
            headers["Transfer-Encoding"] = "chunked"
            body = chunked(body, chunk)
        else:
            headers["Content-Length"] = str(len(body))
        head = f"POST {self.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        return await self.send_raw(head.encode("latin-1") + body, timeout_s=timeout_s)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = (self.source, 0) if self.source else None
        return await asyncio.open_connection(self.host, self.port, local_addr=local)

    async def send_raw(self, data: bytes, *, timeout_s: float = 10.0) -> Reply:
        """Send raw bytes and read the answer (status 0 when none came)."""
        reader, writer = await self._connect()
        try:
            try:
                writer.write(data)
                await writer.drain()
            except ConnectionError:
                pass  # the listener may answer and close before taking all of it
            return await asyncio.wait_for(_read_reply(reader), timeout_s)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    # -- faults

    async def send_garbage(self, size: int = 512) -> Reply:
        ctype = "application/json" if self.vendor == "axis" else "application/xml"
        return await self.post(os.urandom(size), ctype)

    async def send_oversized(self, size: int = 65 * 1024 * 1024) -> Reply:
        """Announce a body of ``size`` bytes (by default more than any
        listener may be set to take), send its first 64 kB and read the answer."""
        ctype = "application/json" if self.vendor == "axis" else "application/xml"
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {size}\r\nConnection: close\r\n")
        head += "".join(f"{k}: {v}\r\n" for k, v in self._auth_headers(self.secret).items())
        return await self.send_raw(head.encode("latin-1") + b"\r\n<" + b"x" * (min(size, 64 * 1024) - 1))

    async def send_unauthenticated(self, plate: str = "XX-00-XX", *, wrong_secret: str | None = None) -> Reply:
        body, ctype = self.plate_body(plate, 0.95)
        return await self.post(body, ctype, secret=wrong_secret if wrong_secret is not None else False)

    async def dribble(self, *, interval_s: float = 0.5, max_s: float = 30.0) -> tuple[Reply, float]:
        """Slow-loris: send a request head one byte every ``interval_s``.
        Returns the answer and how long the listener let it go on."""
        body, ctype = self.plate_body("SL-00-OW", 0.9)
        head = (f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nX-Padding: {'a' * 200}\r\n\r\n").encode()
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await self._connect()
        try:
            for byte in head:
                if reader.at_eof() or loop.time() - started > max_s:
                    break
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    break
                try:
                    reply = await asyncio.wait_for(_read_reply(reader), interval_s)
                    return reply, loop.time() - started
                except asyncio.TimeoutError:
                    continue
            reply = await asyncio.wait_for(_read_reply(reader), 5.0)
            return reply, loop.time() - started
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass


    async def hold_open(self, count: int, *, source: str | None = None) -> list[asyncio.StreamWriter]:
        """Open ``count`` connections (from ``source``, else the camera's
        address) that each send the start of a request head and then
        nothing, as a slow or hostile peer does. Close them to let go."""
        local = (source or self.source, 0) if (source or self.source) else None
        held = []
        for _ in range(count):
            _reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=local)
            writer.write(f"POST {self.path} HTTP/1.1\r\n".encode())
            await writer.drain()
            held.append(writer)
        return held


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding, ``size`` bytes a chunk."""
    out = [b"%x\r\n%b\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(out) + b"0\r\n\r\n"


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return Reply(0, b"")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    try:
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        body = b""
    if status == 100:
        return await _read_reply(reader)
    return Reply(status, body)


async def _main(args: argparse.Namespace) -> int:
    camera = CameraSimulator(args.url, args.vendor, args.secret, hik_format=args.format)
    reply = await camera.send_plate(args.plate, args.confidence, args.vehicle_class, args.direction)
    print(f"{reply.status} {reply.body.decode('utf-8', 'replace').strip()}")
    return 0 if reply.status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated ANPR camera: posts one plate read to a listener.")
    parser.add_argument("--url", required=True, help="listener URL, e.g. http://127.0.0.1:8081/anpr")
    parser.add_argument("--vendor", choices=("hikvision", "axis"), default="hikvision")
    parser.add_argument("--plate", required=True)
    parser.add_argument("--confidence", type=float, default=0.95, help="0..1")
    parser.add_argument("--vehicle-class", default="truck")
    parser.add_argument("--direction", choices=("approach", "leave", "unknown"), default="approach")
    parser.add_argument("--secret", default=None, help="password the listener expects (HTTP Basic)")
    parser.add_argument("--format", choices=("xml", "multipart", "mixed"), default="multipart",
                        help="Hikvision body: bare XML or multipart with pictures")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except OSError as exc:
        print(f"cannot reach the listener at {args.url}: {exc}; check that it runs and the port is right")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
