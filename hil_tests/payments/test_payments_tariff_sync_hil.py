"""R-P8 / R-P3 / R-M3 over the real wire: tariffs the cloud pushes on
hub/{id}/sync/tariffs through a real mosquitto price the bank-card sessions
paid at the arch (real daemon, ZVT terminal simulator over TCP, charger
simulator over Modbus TCP).

Every expected amount is computed here from the rule edge/parts/payments/pricing.py states,
not with edge.parts.payments.pricing: net = kWh x price rounded half up to the cent, VAT on
the rounded net rounded half up, gross = net + VAT."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from units import parse_rfc3339, rfc3339
from edge.cloud.envelope import validate_event
from hil_tests.broker import Broker, CloudClient

pytestmark = pytest.mark.hil

HUB = "PAY-01"  # [hub] id of the paid hub (hil_tests/payments/conftest.py)
SITE_VAT = "0.19"  # its [hub] vat_rate
CENT = Decimal("0.01")


def expected_bill(energy_wh: int, price: str, vat: str) -> dict:
    net = (Decimal(energy_wh) * Decimal(price) / 1000).quantize(CENT, rounding=ROUND_HALF_UP)
    vat_amount = (net * Decimal(vat)).quantize(CENT, rounding=ROUND_HALF_UP)
    return {"net": net, "vat": vat_amount, "gross": net + vat_amount}


def tariff(tid: str, price: str, since: datetime, *, vat: str = SITE_VAT, currency: str = "EUR") -> dict:
    return {"id": tid, "currency": currency, "price_per_kwh": price, "vat_rate": vat, "effective_from": rfc3339(since)}


# ------------------------------------------------------------------ cloud side
@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def cloud(broker):
    c = CloudClient(broker.url, client_id="cloud-pay-test", topics=(f"hub/{HUB}/#",)).start()
    yield c
    c.stop()


@pytest.fixture
def cloud_hub(broker, cloud, make_hub):
    """make_hub with a [cloud] link to the test broker; returns once the hub
    answers on it (so its subscription is in place)."""

    async def make():
        hub = await make_hub("tcp", extra=f'[cloud]\nbroker = "{broker.url}"\nclient_id = "pay-01"\nallow_unsigned = true\n')
        await linked(hub, cloud)
        return hub

    return make


def publish(cloud: CloudClient, kind: str, body: dict) -> str:
    """Publish ``body`` as a v1 message on hub/PAY-01/sync/<kind>; returns its id."""
    message_id = str(uuid.uuid4())
    cloud.publish(f"hub/{HUB}/sync/{kind}", json.dumps({"v": 1, "id": message_id, **body}))
    return message_id


async def reply_to(cloud: CloudClient, message_id: str, timeout: float = 10.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _topic, payload, _retained in cloud.received(f"hub/{HUB}/reply"):
            answer = json.loads(payload)
            if answer.get("id") == message_id:
                return answer
        await asyncio.sleep(0.05)
    return None


async def sync_tariffs(cloud: CloudClient, *tariffs: dict) -> dict:
    message_id = publish(cloud, "tariffs", {"tariffs": list(tariffs)})
    answer = await reply_to(cloud, message_id)
    assert answer is not None, f"no reply to tariffs message {message_id}"
    return answer


async def linked(hub, cloud: CloudClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (await hub.status())["cloud"].get("connected"):
        assert time.monotonic() < deadline, f"hub never connected to the broker: {hub.log_tail()}"
        await asyncio.sleep(0.1)
    # The link is up when the hub has sent its SUBSCRIBE, maybe before the
    # broker took it: an empty maintenance list answered proves it did.
    while time.monotonic() < deadline:
        if await reply_to(cloud, publish(cloud, "maintenance", {"windows": []}), timeout=1.0):
            return
    raise AssertionError(f"hub never answered on hub/{HUB}/reply: {hub.log_tail()}")


def events(hub, cloud: CloudClient, type_: str) -> list[dict]:
    """Events of ``type_`` the hub emitted: those still in its outbox and
    those the cloud received (delivered ones leave the outbox), each once."""
    found = {e["id"]: e for e in hub.events(type_) if e["type"] == type_}
    for _topic, payload, _retained in cloud.received(f"hub/{HUB}/event/"):
        e = json.loads(payload)
        if e.get("type") == type_:
            validate_event(e)
            found[e["id"]] = e
    return sorted(found.values(), key=lambda e: (e["stream"], e["seq"]))


async def wait_events(hub, cloud: CloudClient, type_: str, count: int, timeout: float = 10.0, **data) -> list[dict]:
    """Wait until ``count`` events of ``type_`` whose data has ``data`` exist."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in events(hub, cloud, type_) if all(e["data"].get(k) == v for k, v in data.items())]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------- the session
