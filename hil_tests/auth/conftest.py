"""Reader driver against the card simulator over nfcpy's UDP frontend."""

import asyncio
import socket

import pytest

from drivers.nfc_reader import CardReader
from simulators.card import CardSimulator


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReaderRig:
    """A CardReader whose events land in a queue, and the simulator it reads."""

    def __init__(self, sim: CardSimulator, reader: CardReader, events: asyncio.Queue):
        self.sim, self.reader, self.events = sim, reader, events

    async def next_event(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.events.get(), timeout)

    async def settle(self, seconds: float):
        await asyncio.sleep(seconds)


@pytest.fixture
async def make_rig():
    made = []

    async def build(engine: str = "wire", debounce_s: float = 2.0, **reader_options) -> ReaderRig:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        sim = CardSimulator(free_udp_port(), engine=engine)
        reader = CardReader("reader-1", f"udp:127.0.0.1:{sim.port}", loop, events.put_nowait,
                            debounce_s=debounce_s, **reader_options)
        reader.start()
        rig = ReaderRig(sim, reader, events)
        made.append(rig)
        await asyncio.sleep(0.3)  # the reader's first poll
        return rig

    yield build
    for rig in made:
        assert rig.reader.stop(timeout=3.0), "reader thread did not end within 3 s"
        rig.sim.close()
