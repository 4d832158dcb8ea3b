"""The payment flow at the arch, end to end: real daemon, charger simulator
over Modbus TCP, ZVT terminal simulator over a serial pty and over TCP."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from hil_tests.payments.conftest import expected_cost
from simulators.zvt_terminal import TEST_PAN

pytestmark = pytest.mark.hil


@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_r_p1_r_p3_r_p5_approve_charge_stop_at_arch_settles_exact_amount(make_hub, charger, terminal, transport):
    hub = await make_hub(transport)
    charger.plug(0, soc=20, battery_kwh=900, max_power_w=350_000)
    await hub.wait_connector("C1", "Preparing")
    answer = await hub.select("C1")
    assert answer["ok"], answer
    assert answer["data"]["approved"] and answer["data"]["started"], answer
    assert answer["data"]["hold"] == {"amount": "236.81", "currency": "EUR"}  # 199.00 + 19 % VAT
    c = await hub.wait_connector("C1", "Charging")
    sid = c["session"]
    await asyncio.sleep(1.0)

    stop = await hub.stop_at_arch("C1")
    assert stop["ok"] and stop["data"]["stopped"], stop
    paid = await hub.wait_payment("settled")
    s = next(x for x in hub.sessions() if x["id"] == sid)
    assert s["status"] == "stopped" and s["stop_reason"] == "arch_stop" and s["energy_wh"] > 0
    cost = expected_cost(s["energy_wh"])
    tx = terminal.transaction(paid["receipt_no"])
    assert tx.state == "booked" and tx.booked == cost and tx.amount == Decimal("236.81")
    assert Decimal(paid["settle_amount"]) == cost
    # R-S1 and R-P5: the session keeps its cost, tariff and receipt link.
    assert Decimal(s["cost_gross"]) == cost and s["currency"] == "EUR" and s["tariff_id"] == "site-default"
    assert Decimal(s["cost_net"]) + Decimal(s["cost_vat"]) == cost and s["vat_rate"] == "0.19"
    assert s["receipt_url"] == "https://receipts.example.test/r/" + s["receipt_id"]
    assert s["token_masked"] == "411111******1111" and s["method"] == "bank_card"
    settled = hub.events("payment.settled")
    assert len(settled) == 1 and settled[0]["data"]["session"] == sid
    assert settled[0]["data"]["amount"] == {"amount": str(cost), "currency": "EUR"}
    assert settled[0]["data"]["receipt_url"] == s["receipt_url"]
    assert [e["data"]["session"] for e in hub.events("payment.preauthorized")] == [sid]
    assert terminal.open_reservations() == {}

    qr = await hub.hubctl("sessions", "--qr")
    assert qr.returncode == 0 and s["receipt_url"] in qr.stdout
    # R-P5: the arch screen shows the receipt link and its QR code at the end.
    shown = await hub.ask("arch_receipt", {"terminal": "T1", "connector": "C1"})
    assert shown["ok"] and shown["data"]["receipt_url"] == s["receipt_url"], shown
    assert shown["data"]["amount"] == {"amount": str(cost), "currency": "EUR"} and "█" in shown["data"]["qr"]
    none = await hub.ask("arch_receipt", {"terminal": "T1", "connector": "C2"})
    assert not none["ok"] and none["code"] == "not_found" and "R-P5" in none["message"]
    listing = await hub.hubctl("payments")
    assert listing.returncode == 0 and "settled" in listing.stdout and paid["id"][:8] in listing.stdout

    # R-P6: the card number is nowhere: not in the log, not in the database.
    await hub.unplug_when_unlocked(0)
    blob = hub.log.read_bytes()
    for path in hub.db_path.parent.glob("hub.sqlite3*"):
        blob += path.read_bytes()
    assert TEST_PAN.encode() not in blob
    assert TEST_PAN.encode().hex().encode() not in blob


async def test_r_p1_other_card_does_not_stop_the_session(make_hub, charger, terminal):
    hub = await make_hub("tcp")
    charger.plug(1, soc=20, battery_kwh=900, max_power_w=200_000)
    await hub.wait_connector("C2", "Preparing")
    assert (await hub.select("C2"))["data"]["started"]
    await hub.wait_connector("C2", "Charging")
    terminal.pan = "5555555555554444"  # another driver's card
    refused = await hub.stop_at_arch("C2")
    assert refused["ok"] and not refused["data"]["stopped"]
    assert "not the card that started" in refused["data"]["reason"]
    await asyncio.sleep(0.5)
    assert (await hub.connector("C2"))["status"] == "Charging"
    terminal.pan = TEST_PAN
    terminal.read_card_supported = False  # the fallback: a small authorisation, released at once
    stopped = await hub.stop_at_arch("C2")
    assert stopped["data"]["stopped"], stopped
    await hub.wait_payment("settled")
    await hub.wait_no_open_holds()
    checks = [p for p in hub.payments() if p["kind"] == "card_check"]
    assert len(checks) == 1 and checks[0]["state"] == "released"


async def test_r_p7_r_c2_refusals_at_the_arch(make_hub, charger, terminal):
    hub = await make_hub("tcp")
    not_plugged = await hub.select("C1")
    assert not not_plugged["ok"] and "plug the cable" in not_plugged["message"]
    charger.plug(2, soc=50)
    await hub.wait_connector("C3", "Preparing")
    other_arch = await hub.select("C3")
    assert not other_arch["ok"] and "does not serve connector C3" in other_arch["message"]
    assert terminal.transactions == [] and hub.payments() == []


@pytest.mark.parametrize("kind, reason", [("funds", "insufficient funds"), ("expired", "card expired")])
async def test_r_p1_decline_starts_nothing_and_holds_nothing(make_hub, charger, terminal, kind, reason):
    hub = await make_hub("tcp")
    charger.plug(0, soc=40)
    await hub.wait_connector("C1", "Preparing")
    terminal.decline_next(kind)
    answer = await hub.select("C1")
    assert answer["ok"] and not answer["data"]["approved"] and reason in answer["data"]["reason"]
    await asyncio.sleep(0.5)
    assert (await hub.connector("C1"))["status"] == "Preparing"
    assert hub.sessions() == [] and terminal.open_reservations() == {}
    declined = hub.events("payment.declined")
    assert len(declined) == 1 and reason in declined[0]["data"]["reason"] and declined[0]["data"]["session"] is None
    assert hub.payments()[0]["state"] == "declined"


async def test_r_p1_terminal_timeout_starts_nothing_and_holds_nothing(make_hub, charger, terminal):
    hub = await make_hub("tcp")
    charger.plug(0, soc=40)
    await hub.wait_connector("C1", "Preparing")
    terminal.never_answer = True
    t0 = time.monotonic()
    answer = await hub.select("C1")
    assert answer["ok"] and not answer["data"]["approved"] and "did not answer" in answer["data"]["reason"]
    assert time.monotonic() - t0 < 12
    terminal.never_answer = False
    assert hub.sessions() == []
    assert hub.payments()[0]["state"] == "declined"
    await hub.wait_no_open_holds()
    assert len(hub.events("payment.declined")) == 1


async def test_r_p4_unplugged_during_preauthorisation_is_released(make_hub, charger, terminal):
    hub = await make_hub("pty")
    charger.plug(0, soc=40)
    await hub.wait_connector("C1", "Preparing")
    terminal.card_delay = 1.5  # the card holder is slow; meanwhile the truck leaves
    task = asyncio.create_task(hub.select("C1"))
    await asyncio.sleep(0.5)
    charger.unplug(0)
    answer = await task
    assert answer["ok"] and answer["data"]["approved"] and not answer["data"]["started"], answer
    assert "unplugged" in answer["data"]["reason"]
    paid = await hub.wait_payment("released")
    assert terminal.transaction(paid["receipt_no"]).state == "reversed"
    assert hub.sessions() == [] and terminal.open_reservations() == {}
    released = hub.events("payment.released")
    assert len(released) == 1 and "unplugged" in released[0]["data"]["reason"]


async def test_r_p2_cost_cap_stops_before_the_hold_and_settles_under_it(make_hub, charger, terminal):
    hub = await make_hub("tcp", preauth="8.00")  # hold 9.52 EUR: about 20 kWh at 0.399 + 19 %
    charger.plug(0, soc=5, battery_kwh=1000, max_power_w=300_000)
    await hub.wait_connector("C1", "Preparing")
    assert (await hub.select("C1"))["data"]["started"]
    await hub.wait_connector("C1", "Finishing", timeout=40)
    paid = await hub.wait_payment("settled")
    s = hub.sessions()[0]
    assert s["stop_reason"] == "cost_cap"
    cost = expected_cost(s["energy_wh"])
    assert cost <= Decimal("9.52")  # R-P2: stopped before the cost passed the hold
    assert Decimal(paid["settle_amount"]) == cost
    assert terminal.transaction(paid["receipt_no"]).booked == cost
    assert s["energy_wh"] > 10_000  # and not absurdly early


async def test_r_h1_crc_errors_and_naks_on_the_serial_line_are_recovered(make_hub, charger, terminal):
    hub = await make_hub("pty")
    charger.plug(0, soc=40, max_power_w=200_000)
    await hub.wait_connector("C1", "Preparing")
    terminal.nak_frames = 1
    terminal.corrupt_frames = 2
    answer = await hub.select("C1")
    assert answer["ok"] and answer["data"]["started"], answer
    assert terminal.events.count("crc_corrupted") == 2 and terminal.events.count("nak_sent") == 1
    await hub.wait_connector("C1", "Charging")
    terminal.corrupt_frames = 1
    sid = (await hub.connector("C1"))["session"]
    assert (await hub.ok("session_stop", {"id": sid, "reason": "HIL"}))
    paid = await hub.wait_payment("settled")
    assert terminal.transaction(paid["receipt_no"]).booked == expected_cost(hub.sessions()[0]["energy_wh"])


async def test_r_p4_terminal_gone_then_back_settlement_is_retried(make_hub, charger, terminal):
    hub = await make_hub("tcp")
    charger.plug(0, soc=40, max_power_w=200_000)
    await hub.wait_connector("C1", "Preparing")
    assert (await hub.select("C1"))["data"]["started"]
    c = await hub.wait_connector("C1", "Charging")
    port = terminal.tcp_port
    await terminal.stop()  # the terminal loses power
    assert (await hub.ok("session_stop", {"id": c["session"], "reason": "HIL"}))
    pending = await hub.wait_payment("settling")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not hub.payments()[0]["attempts"]:
        await asyncio.sleep(0.2)
    assert hub.payments()[0]["attempts"] >= 1 and hub.payments()[0]["last_error"]
    st = await hub.ok("status")
    t1 = next(t for t in st["terminals"] if t["terminal"] == "T1")
    assert t1["open_holds"] == 1
    devices = {d["device"]: d for d in await hub.ok("devices")}
    assert devices["T1"]["state"] == "fault"
    # Charging elsewhere goes on while the terminal is away.
    charger.plug(2, soc=40)
    await hub.wait_connector("C3", "Preparing")

    await terminal.start(tcp_port=port, pty=False)  # back
    retry = await hub.hubctl("payment", "retry", pending["id"][:8])
    assert retry.returncode == 0, retry.stdout + retry.stderr
    paid = await hub.wait_payment("settled")
    assert terminal.transaction(paid["receipt_no"]).booked == expected_cost(hub.sessions()[0]["energy_wh"])
    assert [e["data"]["device"] for e in hub.events("device.recovered")] == ["T1"]
    audit = [e for e in hub.events("audit.action") if e["data"]["action"] == "payment.retry"]
    assert audit and audit[0]["data"]["result"] == "settled"


async def test_r_p4_one_dead_terminal_does_not_stall_another_arch(make_hub, charger, terminal):
    """R-P4 / R-C6 spirit: each terminal has its own lane; T1 hanging on a
    silent terminal does not delay T2's driver nor the hub's polling."""
    from simulators.zvt_terminal import ZvtTerminalSimulator

    second = ZvtTerminalSimulator(terminal_id="29002002")
    await second.start(tcp_port=0, pty=False)
    try:
        hub = await make_hub("tcp", extra=f'[[terminals]]\nid = "T2"\nport = "{second.tcp_url}"\nconnectors = ["C3"]\n')
        charger.plug(0, soc=40)
        charger.plug(2, soc=40, max_power_w=200_000)
        await hub.wait_connector("C1", "Preparing")
        await hub.wait_connector("C3", "Preparing")
        terminal.never_answer = True
        stuck = asyncio.create_task(hub.select("C1"))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        answer = await hub.select("C3", terminal="T2")
        assert answer["data"]["started"] and time.monotonic() - t0 < 2.5, answer
        await hub.wait_connector("C3", "Charging", timeout=5)
        assert not (await stuck)["data"]["approved"]
        terminal.never_answer = False
        st = await hub.ok("status")
        assert {t["terminal"]: t["open_holds"] for t in st["terminals"]} == {"T1": 0, "T2": 1}
    finally:
        await second.stop()
