"""Calls to one station: one at a time, most urgent first, each with a timeout.

OCPP-J allows one unanswered CALL per connection (1.6 SHOULD, 2.0.1 SHALL),
so a slow TriggerMessage would hold up a power limit behind it. The queue
sends power limits first (R-E2), replaces a limit still waiting by a newer
one of the same purpose and evse (the caller of the older one gets the newer
one's outcome, marked superseded), and gives every call its own timeout.
Pure asyncio: the sending itself is a callable, so this is tested without
sockets.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Hashable

from drivers.ocpp.events import CallOutcome

log = logging.getLogger("hubedge.ocpp")

# Lower is sooner.
PRIORITY = {"power": 0, "control": 1, "booking": 2, "availability": 2, "trigger": 3, "config": 4}
TIMEOUT_S = {"power": 5.0, "control": 30.0, "booking": 30.0, "availability": 30.0, "trigger": 15.0, "config": 30.0}


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    action: str = field(compare=False)
    payload: object = field(compare=False)
    timeout_s: float = field(compare=False)
    coalesce: Hashable | None = field(compare=False)
    futures: list = field(compare=False, default_factory=list)
    dropped: bool = field(compare=False, default=False)


Send = Callable[[str, object], Awaitable[CallOutcome]]


class CallQueue:
    """The queue of one station's connection. ``send(action, payload)``
    performs one call and returns its outcome; ``run()`` is the worker."""

    def __init__(self, station: str, send: Send):
        self.station = station
        self._send = send
        self._heap: list[_Entry] = []
        self._by_key: dict[Hashable, _Entry] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._closed: str | None = None
        self.in_flight: str | None = None
        self.sent = 0

    def __len__(self) -> int:
        return sum(1 for e in self._heap if not e.dropped)

    def submit(self, action: str, payload: object, kind: str, *, timeout_s: float | None = None,
               coalesce: Hashable | None = None) -> asyncio.Future:
        """Queue a call; the future resolves to its ``CallOutcome`` (never raises)."""
        future = asyncio.get_running_loop().create_future()
        if self._closed is not None:
            future.set_result(CallOutcome("Error", action, f"{self.station}: not sent, {self._closed}"))
            return future
        timeout = TIMEOUT_S[kind] if timeout_s is None else timeout_s
        old = self._by_key.get(coalesce) if coalesce is not None else None
        if old is not None and not old.dropped:
            # A newer limit for the same purpose and evse: the older one is never sent.
            old.dropped = True
            entry = _Entry(min(old.priority, PRIORITY[kind]), old.seq, action, payload, timeout, coalesce,
                           [*old.futures])
            for f in entry.futures:
                f.superseded = True  # type: ignore[attr-defined]
        else:
            entry = _Entry(PRIORITY[kind], next(self._seq), action, payload, timeout, coalesce)
        future.superseded = False  # type: ignore[attr-defined]
        entry.futures.append(future)
        if coalesce is not None:
            self._by_key[coalesce] = entry
        heapq.heappush(self._heap, entry)
        self._wake.set()
        return future

    def _pop(self) -> _Entry | None:
        while self._heap:
            entry = heapq.heappop(self._heap)
            if entry.dropped:
                continue
            if entry.coalesce is not None and self._by_key.get(entry.coalesce) is entry:
                del self._by_key[entry.coalesce]
            return entry
        return None

    async def run(self) -> None:
        """Send queued calls one at a time until ``close``; cancelled with the connection."""
        try:
            while self._closed is None:
                entry = self._pop()
                if entry is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                outcome = await self._one(entry)
                for future in entry.futures:
                    if not future.done():
                        superseded = getattr(future, "superseded", False)
                        future.set_result(_mark(outcome, superseded))
        finally:
            self.close("the connection closed before it was sent")

    async def _one(self, entry: _Entry) -> CallOutcome:
        self.in_flight = entry.action
        self.sent += 1
        try:
            return await asyncio.wait_for(self._send(entry.action, entry.payload), entry.timeout_s)
        except asyncio.TimeoutError:
            return CallOutcome("Timeout", entry.action, f"{self.station} did not answer {entry.action} within "
                               f"{entry.timeout_s:g} s; the hub carries on without it")
        except asyncio.CancelledError:
            for future in entry.futures:
                if not future.done():
                    future.set_result(CallOutcome("Error", entry.action, f"{self.station}: {entry.action} "
                                                  "interrupted, the connection closed before the answer"))
            raise
        except Exception as exc:  # the station's answer broke the schema, or the socket failed
            log.warning("ocpp_call_failed station=%s action=%s error=%s", self.station, entry.action, exc)
            return CallOutcome("Error", entry.action, f"{self.station}: {entry.action} failed: {exc}")
        finally:
            self.in_flight = None

    def close(self, reason: str) -> None:
        """Resolve everything still queued as Error(reason); later submits fail at once."""
        if self._closed is None:
            self._closed = reason
        while (entry := self._pop()) is not None:
            for future in entry.futures:
                if not future.done():
                    future.set_result(CallOutcome("Error", entry.action, f"{self.station}: {entry.action} not sent, "
                                                  f"{reason}"))
        self._wake.set()


def _mark(outcome: CallOutcome, superseded: bool) -> CallOutcome:
    if not superseded:
        return outcome
    return CallOutcome(outcome.kind, outcome.action, f"{outcome.message} (a newer limit replaced this one "
                       "before it was sent)", outcome.status, outcome.result, True)
