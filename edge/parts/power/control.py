"""The site power control loop's decisions, without I/O (R-E1, R-E2, R-E4, R-E5, R-E6).

``PowerController.step`` is called every second and at once on a plug, an
unplug, a limit change or a meter jump (``meter_jumped``). It is given the
time, the latest grid meter reading and its age, each connector's session and
measured power, and the limit each charger last confirmed; it returns the
limit commands to send, in order, the events to raise and the view for the
retained power state. The part that wraps it owns the sockets and the clock;
nothing in here waits, sleeps or talks to a device.

What it keeps between steps: the limit it last sent each connector and when,
the session each connector had, the mode (normal or fallback) and a
curtailment with its end.

How a step decides:

- Budget. Normal mode: limit - margin - other load, the other load being the
  meter's reading minus what the chargers measure (the meter sees them all).
  A meter that has not been read for ``stale_after_s``, or whose values have
  not moved for ``frozen_after_s``, is not believed: fallback mode, where all
  chargers together get the configured ``fallback_kw`` (R-E4).
- Counting. A charger may be drawing up to the limit it has in force: the one
  it confirmed, or one sent but not confirmed yet if that is higher. A charger
  that has not confirmed within ``confirm_within_s``, or whose limit nobody
  knows, is counted at its rated power and sent its limit again (R-E4).
- Order (R-E2). A new session is sent its minimum first and gets its real
  share only once that is confirmed. Lowered limits go out first and at once.
  A raise is sent only as far as it fits while every other charger is counted
  at the higher of its limit in force and its measured power, so a raise never
  overtakes a lowering that has not yet taken effect: the rest follows in a
  later step. Raises smaller than ``raise_step_kw`` are not worth a command.
- Departures (R-E3). A truck without a booking has no known departure; it is
  taken to be on a driver's 45-minute break (``unbooked_stay_s`` after its
  session began), so the earliest-departure-first rule also serves unbooked
  trucks in the order they will leave. Just past that time it is due to leave
  and still served first; once the policy's ``overdue_grace_s`` is over too it
  counts as unknown (served last in its class), as an overnight stay without
  a booking should.
- Curtailment (R-E5): ``set_limit(kw, until)`` lowers the site limit, and the
  configured limit comes back by itself at ``until``. Every change of limit
  or mode is an event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping, Sequence

from edge.parts.power.allocation import (
    DEFAULT_POLICY,
    Allocation,
    ConnectorDemand,
    Priority,
    SharePolicy,
    State,
    allocate,
    priority_key,
)

VIEW_VERSION = 1
NORMAL = "normal"
FALLBACK = "fallback"

Allocate = Callable[..., Allocation]  # allocate()'s signature; the bench swaps in its baselines


@dataclass(frozen=True)
class PowerSettings:
    grid_limit_kw: float  # the connection's limit
    margin_kw: float  # kept free below it
    fallback_kw: float  # what all chargers together may draw while the meter is not believed
    stale_after_s: float = 3.0  # a meter reading older than this is stale
    frozen_after_s: float | None = 30.0  # values that have not moved for this long are stale too
    confirm_within_s: float = 2.0  # a limit not confirmed by then counts its charger at rated power
    confirm_tolerance_kw: float = 1.0  # a confirmed limit this close to the one sent is that one
    raise_step_kw: float = 5.0  # smallest raise worth a command
    jump_kw: float = 50.0  # a meter change this large calls for a step at once
    unbooked_stay_s: float | None = 2700.0  # an unbooked truck is taken to leave this long after its session began
    policy: SharePolicy = DEFAULT_POLICY

    def __post_init__(self):
        problems = []
        for name in ("grid_limit_kw", "margin_kw", "fallback_kw", "stale_after_s", "confirm_within_s",
                     "confirm_tolerance_kw", "raise_step_kw", "jump_kw"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                problems.append(f"{name} must be a number 0 or more, got {value!r}")
        for name in ("frozen_after_s", "unbooked_stay_s"):
            value = getattr(self, name)
            if value is not None and (not _finite(value) or value <= 0):
                problems.append(f"{name} must be a positive number of seconds or unset, got {value!r}")
        if not problems and self.margin_kw >= self.grid_limit_kw:
            problems.append(f"margin_kw {self.margin_kw} leaves nothing of grid_limit_kw {self.grid_limit_kw}")
        if not problems and self.fallback_kw > self.grid_limit_kw - self.margin_kw:
            problems.append(
                f"fallback_kw {self.fallback_kw} is above grid_limit_kw - margin_kw "
                f"({self.grid_limit_kw - self.margin_kw}); it must be safe with the meter silent"
            )
        if problems:
            raise ValueError("[power] settings: " + "; ".join(problems))


@dataclass(frozen=True)
class MeterSample:
    kw: float  # total real power at the connection, positive when drawn from the grid
    age_s: float  # how old the reading is
    unchanged_s: float = 0.0  # how long its values have not moved


@dataclass(frozen=True)
class ConnectorInput:
    connector_id: str
    session_id: str | None  # the session running on it, None when no truck charges
    priority: Priority = Priority.AD_HOC
    departure: datetime | None = None
    min_kw: float = 0.0
    rated_kw: float = 0.0
    measured_kw: float = 0.0


@dataclass(frozen=True)
class LimitCommand:
    connector_id: str
    kw: float
    lowering: bool
    reason: str  # new_session | lower | raise | retry


@dataclass(frozen=True)
class PowerEvent:
    kind: str  # power.limited | power.fallback | power.restored
    data: dict


@dataclass(frozen=True)
class StepResult:
    commands: list[LimitCommand]
    events: list[PowerEvent]
    view: dict  # the retained hub/{id}/state/power
    view_changed: bool  # anything but ts differs from the last view
    allocation: Allocation
    mode: str


@dataclass
class _Track:
    session_id: str | None = None
    began: datetime | None = None  # when this session was first seen
    sent_kw: float | None = None
    sent_at: datetime | None = None
    started: bool = False  # this session's first limit was confirmed
    lost: bool = False  # a limit went unconfirmed past the window; counted at rated until one is confirmed


@dataclass
class _Curtailment:
    kw: float
    until: datetime | None


class PowerController:
    def __init__(self, settings: PowerSettings, *, allocate_fn: Allocate = allocate):
        self.settings = settings
        self._allocate = allocate_fn
        self._tracks: dict[str, _Track] = {}
        self._mode = NORMAL
        self._curtailment: _Curtailment | None = None
        self._last_view: dict | None = None

    # ---- the site limit (R-E5)

    @property
    def limit_kw(self) -> float:
        return self._curtailment.kw if self._curtailment else self.settings.grid_limit_kw

    @property
    def mode(self) -> str:
        return self._mode

    def set_limit(self, kw: float, until: datetime | None, now: datetime) -> list[PowerEvent]:
        """Lower the site limit until ``until`` (None: until restored). Bad
        input raises ValueError with a sentence and changes nothing."""
        _aware(now, "now")
        if not _finite(kw) or kw < 0:
            raise ValueError(f"limit {kw!r} kW is not a number of kW 0 or more")
        if kw > self.settings.grid_limit_kw:
            raise ValueError(
                f"limit {kw:g} kW is above the connection's {self.settings.grid_limit_kw:g} kW; "
                "a curtailment can only lower it (send the connection's limit or restore to end one)"
            )
        if until is not None:
            _aware(until, "until")
            if until <= now:
                raise ValueError(f"until {_rfc3339(until)} is already past; give a time after {_rfc3339(now)}")
        previous = self.limit_kw
        self._curtailment = _Curtailment(float(kw), until)
        data = {"grid_limit_kw": round(float(kw), 3), "previous_kw": round(previous, 3),
                "until": _rfc3339(until) if until else None, "reason": "curtailment",
                "message": f"site limit {_fmt(previous)} -> {_fmt(kw)} kW by the grid operator"
                           + (f" until {_rfc3339(until)}; it comes back by itself" if until else " until restored")}
        return [PowerEvent("power.limited", data)]

    def restore_limit(self, now: datetime, reason: str = "restored") -> list[PowerEvent]:
        """End a curtailment now; nothing happens when there is none."""
        _aware(now, "now")
        if self._curtailment is None:
            return []
        previous = self._curtailment.kw
        self._curtailment = None
        limit = self.settings.grid_limit_kw
        return [PowerEvent("power.restored", {
            "grid_limit_kw": round(limit, 3), "previous_kw": round(previous, 3), "reason": reason,
            "message": f"site limit back to the connection's {_fmt(limit)} kW ({reason.replace('_', ' ')})"})]

    def meter_jumped(self, previous_kw: float | None, kw: float) -> bool:
        """True when the meter moved enough to step at once rather than at the next second."""
        return previous_kw is None or abs(kw - previous_kw) >= self.settings.jump_kw

    # ---- one step

    def step(
        self,
        now: datetime,
        meter: MeterSample | None,
        connectors: Sequence[ConnectorInput],
        confirmed: Mapping[str, float | None],
    ) -> StepResult:
        _aware(now, "now")
        s = self.settings
        events: list[PowerEvent] = []
        if self._curtailment and self._curtailment.until and now >= self._curtailment.until:
            events += self.restore_limit(now, "curtailment_ended")
        events += self._update_mode(meter)

        ids = {c.connector_id for c in connectors}
        for gone in set(self._tracks) - ids:
            del self._tracks[gone]
        demands: list[ConnectorDemand] = []
        in_force: dict[str, float] = {}
        overdue: set[str] = set()  # counted at rated power until they confirm
        retry: set[str] = set()  # to be sent their limit again now
        for c in connectors:
            track = self._tracks.setdefault(c.connector_id, _Track())
            if c.session_id != track.session_id:
                self._tracks[c.connector_id] = track = _Track(session_id=c.session_id, began=now)
            conf = confirmed.get(c.connector_id)
            pending = track.sent_kw is not None and not self._same(conf, track.sent_kw)
            if track.sent_kw is not None and not pending:
                track.started, track.lost = True, False
            late = pending and (now - track.sent_at).total_seconds() > s.confirm_within_s
            track.lost = track.lost or late
            if c.session_id is None:
                in_force[c.connector_id] = 0.0
                state = State.IDLE
            else:
                if track.lost or conf is None:
                    in_force[c.connector_id] = c.rated_kw  # R-E4: what it may draw is unknown
                else:
                    in_force[c.connector_id] = max(conf, track.sent_kw if pending else conf)
                if track.lost:
                    overdue.add(c.connector_id)
                if late:
                    retry.add(c.connector_id)
                state = State.CHARGING if track.started else State.STARTING
            departure = c.departure
            if departure is None and c.session_id is not None and s.unbooked_stay_s is not None:
                departure = track.began + timedelta(seconds=s.unbooked_stay_s)
            demands.append(ConnectorDemand(
                c.connector_id, state, c.priority, departure, c.min_kw, c.rated_kw,
                max(0.0, c.measured_kw), confirmed=c.connector_id not in overdue))

        charging_kw = sum(max(0.0, c.measured_kw) for c in connectors)
        if self._mode == NORMAL:
            alloc = self._allocate(self.limit_kw, s.margin_kw, meter.kw - charging_kw, demands, now=now, policy=s.policy)
        else:
            # A curtailment lowers the safe total by as much as it lowers the limit.
            safe = max(0.0, s.fallback_kw - (s.grid_limit_kw - self.limit_kw))
            alloc = self._allocate(safe, 0.0, 0.0, demands, now=now, policy=s.policy)

        commands = self._commands(now, connectors, demands, alloc, in_force, overdue, retry)
        view = self._view(now, meter, charging_kw, alloc, connectors)
        bare = {k: v for k, v in view.items() if k != "ts"}
        changed = bare != self._last_view
        self._last_view = bare
        return StepResult(commands, events, view, changed, alloc, self._mode)

    # ---- internals

    def _update_mode(self, meter: MeterSample | None) -> list[PowerEvent]:
        s = self.settings
        if meter is None:
            why = "the grid meter has not been read yet or does not answer"
        elif not _finite(meter.kw) or not _finite(meter.age_s):
            why = "the grid meter's reading is not a number"
        elif meter.age_s > s.stale_after_s:
            why = f"the grid meter's last reading is {meter.age_s:.1f} s old (stale after {s.stale_after_s:g} s)"
        elif s.frozen_after_s is not None and meter.unchanged_s >= s.frozen_after_s:
            why = f"the grid meter's values have not moved for {meter.unchanged_s:.0f} s (frozen)"
        else:
            why = None
        if why and self._mode == NORMAL:
            self._mode = FALLBACK
            return [PowerEvent("power.fallback", {
                "fallback_kw": round(s.fallback_kw, 3), "reason": "meter",
                "message": f"{why}: all chargers together now share the safe {_fmt(s.fallback_kw)} kW; "
                           "check the meter's power, network and unit id"})]
        if not why and self._mode == FALLBACK:
            self._mode = NORMAL
            return [PowerEvent("power.restored", {
                "grid_limit_kw": round(self.limit_kw, 3), "reason": "meter",
                "message": "the grid meter answers again: shares follow the measured site load"})]
        return []

    def _same(self, conf: float | None, sent: float) -> bool:
        return conf is not None and abs(conf - sent) <= self.settings.confirm_tolerance_kw

    def _commands(self, now, connectors, demands, alloc, in_force, overdue, retry) -> list[LimitCommand]:
        s = self.settings
        measured = {c.connector_id: max(0.0, c.measured_kw) for c in connectors}
        counted = {cid: max(in_force[cid], measured[cid]) for cid in measured}
        room = alloc.available_kw - sum(counted.values())
        lowered: list[tuple[float, LimitCommand]] = []
        raises: list[ConnectorDemand] = []
        for d in demands:
            if d.state is State.IDLE:
                continue
            cid = d.connector_id
            track = self._tracks[cid]
            target = alloc.shares_kw[cid]
            if track.sent_kw is None:
                lowered.append((in_force[cid] - target, LimitCommand(cid, target, True, "new_session")))
            elif cid in overdue:
                if cid in retry or target < track.sent_kw - 1e-9:
                    kw = min(target, track.sent_kw)
                    lowered.append((in_force[cid] - kw, LimitCommand(cid, kw, True, "retry")))
            elif target < track.sent_kw - 1e-9:
                lowered.append((in_force[cid] - target, LimitCommand(cid, target, True, "lower")))
            elif target - track.sent_kw >= s.raise_step_kw:
                raises.append(d)
        commands = [cmd for _, cmd in sorted(lowered, key=lambda x: (-x[0], x[1].connector_id))]
        for d in sorted(raises, key=lambda d: priority_key(d, now, s.policy)):
            cid = d.connector_id
            current = self._tracks[cid].sent_kw
            # Room was counted with this charger at max(its limit in force, measured).
            kw = min(alloc.shares_kw[cid], counted[cid] + room)
            if kw - current < s.raise_step_kw:
                continue
            # Never frees room: a charger counted at rated power stays counted so.
            room -= max(0.0, max(kw, measured[cid]) - counted[cid])
            commands.append(LimitCommand(cid, kw, False, "raise"))
        for cmd in commands:
            track = self._tracks[cmd.connector_id]
            track.sent_kw, track.sent_at = cmd.kw, now
        return commands

    def _view(self, now, meter, charging_kw, alloc, connectors) -> dict:
        return {
            "v": VIEW_VERSION,
            "ts": _rfc3339(now),
            "grid_limit_kw": round(self.limit_kw, 1),
            "site_load_kw": round(meter.kw, 1) if meter is not None and self._mode == NORMAL else None,
            "charging_kw": round(charging_kw, 1),
            "mode": self._mode,
            "allocations": {c.connector_id: round(alloc.shares_kw.get(c.connector_id, 0.0), 1) for c in connectors},
        }


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _aware(ts: datetime, name: str) -> None:
    if not isinstance(ts, datetime) or ts.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware time (UTC), got {ts!r}")


def _rfc3339(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt(kw: float) -> str:
    return f"{kw:,.0f}".replace(",", " ")
