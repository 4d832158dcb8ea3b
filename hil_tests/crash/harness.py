"""Crash at every commit point: enumerate a journey's commits, then SIGKILL
the daemon just before and just after each one, restart it, finish the
journey and check the invariants (hil_tests/crash/checks.py).

A clean run of a journey lists its commit points in the order they landed
(``enumerate_points``); ``run_journey`` runs the journey again on a fresh
daemon told to kill itself at one of them, and the site's supervisor
restarts it as systemd would. A point a run did not reach (a poll or a tick committed at
another moment, so the numbering differs) is reported as not reached, never
as passed.

`python -m bench crashpoints` runs every point of every journey; the quick
test in this folder runs a fixed sample of them.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hil_tests.crash.checks import check_run, read_ledgers
from hil_tests.crash.daemon import point_name
from hil_tests.crash.journeys import JOURNEYS
from hil_tests.crash.site import CrashSite

JOURNEY_DEADLINE_S = 90.0  # a journey takes about 8 s, with a restart about 12
STALL_S = 20.0  # nothing changed for the driver this long: the journey is stuck
SETTLE_S = 60.0
SETTLE_STUCK_S = 5.0  # a journey that could not finish leaves the hub busy: look, but do not wait long
# Commits that only keep the outbox's books (what was delivered): kept apart
# when a sample is picked, since each journey has many of them.
BOOKKEEPING = frozenset({"outbox", "outbox_meta"})


@dataclass(frozen=True)
class Point:
    journey: str
    label: str
    n: int

    @property
    def name(self) -> str:
        return point_name(self.label, self.n)

    @property
    def tables(self) -> set[str]:
        inside = self.label.rsplit(" [", 1)[-1].rstrip("]")
        return set(inside.split(","))

    @property
    def bookkeeping(self) -> bool:
        return self.tables <= BOOKKEEPING


@dataclass
class Outcome:
    journey: str
    point: Point | None  # None: the clean run
    when: str | None  # before | after
    reached: bool
    violations: list[str]
    seconds: float
    commits: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    seen: list[str] = field(default_factory=list)  # what the journey saw, step by step

    @property
    def title(self) -> str:
        if self.point is None:
            return f"{self.journey}: clean run"
        return f"{self.journey}: SIGKILL {self.when} {self.point.name}"


async def run_journey(site: CrashSite, journey: str, *, point: Point | None = None, when: str | None = None,
                      keep: bool = False) -> Outcome:
    """One run of ``journey`` on a fresh daemon, killed at ``point`` (just
    ``when`` = before or after it) if given; the invariants checked after."""
    t0 = time.monotonic()
    try:
        run = await site.begin(journey, kill=(when, point.name) if point else None)
        j = JOURNEYS[journey](site)
        await j.prepare()
    except RuntimeError as exc:  # the daemon did not come up, or took no sync: this run checks nothing, and says so
        await site.end()
        return Outcome(journey, point, when, False, [f"the run could not start: {exc}"], time.monotonic() - t0)
    await _quiet(site)
    site.arm()
    finished = False
    deadline = time.monotonic() + JOURNEY_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            finished = await j.advance()
        except Exception as exc:  # a broken step is noted; the journey goes on from what it sees
            j.notes.append(f"step failed: {type(exc).__name__}: {exc}")
        if finished or time.monotonic() - j.changed_at > STALL_S:
            break
        await asyncio.sleep(0.15)
    status = await _settle(site, SETTLE_S if finished else SETTLE_STUCK_S)
    if (status is None or await site.status() is None) and not run.hangs:
        at = await site.stacks()
        if at:
            run.hangs.append(f"the running daemon did not answer `status` at the end; its event loop's thread stood "
                             f"at: {at} (every thread's stack is in {run.log.name})")
    commits = run.commits()
    verdict = await asyncio.to_thread(run.contract.final_check, run.db_path, 20.0)
    resp = await site.call("bookings")
    bookings = resp["data"] if resp and resp.get("ok") else None
    running = site.hub.daemon is not None and site.hub.daemon.poll() is None
    sessions, holds = read_ledgers(run.db_path)
    barriers = await site.barriers_down()
    await site.end()
    violations = check_run(run, j, finished=finished, status=status, daemon_running=running, verdict=verdict,
                           sessions=sessions, holds=holds, bookings=bookings, barriers=barriers)
    if violations or keep:
        shutil.copytree(site.state, run.dir / "state", dirs_exist_ok=True)
    else:
        shutil.rmtree(run.dir, ignore_errors=True)
    return Outcome(journey, point, when, bool(run.crashes), violations, time.monotonic() - t0, commits,
                   run.notes + j.notes, run.dir, j.seen)


async def enumerate_points(site: CrashSite, journey: str) -> tuple[list[Point], Outcome]:
    """The commit points of a clean run of ``journey``, in order."""
    clean = await run_journey(site, journey)
    return [Point(journey, label, n) for label, n in clean.commits], clean


def sample(points: list[Point]) -> list[tuple[Point, str]]:
    """A fixed pick for CI: one point to crash before and one after, spread
    over the journey's commits that change more than the outbox's books."""
    pool = [p for p in points if not p.bookkeeping] or points
    if not pool:
        return []
    return [(pool[len(pool) // 3], "before"), (pool[(2 * len(pool)) // 3], "after")]


async def _quiet(site: CrashSite, within: float = 30.0) -> None:
    """Before the journey: every event of the start-up delivered."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        st = await site.status()
        if st and st["outbox"].get("depth") == 0 and st["cloud"].get("connected"):
            return
        await asyncio.sleep(0.1)


