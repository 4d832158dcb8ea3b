"""What a real camera does that the listener must take, over real HTTP on
loopback: scene pictures of a megabyte and more, chunked bodies, and a lane
camera that still gets in while other peers hold connections open.

Peers on other hosts are other loopback addresses (127.0.0.2, ...), which
Linux routes to the listener on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import tomllib
import tracemalloc
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from simulators.camera import CameraSimulator

pytestmark = pytest.mark.hil


# ---- pictures


async def test_hikvision_read_with_a_1_5_mb_scene_picture_is_taken(camera_rig):
    """A 4-megapixel scene picture weighs about 1.5 MB: the read behind it
    opens the gate like any other (it was 413 at the former fixed 1 MiB)."""
    rig = await camera_rig("hikvision")
    rig.camera.scene_picture = 1_500_000
    reply = await rig.camera.send_plate("NL-12-ABC", 0.93)
    assert reply.status == 200
    assert [r.plate_raw for r in rig.reads] == ["NL-12-ABC"]


async def test_scene_pictures_stream_past_and_are_never_held(camera_rig):
    """A 6 MB read is taken while the listener holds under 2 MB at any time
    (socket buffers and the XML: the same for a 200 kB or a 12 MB read): the
    pictures pass through and are dropped."""
    rig = await camera_rig("hikvision")
    camera = CameraSimulator(f"http://{rig.camera.host}:{rig.camera.port}/anpr", "hikvision", "gate-camera-secret",
                             scene_picture=6_000_000)
    body, ctype = camera.plate_body("NL-12-ABC", 0.93)
    raw = (f"POST /anpr HTTP/1.1\r\nHost: hub\r\nX-Hub-Secret: gate-camera-secret\r\nContent-Type: {ctype}\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    answer = bytearray()

    def post() -> None:  # a blocking socket in a thread: the sender allocates nothing while traced
        with socket.create_connection((camera.host, camera.port)) as sock:
            sock.sendall(raw)
            while chunk := sock.recv(4096):
                answer.extend(chunk)

    sender = threading.Thread(target=post)
    tracemalloc.start()
    try:
        sender.start()
        while sender.is_alive():
            await asyncio.sleep(0.01)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.startswith(b"HTTP/1.1 200"), bytes(answer[:200])
    assert len(rig.reads) == 1
    assert peak < 2_000_000, f"{peak} bytes held for a {len(body)}-byte read"


async def test_body_over_the_limit_is_413_with_what_to_do(camera_rig):
    rig = await camera_rig("hikvision", max_body=1_000_000)
    rig.camera.scene_picture = 1_500_000
    reply = await rig.camera.send_plate("NL-12-ABC", 0.93)
    assert reply.status == 413 and b"max_body_bytes" in reply.body
    assert rig.reads == []


# ---- chunked


@pytest.mark.parametrize("chunk", [1024, 64 * 1024])
async def test_chunked_hikvision_read_is_taken(camera_rig, chunk):
    """HTTP/1.1 recipients must parse chunked bodies (it was 411)."""
    rig = await camera_rig("hikvision")
    rig.camera.scene_picture = 300_000
    body, ctype = rig.camera.plate_body("NL-12-ABC", 0.93)
    reply = await rig.camera.post(body, ctype, chunk=chunk)
    assert reply.status == 200
    assert [r.plate_raw for r in rig.reads] == ["NL-12-ABC"]


async def test_chunked_axis_read_is_taken(camera_rig):
    rig = await camera_rig("axis")
    body, ctype = rig.camera.plate_body("D-AB-1234", 0.81)
    assert (await rig.camera.post(body, ctype, chunk=100)).status == 200
    assert len(rig.reads) == 1


async def test_chunked_body_over_the_limit_is_413(camera_rig):
    rig = await camera_rig("hikvision", max_body=64 * 1024)
    rig.camera.scene_picture = 256 * 1024
    body, ctype = rig.camera.plate_body("NL-12-ABC", 0.93)
    reply = await rig.camera.post(body, ctype, chunk=16 * 1024)
    assert reply.status == 413 and rig.reads == []


async def test_chunked_body_cut_short_is_400(camera_rig):
    rig = await camera_rig("axis")
    body, ctype = rig.camera.plate_body("D-AB-1234", 0.81)
    head = (f"POST /anpr HTTP/1.1\r\nHost: hub\r\nX-Hub-Secret: gate-camera-secret\r\nContent-Type: {ctype}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(rig.camera.host, rig.camera.port)
    try:
        writer.write(head + b"%x\r\n" % len(body) + body[:20])
        writer.write_eof()  # the camera gives up half way
        answer = await asyncio.wait_for(reader.read(), 3.0)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400") and rig.reads == []


# ---- connections

OTHER_HOSTS = [f"127.0.0.{n}" for n in range(2, 10)]


@asynccontextmanager
async def peers_holding(rig, sources: list[str]):
    """A connection held open (a head begun, then nothing) from each of ``sources``."""
    held: list[asyncio.StreamWriter] = []
    try:
        for source in sources:
            held += await rig.camera.hold_open(1, source=source)
        await asyncio.sleep(0.1)  # the listener has taken or refused them all
        yield
    finally:
        for writer in held:
            writer.close()
        await asyncio.sleep(0.05)


def camera_at(rig, source: str) -> CameraSimulator:
    """The rig's camera as posted from another address."""
    return CameraSimulator(f"http://127.0.0.1:{rig.camera.port}/anpr", rig.camera.vendor, "gate-camera-secret",
                           source=source)