async def plugged(hub, charger, connector: str, index: int) -> None:
    charger.plug(index, soc=20, battery_kwh=900, max_power_w=350_000)
    await hub.wait_connector(connector, "Preparing")


async def approved(hub, connector: str) -> tuple[str, dict]:
    """Approve at the arch; returns the session id and the answer's data."""
    answer = await hub.select(connector)
    assert answer["ok"] and answer["data"]["started"], answer
    c = await hub.wait_connector(connector, "Charging")
    return c["session"], answer["data"]


async def start_paid(hub, charger, connector: str, index: int) -> tuple[str, dict]:
    await plugged(hub, charger, connector, index)
    return await approved(hub, connector)


async def stop_paid(hub, connector: str, session_id: str, timeout: float = 20.0) -> dict:
    """Stop at the arch (same card) and wait for the booking; returns the payment row."""
    stop = await hub.stop_at_arch(connector)
    assert stop["ok"] and stop["data"]["stopped"], stop
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [p for p in hub.payments() if p["session_id"] == session_id]
        if rows and rows[0]["state"] == "settled":
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"payment of session {session_id} not settled: {hub.payments()}\n{hub.log_tail()}")


async def assert_billed(hub, cloud, terminal, paid: dict, tariff_id: str, price: str, vat: str = SITE_VAT) -> dict:
    """R-P3 / R-S1 / R-P8: the terminal booked, the ledger, the session and
    the payment.settled event all carry energy x ``price`` + ``vat``."""
    s = next(x for x in hub.sessions() if x["id"] == paid["session_id"])
    assert s["status"] == "stopped" and s["energy_wh"] > 0, s
    bill = expected_bill(s["energy_wh"], price, vat)
    assert bill["gross"] < Decimal(paid["hold"]), "the cost cap would decide the amount, not the tariff"
    tx = terminal.transaction(paid["receipt_no"])
    assert tx.state == "booked" and tx.booked == bill["gross"], (tx, bill)
    assert Decimal(paid["settle_amount"]) == bill["gross"]
    assert s["tariff_id"] == tariff_id and Decimal(s["price_per_kwh"]) == Decimal(price), s
    assert Decimal(s["vat_rate"]) == Decimal(vat) and s["currency"] == "EUR"
    assert (Decimal(s["cost_net"]), Decimal(s["cost_vat"]), Decimal(s["cost_gross"])) == (
        bill["net"], bill["vat"], bill["gross"])
    await wait_events(hub, cloud, "payment.settled", 1, session=s["id"])
    await asyncio.sleep(0.3)  # time for a second one to show, were there any
    settled = [e for e in events(hub, cloud, "payment.settled") if e["data"]["session"] == s["id"]]
    assert len(settled) == 1, settled
    data = settled[0]["data"]
    assert data["amount"] == {"amount": str(bill["gross"]), "currency": "EUR"}
    assert data["cost"] == {"net": str(bill["net"]), "vat": str(bill["vat"]), "gross": str(bill["gross"]),
                            "currency": "EUR"}
    assert data["energy_wh"] == s["energy_wh"]
    assert data["tariff"]["id"] == tariff_id and Decimal(data["tariff"]["price_per_kwh"]) == Decimal(price)
    return bill


