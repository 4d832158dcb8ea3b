"""The cloud gone for a whole busy stretch, then back: a truck admitted at
the entry, a bank-card session at the arch, an own card at its reader, an
unknown roaming card refused, both trucks leaving - all without a broker.
When it returns, every event arrives, in order per stream, marked offline.
Once straight through, once with a power cut in the middle of it."""

from __future__ import annotations

import asyncio

import pytest

from units import parse_rfc3339

pytestmark = [
    pytest.mark.hil,
    pytest.mark.cloud,
    pytest.mark.charger,
    pytest.mark.terminal,
    pytest.mark.reader,
    pytest.mark.gate,
    pytest.mark.sim_only(reason="plays trucks, drivers and cameras on the simulators",
                         devices=["charger", "terminal", "reader", "gate"]),
]

OWN = "04A1B2C3"
STRANGER = "04DEAD01"
PLATE_BUS = "NL-99-ZZX"  # an ad-hoc truck paying by bank card
PLATE_FLEET = "D-EV 2024"  # the fleet truck with the own card
CARD = {"uid": OWN, "status": "Active", "type": "own", "group": "scenario-fleet", "reference": "truck 12"}


@pytest.mark.parametrize("power_cut", [False, True], ids=["straight", "power_cut"])
async def test_cloud_gone_then_back(scene, power_cut):
    """R-M1 (everything on site works without the cloud), R-M2 (nothing lost,
    order kept per stream, ids stable), R-M4, R-A1/R-A2 offline, R-G3, R-G6,
    R-P1, R-P3, R-P5; with the power cut also R-C9 and R-P4."""
    await scene.begin("The cloud gone, then back" + (" (with a power cut while it is gone)" if power_cut else ""),
                      ["R-M1", "R-M2", "R-M4", "R-A1", "R-A2", "R-G3", "R-G6", "R-P1", "R-P3", "R-P5"]
                      + (["R-C9", "R-P4"] if power_cut else []))
    card, stranger = scene.hide_card(OWN), scene.hide_card(STRANGER)
    adhoc, fleet = scene.hide_plate(PLATE_BUS), scene.hide_plate(PLATE_FLEET)
    scene.step(f"yesterday, with the cloud there: the token list v1 arrived with own card {card} Active")
    await scene.load_tokens([CARD], version=1)
    scene.broker_down()
    offline_since = scene.contract.windows[-1].start
    # An event is marked offline when the hub knew the link was down as it
    # queued it: the hub sees the broker's socket close within moments.
    await scene.wait_status(lambda st: not st["cloud"].get("connected"), "seeing the cloud gone")

    scene.step(f"an ad-hoc truck {adhoc} at the entry: the hub has free bays, so it opens")
    await scene.plate("G-IN", PLATE_BUS)
    scene.step(f"the fleet truck {fleet} at the entry: it opens again")
    await scene.plate("G-IN", PLATE_FLEET, confidence=0.97)
    await scene.wait_status(lambda st: len([w for w in scene.demo.devices["barriers"]["G-IN"].commands
                                            if w.coil == "open" and w.value]) >= 2, "opening the entry twice")

    scene.step("the ad-hoc truck plugs in at C3 and its driver pays by bank card at arch T1")
    scene.plug("C3", soc=20)
    await scene.wait_connector("C3", "Preparing")
    paid = await scene.arch_select("C3")
    assert paid.get("started"), paid
    paid_sid = paid["session"]

    scene.step(f"the fleet truck plugs in at C1 and taps {card} at R1: the hub's own list says Active")
    scene.plug("C1", soc=30)
    await scene.wait_connector("C1", "Preparing")
    await scene.tap("R1", OWN)
    card_sid = (await scene.wait_connector("C1", "Charging"))["session"]

    scene.step(f"a third truck at C2 tries unknown roaming card {stranger} at R2: refused by the offline policy")
    scene.plug("C2", soc=50)
    await scene.wait_connector("C2", "Preparing")
    await scene.tap("R2", STRANGER)
    await scene.wait_status(lambda st: st["card_taps"]["by_code"].get("rejected", {}).get("unknown_offline", 0) >= 1,
                            "refusing the unknown card")
    await scene.wait_connector("C3", "Charging", session=paid_sid)
    await asyncio.sleep(2.0)

    if power_cut:
        scene.power_cut()
        await asyncio.sleep(1.0)
        await scene.power_back(expect_link=False)
        assert (await scene.wait_connector("C3", "Charging"))["session"] == paid_sid
        assert (await scene.wait_connector("C1", "Charging"))["session"] == card_sid
        assert scene.start_commands("C3") == 1 and scene.start_commands("C1") == 1, "R-C9: a second start"

    scene.step("the ad-hoc driver stops at arch T1 with the same bank card")
    stopped = await scene.arch_stop("C3")
    assert stopped.get("stopped"), stopped
    scene.step(f"the fleet driver taps {card} at R1 again: the session stops")
    await scene.tap("R1", OWN)
    await scene.wait_connector("C1", "Finishing")
    await scene.wait_connector("C3", "Finishing")
    await scene.wait_status(lambda st: st["payments"].get("settled", 0) >= 1, "settling the bank-card session")

    scene.step("the trucks unplug and leave; the exit opens on each plate")
    for cid in ("C3", "C1", "C2"):
        await scene.unplug(cid)
    await scene.plate("G-OUT", PLATE_BUS, confidence=0.9, direction="leave")
    await scene.plate("G-OUT", PLATE_FLEET, confidence=0.9, direction="leave")
    await scene.wait_status(lambda st: all(c["status"] == "Available" for c in st["connectors"]), "all Available")
    assert scene.contract.count("session.started") == 0, "nothing can reach the cloud while the broker is down"

    await scene.broker_up()
    await scene.finish()
    s = await scene.assert_settled_exactly(paid_sid)
    assert s["method"] == "bank_card"
    scene.assert_no_hold_open()
    during = [e for e in scene.contract.events() if parse_rfc3339(e["ts"]) > offline_since]
    kinds = {e["type"] for e in during}
    assert {"gate.opened", "session.started", "session.stopped", "payment.preauthorized", "payment.settled",
            "auth.accepted", "auth.rejected"} <= kinds, kinds
    # Everything but the sync stream was queued while the cloud was gone: the
    # resync the hub asks for once the link is back, and the syncs the cloud
    # sends in answer, are made online by definition.
    queued = [e for e in during if e["stream"] != "sync"]
    assert all(e["offline"] for e in queued), [e["type"] for e in queued if not e["offline"]]
    assert len([e for e in during if e["type"] == "gate.opened"]) == 4
    assert {x["session"] for x in [e["data"] for e in during if e["type"] == "session.stopped"]} == {paid_sid, card_sid}
