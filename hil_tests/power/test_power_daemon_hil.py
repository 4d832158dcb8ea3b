"""Site power through the real daemon (R-E1..R-E6, R-H1): `hubedge run` with
charger simulators and a grid meter simulator over Modbus TCP and a real
mosquitto. The meter reads what the simulated trucks draw plus the site's
other load; the trucks follow their limits along a ramp. Nothing of the
hub's own I/O is mocked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from units import rfc3339
from hil_tests.power.conftest import COMMAND_KEY, HUB

pytestmark = [pytest.mark.hil, pytest.mark.sim_only(reason="plugs trucks in and drives the meter simulator",
                                                    devices=["charger", "meter"])]

LIMIT, MARGIN, FALLBACK = 1000.0, 50.0, 400.0
TOLERANCE_KW = 20.0  # the meter's 100 W steps, a poll's worth of ramp, the base load moving between two reads


def plug_three(d) -> None:
    """Three trucks that would take 1000 + 1000 + 400 kW."""
    d.ch1.plug(0, soc=20, battery_kwh=1000, max_power_w=1_000_000)
    d.ch1.plug(1, soc=20, battery_kwh=1000, max_power_w=1_000_000)
    d.ch2.plug(0, soc=20, battery_kwh=600, max_power_w=400_000)


async def watch_site(d, seconds: float) -> list[float]:
    """The site's draw at the grid connection (the meter simulator's own
    value), every 50 ms for ``seconds``."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(d.site_kw())
        await asyncio.sleep(0.05)
    return seen


def events(cloud, type_: str) -> list[dict]:
    out = []
    for _t, p, _r in cloud.received(f"hub/{HUB}/event/power"):
        e = json.loads(p)
        if e["type"] == type_:
            out.append(e)
    return out


def retained_power(cloud) -> dict | None:
    states = cloud.received(f"hub/{HUB}/state/power")
    return json.loads(states[-1][1]) if states else None


def command(cloud, args: dict) -> str:
    now = datetime.now(timezone.utc)
    msg_id = str(uuid.uuid4())
    body = json.dumps({"v": 1, "id": msg_id, "ts": rfc3339(now), "expires": rfc3339(now + timedelta(minutes=5)),
                       "args": args}).encode()
    cloud.publish(f"hub/{HUB}/cmd/set_power_limit", body, key=COMMAND_KEY)
    return msg_id


def reply(cloud, msg_id: str) -> dict:
    assert cloud.wait_for(lambda: any(json.loads(p).get("id") == msg_id for _t, p, _r in cloud.received(f"hub/{HUB}/reply")), 10)
    return next(json.loads(p) for _t, p, _r in cloud.received(f"hub/{HUB}/reply") if json.loads(p).get("id") == msg_id)


async def test_r_e1_r_e6_three_trucks_share_the_connection_and_the_site_stays_under_it(power_site):
    d, cloud = power_site
    plug_three(d)
    await d.wait_connector("C1", "Charging")
    await d.wait_connector("C3", "Charging")
    seen = await watch_site(d, 15)
    assert max(seen) <= LIMIT - MARGIN + TOLERANCE_KW, f"R-E1: the site peaked at {max(seen):.0f} kW"
    assert max(seen) > LIMIT - MARGIN - 150, "the trucks were given what there is"
    p = await d.power()
    assert p["mode"] == "normal" and p["grid_limit_kw"] == LIMIT
    assert sum(p["allocations"].values()) <= p["available_kw"] + 0.5
    assert all(c["share_kw"] >= 20 for c in p["connectors"] if c["charging"]), "R-E3: every truck its minimum"
    assert all(c["limit_kw"] is not None for c in p["connectors"] if c["charging"]), "every limit confirmed"
    # R-E6: the same on the broker, retained.
    assert cloud.wait_for(lambda: (retained_power(cloud) or {}).get("charging_kw", 0) > 500, 5)
    state = retained_power(cloud)
    assert set(state) == {"v", "ts", "grid_limit_kw", "site_load_kw", "charging_kw", "mode", "allocations"}
    assert set(state["allocations"]) == {"C1", "C2", "C3"}
    text = (await d.hubctl("power")).stdout
    assert "site power  mode normal" in text and "C1" in text and "SHARE kW" in text
    # R-E4: each charger was given its fail-safe limit at start where its map has one.
    assert [c.fail_safe_w for c in d.ch1.connectors] == [133333, 133333]
    assert "power.no_fail_safe charger=CH2" in d.log_text()


