"""Camera simulator -> ANPR listener over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64

import pytest

from drivers.anpr import PlateRead

pytestmark = pytest.mark.hil


@pytest.mark.parametrize("hik_format", ["multipart", "mixed", "xml"])
async def test_hikvision_read_is_emitted_once_with_its_fields(camera_rig, hik_format):
    rig = await camera_rig("hikvision", hik_format=hik_format)
    reply = await rig.camera.send_plate("NL-12-ABC", 0.93, "truck", "approach")
    assert reply.status == 200
    assert len(rig.reads) == 1
    read = rig.reads[0]
    assert isinstance(read, PlateRead)
    assert (read.camera_id, read.plate_raw, read.vendor) == ("gate-in-cam", "NL-12-ABC", "hikvision")
    assert read.confidence == pytest.approx(0.93)
    assert (read.vehicle_class, read.direction) == ("truck", "approach")
    assert rig.listener.last_seen is not None and rig.listener.reads == 1


async def test_axis_new_and_update_emit_lost_does_not(camera_rig):
    rig = await camera_rig("axis")
    assert (await rig.camera.send_plate("D-AB-1234", 0.81, "van", "leave")).status == 200
    assert (await rig.camera.send_plate("D-AB-1234", 0.88, state="update")).status == 200
    assert (await rig.camera.send_plate("D-AB-1234", 0.88, state="lost")).status == 200
    assert [r.confidence for r in rig.reads] == [pytest.approx(0.81), pytest.approx(0.88)]
    assert (rig.reads[0].vehicle_class, rig.reads[0].direction) == ("van", "leave")


async def test_garbage_body_is_400_and_emits_nothing(camera_rig):
    for vendor in ("hikvision", "axis"):
        rig = await camera_rig(vendor)
        reply = await rig.camera.send_garbage()
        assert reply.status == 400 and reply.body
        assert rig.reads == [] and rig.listener.rejected == 1


async def test_oversized_body_is_413_and_emits_nothing(camera_rig):
    rig = await camera_rig("hikvision", max_body=64 * 1024)
    reply = await rig.camera.send_oversized(256 * 1024)
    assert reply.status == 413
    assert rig.reads == []


async def test_wrong_or_missing_secret_is_401_and_emits_nothing(camera_rig):
    rig = await camera_rig("axis")
    assert (await rig.camera.send_unauthenticated()).status == 401
    assert (await rig.camera.send_unauthenticated(wrong_secret="guess")).status == 401
    assert rig.reads == []
    assert rig.listener.last_seen is None  # an unauthenticated post is not a sign of life


async def test_secret_in_x_hub_secret_header_is_accepted(camera_rig):
    rig = await camera_rig("axis")
    body, ctype = rig.camera.plate_body("AB12CD", 0.9)
    reply = await rig.camera.post(body, ctype, secret=False, extra_headers={"X-Hub-Secret": "gate-camera-secret"})
    assert reply.status == 200 and len(rig.reads) == 1


async def test_source_outside_the_allow_list_is_403_and_emits_nothing(camera_rig):
    rig = await camera_rig("hikvision", allow=["192.0.2.0/24"])
    assert (await rig.camera.send_plate("NL-12-ABC", 0.95)).status == 403
    assert rig.reads == []


async def test_allow_list_alone_admits_the_camera_address(camera_rig):
    rig = await camera_rig("hikvision", secret=None, allow=["127.0.0.0/8"])
    assert (await rig.camera.send_plate("NL-12-ABC", 0.95)).status == 200
    assert len(rig.reads) == 1


async def test_slow_loris_is_cut_off_by_the_head_timeout(camera_rig):
    rig = await camera_rig("hikvision", head_timeout_s=0.8)
    reply, lasted = await rig.camera.dribble(interval_s=0.1, max_s=10.0)
    assert reply.status == 408
    assert lasted < 2.5
    assert rig.reads == []


async def test_slow_body_is_cut_off_by_the_body_timeout(camera_rig):
    rig = await camera_rig("hikvision", body_timeout_s=0.5)
    body, ctype = rig.camera.plate_body("NL-12-ABC", 0.9)
    head = (f"POST /anpr HTTP/1.1\r\nHost: hub\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"X-Hub-Secret: gate-camera-secret\r\n\r\n").encode()
    reply = await asyncio.wait_for(rig.camera.send_raw(head + body[:100]), 3.0)
    assert reply.status == 408 and rig.reads == []


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"POST /anpr HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\nX-Hub-Secret: gate-camera-secret\r\n\r\n"
         b"zz\r\nhello\r\n0\r\n\r\n", 400),
        (b"POST /anpr HTTP/1.1\r\nHost: hub\r\nX-Hub-Secret: gate-camera-secret\r\n\r\n", 411),
        (b"POST /anpr HTTP/1.1\r\nHost: hub\r\nContent-Length: x1\r\nX-Hub-Secret: gate-camera-secret\r\n\r\n", 400),
        (b"POST /anpr HTTP/1.1\r\nContent-Length: 0\r\nX-Hub-Secret: gate-camera-secret\r\n\r\n", 400),
        (b"GET /anpr HTTP/1.1\r\nHost: hub\r\nX-Hub-Secret: gate-camera-secret\r\n\r\n", 405),
        (b"POST /other HTTP/1.1\r\nHost: hub\r\nContent-Length: 0\r\n\r\n", 404),
        (b"POST /anpr HTTP/2.0\r\nHost: hub\r\nContent-Length: 0\r\n\r\n", 505),
        (b"this is not http\r\n\r\n", 400),
        (b"POST /anpr HTTP/1.1\r\nHost: hub\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
    ids=["bad-chunk", "no-length", "bad-length", "no-host", "get", "wrong-path", "http2", "garbage-head", "huge-head"],
)
async def test_malformed_requests_get_4xx_and_emit_nothing(camera_rig, raw, status):
    rig = await camera_rig("hikvision")
    reply = await rig.camera.send_raw(raw)
    assert reply.status == status
    assert rig.reads == []


async def test_basic_auth_header_with_bad_base64_is_401(camera_rig):
    rig = await camera_rig("axis")
    body, ctype = rig.camera.plate_body("AB12CD", 0.9)
    reply = await rig.camera.post(body, ctype, secret=False, extra_headers={"Authorization": "Basic !!!notbase64"})
    assert reply.status == 401


async def test_keep_alive_connection_serves_two_reads(camera_rig):
    rig = await camera_rig("axis")
    auth = base64.b64encode(b"camera:gate-camera-secret").decode()
    one, ctype = rig.camera.plate_body("AB12CD", 0.9)
    two, _ = rig.camera.plate_body("EF34GH", 0.8)
    reader, writer = await asyncio.open_connection(rig.camera.host, rig.camera.port)
    try:
        for body in (one, two):
            writer.write(
                (f"POST /anpr HTTP/1.1\r\nHost: hub\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                 f"Authorization: Basic {auth}\r\n\r\n").encode() + body
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
            assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" in head
            await reader.readexactly(3)  # "ok\n"
    finally:
        writer.close()
    assert [r.plate_raw for r in rig.reads] == ["AB12CD", "EF34GH"]


async def test_listener_refuses_to_run_without_any_authentication():
    from drivers.anpr import AnprListener

    with pytest.raises(ValueError, match="secret or an allow list"):
        AnprListener("cam", "127.0.0.1", 0, "axis", print)
