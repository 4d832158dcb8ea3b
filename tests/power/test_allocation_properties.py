"""Property tests of the share allocation (R-E1, R-E3, R-E4): random sites and
trucks, every rule checked against an oracle written from the rules, not from
the code."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from edge.parts.power.allocation import ConnectorDemand, Priority, SharePolicy, State, allocate, available_kw

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
POLICY = SharePolicy(buffer_kw=50.0, buffer_fraction=0.1, departure_slot_s=900, overdue_grace_s=900)
W = 0.001  # one watt, in kW: shares are whole watts

kw = st.floats(0, 1500, allow_nan=False, allow_infinity=False)
departures = st.sampled_from([None, -3600, -900, -300, 600, 700, 2700, 2800, 5400, 7200, 7201, 36000])


@st.composite
def connector(draw, i: int):
    rated = draw(st.sampled_from([0.0, 150.0, 350.0, 400.0, 1000.0, 1200.0]))
    low = draw(st.floats(0, rated, allow_nan=False)) if rated else 0.0
    dep = draw(departures)
    return ConnectorDemand(
        connector_id=f"C{i:02d}",
        state=draw(st.sampled_from(list(State))),
        priority=draw(st.sampled_from(list(Priority))),
        departure=None if dep is None else NOW + timedelta(seconds=dep),
        min_kw=low,
        rated_kw=rated,
        measured_kw=draw(st.floats(0, 1300, allow_nan=False)),
        confirmed=draw(st.sampled_from([True, True, True, False])),
    )


@st.composite
def site(draw):
    n = draw(st.integers(0, 12))
    connectors = [draw(connector(i)) for i in range(n)]
    return draw(st.floats(0, 4000, allow_nan=False)), draw(st.floats(0, 200, allow_nan=False)), draw(
        st.floats(-100, 800, allow_nan=False)), connectors


def cap(c: ConnectorDemand) -> float:
    if c.state is State.STARTING:
        return c.min_kw
    return min(c.rated_kw, max(c.min_kw, c.measured_kw + max(POLICY.buffer_kw, POLICY.buffer_fraction * c.measured_kw)))


def leaves(c: ConnectorDemand) -> float:
    """The departure, also one passed less than the grace ago (due now); unknown
    (and an overstay past the grace) is infinitely late."""
    if c.departure is None or NOW - c.departure >= timedelta(seconds=POLICY.overdue_grace_s):
        return float("inf")
    return c.departure.timestamp()


def tier(c: ConnectorDemand) -> tuple:
    """Booked before ad hoc; within each, the earlier departure slot first; unknown last."""
    if leaves(c) == float("inf"):
        return (int(c.priority), float("inf"))
    return (int(c.priority), leaves(c) // POLICY.departure_slot_s)


def run(limit, margin, other, connectors):
    return allocate(limit, margin, other, connectors, now=NOW, policy=POLICY)


@settings(max_examples=400, deadline=None)
@given(site())
def test_r_e1_r_e4_sum_never_exceeds_what_is_available(s):
    """Confirmed shares plus unconfirmed chargers at rated power stay within
    limit - margin - other load; the only exception is a site where the
    unconfirmed chargers alone exceed it, and then every other truck waits."""
    limit, margin, other, connectors = s
    a = run(limit, margin, other, connectors)
    available = available_kw(limit, margin, other)
    held = sum(c.rated_kw for c in connectors if c.state is not State.IDLE and not c.confirmed)
    given_out = sum(a.shares_kw[c.connector_id] for c in connectors if c.state is not State.IDLE and c.confirmed)
    if held <= available + W:
        assert given_out + held <= available + W
    else:
        assert not a.feasible and given_out == 0
    for c in connectors:
        assert a.shares_kw[c.connector_id] <= c.rated_kw + W  # nothing above rated
        if c.state is State.IDLE:
            assert a.shares_kw[c.connector_id] == 0
        elif not c.confirmed:
            assert abs(a.shares_kw[c.connector_id] - c.min_kw) <= W  # told its minimum until it answers
            assert a.counted_kw[c.connector_id] == c.rated_kw or abs(a.counted_kw[c.connector_id] - c.rated_kw) <= W


@settings(max_examples=400, deadline=None)
@given(site())
def test_r_e3_every_share_within_minimum_and_cap_when_feasible(s):
    limit, margin, other, connectors = s
    a = run(limit, margin, other, connectors)
    if not a.feasible:
        return
    assert a.waiting == ()
    for c in connectors:
        if c.state is State.IDLE or not c.confirmed:
            continue
        share = a.shares_kw[c.connector_id]
        assert c.min_kw - W <= share <= max(c.min_kw, cap(c)) + W
        if c.state is State.STARTING:
            assert abs(share - c.min_kw) <= W  # R-E2: held at its minimum


@settings(max_examples=400, deadline=None)
@given(site(), st.floats(0, 3000, allow_nan=False))
def test_shares_are_monotonic_in_the_limit(s, more):
    limit, margin, other, connectors = s
    low, high = run(limit, margin, other, connectors), run(limit + more, margin, other, connectors)
    for c in connectors:
        assert high.shares_kw[c.connector_id] >= low.shares_kw[c.connector_id]
    if low.feasible:
        assert high.feasible


@settings(max_examples=400, deadline=None)
@given(site())
def test_r_e3_power_a_truck_does_not_take_goes_to_the_others(s):
    """Work-conserving: when feasible, the confirmed trucks together get
    everything available, or every one of them is at its cap."""
    limit, margin, other, connectors = s
    a = run(limit, margin, other, connectors)
    if not a.feasible:
        return
    confirmed = [c for c in connectors if c.state is not State.IDLE and c.confirmed]
    held = sum(c.rated_kw for c in connectors if c.state is not State.IDLE and not c.confirmed)
    given_out = sum(a.shares_kw[c.connector_id] for c in confirmed)
    left = available_kw(limit, margin, other) - held
    at_caps = all(a.shares_kw[c.connector_id] >= cap(c) - W for c in confirmed)
    assert at_caps or given_out >= left - W * (len(confirmed) + 1)


@settings(max_examples=400, deadline=None)
@given(site())
def test_r_e3_earlier_tiers_are_full_before_a_later_one_gets_more_than_its_minimum(s):
    """Booked in slot before ad hoc; within each, the truck leaving sooner before a later one."""
    limit, margin, other, connectors = s
    a = run(limit, margin, other, connectors)
    confirmed = [c for c in connectors if c.state is not State.IDLE and c.confirmed]
    for later in confirmed:
        if a.shares_kw[later.connector_id] <= later.min_kw + W:
            continue
        for earlier in confirmed:
            if tier(earlier) < tier(later):
                assert a.shares_kw[earlier.connector_id] >= cap(earlier) - W


@settings(max_examples=400, deadline=None)
@given(site())
def test_r_e3_equal_trucks_get_equal_shares_unless_capped(s):
    """Within one tier the split is max-min fair: a truck with less than
    another is at its own cap, or the other is held at its minimum (above
    the common level)."""
    limit, margin, other, connectors = s
    a = run(limit, margin, other, connectors)
    if not a.feasible:
        return
    confirmed = [c for c in connectors if c.state is not State.IDLE and c.confirmed]
    for i in confirmed:
        for j in confirmed:
            si, sj = a.shares_kw[i.connector_id], a.shares_kw[j.connector_id]
            if tier(i) == tier(j) and si < sj - 2 * W:
                assert si >= cap(i) - W or sj <= j.min_kw + W


@settings(max_examples=400, deadline=None)
@given(site())
def test_when_minimums_do_not_fit_the_lowest_priority_trucks_wait(s):
    """Who waits is decided by priority: the waiting trucks are the tail of
    the order (tier, departure, id), every other one has its minimum, and a
    sentence says so."""
    limit, margin, other, connectors = s
    a = run(limit, margin, other, connectors)
    if a.feasible:
        assert a.reason is None
        return
    assert a.reason and "minimum" in a.reason
    confirmed = [c for c in connectors if c.state is not State.IDLE and c.confirmed]
    order = sorted(confirmed, key=lambda c: (tier(c), leaves(c), c.connector_id))
    ids = [c.connector_id for c in order]
    assert list(a.waiting) == ids[len(ids) - len(a.waiting):]
    for c in order:
        share = a.shares_kw[c.connector_id]
        assert share == 0 if c.connector_id in a.waiting else abs(share - c.min_kw) <= W
