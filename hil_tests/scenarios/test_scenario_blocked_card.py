"""The operator's own charge card, blocked mid-month: the cloud's token list
delta marks it Blocked while its truck charges. The running session goes on;
the next tap is refused, with the cloud there and with the cloud gone - once
straight through, once with a power cut during which the delta arrives."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = [
    pytest.mark.hil,
    pytest.mark.cloud,
    pytest.mark.charger,
    pytest.mark.reader,
    pytest.mark.sim_only(reason="plays the trucks and taps the cards on the simulators", devices=["charger", "reader"]),
]

OWN = "04A1B2C3"
CARD = {"uid": OWN, "status": "Active", "type": "own", "group": "scenario-fleet", "reference": "truck 12"}


@pytest.mark.parametrize("power_cut", [False, True], ids=["straight", "power_cut"])
async def test_own_card_blocked_mid_month(scene, power_cut):
    """R-A1 (a Blocked card is refused, offline too), R-A3 (delta on the held
    version), R-C3, R-M1, R-M2, R-M3; with the power cut also R-C9 (the
    session goes on) and R-M2 (the delta waits at the broker for the hub)."""
    await scene.begin("The own charge card, blocked mid-month" + (" (power cut while the block arrives)" if power_cut else ""),
                      ["R-A1", "R-A3", "R-C3", "R-M1", "R-M2", "R-M3"] + (["R-C9"] if power_cut else []))
    card = scene.hide_card(OWN)
    scene.step(f"start of the month: the cloud's token list v1 has own card {card} Active")
    await scene.load_tokens([CARD], version=1)

    scene.step(f"a fleet truck plugs in at C1 and its driver taps {card} at reader R1")
    scene.plug("C1", soc=15)
    await scene.wait_connector("C1", "Preparing")
    await scene.tap("R1", OWN)
    accepted = await scene.wait_event("auth.accepted", connector="C1", code="start")
    assert accepted["data"]["source"] == "local_list", accepted
    c = await scene.wait_connector("C1", "Charging")
    sid = c["session"]
    await asyncio.sleep(1.5)

    delta = {"version": 2, "kind": "delta", "upsert": [{**CARD, "status": "Blocked"}], "remove": []}
    if power_cut:
        scene.power_cut()
        scene.step(f"mid-month, while the hub is dark: the cloud sends token list delta v2, {card} is now Blocked "
                   f"(the broker keeps it for the hub)")
        msg_id = scene.cloud.send("tokens", delta)
        await asyncio.sleep(1.0)
        await scene.power_back()
        reply = await asyncio.to_thread(scene.cloud.reply_to, msg_id, 15.0)
        assert reply and reply["ok"], f"R-M2: the delta sent while the hub was down was not applied: {reply}"
        c = await scene.wait_connector("C1", "Charging")
        assert c["session"] == sid and scene.start_commands("C1") == 1, "R-C9"
    else:
        scene.step(f"mid-month: the cloud sends token list delta v2, {card} is now Blocked (reported stolen)")
        await scene.load_tokens(delta["upsert"], version=2, kind="delta")

    blocked = await scene.wait_event("auth.blocked_in_session", session=sid)
    assert blocked["data"]["stopping"] is False, blocked
    await asyncio.sleep(2.0)
    c = await scene.connector("C1")
    assert c["status"] == "Charging" and c["session"] == sid, f"the running session should go on: {c}"
    scene.step("the session already running goes on (stopping it is the operator's call)")

    scene.step(f"the same card {card} is tapped at reader R2 for another truck at C2: refused")
    scene.plug("C2", soc=25)
    await scene.wait_connector("C2", "Preparing")
    await scene.tap("R2", OWN)
    refused = await scene.wait_event("auth.rejected", connector="C2")
    assert refused["data"]["code"] == "blocked" and refused["data"]["source"] == "local_list", refused

    scene.broker_down()
    await asyncio.sleep(1.6)  # past the reader's debounce: a new tap
    scene.step(f"{card} tapped at R2 again, with the cloud gone: still refused (the hub's own list decides)")
    await scene.tap("R2", OWN)
    await scene.wait_status(lambda st: st["card_taps"]["by_code"].get("rejected", {}).get("blocked", 0) >= 2,
                            "counting the second refusal")
    assert (await scene.connector("C2"))["status"] == "Preparing", "R-A1: a Blocked card started a session offline"

    scene.step("C1's truck is full: its session ends; both trucks leave")
    scene.truck_full("C1")
    await scene.wait_connector("C1", "Finishing")
    await scene.unplug("C1")
    await scene.unplug("C2")
    await scene.broker_up()

    def refusals() -> list[dict]:
        return [e for e in scene.contract.events("auth.rejected") if e["data"]["connector"] == "C2"]

    await asyncio.to_thread(scene.contract.wait_for, lambda: len(refusals()) >= 2, 15)
    offline_refusals = refusals()
    assert [e["data"]["code"] for e in offline_refusals] == ["blocked", "blocked"], offline_refusals
    assert [e["offline"] for e in offline_refusals] == [False, True], offline_refusals
    ended = await scene.wait_event("session.stopped", session=sid)
    assert ended["data"]["reason"] == "ev_finished" and ended["offline"] is True, ended
    await scene.finish()
    status = await scene.status()
    assert status["token_list"]["version"] == 2
    assert len(await scene.sessions()) == 1, "R-A1: the blocked card started a session"
