"""ZVT payment terminals (the German ECR interface) over serial or TCP.

Use ``ZvtClient.from_url(url, password=...)``; the codec modules (apdu, bmp,
tlv, messages, framing) are pure and usable on their own, e.g. by the simulator.
"""

from drivers.zvt.client import OpenPreauthorization, OpenReservations, PaymentResult, TerminalStatus, ZvtClient
from drivers.zvt.errors import (
    TerminalError,
    TerminalProtocolError,
    TerminalRefused,
    TerminalTimeout,
    TerminalUnavailable,
    ZvtDecodeError,
    ZvtError,
)
from drivers.zvt.link import Timers

__all__ = [
    "OpenPreauthorization",
    "OpenReservations",
    "PaymentResult",
    "TerminalError",
    "TerminalProtocolError",
    "TerminalRefused",
    "TerminalStatus",
    "TerminalTimeout",
    "TerminalUnavailable",
    "Timers",
    "ZvtClient",
    "ZvtDecodeError",
    "ZvtError",
]
