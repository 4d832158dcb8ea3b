"""The uplink alone in its own process, so a test can SIGKILL it mid-drain:
python hil_tests/sync/uplink_runner.py STATE_DIR BROKER_URL HUB_ID [WINDOW]."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from units import Clock
from edge.core.outbox import Outbox
from edge.core.store import Store
from edge.cloud.uplink import Uplink


async def main(state_dir: str, url: str, hub_id: str, window: int) -> None:
    clock = Clock()
    store = Store(Path(state_dir), clock=clock)
    outbox = Outbox(store, hub_id, clock=clock, quota_bytes=512 * 1024 * 1024)
    uplink = Uplink(hub_id, url, client_id=f"hub-{hub_id}", outbox=outbox, clock=clock, version="test",
                    on_message=lambda t, p, s: None, on_link=lambda up: print(f"link {up}", flush=True),
                    loop=asyncio.get_running_loop(), window=window, backoff=(0.05, 0.5))
    uplink.start()
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 50))
