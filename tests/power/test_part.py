"""The site power part inside the hub core: what it sends chargers, counts,
raises and keeps, with stand-in chargers behind the charger interface
(R-E1..R-E6). The same decisions over real sockets: hil_tests/power/."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

from edge.core.hub import Refused
from edge.hubctl_render import Style
from edge.parts.power.hubctl import render_power
from edge.cloud.schemas import validator
from tests.power.part_rig import POWER, T0, PowerRig


@pytest.fixture
def rig(tmp_path):
    r = PowerRig(tmp_path)
    yield r
    r.close()


def limits(rig, cid):
    return [w for c, w in rig.charger_of(cid).sent if c == cid]


async def test_r_e4_every_charger_is_given_its_fail_safe_limit_at_start(rig):
    rig.meter(100)
    await rig.step()
    await asyncio.sleep(0.01)  # the fail-safe commands run as tasks of the hub
    # fallback_kw 400 shared by 3 connectors, whole watts.
    assert rig.chargers["CH1"].fail_safe == [133333]
    assert rig.chargers["CH2"].fail_safe == [133333]


async def test_r_e2_a_plugged_truck_is_held_at_its_minimum_until_its_share_is_sent(rig):
    rig.meter(100)
    rig.plug("C1")
    await rig.step()
    assert limits(rig, "C1") == [20000], "a plugged truck's first limit is its minimum"
    rig.plug("C1", session="S1")
    await rig.step(1)  # a new session: its minimum again, then its share once confirmed
    await rig.step(1)
    rig.draw(C1=20)
    rig.site_meter(100)
    await rig.step(1)
    assert limits(rig, "C1")[-1] > 20000
    assert all(w <= 1000_000 - 50_000 - 100_000 for w in limits(rig, "C1"))


async def test_r_e1_shares_keep_the_site_under_its_limit_less_margin_and_other_load(rig):
    for cid, s in (("C1", "S1"), ("C2", "S2"), ("C3", "S3")):
        rig.plug(cid, session=s)
    for _ in range(30):
        rig.draw(C1=1200, C2=1200, C3=400)  # every truck takes what it is allowed
        rig.site_meter(300)
        await rig.step(1)
        applied = sum(ch.limit_w[c] or 0 for ch in rig.chargers.values() for c in ch.connectors)
        assert applied <= (1000 - 50 - 300) * 1000 + 1
    result = await rig.step(1)
    assert sum(result.allocation.shares_kw.values()) == pytest.approx(650, abs=0.01)
    validator("power_state").validate(result.view)


async def test_r_e2_lowered_limits_are_sent_before_raised_ones(rig):
    for cid, s in (("C1", "S1"), ("C3", "S3")):
        rig.plug(cid, session=s)
    for _ in range(60):
        rig.draw(C1=1200, C3=60)
        rig.site_meter(100)
        await rig.step(1)
    before = {c: rig.charger_of(c).limit_w[c] for c in ("C1", "C3")}
    order: list[tuple[str, int]] = []
    for ch in rig.chargers.values():
        original = ch.set_power_limit

        async def record(cid, watts, original=original):
            order.append((cid, watts))
            await original(cid, watts)

        ch.set_power_limit = record
    rig.draw(C1=1200, C3=400)  # C3's truck wants more: C1 must give way
    rig.site_meter(100)
    for _ in range(5):
        await rig.step(1)
        rig.draw(C1=1200, C3=400)
        rig.site_meter(100)
    assert order, "shares moved"
    first_c1 = next(i for i, (c, _) in enumerate(order) if c == "C1")
    first_c3 = next(i for i, (c, _) in enumerate(order) if c == "C3")
    assert order[first_c1][1] < before["C1"] and order[first_c3][1] > before["C3"]
    assert first_c1 < first_c3, f"the lowering went out first: {order}"


async def c3_refusing(rig, steps: int = 4):
    """C1 and C3 charging, C3's charger refusing every limit; the meter reads 100 kW."""
    rig.plug("C1", session="S1")
    rig.plug("C3", session="S3")
    rig.chargers["CH2"].refusing = True
    for _ in range(steps):
        rig.meter(100)
        result = await rig.step(1)
    return result


async def test_r_e4_a_charger_that_refuses_its_limit_is_counted_at_rated_power(rig):
    result = await c3_refusing(rig)
    assert result.mode == "normal"
    assert result.allocation.counted_kw["C3"] == pytest.approx(400)  # the VoltFlow's rated power
    assert len(limits(rig, "C3")) >= 2, "it is sent its limit again"
    # C1 gets only what is left beside C3 counted at rated.
    assert result.allocation.shares_kw["C1"] <= 1000 - 50 - 100 - 400 + 0.01
    part_view = rig.part.view()
    c3 = next(c for c in part_view["connectors"] if c["connector"] == "C3")
    assert c3["counted_kw"] == pytest.approx(400)