async def _settle(site: CrashSite, within: float = SETTLE_S) -> dict | None:
    """After the journey: the hub quiet (ready, outbox drained, no hold
    open, no device in fault); the last status seen."""
    deadline = time.monotonic() + within
    status = None
    while time.monotonic() < deadline:
        st = await site.status()
        if st is not None:
            status = st
            open_holds = sum(t.get("open_holds", 0) for t in st.get("terminals", []))
            pending = sum(n for s, n in (st.get("payments") or {}).items() if s not in ("declined", "settled", "released", "lapsed"))
            faults = [d for d in st.get("devices", []) if d.get("state") == "fault"]
            if st.get("ready") and st["cloud"].get("connected") and not st["outbox"].get("depth") \
                    and not open_holds and not pending and not faults:
                return st
        await asyncio.sleep(0.25)
    return status


def every_point(points: list[Point]) -> list[tuple[Point, str]]:
    return [(p, when) for p in points for when in ("before", "after")]


@dataclass
class Report:
    points: dict[str, list[Point]] = field(default_factory=dict)  # journey -> its commit points
    clean: list[Outcome] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.clean + self.outcomes if o.violations]

    @property
    def not_reached(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.reached]

    def covered(self, journey: str | None = None) -> int:
        """Crash runs that reached their point."""
        return sum(1 for o in self.outcomes if o.reached and journey in (None, o.journey))

    def covered_points(self, journey: str | None = None) -> int:
        """Commit points crashed both just before and just after."""
        whens: dict[Point, set] = {}
        for o in self.outcomes:
            if o.reached and journey in (None, o.journey):
                whens.setdefault(o.point, set()).add(o.when)
        return sum(1 for w in whens.values() if w == {"before", "after"})

    def lines(self) -> list[str]:
        """What a person reads: per journey its points and runs, then every violation."""
        out = []
        for journey, points in self.points.items():
            runs = [o for o in self.outcomes if o.journey == journey]
            bad = [o for o in runs if o.violations]
            out.append(f"{journey}: {len(points)} commit points, {self.covered_points(journey)} crashed before and after; "
                       f"{len(runs)} crash runs, {self.covered(journey)} reached their point, {len(bad)} with violations")
        for o in self.failed:
            out.append(f"FAIL {o.title}" + (f" (state kept in {o.run_dir})" if o.run_dir else ""))
            out += [f"    - {v}" for v in o.violations]
        for o in self.not_reached:
            out.append(f"not reached: {o.title}")
        return out


async def crash_points(site: CrashSite, journeys: list[str], pick=every_point, progress=None) -> Report:
    """Enumerate each journey's commit points on a clean run, then crash the
    ones ``pick`` chooses, each in a run of its own."""
    report = Report()
    for journey in journeys:
        points, clean = await enumerate_points(site, journey)
        report.points[journey] = points
        report.clean.append(clean)
        if progress:
            progress(clean, len(points))
        for point, when in pick(points):
            outcome = await run_journey(site, journey, point=point, when=when)
            if not outcome.reached:  # a delivery merged with the next one, say: the numbering differed once
                outcome = await run_journey(site, journey, point=point, when=when)
                outcome.notes.append("reached only on the second try" if outcome.reached else "not reached in two tries")
            report.outcomes.append(outcome)
            if progress:
                progress(outcome, len(points))
    return report
