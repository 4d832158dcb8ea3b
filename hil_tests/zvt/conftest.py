"""ZVT HIL fixtures: the terminal simulator on a pty and on TCP (free port), and a client."""

from __future__ import annotations

import pytest

from drivers.zvt import Timers, ZvtClient
from simulators.zvt_terminal import ZvtTerminalSimulator

# Short timers so a silent terminal fails a test in about a second, not minutes.
FAST = Timers(t1_inter_byte=0.3, t2_ack=0.3, t3_command=0.8, t4_completion=2.0, connect=2.0)


@pytest.fixture
async def zvt_sim():
    sim = ZvtTerminalSimulator()
    sim.t2_ack = 0.3
    await sim.start(tcp_port=0, pty=True)
    yield sim
    await sim.stop()


@pytest.fixture(params=["pty", "tcp"])
def zvt_transport(request) -> str:
    return request.param


@pytest.fixture
async def zvt_client(zvt_sim, zvt_transport):
    url = zvt_sim.pty_path if zvt_transport == "pty" else zvt_sim.tcp_url
    texts: list[str] = []
    client = ZvtClient.from_url(url, password=123456, timers=FAST, on_status=texts.append)
    client.seen_texts = texts  # type: ignore[attr-defined]
    await client.connect()
    yield client
    await client.close()
