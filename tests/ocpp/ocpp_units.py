"""Adapters without sockets: a version adapter with a recording hub handler
and a fixed clock."""

from __future__ import annotations

from datetime import datetime, timezone

from drivers.ocpp.v16 import Adapter16
from drivers.ocpp.v201 import Adapter201
from hil_tests.ocpp.ocpp_rig import Recorder

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def make(version: str, leniencies=(), **kw):
    recorder = Recorder()
    cls = Adapter16 if version == "ocpp1.6" else Adapter201
    adapter = cls("CS-1", recorder, clock=lambda: NOW, heartbeat_interval_s=120, leniencies=frozenset(leniencies),
                  **kw)
    return adapter, recorder