async def test_slow_connections_from_one_peer_do_not_lock_the_camera_out(camera_rig):
    """Eight connections held open by one peer (renewed as the head timeout
    cuts them) used to fill every slot: the lane's camera got 503."""
    rig = await camera_rig("axis")
    async with peers_holding(rig, ["127.0.0.2"] * 8):
        assert (await rig.camera.send_plate("D-AB-1234", 0.81)).status == 200
    assert len(rig.reads) == 1


async def test_connections_beyond_the_cap_per_peer_are_503(camera_rig):
    rig = await camera_rig("axis")
    async with peers_holding(rig, ["127.0.0.2"] * 4):
        reply = await camera_at(rig, "127.0.0.2").send_plate("D-AB-1234", 0.81)
    assert reply.status == 503 and b"from this address" in reply.body
    assert rig.reads == []


async def test_allow_listed_camera_has_room_kept_against_many_peers(camera_rig):
    """Peers on the camera's network, one connection each, fill what is
    theirs; the camera's own address (a single address in the allow list)
    still gets in."""
    rig = await camera_rig("axis", secret=None, allow=["127.0.0.1", "127.0.0.0/24"])
    async with peers_holding(rig, OTHER_HOSTS):
        assert (await rig.camera.send_plate("D-AB-1234", 0.81)).status == 200
    assert len(rig.reads) == 1


async def test_camera_that_posted_keeps_its_room(camera_rig):
    """With a secret and no allow list, the address reads came from is the
    camera's: its room is kept while other peers fill the rest."""
    rig = await camera_rig("axis")
    assert (await rig.camera.send_plate("D-AB-1234", 0.81)).status == 200
    async with peers_holding(rig, OTHER_HOSTS):
        assert (await rig.camera.send_plate("D-AB-1234", 0.88, state="update")).status == 200
        assert (await camera_at(rig, "127.0.0.20").send_plate("D-AB-1234", 0.9)).status == 503
    assert len(rig.reads) == 2


async def test_a_connection_that_stops_inside_its_head_gets_408(camera_rig):
    """What frees the slots held open: the head deadline, from the connection's start."""
    rig = await camera_rig("axis", head_timeout_s=0.3)
    reader, writer = await asyncio.open_connection(rig.camera.host, rig.camera.port, local_addr=("127.0.0.2", 0))
    try:
        writer.write(b"POST /anpr HTTP/1.1\r\n")
        answer = await asyncio.wait_for(reader.read(), 3.0)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert rig.listener.rejected == 1


# ---- the gate's configuration


async def test_gate_camera_max_body_bytes_reaches_the_listener(tmp_path: Path):
    """`max_body_bytes` under a gate's camera sets that listener's limit."""
    from edge.core.config import parse_config
    from edge.core.hub import Hub
    from simulators.broker import free_port

    listen = free_port()
    config = parse_config(tomllib.loads(f"""
[hub]
id = "HIL-CAM"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp_path / 'state'}"
[control]
socket = "{tmp_path / 'control.sock'}"
[[gates]]
id = "G-IN"
role = "entry"
barrier = {{ address = "127.0.0.1:9" }}
camera = {{ listen = "127.0.0.1:{listen}", vendor = "hikvision", secret = "s", max_body_bytes = 2_000_000 }}
"""), tmp_path / "hub.toml")
    hub = Hub(config)
    site = next(p for p in hub.capabilities if p.name == "site")
    try:
        await site.start()
        assert site.gates["G-IN"].camera.max_body == 2_000_000
        camera = CameraSimulator(f"http://127.0.0.1:{listen}/anpr", "hikvision", "s", scene_picture=1_500_000)
        assert (await camera.send_plate("NL-12-ABC", 0.93)).status == 200
        camera.scene_picture = 2_500_000
        assert (await camera.send_plate("NL-12-ABC", 0.93)).status == 413
    finally:
        await site.stop()
        hub.store.close()
