"""systemd integration: sd_notify over $NOTIFY_SOCKET (R-D1).

Small enough to keep here rather than pull in a dependency: one datagram per
message. READY=1 once the devices have been polled, WATCHDOG=1 from a task on
the main event loop, STOPPING=1 on a graceful stop.

The watchdog is pinged only while the hub makes progress: the loop itself
runs (a stuck loop sends nothing) and every critical task has progressed
within its limit (edge/core/supervision.py) and the store's writer keeps up. While
something does not, the pings stop, STATUS= says why, and systemd restarts
the daemon once WatchdogSec has passed without a ping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("hubedge.systemd")


def notify(message: str) -> bool:
    """Send one notification; False when not running under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the configured WatchdogSec), or
    None when the watchdog is off or meant for another process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        return max(0.5, int(usec) / 1_000_000 / 2)
    except ValueError:
        return None


async def watchdog(interval: float, problems: Callable[[], list[str]]) -> None:
    """Ping WATCHDOG=1 every ``interval`` seconds while ``problems()`` is
    empty; while it is not, withhold the ping and say why in STATUS=."""
    withheld: list[str] | None = None
    while True:
        found = problems()
        if not found:
            notify("WATCHDOG=1")
            if withheld is not None:
                log.warning("watchdog.pinging_again")
                notify("STATUS=running")
            withheld = None
        else:
            if found != withheld:
                log.error("watchdog.withheld problems=%r action=%r", found,
                          "systemd restarts the daemon if this lasts WatchdogSec; see hubctl devices")
                notify(f"STATUS=not pinging the watchdog: {'; '.join(found)[:400]}")
            withheld = found
        await asyncio.sleep(interval)
