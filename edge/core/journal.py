"""Structured log lines on stderr, one line per event (journald picks them up).

Format: ``<time> <level> <logger> <event> key=value ...``; under journald
(JOURNAL_STREAM set) the time is left to the journal. Messages are written as
an event name followed by key=value pairs by the code that logs them; this
module only frames them. Nothing here ever formats a card number, a plate or
a secret: those never reach a log call in the first place.
"""

from __future__ import annotations

import logging
import os
import sys
import time


class LineFormatter(logging.Formatter):
    def __init__(self, with_time: bool):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", " | ")
        head = f"{record.levelname.lower()} {record.name.removeprefix('hubedge.') or 'hub'} {msg}"
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", " | ")
            head += f" exc={exc!r}"
        if self.with_time:
            t = time.gmtime(record.created)
            return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z " + head
        return head


def setup_logging(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter(with_time="JOURNAL_STREAM" not in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("hubedge").setLevel(level.upper())
    # Library chatter (pymodbus logs every reconnect) stays at warning.
    for noisy in ("paho", "nfc", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pymodbus logs every unanswered request as an error with a hex dump; the
    # charger driver reports the same thing once, as a device fault.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
