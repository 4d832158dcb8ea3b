"""Card taps at the real daemon over nfcpy's UDP frontend, a real Modbus
charger simulator and a real mosquitto with the simulated cloud (R-H1)."""

from __future__ import annotations

import asyncio
import json

import pytest

from hil_tests.cards.conftest import BLOCKED, OWN_A, OWN_B, ROAMING, STRANGER
from simulators.card import CardSimulator

pytestmark = pytest.mark.hil


def _masked(uid: str) -> str:
    return "*" + uid[-4:]


async def test_r_c3_r_c4_r_s1_r_p9_tap_starts_other_card_does_not_stop_same_card_stops(card_hub):
    """R-C3: a valid card on the plugged connector starts charging; R-C4: another
    card does not stop it, the same card does; R-S1/R-P9: the session records
    the card (masked) and method own_card, and no tariff or cost."""
    hub = card_hub
    hub.charger.plug(0, soc=30)
    await hub.wait_connector("C1", "Preparing")
    await hub.tap("R1", OWN_A)
    started = await hub.wait_event("session.started", connector="C1")
    assert started["data"]["method"] == "own_card" and started["data"]["token"] == _masked(OWN_A)
    await hub.wait_connector("C1", "Charging")
    accepted = await hub.wait_event("auth.accepted", connector="C1", code="start")
    assert accepted["data"]["source"] == "local_list" and accepted["data"]["token_type"] == "own"
    assert OWN_A not in json.dumps(accepted), "the full card uid never leaves the hub in an event"

    # Another card (other group, not a master card) does not stop it.
    await hub.tap("R1", OWN_B)
    refused = await hub.wait_event("auth.rejected", connector="C1", code="not_session_card")
    assert refused["data"]["token"] == _masked(OWN_B) and refused["data"]["source"] == "session"
    await asyncio.sleep(0.6)
    assert (await hub.connector("C1"))["status"] == "Charging"

    # The same card stops it (after the debounce window: a new tap).
    await asyncio.sleep(0.6)
    await hub.tap("R1", OWN_A)
    stopped = await hub.wait_event("session.stopped", connector="C1")
    assert stopped["data"]["reason"] == "card" and "cost" not in stopped["data"]
    await hub.wait_event("auth.accepted", connector="C1", code="stop_same_card")
    await hub.wait_connector("C1", "Finishing")

    sessions = json.loads((await hub.hubctl("--json", "sessions", "--connector", "C1")).stdout)
    assert len(sessions) == 1
    s = sessions[0]
    assert s["method"] == "own_card" and s["token_masked"] == _masked(OWN_A) and s["stop_reason"] == "card"
    assert s["cost_gross"] is None and s["tariff_id"] is None  # R-P9: invoiced by the cloud, not paid here
    hub.validate_all()


async def test_r_c3_tap_before_plugging_authorises_then_the_plug_starts(card_hub):
    """R-C3: a tap on a free connector authorises it for the connection timeout;
    the truck plugging in within it starts charging without a second tap."""
    hub = card_hub
    await hub.tap("R2", OWN_B)
    held = await hub.wait_event("auth.accepted", connector="C2", code="authorised")
    assert "expires_at" in held["data"]
    await asyncio.sleep(0.5)
    hub.charger.plug(1, soc=50)
    started = await hub.wait_event("session.started", connector="C2")
    assert started["data"]["token"] == _masked(OWN_B)
    await hub.wait_connector("C2", "Charging")
    # Nothing happened on C1: the two readers stay apart.
    assert (await hub.connector("C1"))["status"] == "Available"
    hub.validate_all()


async def test_r_a1_r_a2_roaming_online_silent_cloud_and_cloud_down(card_hub):
    """R-A2: a roaming card is accepted by the cloud's answer; with the cloud
    silent an unknown card follows the offline policy after the timeout; with
    the broker gone a Blocked card is still refused (R-A1), an unknown card is
    refused by the offline policy and the roaming card is accepted from the
    cache."""
    hub = card_hub
    hub.cloud.answer_auth(ROAMING, "Accepted", group="roam-x", reference="truck R")
    hub.charger.plug(0, soc=40)
    await hub.wait_connector("C1", "Preparing")
    await hub.tap("R1", ROAMING)
    accepted = await hub.wait_event("auth.accepted", connector="C1", code="start")
    assert accepted["data"]["source"] == "cloud" and accepted["data"]["method"] == "emsp_card"
    requests = [p for t, p, _ in hub.cloud.messages if t.endswith("/auth/request")]
    assert requests and requests[0]["connector"] == "C1" and requests[0]["token_type"] == "emsp"
    started = await hub.wait_event("session.started", connector="C1")
    assert started["data"]["method"] == "emsp_card"
    await hub.wait_connector("C1", "Charging")

    lookup = await hub.hubctl("tokens", "lookup", ROAMING)
    assert lookup.returncode == 0 and "cache" in lookup.stdout and "Accepted" in lookup.stdout, lookup

    # The cloud stays silent: the stranger waits the timeout, then the policy refuses.
    hub.cloud.silent(True)
    hub.charger.plug(1, soc=40)
    await hub.wait_connector("C2", "Preparing")
    await hub.tap("R2", STRANGER)
    refused = await hub.wait_event("auth.rejected", connector="C2", code="cloud_timeout", timeout=6)
    assert refused["data"]["source"] == "offline_policy"
    assert (await hub.connector("C2"))["status"] == "Preparing"

    # The broker goes: the hub decides alone.
    hub.broker.kill()
    for _ in range(50):
        if not (await hub.status())["cloud"]["connected"]:
            break
        await asyncio.sleep(0.1)
    await hub.tap("R2", BLOCKED)
    blocked = await hub.wait_event("auth.rejected", connector="C2", code="blocked")
    assert blocked["data"]["source"] == "local_list" and blocked["offline"] is True
    await asyncio.sleep(1.2)
    await hub.tap("R2", STRANGER)
    await hub.wait_event("auth.rejected", connector="C2", code="unknown_offline")
    # Stop the roaming session with its own card, then start C2 with it from the cache.
    await hub.tap("R1", ROAMING)
    await hub.wait_event("session.stopped", connector="C1")
    await asyncio.sleep(1.2)
    await hub.tap("R2", ROAMING)
    cached = await hub.wait_event("auth.accepted", connector="C2", code="start")
    assert cached["data"]["source"] == "cache" and cached["data"]["offline"] is True
    await hub.wait_connector("C2", "Charging")
    hub.validate_all()


