"""Sharing the grid connection among the charging trucks (R-E1, R-E3, R-E4).

One pure function, ``allocate``: from the site limit, its margin, the site's
other load and what each connector is doing, a share in kW per connector. No
I/O, no clock of its own (``now`` comes in), nothing of the hub: the control
loop calls it every second and the bench calls it a million times.

The rules, in the order they apply:

1. A charger whose last limit was not confirmed may be drawing anything up to
   its rated power, so it is counted at rated power (R-E4); it keeps being
   sent its minimum until it answers.
2. Every charging truck gets its minimum. When not even the minimums fit,
   trucks are taken in priority order and the first one that does not fit
   waits at 0 kW, together with every truck after it. Stopping at the first
   misfit (rather than skipping to a smaller minimum further down) keeps the
   shares monotonic in the limit: more power never takes a share away. What
   is left below the next minimum stays unused until power frees up.
3. What is left goes by priority tier (R-E3): booked trucks inside their slot
   before ad-hoc trucks; within each, the truck due to leave sooner before a
   later one (earliest departure first: a 45-minute break before an overnight
   stay, and a break ending at 12:15 before one ending at 12:40), a departure
   nobody told us last. Departures in the same ``departure_slot_s`` (a
   quarter of an hour) are equal. A departure passed less than
   ``overdue_grace_s`` (a quarter of an hour) ago still counts: that truck is
   about to leave and comes first, rather than dropping to its minimum in its
   last minutes; past the grace it is an overstay, its departure unknown.
   A later tier gets more than its minimums only when every truck of the
   earlier tiers is at its cap.
4. Inside a tier the power is split evenly (water-filling, max-min fair), each
   truck capped at its measured power plus a buffer and never above rated:
   power a truck does not take goes to the others. A truck that is taking its
   whole share is not capped below it, since the cap grows with what it draws.
5. A new session (``STARTING``) is held at its minimum until that limit is
   confirmed; its real share follows in a later cycle (R-E2).

Shares are computed in whole watts, so the sum never passes what is available
through rounding, and the watts that do not split evenly go to the trucks due
to leave soonest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, IntEnum
from typing import Iterable, Mapping, Sequence


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class State(str, Enum):
    IDLE = "idle"  # no session: draws nothing, gets nothing
    STARTING = "starting"  # a new session whose first limit is not confirmed yet: held at its minimum
    CHARGING = "charging"  # a session runs (drawing, or paused by the truck or by a 0 kW share)


class Priority(IntEnum):
    BOOKED = 0  # a booked truck inside its slot
    AD_HOC = 1


@dataclass(frozen=True)
class SharePolicy:
    # A truck is capped at its measured power plus the larger of these two: room
    # to grow by each second, and power held back from the others while it tapers.
    buffer_kw: float = 25.0
    buffer_fraction: float = 0.05
    departure_slot_s: float = 900.0  # departures in the same slot of this length are equal
    # A departure passed less than this long ago still counts (the truck is due
    # and about to leave); after that the truck is an overstay, its departure unknown.
    overdue_grace_s: float = 900.0

    def __post_init__(self):
        for name in ("buffer_kw", "buffer_fraction", "departure_slot_s", "overdue_grace_s"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise ValueError(f"share policy {name} must be a number 0 or more, got {value!r}")
        if self.departure_slot_s <= 0:
            raise ValueError("share policy departure_slot_s must be a positive number of seconds")


@dataclass(frozen=True)
class ConnectorDemand:
    connector_id: str
    state: State
    priority: Priority = Priority.AD_HOC
    departure: datetime | None = None  # the booking's slot end, when known
    min_kw: float = 0.0
    rated_kw: float = 0.0
    measured_kw: float = 0.0
    confirmed: bool = True  # the charger confirmed the last limit it was sent

    def __post_init__(self):
        try:  # the common case, checked fast: the control loop builds these every second
            if (math.isfinite(self.min_kw + self.rated_kw + self.measured_kw) and 0 <= self.min_kw <= self.rated_kw
                    and (self.departure is None or self.departure.tzinfo is not None)
                    and not isinstance(self.min_kw, bool)):
                return
        except TypeError:
            pass
        where = f"connector {self.connector_id!r}"
        for name in ("min_kw", "rated_kw", "measured_kw"):
            if not _finite(getattr(self, name)):
                raise ValueError(f"{where}: {name} is {getattr(self, name)!r}; give a finite number of kW")
        if self.min_kw < 0 or self.rated_kw < 0:
            raise ValueError(f"{where}: minimum and rated power must be 0 kW or more")
        if self.min_kw > self.rated_kw:
            raise ValueError(
                f"{where}: minimum {self.min_kw} kW is above its rated {self.rated_kw} kW; fix the charger's config"
            )
        if self.departure is not None and self.departure.tzinfo is None:
            raise ValueError(f"{where}: departure has no timezone; give it in UTC")


DEFAULT_POLICY = SharePolicy()


@dataclass(frozen=True)
class Allocation:
    available_kw: float  # for charging: limit - margin - other load (0 at least)
    shares_kw: Mapping[str, float]  # the limit to send, every connector given (idle ones 0)
    counted_kw: Mapping[str, float]  # what each connector is counted at (rated when unconfirmed)
    feasible: bool  # every charging truck has at least its minimum
    waiting: tuple[str, ...] = ()  # charging trucks held at 0 kW because the minimums do not fit
    reason: str | None = None  # for a person, when not feasible
    tiers: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # connector -> tier (lowest first), active ones

    @property
    def total_kw(self) -> float:
        return sum(self.counted_kw.values())


def available_kw(limit_kw: float, margin_kw: float, other_load_kw: float) -> float:
    """What the chargers together may draw. Other load below zero (a meter
    read just before a charger ramped down, or a feed-in) gives nothing extra."""
    for name, value in (("limit", limit_kw), ("margin", margin_kw), ("other load", other_load_kw)):
        if not _finite(value):
            raise ValueError(f"site {name} is {value!r}; give a finite number of kW")
    return max(0.0, limit_kw - margin_kw - max(0.0, other_load_kw))


UNKNOWN_DEPARTURE = 2**62  # after every departure slot


def leaves_at(c: ConnectorDemand, now: datetime, policy: SharePolicy) -> float:
    """When the truck is taken to leave, in seconds since the epoch: its
    departure, also one passed less than ``overdue_grace_s`` ago (the truck is
    due and about to leave: it comes before every later one); infinite for a
    departure nobody told us and for an overstay past the grace."""
    if c.departure is None or (now - c.departure).total_seconds() >= policy.overdue_grace_s:
        return math.inf
    return c.departure.timestamp()


def tier_of(c: ConnectorDemand, now: datetime, policy: SharePolicy) -> tuple[int, int]:
    """(priority class, departure slot): lower is served first. A departure
    nobody told us, or an overstay, comes last in its class; a truck just past
    its departure keeps that departure's slot, before every later one."""
    leaves = leaves_at(c, now, policy)
    if leaves == math.inf:
        return (int(c.priority), UNKNOWN_DEPARTURE)
    return (int(c.priority), math.floor(leaves / policy.departure_slot_s))


