"""The demo day's story: its steps, its clock, and the base day on the CCS
bays that the parts' scenes join."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from edge.demo.site import DemoHub


@dataclass
class Step:
    """One line of the demo day's story. It is told once what it tells of
    has been seen (``until``), so the same day tells the same story at any
    speed; a step whose effect never comes says so instead."""

    at_s: float  # seconds from the start of the demo day
    what: str
    run: Callable[[], Awaitable[None] | None] | None = None
    # What the narration tells of, as the daemon shows it (a state, an event).
    until: Callable[[], Awaitable[bool]] | None = None
    # The hub reacts at once (a poll, a decision): the day's clock stands
    # while it does. A natural step (a battery filling) lets the day run.
    natural: bool = False
    within_s: float = 3600.0  # demo seconds a natural effect may take
    hold: bool = True  # False: the step runs a scene that keeps the clock itself


class DayClock:
    """The demo day's clock: ``speed`` times real time, standing still while
    the story waits for the hub to react. The chargers' physics keep this
    clock too (DemoHub.hold), so a battery fills at the same point of the
    story however fast the demo or the machine runs."""

    def __init__(self, speed: float):
        self.speed = speed
        self._mono = time.monotonic()
        self._day = 0.0
        self._held = 0
        # (wall time, day seconds, running after it): to place the daemon's
        # wall-clock times (booking slots, "since") on the day.
        self._marks: list[tuple[float, float, bool]] = [(time.time(), 0.0, True)]

    def now(self) -> float:
        if self._held:
            return self._day
        return self._day + (time.monotonic() - self._mono) * self.speed

    def hold(self) -> None:
        if self._held == 0:
            self._day = self.now()
            self._marks.append((time.time(), self._day, False))
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        if self._held == 0:
            self._mono = time.monotonic()
            self._marks.append((time.time(), self._day, True))

    def day_of(self, wall: float) -> float:
        """The day's time at a wall-clock instant (past or future)."""
        mark = self._marks[0]
        for m in self._marks:
            if m[0] > wall:
                break
            mark = m
        wall0, day0, running = mark
        if not running and mark is self._marks[-1] and wall > time.time():
            wall0, running = time.time(), True  # a future instant: the clock will run again
        return day0 + (max(0.0, wall - wall0) * self.speed if running else 0.0)

    def text(self, day_s: float | None = None) -> str:
        return clock_text(self.now() if day_s is None else day_s)


def clock_text(sim_s: float) -> str:
    sim_s = int(sim_s)
    return f"{sim_s // 3600:02d}:{(sim_s % 3600) // 60:02d}:{sim_s % 60:02d}"


def base_day(hub: DemoHub) -> list[Step]:
    """The base day on the CCS bays (free vend): trucks charge and leave, the
    charger goes silent and comes back, a technician takes a connector out
    of service. The parts add card, terminal and gate traffic on C1-C4.

    The trucks fill in the same demo time at any speed (the chargers keep
    the day's clock), B5's at about 02:15 and B6's at about 02:40, after
    CH2 has answered again."""
    ch2 = hub.chargers["CH2"]

    async def technician(action: str, cid: str, reason: str) -> None:
        await hub.ask("connector", {"action": action, "id": cid, "reason": reason})

    def charging(*cids: str):
        checks = [hub.connector_is(c, "Charging", session=True) for c in cids]
        return all_of(*checks)

    def finished(cid: str):
        return hub.connector_is(cid, "Finishing", session=False)

    hour = 3600.0
    return [
        Step(0.2 * hour, "a truck plugs in at bay B5 (CCS, free vend on this demo hub): charging starts",
             lambda: ch2.plug(0, soc=40, battery_kwh=480, max_power_w=200_000), until=charging("C5")),
        Step(0.5 * hour, "a truck plugs in at bay B6 (CCS): charging starts",
             lambda: ch2.plug(1, soc=50, battery_kwh=400, max_power_w=150_000), until=charging("C6")),
        Step(0.7 * hour, "B6's truck pauses (its battery is cooling)", lambda: ch2.pause_ev(1),
             until=hub.connector_is("C6", "SuspendedEV")),
        Step(0.9 * hour, "B6's truck resumes", lambda: ch2.resume_ev(1), until=charging("C6")),
        Step(1.0 * hour, "charger CH2 goes silent (network cable pulled): its connectors turn Faulted, "
                         "while the trucks charge on", lambda: ch2.silence("no_answer"),
             until=all_of(hub.connector_is("C5", "Faulted"), hub.connector_is("C6", "Faulted"))),
        Step(1.8 * hour, "charger CH2 answers again: its connectors recover by themselves and both sessions go on",
             lambda: ch2.speak(), until=charging("C5", "C6")),
        Step(2.2 * hour, "B5's truck is full: its session ends and the connector unlocks", until=finished("C5"),
             natural=True),
        hub.leaves("C5", 2.4 * hour, "B5's truck leaves"),
        Step(2.6 * hour, "B6's truck is full: its session ends", until=finished("C6"), natural=True),
        hub.leaves("C6", 2.8 * hour, "B6's truck leaves"),
        Step(3.2 * hour, "a technician takes connector C6 out of service (hubctl connector unavailable)",
             lambda: technician("unavailable", "C6", "cable inspection"), until=hub.connector_is("C6", "Unavailable")),
        Step(3.8 * hour, "the technician returns connector C6 to service",
             lambda: technician("available", "C6", "inspection done"), until=hub.connector_is("C6", "Available")),
    ]


def all_of(*checks: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        for c in checks:
            if not await c():
                return False
        return True
    return check


async def maybe_await(run) -> None:
    if run is not None:
        res = run()
        if asyncio.iscoroutine(res):
            await res


async def first_answer(check: Callable[[], Awaitable], real_timeout_s: float):
    """``check()``'s first truthy answer, asked every 50 ms for up to
    ``real_timeout_s`` real seconds; None when it never comes."""
    deadline = time.monotonic() + real_timeout_s
    while True:
        try:
            answer = await check()
        except (OSError, RuntimeError, asyncio.TimeoutError):
            answer = None
        if answer or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def tell_the_day(hub: DemoHub, steps: list[Step]) -> None:
    for step in steps:
        await hub.until_day(step.at_s)
        await hub.play(step)