async def test_r_e4_a_deaf_charger_that_does_not_report_the_limit_back_is_counted_at_rated(rig):
    rig.plug("C3", session="S3")
    rig.chargers["CH2"].deaf = True  # takes the write, keeps its old limit
    rig.meter(100)
    for _ in range(5):
        result = await rig.step(1)
    assert result.allocation.counted_kw["C3"] == pytest.approx(400)


async def test_r_e4_a_charger_without_power_limits_is_counted_at_rated_and_never_sent_one(rig):
    class Plain:
        health = rig.hub.devices["CH2"]

        def __init__(self):
            self.inner = rig.chargers["CH2"]

        async def poll(self):
            return await self.inner.poll()

    rig.hub.chargers["CH2"] = Plain()
    rig.plug("C3", session="S3")
    rig.meter(100)
    for _ in range(4):
        result = await rig.step(1)
    assert result.allocation.counted_kw["C3"] == pytest.approx(400)
    assert rig.chargers["CH2"].sent == []


async def test_r_e4_a_stale_meter_falls_back_to_the_safe_total_and_back(rig):
    rig.plug("C1", session="S1")
    rig.plug("C2", session="S2")
    rig.meter(100)
    await rig.step(1)
    rig.meter(100, age_s=5)
    result = await rig.step(1)
    assert result.mode == "fallback"
    assert sum(result.allocation.shares_kw.values()) <= 400 + 0.01
    await rig.hub.store.durable()
    ev = rig.events("power.fallback")
    assert ev and ev[0]["stream"] == "power" and "6.0 s old" in ev[0]["data"]["message"]
    rig.meter(100)
    result = await rig.step(1)
    assert result.mode == "normal"
    await rig.hub.store.durable()
    assert rig.events("power.restored")[-1]["data"]["reason"] == "meter"


async def test_r_e3_a_booked_truck_in_its_slot_goes_before_an_ad_hoc_one(rig):
    rig.plug("C1", session="S1")
    rig.plug("C2", session="S2")
    rig.slots["C2"] = (T0 - timedelta(minutes=10), T0 + timedelta(hours=2))
    for _ in range(80):
        rig.draw(C1=1200, C2=1200)
        rig.site_meter(100)
        result = await rig.step(1)
    shares = result.allocation.shares_kw
    assert shares["C2"] > shares["C1"]
    assert shares["C1"] == pytest.approx(20)  # the ad-hoc truck keeps its minimum
    c2 = next(c for c in rig.part.view()["connectors"] if c["connector"] == "C2")
    assert c2["priority"] == "booked" and c2["departure"].startswith("2026-06-01T12:00")


async def test_r_e5_curtailment_is_kept_across_a_restart_and_ends_by_itself(tmp_path):
    rig = PowerRig(tmp_path)
    rig.plug("C1", session="S1")
    rig.meter(100)
    await rig.step(1)
    out = rig.part.set_limit(600, T0 + timedelta(minutes=10), "cloud", "grid operator")
    assert out == {"grid_limit_kw": 600, "until": "2026-06-01T10:10:00.000Z", "curtailed": True}
    result = await rig.step(1)
    assert result.view["grid_limit_kw"] == 600
    await rig.hub.store.durable()
    ev = rig.events("power.limited")[0]["data"]
    assert ev["previous_kw"] == 1000 and ev["until"] == "2026-06-01T10:10:00.000Z"
    assert any(a["action"] == "power.limit" for a in rig.hub.audit_entries())
    clock = rig.clock
    rig.close()

    again = PowerRig(tmp_path, clock=clock)
    again.meter(100)
    assert (await again.step(1)).view["grid_limit_kw"] == 600, "the curtailment outlives a restart"
    result = await again.step(10 * 60)
    assert result.view["grid_limit_kw"] == 1000
    await again.hub.store.durable()
    assert again.events("power.restored")[-1]["data"]["reason"] == "curtailment_ended"
    assert again.hub.store.db.execute("SELECT COUNT(*) FROM power_curtailment").fetchone()[0] == 0
    again.close()