def tariffs_file(hub):
    return hub.db_path.parent / "tariffs.json"


# ----------------------------------------------------------------------- tests
async def test_r_p8_r_p3_synced_tariff_prices_the_next_paid_session(cloud_hub, cloud, charger, terminal):
    """R-P8: a tariff the cloud sends, in force now, replaces the site's
    default; R-P3: the session is settled at energy x that price + VAT."""
    hub = await cloud_hub()
    now = datetime.now(timezone.utc)
    answer = await sync_tariffs(cloud, tariff("MKT-0790", "0.79", now - timedelta(seconds=5)))
    assert answer["ok"] and answer["code"] == "ok" and answer["data"]["counts"] == {"upserted": 1}, answer
    applied = await wait_events(hub, cloud, "sync.applied", 1, kind="tariffs")
    assert [e["data"]["message_id"] for e in applied] == [answer["id"]]

    sid, started = await start_paid(hub, charger, "C1", 0)
    assert started["hold"] == {"amount": "236.81", "currency": "EUR"}  # 199.00 + 19 % VAT of the synced tariff
    await asyncio.sleep(1.0)
    paid = await stop_paid(hub, "C1", sid)
    bill = await assert_billed(hub, cloud, terminal, paid, "MKT-0790", "0.79")
    assert bill["gross"] != expected_bill(hub.sessions()[0]["energy_wh"], "0.399", SITE_VAT)["gross"]

    # The cloud gets the same settlement over MQTT (not only from the outbox).
    deadline = time.monotonic() + 10
    while not (wire := [json.loads(p) for _t, p, _r in cloud.received(f"hub/{HUB}/event/payment")
                        if json.loads(p).get("type") == "payment.settled"]):
        assert time.monotonic() < deadline, "payment.settled never reached the cloud"
        await asyncio.sleep(0.1)
    assert len(wire) == 1 and wire[0]["data"]["session"] == sid
    assert wire[0]["data"]["amount"] == {"amount": str(bill["gross"]), "currency": "EUR"}
    assert wire[0]["data"]["tariff"]["id"] == "MKT-0790"


async def test_r_p8_future_tariff_spares_the_session_already_running(cloud_hub, cloud, charger, terminal):
    """R-P8: the tariff in force at session start applies for the whole
    session; one that takes effect meanwhile prices only later sessions."""
    hub = await cloud_hub()
    await plugged(hub, charger, "C1", 0)
    now = datetime.now(timezone.utc)
    due = now + timedelta(seconds=4)  # a VAT change and a new price, announced ahead
    answer = await sync_tariffs(cloud, tariff("MKT-A", "0.79", now - timedelta(seconds=5)),
                                tariff("MKT-B", "0.85", due, vat="0.16"))
    assert answer["ok"] and answer["data"]["counts"] == {"upserted": 2}, answer
    first, started = await approved(hub, "C1")
    assert started["hold"] == {"amount": "236.81", "currency": "EUR"}  # 199.00 + 19 % VAT of MKT-A
    chosen_at = parse_rfc3339(next(p for p in hub.payments() if p["session_id"] == first)["created_at"])
    assert chosen_at < due, "the first session must start before MKT-B takes effect (machine too slow?)"
    await asyncio.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds()) + 0.5)

    second, started = await start_paid(hub, charger, "C2", 1)
    assert started["hold"] == {"amount": "230.84", "currency": "EUR"}  # 199.00 + 16 % VAT of MKT-B
    await asyncio.sleep(0.5)
    paid_first = await stop_paid(hub, "C1", first)  # stopped after MKT-B took effect
    paid_second = await stop_paid(hub, "C2", second)
    await assert_billed(hub, cloud, terminal, paid_first, "MKT-A", "0.79")
    await assert_billed(hub, cloud, terminal, paid_second, "MKT-B", "0.85", vat="0.16")
    assert terminal.open_reservations() == {}


