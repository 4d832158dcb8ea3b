"""Supervised tasks: the hub's long-running loops, watched.

The hub runs a few loops for as long as it runs: each charger's polling, the
ticks (timeouts, schedules), the payment terminals' lanes, the cost watch.
If one ends, the hub goes on looking alive while that part of it is dead: a
charger whose polling stopped leaves its connector in Preparing while the
truck charges, and the cost cap never sees the energy.

So a loop runs under a supervisor:

* an iteration that raises is logged (the first of a run of failures with its
  traceback, then a line a minute) and counted, and the loop goes on;
* a loop that ends anyway (an exception escaping it, or returning while the
  hub runs) is reported as a ``device.alarm`` and started again after a
  back-off (1 s, doubling up to 60 s);
* a critical loop reports progress: each completed iteration is a heartbeat
  (``loop``), or the loop calls :func:`beat` itself (``run``); one that never
  beats counts as progressing while it stays up. ``problems()`` names every
  critical loop that has not progressed within its limit, and the daemon
  pings the systemd watchdog only while there are none, so systemd restarts
  a hub whose vital loop is stuck or keeps failing.

Every task shows in ``hubctl devices`` (class ``task``) with its state, its
failed iterations and restarts, and what to do.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from units import Clock, rfc3339

log = logging.getLogger("hubedge.supervision")

DEFAULT_STALL_S = 60.0
UP_FOR_PROGRESS_S = 1.0  # a loop without heartbeats counts as progressing once up this long
ERROR_LOG_EVERY_S = 60.0

_current: contextvars.ContextVar["TaskHealth | None"] = contextvars.ContextVar("supervised_task", default=None)


def beat() -> None:
    """Report progress of the supervised loop this code runs in (nothing
    outside one). Call it once per round of work done."""
    health = _current.get()
    if health is not None:
        health.beat(time.monotonic())


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class TaskHealth:
    """What the supervisor knows of one task."""

    name: str
    critical: bool
    stall_after_s: float
    started_mono: float
    since: datetime
    state: str = "running"  # running | restarting
    beats: bool = False  # it has reported a heartbeat: from now on it must keep doing so
    last_progress: float = 0.0
    iterations: int = 0
    errors: int = 0
    errors_in_row: int = 0
    last_error: str | None = None
    last_error_mono: float | None = None
    restarts: int = 0
    restart_at: float | None = None
    stalled: bool = False  # reported as stalled, not yet progressing again
    _logged_mono: float = field(default=-1e9, repr=False)

    def beat(self, now: float) -> None:
        self.beats = True
        self.last_progress = now

    def progressing(self, now: float) -> bool:
        if self.state == "running" and not self.beats and now - self.started_mono >= UP_FOR_PROGRESS_S:
            self.last_progress = now
        return now - self.last_progress <= self.stall_after_s

    def as_device(self, now: float) -> dict:
        """The task as a row of `hubctl devices`."""
        fault = self.state != "running" or not self.progressing(now)
        return {
            "device": self.name,
            "class": "task",
            "connectors": [],  # a task of the hub serves no connector itself
            "state": "fault" if fault else "ok",
            "since": rfc3339(self.since),
            "last_error": self._explain(now) if fault or self.errors else None,
            "detail": {
                "critical": self.critical,
                "iterations": self.iterations,
                "failed_iterations": self.errors,
                "restarts": self.restarts,
                "progress_s_ago": round(now - self.last_progress, 1),
            },
        }

    def _explain(self, now: float) -> str:
        """What happened and what to do, for the person reading hubctl."""
        last = f"{self.last_error} ({now - self.last_error_mono:.0f} s ago)" if self.last_error_mono else "-"
        if self.state == "restarting":
            wait = max(0.0, (self.restart_at or now) - now)
            text = f"stopped {self.restarts} time(s), starting again in {wait:.0f} s; last error: {last}"
        elif not self.progressing(now):
            text = (f"no progress for {now - self.last_progress:.0f} s ({self.errors_in_row} rounds failed in a row); "
                    f"last error: {last}")
        else:
            return f"{self.errors} of {self.iterations} rounds failed, {self.restarts} restart(s); last error: {last}"
        if self.critical:
            text += "; the hub restarts itself if this goes on (systemd watchdog); check the journal (journalctl -u hubedge)"
        return text


class Supervisor:
    """Runs and watches the hub's loops. ``spawn`` starts a coroutine as a
    task the hub cancels when it stops; ``alarm(code, message)`` reports a
    dead or stalled task (a device.alarm event)."""

    def __init__(self, *, clock: Clock, spawn: Callable[[Awaitable], asyncio.Task],
                 alarm: Callable[[str, str], None], stopping: Callable[[], bool],
                 backoff: tuple[float, float] = (1.0, 60.0)):
        self.clock = clock
        self._spawn = spawn
        self._alarm = alarm
        self._stopping = stopping
        self.backoff = backoff
        self.tasks: dict[str, TaskHealth] = {}

    # -------------------------------------------------------------- starting
    def run(self, name: str, body: Callable[[], Awaitable[None]], *, critical: bool = True,
            stall_after_s: float = DEFAULT_STALL_S) -> asyncio.Task:
        """Run ``body()``, a coroutine function looping until the hub stops;
        start it again whenever it ends. It may call :func:`beat`."""
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already supervised: give each loop its own name")
        now = time.monotonic()
        health = TaskHealth(name, critical, stall_after_s, now, self.clock.now(), last_progress=now)
        self.tasks[name] = health
        return self._spawn(self._keep(health, body))

    def loop(self, name: str, step: Callable[[], Awaitable[None] | None], *, every: float | Callable[[], float],
             critical: bool = True, stall_after_s: float = DEFAULT_STALL_S) -> asyncio.Task:
        """Call ``step()`` (plain or async) every ``every`` seconds (from the
        start of one call to the next) until the hub stops. A step that
        raises is logged and counted; one that returns is a heartbeat."""

        async def body() -> None:
            await rounds(step, every=every, stopping=self._stopping)

        return self.run(name, body, critical=critical, stall_after_s=stall_after_s)

    # ------------------------------------------------------------- watching
    def problems(self) -> list[str]:
        """A sentence for each critical task not progressing; empty when all are."""
        now = time.monotonic()
        return [f"{h.name}: {h._explain(now)}" for h in self.tasks.values()
                if h.critical and not h.progressing(now)]

    def check(self) -> None:
        """Report tasks that stalled, or progress again, since the last check
        (once a second, from the hub's ticks)."""
        now = time.monotonic()
        for h in self.tasks.values():
            progressing = h.progressing(now)
            if not progressing and not h.stalled:
                h.stalled = True
                log.error("task.stalled name=%s critical=%s last_error=%r", h.name, h.critical, h.last_error)
                self._report("task_stalled", f"{h.name}: {h._explain(now)}")
            elif progressing and h.stalled:
                h.stalled = False
                log.warning("task.progressing name=%s", h.name)
                self._report("task_recovered", f"{h.name} is making progress again after {h.errors} failed rounds "
                                               f"and {h.restarts} restart(s) in all")

    def views(self) -> list[dict]:
        now = time.monotonic()
        return [h.as_device(now) for h in self.tasks.values()]

    # -------------------------------------------------------------- internals
    def _report(self, code: str, message: str) -> None:
        try:
            self._alarm(code, message)
        except Exception:  # the failure may be the very store the alarm goes to
            log.exception("task.alarm_failed code=%s", code)

    async def _keep(self, health: TaskHealth, body: Callable[[], Awaitable[None]]) -> None:
        _current.set(health)
        delay = self.backoff[0]
        while not self._stopping():
            health.state = "running"
            health.started_mono = time.monotonic()
            health.restart_at = None
            try:
                await body()
                why = "it returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = _describe(exc)
                log.exception("task.died name=%s error=%r", health.name, why)
            if self._stopping():
                return
            now = time.monotonic()
            if now - health.started_mono >= self.backoff[1]:
                delay = self.backoff[0]  # it ran a good while: start again soon
            health.state = "restarting"
            health.since = self.clock.now()
            health.restarts += 1
            health.last_error = why
            health.last_error_mono = now
            health.restart_at = now + delay
            log.error("task.restarting name=%s in_s=%.0f restarts=%d", health.name, delay, health.restarts)
            self._report("task_died", f"{health.name} stopped ({why}); starting it again in {delay:.0f} s "
                                      f"(restart {health.restarts})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])
            health.since = self.clock.now()


async def rounds(step: Callable[[], Awaitable[None] | None], *, every: float | Callable[[], float],
                 stopping: Callable[[], bool] = lambda: False) -> None:
    """Call ``step()`` (plain or async) every ``every`` seconds (from the
    start of one call to the next) for as long as the supervised loop this
    runs in lives: a step that raises is logged and counted and the next
    round tries again; one that returns is a heartbeat. ``Supervisor.loop``
    runs one; a loop of its own (a charger's ``run``) may await it."""
    health = _current.get()
    while not stopping():
        t0 = time.monotonic()
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if health is None:
                raise
            _failed(health, exc)
        else:
            if health is not None:
                _succeeded(health)
        interval = every() if callable(every) else every
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))


def _succeeded(health: TaskHealth) -> None:
    now = time.monotonic()
    health.iterations += 1
    health.beat(now)
    if health.errors_in_row:
        log.warning("task.recovered name=%s failed_rounds=%d", health.name, health.errors_in_row)
        health.errors_in_row = 0

def _failed(health: TaskHealth, exc: Exception) -> None:
    now = time.monotonic()
    health.iterations += 1
    health.errors += 1
    health.errors_in_row += 1
    health.last_error = _describe(exc)
    health.last_error_mono = now
    if health.errors_in_row == 1:
        log.exception("task.round_failed name=%s error=%r action=%r", health.name, health.last_error,
                      "the loop goes on; see the traceback")
        health._logged_mono = now
    elif now - health._logged_mono >= ERROR_LOG_EVERY_S:
        log.error("task.rounds_failing name=%s in_row=%d error=%r", health.name, health.errors_in_row,
                  health.last_error)
        health._logged_mono = now