def priority_key(c: ConnectorDemand, now: datetime, policy: SharePolicy) -> tuple:
    """The order in which trucks are served: tier, then sooner departure, then
    connector id so that equal trucks are ordered the same way every time."""
    return (tier_of(c, now, policy), leaves_at(c, now, policy), c.connector_id)


def allocate(
    limit_kw: float,
    margin_kw: float,
    other_load_kw: float,
    connectors: Sequence[ConnectorDemand],
    *,
    now: datetime,
    policy: SharePolicy | None = None,
) -> Allocation:
    """A share per connector; see the module text for the rules."""
    policy = policy or DEFAULT_POLICY
    if now.tzinfo is None:
        raise ValueError("now has no timezone; give it in UTC")
    ids = [c.connector_id for c in connectors]
    if len(set(ids)) != len(ids):
        raise ValueError(f"connector ids must be unique, got {sorted(ids)}")
    available_w = _watts(available_kw(limit_kw, margin_kw, other_load_kw))
    shares: dict[str, int] = {c.connector_id: 0 for c in connectors}
    counted: dict[str, int] = {c.connector_id: 0 for c in connectors}
    active = [c for c in connectors if c.state is not State.IDLE]

    unconfirmed = [c for c in active if not c.confirmed]
    for c in unconfirmed:
        shares[c.connector_id] = _watts_up(c.min_kw)
        counted[c.connector_id] = _watts(c.rated_kw)
    budget = available_w - sum(counted.values())

    keys = {c.connector_id: priority_key(c, now, policy) for c in active}
    ordered = sorted((c for c in active if c.confirmed), key=lambda c: keys[c.connector_id])
    waiting: list[ConnectorDemand] = []
    for n, c in enumerate(ordered):
        need = _watts_up(c.min_kw)
        if need > budget:
            waiting = ordered[n:]
            break
        shares[c.connector_id] = need
        budget -= need
    feasible = not waiting and sum(counted.values()) <= available_w

    if feasible:
        tiers: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
        for c in ordered:
            low = shares[c.connector_id]
            tiers.setdefault(keys[c.connector_id][0], []).append((c.connector_id, low, cap_w(c, low, policy)))
        for tier in sorted(tiers):
            members = tiers[tier]
            room = sum(cap - low for _, low, cap in members)
            extra = min(budget, room)
            if extra <= 0:
                continue
            shares.update(_fill(sum(low for _, low, _cap in members) + extra, members))
            budget -= extra
    for c in ordered:
        counted[c.connector_id] = shares[c.connector_id]

    reason = None
    if not feasible:
        reason = _shortage_text(available_w, unconfirmed, ordered, waiting)
    return Allocation(
        available_kw=available_w / 1000,
        shares_kw={cid: w / 1000 for cid, w in shares.items()},
        counted_kw={cid: w / 1000 for cid, w in counted.items()},
        feasible=feasible,
        waiting=tuple(c.connector_id for c in waiting),
        reason=reason,
        tiers={cid: key[0] for cid, key in keys.items()},
    )


