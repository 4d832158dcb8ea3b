"""Site power over a simulated week: the real allocation and control code on
simulated time, trucks and grid (R-E1..R-E5).

The hub: 4 MCS connectors (1.2 MW rated, 100 kW minimum) and 8 CCS (400 kW,
40 kW) behind a 2.5 MW connection, 60 kW margin, 1.8 MW safe total while the
meter is silent. Trucks arrive for 45-minute breaks by day (about half of
them booked, the slot ending 50 minutes after arrival) and for overnight
stays; each has its battery, state of charge, peak power, taper knee and
ramp rates. The site's other load is the meter simulator's ``BaseLoad`` (a
truck stop's day with noise and machines switching 30-40 kW, up to about
400 kW; the 60 kW margin is above its largest one-second step). Every day
the meter goes silent once (30-120 s) and one charger stops taking commands
once (20-90 s).

Two weeks on the same hub (``Scenario``):
- the realistic week, the main figures: two dozen breaks a weekday (12 on
  Saturday, 8 on Sunday) whose drivers charge to 75-90 %, and six overnight
  stays that fill up; the connection non-firm: on Tuesdays and Thursdays
  the grid operator lowers it to 1.8-2.2 MW for 20-60 minutes at its
  evening peak;
- the overloaded week, a stress figure reported apart: 44 breaks a weekday
  (22, 12 at the weekend) with their peaks together, curtailed twice every
  day to 1.4-2.0 MW. Break trucks must lose there; the limit must hold.

Time is simulated as discrete events: the meter is read every second and the
controller stepped with the reading (and at once on a plug, an unplug or a
limit change); commands reach each charger 20-80 ms later, lowered ones
first; trucks follow their limits along a ramp and a taper
(``simulators.charger.follow``/``taper``), integrated exactly between events,
and the site's draw is checked on every piece of its piecewise-linear path.

Figures, each beside a baseline from the same run on the same week and
arrivals:
- time above the limit beyond one 1 s control cycle, and the worst overshoot
  (during the 5 s after a limit is lowered, against the limit before it);
  baseline: the same allocation stepped every 30 s (evcc's default interval);
- limit lowered -> every charger that must lower told (p99) and the site back
  under (worst); same baseline;
- break trucks that got at least 95 % of the energy they could take alone in
  their stay (booked ones apart), Jain's index among trucks of equal
  priority (power over its max-min fair share, sampled every 10 s) and the
  energy delivered, each against first come, first served (each truck in
  arrival order takes up to its cap) and an equal split (EVerest's, capped
  at rated, nothing redistributed);
- the control step's own cost with 40 connectors, as a share of one core at
  the week's step rate; baseline: the equal split through the same controller.

    python -m bench power            # both weeks (about 25 minutes of CPU, the runs spread over the cores)
    python -m bench power --quick    # their Mondays (about 2 minutes of CPU)
"""

from __future__ import annotations

import concurrent.futures
import heapq
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from bench.common import Result, percentile
from edge.parts.power.allocation import (
    Allocation,
    ConnectorDemand,
    Priority,
    State,
    cap_w,
    available_kw,
    tier_of,
)
from edge.parts.power.control import ConnectorInput, MeterSample, PowerController, PowerSettings
from simulators.charger import Ramp, follow, taper
from simulators.grid_meter import BaseLoad

COMMAND = "python -m bench power"
SEED = 18
EPOCH = datetime(2026, 6, 1, tzinfo=timezone.utc)  # a Monday
SETTINGS = PowerSettings(grid_limit_kw=2500, margin_kw=60, fallback_kw=1800, stale_after_s=3)
KINDS = {"MCS": (1200.0, 100.0), "CCS": (400.0, 40.0)}  # rated kW, minimum kW
BAYS = [("M", "MCS")] * 4 + [("C", "CCS")] * 8
SESSION_AFTER_S = 5.0  # plug to authorised session
DRAW_AFTER_S = 2.0  # session to current flowing (cable check, precharge)
READ_S = 0.05  # meter and charger reads before a step
SERVED = 0.95  # a break truck got "what it could take" at this share of it
GRACE_S = 5.0  # after a lowered limit, R-E2's time to be back under