async def test_r_m3_malformed_tariffs_are_refused_and_change_no_price(cloud_hub, cloud, charger, terminal):
    """R-M3: each bad tariffs message is answered with why and changes
    nothing; the next session is priced at the tariff synced before."""
    hub = await cloud_hub()
    now = datetime.now(timezone.utc)
    good = tariff("MKT-0790", "0.79", now - timedelta(minutes=1))
    assert (await sync_tariffs(cloud, good))["ok"]
    before = tariffs_file(hub).read_bytes()

    newer = tariff("MKT-0990", "0.99", now - timedelta(seconds=5))  # would win if anything applied
    missing = dict(newer)
    del missing["vat_rate"]
    cases = [
        ("negative price", [dict(newer, price_per_kwh="-0.99")], "schema", "tariffs/0/price_per_kwh"),
        ("currency not ISO 4217 letters", [dict(newer, currency="eur")], "schema", "tariffs/0/currency"),
        ("missing field", [missing], "schema", "'vat_rate' is a required property"),
        ("time without zone", [dict(newer, effective_from="2026-01-01T00:00:00")], "schema",
         "tariffs/0/effective_from"),
        ("VAT in percent", [dict(newer, vat_rate="19")], "rejected", "must be a fraction below 1"),
        ("one bad tariff in a batch", [newer, dict(newer, id="MKT-BAD", price_per_kwh="250")], "rejected",
         "tariff MKT-BAD: price_per_kwh 250 per kWh is implausible"),
        ("same tariff twice", [newer, dict(newer, price_per_kwh="0.98")], "rejected", "appears twice"),
    ]
    for what, tariffs, code, words in cases:
        answer = await sync_tariffs(cloud, *tariffs)
        assert not answer["ok"] and answer["code"] == code, (what, answer)
        assert words in answer["message"] and "nothing" in answer["message"] and "applied" in answer["message"], (
            what, answer)
    rejected = await wait_events(hub, cloud, "sync.rejected", len(cases), kind="tariffs")
    assert [e["data"]["code"] for e in rejected] == [c[2] for c in cases]
    assert tariffs_file(hub).read_bytes() == before

    sid, _ = await start_paid(hub, charger, "C1", 0)
    await asyncio.sleep(1.0)
    paid = await stop_paid(hub, "C1", sid)
    await assert_billed(hub, cloud, terminal, paid, "MKT-0790", "0.79")


async def test_r_m3_tariff_in_an_unknown_or_foreign_currency_is_refused(cloud_hub, cloud):
    """R-M3 / R-P8: a currency edge/parts/payments/pricing.py does not know, or another than
    the site's, can never price a session here; the hub says so instead of
    storing it and answering ok."""
    hub = await cloud_hub()
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    for tid, code in (("MKT-XYZ", "XYZ"), ("MKT-GBP", "GBP")):
        answer = await sync_tariffs(cloud, tariff(tid, "0.79", since, currency=code))
        assert not answer["ok"] and answer["code"] == "rejected", answer
        assert code in answer["message"] and "nothing applied" in answer["message"], answer
        assert not tariffs_file(hub).exists() or tid.encode() not in tariffs_file(hub).read_bytes()


async def test_r_p8_synced_tariff_survives_a_power_cut(cloud_hub, broker, cloud, charger, terminal):
    """R-P8: synced tariffs are stored; after a SIGKILL the hub prices with
    what it stored, with no cloud to send it again."""
    hub = await cloud_hub()
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    assert (await sync_tariffs(cloud, tariff("MKT-0790", "0.79", since)))["ok"]
    hub.kill()
    broker.kill()  # nothing can be sent again: the restarted hub has only what it stored
    await hub.restart()
    sid, _ = await start_paid(hub, charger, "C1", 0)
    await asyncio.sleep(1.0)
    paid = await stop_paid(hub, "C1", sid)
    await assert_billed(hub, cloud, terminal, paid, "MKT-0790", "0.79")
