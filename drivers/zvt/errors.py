"""What can go wrong talking ZVT, as exception classes a caller can tell apart."""

from __future__ import annotations


class ZvtError(Exception):
    """Base of every ZVT driver error. The message says what happened and what to do."""


class ZvtDecodeError(ZvtError, ValueError):
    """Bytes that are not a valid ZVT frame, APDU, BMP or TLV."""


class TerminalError(ZvtError):
    """The terminal could not be used for this command (transport level).

    ``maybe_done`` is True when a money command had already reached the
    terminal: it may have been carried out, so the caller must ask the terminal
    (open pre-authorisations) before doing it again (R-P4).

    ``maybe_delivered`` is True when the link gave up on a command that may
    still have reached the terminal (a serial frame never answered with ACK
    or NAK: its ACK may be what was lost), so the command counts as sent."""

    maybe_done = False
    maybe_delivered = False


class TerminalUnavailable(TerminalError):
    """No link to the terminal: port missing, connection refused or lost, frames
    never acknowledged. The command did not reach the terminal, or the link
    broke while it ran (then the caller must check for open reservations)."""


class TerminalTimeout(TerminalError):
    """The terminal took a command but did not answer in time (T3 or T4)."""


class TerminalProtocolError(TerminalError):
    """The terminal answered with something this driver cannot read or did not expect."""


class TerminalRefused(TerminalError):
    """The terminal refused a command with 84 xx (it did not run it)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