@dataclass(frozen=True)
class Scenario:
    """Who comes in a week and what the grid operator does."""

    name: str
    breaks: tuple[int, int, int]  # 45-minute breaks on a weekday, a Saturday, a Sunday
    overnight: int  # overnight stays a night, none on Saturday night
    curtail_days: tuple[int, ...]  # weekdays (0 Monday) the grid operator curtails on
    curtail_per_day: int
    curtail_kw: tuple[float, float]
    curtail_min: tuple[float, float]
    curtail_hours: tuple[float, float]


# A hub of 4 MCS and 8 CCS bays on a motorway: drivers stop for their
# legally required 45-minute breaks, late morning and late afternoon, and
# some stay overnight; about half the breaks are booked. A driver on a break
# charges what the next leg needs (to 75-90 %) and moves on; one staying
# overnight fills up. Two dozen breaks a weekday (half at the weekend) and
# six overnight stays: each bay turns over a few times a day. The connection
# is non-firm: on Tuesdays and Thursdays the grid operator lowers it for
# 20-60 minutes at its own evening peak.
REALISTIC = Scenario("realistic week", breaks=(24, 12, 8), overnight=6, curtail_days=(1, 3), curtail_per_day=1,
                     curtail_kw=(1800, 2200), curtail_min=(20, 60), curtail_hours=(16, 20))
# More than the connection can serve: 44 breaks a weekday with their peaks
# together, and the grid operator curtailing twice every day. A stress
# figure: what breaks must lose, and whether the limit still holds.
OVERLOADED = Scenario("overloaded week", breaks=(44, 22, 12), overnight=6, curtail_days=tuple(range(7)),
                      curtail_per_day=2, curtail_kw=(1400, 2000), curtail_min=(15, 60), curtail_hours=(6, 21))


# --------------------------------------------------------------------------
# The week: who comes when, and what goes wrong.


@dataclass
class Visit:
    n: int
    arrive: float  # seconds since EPOCH
    leave: float
    kind: str
    booked: bool
    on_break: bool
    slot_end: float | None  # the booking's end, when booked
    battery_wh: float
    soc: float
    max_w: float
    knee: float
    ramp: Ramp
    target_soc: float = 100.0  # where the driver stops: what the next leg needs, or full overnight
    alone_wh: float = 0.0  # what it could take in its stay with its connector to itself
    energy_wh: float = 0.0
    finished: bool = False


def traffic(rng: random.Random, days: int, scenario: Scenario = REALISTIC) -> list[Visit]:
    visits: list[Visit] = []

    def truck(arrive, leave, kind, booked, on_break, slot_end, soc):
        mcs = kind == "MCS"
        max_w = rng.uniform(750e3, 1000e3) if mcs else rng.uniform(300e3, 400e3)
        visits.append(Visit(
            len(visits), arrive, leave, kind, booked, on_break, slot_end,
            battery_wh=(rng.uniform(600, 1000) if mcs else rng.uniform(400, 650)) * 1000, soc=soc, max_w=max_w,
            knee=rng.uniform(55, 70) if mcs else rng.uniform(70, 80),
            ramp=Ramp(up_w_per_s=rng.uniform(50e3, 150e3), down_w_per_s=max_w / rng.uniform(1.0, 3.0)),
            target_soc=rng.uniform(75, 90) if on_break else 100.0))

    for day in range(days):
        t0 = day * 86400.0
        weekday = (EPOCH + timedelta(days=day)).weekday()
        for _ in range({5: scenario.breaks[1], 6: scenario.breaks[2]}.get(weekday, scenario.breaks[0])):
            hour = rng.gauss(11.5, 2.0) if rng.random() < 0.5 else rng.gauss(17.0, 1.8)
            arrive = t0 + min(21.5, max(5.0, hour)) * 3600 + rng.uniform(0, 60)
            booked = rng.random() < 0.5
            truck(arrive, arrive + rng.uniform(45, 50) * 60, "MCS" if rng.random() < 0.45 else "CCS", booked, True,
                  arrive + 50 * 60 if booked else None, rng.uniform(10, 40))
        for _ in range(0 if weekday == 5 else scenario.overnight):  # overnight stays, none on Saturday night
            arrive = t0 + rng.uniform(18, 22) * 3600
            leave = t0 + 86400 + rng.uniform(5, 7) * 3600
            booked = rng.random() < 0.7
            truck(arrive, leave, "CCS" if rng.random() < 0.75 else "MCS", booked, False,
                  math.ceil(leave / 1800) * 1800 if booked else None, rng.uniform(10, 30))
    for v in visits:
        v.alone_wh = alone_wh(v, KINDS[v.kind][0] * 1000)
    visits.sort(key=lambda v: v.arrive)
    return visits


