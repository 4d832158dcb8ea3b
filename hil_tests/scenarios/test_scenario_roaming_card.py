"""An ad-hoc truck with a roaming (eMSP) card: first with the cloud there
(it answers Accepted), then with the cloud silent and then gone, where the
hub's own cache and offline policy decide - once straight through, once
with a power cut during the roaming session."""

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

OWN = "04A1B2C3"  # the operator's own card, on the token list
ROAMING = "04C0FFEE"  # a partner's card the cloud accepts
STRANGER = "04DEAD01"  # a roaming card nobody answers for
TOKENS = [{"uid": OWN, "status": "Active", "type": "own", "group": "scenario-fleet", "reference": "truck 12"}]


@pytest.mark.parametrize("power_cut", [False, True], ids=["straight", "power_cut"])
async def test_roaming_card_online_then_offline(scene, power_cut):
    """R-A2 (roaming check online, cached answer, offline policy), R-C3, R-C4,
    R-M1, R-M2; with the power cut also R-C9: the roaming session goes on
    after the restart and the same card still stops it."""
    await scene.begin("An ad-hoc roaming card, online then offline" + (" (power cut mid-session)" if power_cut else ""),
                      ["R-A2", "R-C3", "R-C4", "R-M1", "R-M2"] + (["R-C9"] if power_cut else []))
    roaming, stranger = scene.hide_card(ROAMING), scene.hide_card(STRANGER)
    scene.hide_card(OWN)
    scene.step("the cloud sends the token list (own cards only) and will accept the partner's roaming card")
    await scene.load_tokens(TOKENS, version=1)
    scene.cloud.answer_auth(ROAMING, "Accepted", group="roam-partner", reference="partner truck")

    # -- online: the cloud decides
    scene.step("an ad-hoc truck plugs in at C2")
    scene.plug("C2", soc=30)
    await scene.wait_connector("C2", "Preparing")
    scene.step(f"the driver taps roaming card {roaming} at reader R2: the hub asks the cloud")
    await scene.tap("R2", ROAMING)
    accepted = await scene.wait_event("auth.accepted", connector="C2", code="start")
    assert accepted["data"]["source"] == "cloud" and accepted["data"]["offline"] is False, accepted
    c = await scene.wait_connector("C2", "Charging")
    sid = c["session"]
    await asyncio.sleep(1.5)

    if power_cut:
        scene.power_cut()
        await asyncio.sleep(1.0)
        await scene.power_back()
        c = await scene.wait_connector("C2", "Charging")
        assert c["session"] == sid, f"R-C9: C2 runs session {c['session']} after the restart, not {sid}"
        assert scene.start_commands("C2") == 1, "R-C9: the charger was told to start twice"

    scene.step(f"the driver taps {roaming} again at R2: the same card stops its session")
    await scene.tap("R2", ROAMING)
    stopped = await scene.wait_event("session.stopped", session=sid)
    assert stopped["data"]["reason"] == "card" and stopped["data"]["energy_wh"] > 0, stopped
    await scene.unplug("C2")
    await scene.wait_connector("C2", "Available")

    # -- the cloud silent: the request times out, the offline policy decides
    scene.step("the cloud stops answering card checks (the link stays up)")
    scene.cloud.silent(True)
    scene.plug("C1", soc=40)
    await scene.wait_connector("C1", "Preparing")
    scene.step(f"a truck at C1: unknown roaming card {stranger} tapped at R1; no answer comes")
    await scene.tap("R1", STRANGER)
    refused = await scene.wait_event("auth.rejected", connector="C1", timeout=15)
    assert refused["data"]["code"] == "cloud_timeout" and refused["data"]["source"] == "offline_policy", refused
    assert (await scene.connector("C1"))["status"] == "Preparing", "R-A2: an unknown card started a session offline"
    scene.cloud.silent(False)

    # -- the cloud gone: the cache and the policy decide, the hub runs on
    scene.broker_down()
    scene.step(f"another visit of the partner truck at C2: {roaming} tapped at R2 with no cloud")
    scene.plug("C2", soc=50)
    await scene.wait_connector("C2", "Preparing")
    await scene.tap("R2", ROAMING)
    c = await scene.wait_connector("C2", "Charging")
    offline_sid = c["session"]
    scene.step(f"{stranger} tapped again at R1 with no cloud: the offline policy refuses unknown cards")
    await scene.tap("R1", STRANGER)
    await asyncio.sleep(1.0)
    assert (await scene.connector("C1"))["status"] == "Preparing"
    scene.step(f"{roaming} tapped again at R2: its session stops, still with no cloud")
    await scene.tap("R2", ROAMING)
    await scene.wait_connector("C2", "Finishing")
    await scene.unplug("C2")
    await scene.unplug("C1")
    await scene.broker_up()

    cached = await scene.wait_event("auth.accepted", connector="C2", code="start", source="cache")
    assert cached["offline"] is True and cached["data"]["offline"] is True, cached
    unknown = await scene.wait_event("auth.rejected", connector="C1", code="unknown_offline")
    assert unknown["offline"] is True and unknown["data"]["source"] == "offline_policy", unknown
    ended = await scene.wait_event("session.stopped", session=offline_sid)
    assert ended["offline"] is True and ended["data"]["reason"] == "card", ended
    await scene.finish()
    s = await scene.session(offline_sid)
    assert s["method"] == "emsp_card" and s["energy_wh"] > 0 and s["cost_gross"] is None, s  # R-P9: nothing paid here
    assert len(await scene.sessions()) == 2