async def test_r_e2_r_e5_a_curtailment_with_until_is_met_in_time_and_restores_itself(power_site):
    d, cloud = power_site
    plug_three(d)
    await d.wait_power(lambda p: p["charging_kw"] > 700, 20, "reached 700 kW of charging")
    until = datetime.now(timezone.utc) + timedelta(seconds=12)
    sent = time.monotonic()
    msg = command(cloud, {"kw": 600, "until": rfc3339(until), "reason": "grid operator"})
    seen = await watch_site(d, 6)
    r = reply(cloud, msg)
    assert r["ok"] and r["data"] == {"grid_limit_kw": 600, "until": rfc3339(until), "curtailed": True}, r
    # R-E2: every charger that had to lower was told within 1 s ...
    for sim, i in ((d.ch1, 0), (d.ch1, 1), (d.ch2, 0)):
        told = [c for c in sim.commands if c.connector == i and c.name == "power_limit" and c.at > sent]
        assert told and told[0].at - sent <= 1.0, f"told {told[0].at - sent if told else None} s after the command"
    # ... and the site is under the new limit within 5 s.
    late = [kw for n, kw in enumerate(seen) if n * 0.05 >= 5.0]
    assert late and max(late) <= 600 - MARGIN + TOLERANCE_KW, f"site at {max(late):.0f} kW 5 s after"
    assert cloud.wait_for(lambda: events(cloud, "power.limited"), 5)
    limited = events(cloud, "power.limited")[0]["data"]
    assert limited["grid_limit_kw"] == 600 and limited["previous_kw"] == LIMIT and limited["until"] == rfc3339(until)
    # It ends by itself at until.
    restored = await d.wait_power(lambda p: p["grid_limit_kw"] == LIMIT, 15, "back to the connection's limit")
    assert restored["curtailed_until"] is None
    assert cloud.wait_for(lambda: events(cloud, "power.restored"), 5)
    assert events(cloud, "power.restored")[-1]["data"]["reason"] == "curtailment_ended"
    assert any(a["action"] == "power.limit" for a in json.loads((await d.hubctl("--json", "audit")).stdout))


async def test_r_e5_a_curtailment_without_until_is_refused_and_changes_nothing(power_site):
    d, cloud = power_site
    r = reply(cloud, command(cloud, {"kw": 600}))
    assert not r["ok"] and r["code"] == "refused" and "needs `until`" in r["message"], r
    assert (await d.power())["grid_limit_kw"] == LIMIT


async def test_r_e4_a_silent_meter_falls_back_to_the_safe_total_and_recovers(power_site):
    d, cloud = power_site
    plug_three(d)
    await d.wait_power(lambda p: p["charging_kw"] > 700, 20, "reached 700 kW of charging")
    await d.meter.silence()
    p = await d.wait_power(lambda p: p["mode"] == "fallback", 6, "fell back")
    assert p["site_load_kw"] is None and sum(p["allocations"].values()) <= FALLBACK + 0.5
    await asyncio.sleep(5)
    charging = (d.ch1.drawn_w() + d.ch2.drawn_w()) / 1000
    assert charging <= FALLBACK + TOLERANCE_KW, f"R-E4: the chargers draw {charging:.0f} kW with the meter silent"
    assert cloud.wait_for(lambda: events(cloud, "power.fallback"), 5)
    assert "check the meter" in events(cloud, "power.fallback")[0]["data"]["message"]
    await d.meter.speak()
    await d.wait_power(lambda p: p["mode"] == "normal", 10, "came back to normal")
    assert cloud.wait_for(lambda: any(e["data"]["reason"] == "meter" for e in events(cloud, "power.restored")), 5)


async def test_r_e4_a_charger_that_does_not_confirm_its_limit_is_counted_at_rated(power_site):
    d, _cloud = power_site
    d.ch2.deaf_to_limits(0)  # takes the write, keeps its old limit: the register says so
    plug_three(d)
    p = await d.wait_power(lambda p: next(c for c in p["connectors"] if c["connector"] == "C3")["counted_kw"] == 400,
                           15, "counted C3 at its rated 400 kW")
    c3 = next(c for c in p["connectors"] if c["connector"] == "C3")
    assert c3["counted_kw"] == 400
    # The others share what is left beside 400 kW held for C3.
    others = sum(c["share_kw"] for c in p["connectors"] if c["connector"] != "C3")
    assert others <= p["available_kw"] - 400 + 0.5
    seen = await watch_site(d, 8)
    assert max(seen) <= LIMIT - MARGIN + TOLERANCE_KW
    assert d.ch2.command_count(0, "power_limit", accepted=False) >= 2, "it is sent its limit again"
    assert "counted at rated power" in (await d.hubctl("power")).stdout