@dataclass
class Trouble:
    curtailments: list[tuple[float, float, float]]  # start, kW, end
    meter_out: list[tuple[float, float]]  # start, end
    charger_out: list[tuple[float, int, float]]  # start, bay, end


def trouble(rng: random.Random, days: int, scenario: Scenario = REALISTIC) -> Trouble:
    curtail, meter, charger = [], [], []
    for day in range(days):
        t0 = day * 86400.0
        weekday = (EPOCH + timedelta(days=day)).weekday()
        window = weekday in scenario.curtail_days
        for start in sorted(rng.uniform(*scenario.curtail_hours) for _ in range(scenario.curtail_per_day if window else 0)):
            at = t0 + start * 3600
            if not curtail or at > curtail[-1][2] + 600:
                curtail.append((at, rng.uniform(*scenario.curtail_kw), at + rng.uniform(*scenario.curtail_min) * 60))
        at = t0 + rng.uniform(6, 22) * 3600
        meter.append((at, at + rng.uniform(30, 120)))
        at = t0 + rng.uniform(6, 22) * 3600
        charger.append((at, rng.randrange(len(BAYS)), at + rng.uniform(20, 90)))
    return Trouble(curtail, meter, charger)


def alone_wh(v: Visit, rated_w: float) -> float:
    """What a truck could take in its stay with its connector to itself."""
    power, soc, wh, t = 0.0, v.soc, 0.0, SESSION_AFTER_S + DRAW_AFTER_S
    while t < v.leave - v.arrive and soc < v.target_soc:
        step = min(1.0, v.leave - v.arrive - t)
        target = min(v.max_w, rated_w) * taper(soc, v.knee)
        power, got = follow(power, target, step, v.ramp)
        got = min(got, (v.target_soc - soc) / 100 * v.battery_wh)
        wh, soc, t = wh + got, soc + got / v.battery_wh * 100, t + step
    return wh


# --------------------------------------------------------------------------
# The baselines' allocations (same signature as allocate()).


def _result(available_w: int, demands, shares: dict[str, int], counted: dict[str, int], now, policy) -> Allocation:
    return Allocation(available_w / 1000, {k: v / 1000 for k, v in shares.items()},
                      {k: v / 1000 for k, v in counted.items()}, True,
                      tiers={d.connector_id: tier_of(d, now, policy) for d in demands if d.state is not State.IDLE})


def first_come(order: dict[str, float]):
    """Trucks in the order their sessions started, each taking up to its cap
    (measured power plus the same buffer) while anything is left."""
    def allocate(limit_kw, margin_kw, other_kw, demands, *, now, policy):
        available = int(available_kw(limit_kw, margin_kw, other_kw) * 1000)
        left, shares, counted = available, {d.connector_id: 0 for d in demands}, {}
        for d in demands:
            if d.state is not State.IDLE and not d.confirmed:
                shares[d.connector_id], counted[d.connector_id] = int(d.min_kw * 1000), int(d.rated_kw * 1000)
                left -= counted[d.connector_id]
        for d in sorted((d for d in demands if d.state is not State.IDLE and d.confirmed),
                        key=lambda d: order.get(d.connector_id, 0.0)):
            low = int(math.ceil(d.min_kw * 1000))
            want = low if d.state is State.STARTING else cap_w(d, low, policy)
            give = min(want, max(0, left))
            shares[d.connector_id] = give if give >= low else 0
            left -= shares[d.connector_id]
        counted.update({k: v for k, v in shares.items() if k not in counted})
        return _result(available, demands, shares, counted, now, policy)
    return allocate