async def test_r_a3_token_list_full_then_delta_then_delta_on_a_wrong_base(card_hub):
    """R-A3: a full list, then a delta, apply and are answered; a delta on a
    version the hub does not hold is refused with a reply and changes nothing;
    `hubctl tokens` shows the version held and where an answer comes from."""
    hub = card_hub
    full = await hub.send_tokens({"version": 3, "kind": "full", "remove": [], "upsert": [
        {"uid": OWN_A, "status": "Active", "type": "own", "group": "fleet-north", "reference": "truck 12"},
        {"uid": BLOCKED, "status": "Blocked", "type": "own"},
    ]})
    assert full["ok"] and full["data"]["version"] == 3
    delta = await hub.send_tokens({"version": 4, "kind": "delta", "remove": [BLOCKED], "upsert": [
        {"uid": OWN_A, "status": "Blocked", "type": "own", "group": "fleet-north"},
    ]})
    assert delta["ok"] and delta["data"]["version"] == 4
    bad = await hub.send_tokens({"version": 9, "kind": "delta", "remove": [], "upsert": [
        {"uid": OWN_B, "status": "Active", "type": "own"},
    ]})
    assert not bad["ok"] and bad["code"] == "rejected" and "resync" in bad["message"]

    version = await hub.hubctl("tokens", "version")
    assert version.returncode == 0 and "version 4, 1 tokens" in version.stdout, version
    looked = json.loads((await hub.hubctl("--json", "tokens", "lookup", OWN_A.lower())).stdout)
    assert looked["source"] == "local_list" and looked["status"] == "Blocked" and looked["group"] == "fleet-north"
    assert looked["list"] == {"version": 4, "count": 1}
    gone = await hub.hubctl("tokens", "lookup", OWN_B)  # the refused delta added nothing
    assert gone.returncode == 4 and "unknown here" in gone.stdout
    await hub.wait_event("sync.rejected", kind="tokens")
    applied = [e for e in hub.events() if e["type"] == "sync.applied" and e["data"]["kind"] == "tokens"]
    assert [e["data"]["version"] for e in applied] == [1, 3, 4]

    # The card just blocked by the delta is refused at the reader.
    hub.charger.plug(0)
    await hub.wait_connector("C1", "Preparing")
    await hub.tap("R1", OWN_A)
    await hub.wait_event("auth.rejected", connector="C1", code="blocked")
    hub.validate_all()


async def test_reader_simulator_killed_and_restarted_fault_then_recovered_for_that_reader_only(card_hub):
    """R-H1 fault injection: the reader's peer vanishes (device.fault for R1
    only, shown in hubctl), comes back on the same port (device.recovered),
    and its taps work again."""
    hub = card_hub
    port = hub.readers["R1"].port
    hub.readers["R1"].close()
    fault = await hub.wait_event("device.fault", device="R1", timeout=8)
    assert fault["data"]["class"] == "reader"
    st = await hub.status()
    states = {r["reader"]: r["state"] for r in st["readers"]}
    assert states == {"R1": "fault", "R2": "ok"}
    devices = await hub.hubctl("devices")
    assert "R1" in devices.stdout and "fault" in devices.stdout

    hub.readers["R1"] = CardSimulator(port)
    await hub.wait_event("device.recovered", device="R1", timeout=12)
    assert not [e for e in hub.events() if e["type"] in ("device.fault", "device.recovered") and e["data"]["device"] != "R1"]
    hub.charger.plug(0)
    await hub.wait_connector("C1", "Preparing")
    await hub.tap("R1", OWN_A)
    await hub.wait_event("session.started", connector="C1")
    hub.validate_all()