# --------------------------------------------------------------------------


def _watts(kw: float) -> int:
    """Whole watts, rounded down: what may be drawn never grows by rounding."""
    return max(0, math.floor(kw * 1000 + 1e-6))


def _watts_up(kw: float) -> int:
    """Whole watts, rounded up: a minimum is never cut by rounding."""
    return max(0, math.ceil(kw * 1000 - 1e-6))


def cap_w(c: ConnectorDemand, low: int, policy: SharePolicy) -> int:
    """The most a truck is given: measured power plus a buffer, never above
    rated; a new session stays at its minimum until that is confirmed."""
    if c.state is State.STARTING:
        return low
    buffer = max(policy.buffer_kw, policy.buffer_fraction * max(0.0, c.measured_kw))
    return max(low, min(_watts(c.rated_kw), _watts(max(0.0, c.measured_kw) + buffer)))


def _fill(total: int, members: list[tuple[str, int, int]]) -> dict[str, int]:
    """Water-filling in whole watts: the level L with sum(clamp(L, low, cap))
    = total (the highest such), found by walking the breakpoints of that
    piecewise-linear sum; the watts left over (fewer than the members still
    below their caps) go one each in the members' order."""
    steps: dict[int, int] = {}  # level -> change of slope there
    for _, low, cap in members:
        if low < cap:
            steps[low] = steps.get(low, 0) + 1
            steps[cap] = steps.get(cap, 0) - 1
    level, filled, slope = 0, sum(low for _, low, _ in members), 0
    for point in sorted(steps):
        # Below the first point no member moves: the sum is its minimums.
        reach = filled + slope * (point - level)
        if slope and reach >= total:
            break
        level, filled, slope = point, reach, slope + steps[point]
    if slope:
        level += (total - filled) // slope
    out = {cid: min(max(level, low), cap) for cid, low, cap in members}
    left = total - sum(out.values())
    for cid, low, cap in members:
        if left <= 0:
            break
        if low <= level < cap:
            out[cid] += 1
            left -= 1
    return out


def _shortage_text(available_w: int, unconfirmed: Iterable[ConnectorDemand], ordered, waiting) -> str:
    held = sum(_watts(c.rated_kw) for c in unconfirmed)
    need = held + sum(_watts_up(c.min_kw) for c in ordered)
    parts = [f"not every charging truck can have its minimum: {available_w / 1000:.1f} kW available for charging, "
             f"{need / 1000:.1f} kW needed"]
    if held:
        parts.append(f" ({held / 1000:.1f} kW of it held for chargers that have not confirmed their limit)")
    if waiting:
        parts.append(f"; {', '.join(c.connector_id for c in waiting)} wait at 0 kW, lowest priority first")
    parts.append("; they get their share as soon as power frees up (a truck leaves, other load falls or the limit rises)")
    return "".join(parts)