def equal_split(limit_kw, margin_kw, other_kw, demands, *, now, policy):
    """The available power split evenly among charging trucks, capped at rated;
    what a truck does not take is not given to the others."""
    available = int(available_kw(limit_kw, margin_kw, other_kw) * 1000)
    active = [d for d in demands if d.state is not State.IDLE]
    held = sum(int(d.rated_kw * 1000) for d in active if not d.confirmed)
    confirmed = [d for d in active if d.confirmed]
    each = max(0, available - held) // max(1, len(confirmed))
    shares = {d.connector_id: 0 for d in demands}
    counted = {}
    for d in active:
        if not d.confirmed:
            shares[d.connector_id], counted[d.connector_id] = int(d.min_kw * 1000), int(d.rated_kw * 1000)
        else:
            low = int(math.ceil(d.min_kw * 1000))
            give = low if d.state is State.STARTING else min(int(d.rated_kw * 1000), each)
            shares[d.connector_id] = give if give >= low and each >= low else 0
    counted.update({k: v for k, v in shares.items() if k not in counted})
    return _result(available, demands, shares, counted, now, policy)


# --------------------------------------------------------------------------
# The simulated site.


@dataclass
class Bay:
    cid: str
    kind: str
    rated_w: float
    min_kw: float
    limit_w: float  # what the charger holds (rated until told otherwise)
    visit: Visit | None = None
    session: str | None = None
    drawing: bool = False
    power_w: float = 0.0
    deaf_until: float = -1.0


@dataclass
class Outcome:
    excess_s: float = 0.0  # time above the limit beyond 1 s, summed over excursions
    worst_over: float = 0.0  # share of the limit
    told_s: list[float] = field(default_factory=list)
    under_s: list[float] = field(default_factory=list)
    breaks: int = 0
    served: int = 0
    booked_breaks: int = 0
    booked_served: int = 0
    jain: list[float] = field(default_factory=list)
    energy_wh: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    turned_away: int = 0