@pytest.mark.parametrize("kw, until, match", [
    (600, None, "needs `until`"),
    (600, timedelta(hours=49), "more than 48 h ahead"),
    (600, timedelta(minutes=-1), "already past"),
])
async def test_r_e5_a_bad_curtailment_is_refused_and_changes_nothing(rig, kw, until, match):
    with pytest.raises(Refused, match=match):
        rig.part.set_limit(kw, None if until is None else T0 + until, "cloud")
    assert rig.part.controller.limit_kw == 1000
    assert rig.hub.store.db.execute("SELECT COUNT(*) FROM power_curtailment").fetchone()[0] == 0


async def test_r_e5_restore_ends_a_curtailment_now(rig):
    rig.part.set_limit(500, T0 + timedelta(hours=1), "tech")
    assert rig.part.set_limit(None, None, "tech")["grid_limit_kw"] == 1000
    assert rig.part.controller.limit_kw == 1000
    await rig.hub.store.durable()
    assert rig.events("power.restored")[-1]["data"]["reason"] == "restored"


async def test_r_e6_status_and_view_carry_the_shares(rig):
    rig.plug("C1", session="S1")
    rig.meter(100)
    await rig.step(1)
    assert rig.hub.status()["power"]["allocations"]["C1"] == 20.0
    v = rig.part.view()
    assert v["configured"] and v["meter"]["kw"] == 100.0 and v["connection_kw"] == 1000
    assert [c["connector"] for c in v["connectors"]] == ["C1", "C2", "C3"]


def test_an_amps_only_station_is_sent_its_amp_steps_never_above_its_share(rig):
    from types import SimpleNamespace

    from edge.parts.power.control import LimitCommand

    # As an OCPP station with the leniency limits_in_amps is configured.
    rig.part._sections["CH2"] = SimpleNamespace(leniencies=["limits_in_amps"], voltage_v=230.0, phases=3)
    watts = rig.part.watts_for(LimitCommand("C3", 100.0, False, "raise"))
    assert watts == 99_981  # 144.9 A at 3 x 230 V (100 kW is 144.93 A), rounded down
    assert round(watts / 690, 1) == 144.9  # what the station is sent
    assert rig.part.watts_for(LimitCommand("C1", 100.0, False, "raise")) == 100_000


async def test_r_e6_hubctl_power_shows_each_share_and_its_json_follows_the_schema(rig):
    await c3_refusing(rig)
    data = json.loads(json.dumps(rig.part.view()))
    schema = json.loads((Path(__file__).resolve().parents[2] / "edge/cloud/schemas/hubctl/power.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    text = render_power(data, Style(False), argparse.Namespace())
    assert "site load   100 kW" in text and "mode normal" in text
    c1 = next(line for line in text.splitlines() if line.startswith("C1 "))
    c3 = next(line for line in text.splitlines() if line.startswith("C3 "))
    assert "ad-hoc" in c1 and " ok" in c1
    assert "counted at rated power" in c3
    assert next(line for line in text.splitlines() if line.startswith("C2 ")).rstrip().endswith("idle")


async def test_r_e6_the_status_table_shows_each_connectors_share_and_the_site(rig):
    from edge.hubctl_render import render_status

    rig.plug("C1", session="S1")
    for _ in range(3):
        rig.draw(C1=1200)
        rig.site_meter(100)
        await rig.step(1)
    status = json.loads(json.dumps(rig.hub.status()))
    text = render_status(status, Style(False))
    header = next(line for line in text.splitlines() if line.startswith("CONNECTOR"))
    assert "SHARE" in header and header.index("SHARE") > header.index("POWER")
    c1 = next(line for line in text.splitlines() if line.startswith("C1 "))
    assert f"{status['power']['allocations']['C1']:.0f} kW" in c1
    assert "site power: limit 1000 kW, site load" in text and "charging" in text


async def test_r_e4_a_refused_limit_counts_at_rated_even_when_the_charger_reports_it(rig):
    # Some stations report the limit the hub asked for, taken or not (an OCPP
    # charger whose profile was rejected): the refusal is what counts.
    ch = rig.chargers["CH2"]
    ch.refusing = True
    original = ch.set_power_limit

    async def refuse_but_report(cid, watts):
        ch.limit_w[cid] = watts
        await original(cid, watts)

    ch.set_power_limit = refuse_but_report
    rig.plug("C3", session="S3")
    for _ in range(4):  # past confirm_within_s
        rig.meter(100)
        result = await rig.step(1)
    assert rig.part.confirmed_limits()["C3"] is None
    assert result.allocation.counted_kw["C3"] == pytest.approx(400)
    ch.refusing = False
    for _ in range(4):
        rig.meter(100)
        result = await rig.step(1)
    assert rig.part.confirmed_limits()["C3"] is not None and result.allocation.counted_kw["C3"] < 400