class Week:
    def __init__(self, visits: list[Visit], trouble_: Trouble, days: int, *, allocation: str = "hub",
                 every_s: float = 1.0, at_once: bool = True, seed: int = SEED):
        self.order: dict[str, float] = {}  # session start per connector (first come, first served)
        self.began: dict[str, float] = {}
        allocate = {"hub": None, "first_come": first_come(self.order), "equal": equal_split}[allocation]
        self.ctl = PowerController(SETTINGS, **({"allocate_fn": allocate} if allocate else {}))
        self.visits = [Visit(**{**v.__dict__}) for v in visits]  # each run charges its own trucks
        self.trouble = trouble_
        self.end = days * 86400.0
        self.every_s, self.at_once = every_s, at_once
        self.rng = random.Random(seed)
        self.base = BaseLoad(peak_kw=300, noise_kw=5, machines=3, machine_kw=40, seed=seed, start=EPOCH)
        self.bays = [Bay(f"{p}{sum(1 for q, _ in BAYS[:i] if q == p) + 1}", k, KINDS[k][0] * 1000, KINDS[k][1],
                         KINDS[k][0] * 1000) for i, (p, k) in enumerate(BAYS)]
        self.by_id = {b.cid: b for b in self.bays}
        self.confirmed: dict[str, float] = {}
        self.base_w = 0.0
        self.reading: tuple[float, float] | None = None  # kW, when read
        self.meter_dead = False
        self.limit_kw = SETTINGS.grid_limit_kw  # the grid operator's, for the figures
        self.grace: tuple[float, float] | None = None  # until, the limit before it was lowered
        self.t = 0.0
        self.events: list = []
        self.seq = 0
        self.out = Outcome()
        self.above_since: float | None = None
        self.watch: dict | None = None  # the curtailment being timed
        self.session_n = 0

    # ---- events

    def at(self, t: float, what: str, *args) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, what, args))

    def run(self) -> Outcome:
        for v in self.visits:
            self.at(v.arrive, "arrive", v)
        for start, kw, end in self.trouble.curtailments:
            self.at(start, "curtail", kw, end)
            self.at(end, "curtail_end", kw)
        for start, end in self.trouble.meter_out:
            self.at(start, "meter", True)
            self.at(end, "meter", False)
        for start, bay, end in self.trouble.charger_out:
            self.at(start, "deaf", bay, end)
        self.at(0.0, "second")
        while self.events:
            t, _, what, args = heapq.heappop(self.events)
            if t > self.end:
                break
            self.advance(t)
            getattr(self, "on_" + what)(*args)
        self.advance(self.end)
        self.out.seconds = self.end
        self.out.energy_wh = sum(v.energy_wh for v in self.visits)
        return self.out

    def on_second(self) -> None:
        s = self.t
        self.base_w = self.base.kw(EPOCH + timedelta(seconds=s)) * 1000
        if not self.meter_dead:
            self.reading = (self.draw_w() / 1000, s)
        if int(s) % 10 == 0:
            self.sample_fairness()
        if int(s) % int(self.every_s) == 0:
            self.step()
        self.at(s + 1.0, "second")

    def on_arrive(self, v: Visit) -> None:
        free = next((b for b in self.bays if b.visit is None and b.kind == v.kind), None)
        if free is None:
            self.out.turned_away += 1
            return
        free.visit = v
        self.at(v.arrive + SESSION_AFTER_S, "session", free, v)
        self.at(v.leave, "leave", free, v)

    def on_session(self, bay: Bay, v: Visit) -> None:
        if bay.visit is not v:
            return
        self.session_n += 1
        bay.session = f"s{self.session_n}"
        self.order[bay.cid] = self.began[bay.cid] = self.t
        self.at(self.t + DRAW_AFTER_S, "draw", bay, v)
        if self.at_once:
            self.step()

    def on_draw(self, bay: Bay, v: Visit) -> None:
        if bay.visit is v and bay.session:
            bay.drawing = True

    def on_leave(self, bay: Bay, v: Visit) -> None:
        if v.on_break:
            served = v.energy_wh >= SERVED * v.alone_wh
            self.out.breaks += 1
            self.out.served += served
            self.out.booked_breaks += v.booked
            self.out.booked_served += v.booked and served
        bay.visit, bay.session, bay.drawing, bay.power_w = None, None, False, 0.0
        self.order.pop(bay.cid, None)
        if self.at_once:
            self.step()

    def on_curtail(self, kw: float, end: float) -> None:
        self.grace = (self.t + GRACE_S, self.limit_kw)
        self.at(self.t + GRACE_S, "grace_over")
        self.limit_kw = kw
        self.ctl.set_limit(kw, EPOCH + timedelta(seconds=end), self.now())
        draw_kw = self.draw_w() / 1000
        self.watch = {"start": self.t, "kw": kw, "need": None, "told": {}, "under": 0.0 if draw_kw <= kw else None}
        if self.at_once:
            self.step()

    def on_curtail_end(self, kw: float) -> None:
        self.close_watch()
        self.limit_kw = SETTINGS.grid_limit_kw

    def on_grace_over(self) -> None:
        self.grace = None

    def on_meter(self, dead: bool) -> None:
        self.meter_dead = dead

    def on_deaf(self, index: int, end: float) -> None:
        self.bays[index].deaf_until = end

    def on_deliver(self, cid: str, kw: float, lowering: bool) -> None:
        bay = self.by_id[cid]
        if self.t < bay.deaf_until:
            return  # the write is lost; the controller finds out by the missing confirmation
        bay.limit_w = kw * 1000
        self.confirmed[cid] = kw
        w = self.watch
        if w and lowering and w["need"] is not None and cid in w["need"] and cid not in w["told"]:
            w["told"][cid] = self.t - w["start"]

    # ---- the hub's side

    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)

    def step(self) -> None:
        self.out.steps += 1
        meter = None
        if self.reading is not None:
            meter = MeterSample(self.reading[0], self.t - self.reading[1] + READ_S)
        inputs = []
        for b in self.bays:
            v = b.visit
            session = b.session if v is not None and not v.finished else None
            in_slot = v is not None and v.booked and v.slot_end is not None and self.t < v.slot_end
            inputs.append(ConnectorInput(
                b.cid, session, Priority.BOOKED if in_slot else Priority.AD_HOC,
                EPOCH + timedelta(seconds=v.slot_end) if in_slot else None,
                b.min_kw, b.rated_w / 1000, b.power_w / 1000))
        result = self.ctl.step(self.now(), meter, inputs, self.confirmed)
        w = self.watch
        if w and w["need"] is None:
            # Chargers with a session whose limit in force is above their new share.
            w["need"] = {c for c in result.allocation.tiers
                         if self.by_id[c].limit_w / 1000 > result.allocation.shares_kw[c] + 1.0}
        sent = self.t + READ_S
        last = sent
        for cmd in result.commands:  # lowered ones first, each charger on its own connection
            if cmd.lowering:
                arrive = sent + self.rng.uniform(0.02, 0.08)
                last = max(last, arrive)
            else:
                arrive = last + self.rng.uniform(0.02, 0.08)
            self.at(arrive, "deliver", cmd.connector_id, cmd.kw, cmd.lowering)

    # ---- physics and what it shows

    def draw_w(self) -> float:
        return self.base_w + sum(b.power_w for b in self.bays)

    def advance(self, t1: float) -> None:
        dt = t1 - self.t
        if dt <= 0:
            return
        start_w = self.draw_w()
        turns: list[tuple[float, float]] = []  # (when a ramp ends, its slope in W/s), for the path of the draw
        slope = 0.0
        for b in self.bays:
            v = b.visit
            if v is None or not b.drawing or v.finished:
                continue
            target = min(b.limit_w, b.rated_w, v.max_w * taper(v.soc, v.knee))
            p0 = b.power_w
            power, wh = follow(p0, target, dt, v.ramp)
            if p0 != target:
                rate = v.ramp.up_w_per_s if target > p0 else -v.ramp.down_w_per_s
                slope += rate
                reach = abs(target - p0) / abs(rate)
                if reach < dt:
                    turns.append((reach, rate))
            room = max(0.0, v.target_soc - v.soc) / 100 * v.battery_wh
            wh = min(wh, room)
            v.energy_wh += wh
            v.soc = min(v.target_soc, v.soc + wh / v.battery_wh * 100)
            b.power_w = power
            if v.soc >= v.target_soc - 1e-9:
                v.finished, b.power_w, b.drawing = True, 0.0, False
        # The draw went up or down in straight pieces between ramp ends.
        t, w = self.t, start_w
        for reach, rate in sorted(turns):
            w_next = w + slope * (self.t + reach - t)
            self.track(t, w, self.t + reach, w_next)
            t, w, slope = self.t + reach, w_next, slope - rate
        self.track(t, w, t1, w + slope * (t1 - t))
        self.t = t1

    def track(self, ta: float, wa: float, tb: float, wb: float) -> None:
        limit_kw = max(self.limit_kw, self.grace[1]) if self.grace else self.limit_kw
        limit = limit_kw * 1000
        self.out.worst_over = max(self.out.worst_over, (max(wa, wb) - limit) / limit)
        if wa > limit or wb > limit:
            cross = ta if wa > limit else ta + (limit - wa) / (wb - wa) * (tb - ta)
            if self.above_since is None:
                self.above_since = cross
            if wb <= limit:
                self.end_excursion(ta + (wa - limit) / (wa - wb) * (tb - ta))
        elif self.above_since is not None:
            self.end_excursion(ta)
        w = self.watch
        if w and w["under"] is None:
            new = w["kw"] * 1000
            if min(wa, wb) <= new:
                at = ta if wa <= new else ta + (wa - new) / (wa - wb) * (tb - ta)
                w["under"] = at - w["start"]

    def end_excursion(self, at: float) -> None:
        self.out.excess_s += max(0.0, at - self.above_since - 1.0)
        self.above_since = None

    def close_watch(self) -> None:
        w, self.watch = self.watch, None
        if not w:
            return
        span = self.t - w["start"]
        for cid in w["need"] or ():
            self.out.told_s.append(w["told"].get(cid, span))
        self.out.under_s.append(w["under"] if w["under"] is not None else span)

    def sample_fairness(self) -> None:
        """Jain's index within each group of trucks the hub ranks equal (same
        class and departure slot, an unbooked truck taken to leave 45 minutes
        after its session began, as the controller does)."""
        tiers: dict[tuple, list[tuple[float, float]]] = {}
        now = self.now()
        for b in self.bays:
            v = b.visit
            if v is None or not b.drawing or v.finished:
                continue
            in_slot = v.booked and v.slot_end is not None and self.t < v.slot_end
            leaves = v.slot_end if in_slot else self.began[b.cid] + SETTINGS.unbooked_stay_s
            d = ConnectorDemand(b.cid, State.CHARGING, Priority.BOOKED if in_slot else Priority.AD_HOC,
                                EPOCH + timedelta(seconds=leaves))
            demand = min(b.rated_w, v.max_w * taper(v.soc, v.knee))
            tiers.setdefault(tier_of(d, now, SETTINGS.policy), []).append((b.power_w, demand))
        for members in tiers.values():
            if len(members) >= 2:
                self.out.jain.append(jain(members))


def max_min_fair(total: float, demands: list[float]) -> list[float]:
    share, left, open_ = [0.0] * len(demands), total, sorted(range(len(demands)), key=lambda i: demands[i])
    while open_:
        each = left / len(open_)
        i = open_[0]
        if demands[i] <= each:
            share[i], left = demands[i], left - demands[i]
            open_.pop(0)
        else:
            for j in open_:
                share[j] = each
            break
    return share


def jain(members: list[tuple[float, float]]) -> float:
    """Jain's index of each truck's power over its max-min fair share of what
    its tier drew (Jain, Chiu and Hawe's normalised form)."""
    fair = max_min_fair(sum(p for p, _ in members), [d for _, d in members])
    x = [p / f if f > 0 else 1.0 for (p, _), f in zip(members, fair)]
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x)) if any(x) else 1.0


# --------------------------------------------------------------------------
# The loop's own cost.


def step_cost(allocation: str, steps: int) -> float:
    """Mean CPU seconds of one control step with 40 connectors, all charging."""
    rng = random.Random(SEED)
    settings = PowerSettings(grid_limit_kw=8000, margin_kw=100, fallback_kw=6000)
    ctl = PowerController(settings, **({"allocate_fn": equal_split} if allocation == "equal" else {}))
    inputs = [ConnectorInput(f"K{i:02d}", f"s{i}", Priority(i % 2),
                             EPOCH + timedelta(minutes=rng.choice([40, 600])) if i % 3 else None,
                             100.0 if i < 10 else 40.0, 1200.0 if i < 10 else 400.0, 0.0) for i in range(40)]
    confirmed: dict[str, float] = {}
    power = {c.connector_id: 0.0 for c in inputs}
    spent = 0.0
    for k in range(steps):
        now = EPOCH + timedelta(seconds=k)
        current = [ConnectorInput(c.connector_id, c.session_id, c.priority, c.departure, c.min_kw, c.rated_kw,
                                  power[c.connector_id]) for c in inputs]
        meter = MeterSample(sum(power.values()) + 300 + rng.gauss(0, 5), 0.05)
        t0 = time.process_time()
        result = ctl.step(now, meter, current, confirmed)
        spent += time.process_time() - t0
        for cmd in result.commands:
            confirmed[cmd.connector_id] = cmd.kw
        for cid, kw in confirmed.items():  # trucks take their limit, some less
            power[cid] = min(kw, 350.0 + 20 * (int(cid[1:]) % 17))
    return spent / steps


# --------------------------------------------------------------------------


def one_run(scenario: Scenario, days: int, name: str) -> Outcome:
    """One week under one allocation; the arrivals and troubles come from the seed, so every run sees the same."""
    rng = random.Random(SEED)
    visits = traffic(rng, days, scenario)
    trouble_ = trouble(rng, days, scenario)
    kwargs = {"hub": {}, "every_30s": {"every_s": 30.0, "at_once": False},
              "first_come": {"allocation": "first_come"}, "equal": {"allocation": "equal"}}[name]
    return Week(visits, trouble_, days, **kwargs).run()


RUNS = ("hub", "every_30s", "first_come", "equal")


def weeks(scenarios: list[Scenario], days: int) -> list[dict[str, Outcome]]:
    """Every scenario under the hub's controller and the baselines, the runs
    side by side in processes of their own (each is deterministic)."""
    jobs = [(sc, days, name) for sc in scenarios for name in RUNS]
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(one_run, *zip(*jobs)))
    return [dict(zip(RUNS, outcomes[i * len(RUNS):(i + 1) * len(RUNS)])) for i in range(len(scenarios))]


def _p99(values):
    return percentile(values, 99) if values else 0.0


def _mean(values):
    return sum(values) / len(values) if values else 1.0


def _served(o: Outcome) -> float:
    return 100 * o.served / max(1, o.breaks)


def _booked_served(o: Outcome) -> float:
    return 100 * o.booked_served / max(1, o.booked_breaks)


FCFS = "first come, first served"
EQUAL = "equal split (nothing redistributed)"
EVERY30 = "same week, stepped every 30 s (evcc's default interval)"


def limit_figures(tag: str, hub: Outcome, slow: Outcome, command: str) -> list[Result]:
    """R-E1/R-E2: the limit held and curtailments met, against stepping every 30 s."""
    return [
        Result(f"{tag}time above the limit beyond one 1 s control cycle", hub.excess_s, "s", EVERY30, slow.excess_s,
               goal=0.0, command=command),
        Result(f"{tag}worst overshoot of the limit", 100 * max(0.0, hub.worst_over), "% of limit", EVERY30,
               100 * max(0.0, slow.worst_over), goal=2.0, command=command),
        Result(f"{tag}limit lowered -> every charger told, p99 ({len(hub.told_s)} chargers, "
               f"{len(hub.under_s)} curtailments)", _p99(hub.told_s), "s", EVERY30, _p99(slow.told_s), goal=1.0,
               command=command),
        Result(f"{tag}limit lowered -> site back under, worst of {len(hub.under_s)}", max(hub.under_s, default=0.0),
               "s", EVERY30, max(slow.under_s, default=0.0), goal=5.0, command=command),
    ]


def share_figures(tag: str, out: dict[str, Outcome], command: str, *, goals: bool) -> list[Result]:
    """R-E3: breaks served, fairness and energy, each against first come first served and an equal split."""
    hub = out["hub"]
    rows = []
    for label, base in ((FCFS, out["first_come"]), (EQUAL, out["equal"])):
        rows += [
            Result(f"{tag}break trucks that got >= 95 % of what they could take alone ({hub.breaks} breaks)",
                   _served(hub), "%", label, _served(base), goal=99.0 if goals else None, lower_is_better=False,
                   command=command),
            Result(f"{tag}booked break trucks ({hub.booked_breaks}) that got >= 95 % of it", _booked_served(hub), "%",
                   label, _booked_served(base), lower_is_better=False, command=command),
            Result(f"{tag}Jain's fairness index among equal-priority trucks", _mean(hub.jain), "", label,
                   _mean(base.jain), goal=0.95 if goals else None, lower_is_better=False, command=command),
            Result(f"{tag}energy delivered", hub.energy_wh / 1e6, "MWh", label, base.energy_wh / 1e6,
                   lower_is_better=False, command=command),
        ]
    return rows


def run(quick: bool) -> list[Result]:
    days = 1 if quick else 7
    command = COMMAND + (" --quick" if quick else "")
    main, stress = weeks([REALISTIC, OVERLOADED], days)

    steps = 300 if quick else 2000
    cost_hub, cost_equal = step_cost("hub", steps), step_cost("equal", steps)
    rate = main["hub"].steps / main["hub"].seconds  # steps per second over the week, the at-once ones included
    span = "Monday" if quick else "week"
    tag = f"[{OVERLOADED.name.replace('week', span)}: {OVERLOADED.breaks[0]} breaks a weekday, curtailed twice a day] "
    return [
        *limit_figures("", main["hub"], main["every_30s"], command),
        *share_figures("", main, command, goals=True),
        Result(f"control loop cost, 40 connectors, {rate:.2f} steps/s", 100 * cost_hub * rate, "% of a core",
               "equal split through the same controller", 100 * cost_equal * rate, goal=2.0, command=command),
        *limit_figures(tag, stress["hub"], stress["every_30s"], command),
        *share_figures(tag, stress, command, goals=False),
    ]
