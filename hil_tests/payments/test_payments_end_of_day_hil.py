"""The terminal's end-of-day (ZVT 06 50), end to end: the real daemon, the
charger simulator over Modbus TCP, the ZVT terminal simulator over TCP and a
real mosquitto with the cloud's side listening. A settled session is closed
by `hubctl terminal end-of-day T1` (R-T3) and the cloud gets its total; a
refusal (77) is exit 3 with nothing recorded as done; the daily closing
comes by itself at its configured time."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

from edge.cloud.envelope import validate_event
from hil_tests.broker import Broker, CloudClient
from simulators.broker import mosquitto_available

pytestmark = pytest.mark.hil
SCHEMAS = Path(__file__).resolve().parents[2] / "edge" / "cloud" / "schemas" / "hubctl"


@pytest.fixture
def cloud(tmp_path):
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed: `./dev test` installs it (apt-get install mosquitto)")
    broker = Broker(tmp_path / "broker").start()
    listener = CloudClient(broker.url, client_id="cloud-end-of-day", topics=("hub/PAY-01/#",)).start()
    yield broker, listener
    listener.stop()
    broker.kill()


def linked(broker: Broker, end_of_day: str = "03:00") -> str:
    """[[terminals]] T1's end_of_day, then the hub's [cloud] section."""
    return f'end_of_day = "{end_of_day}"\n[cloud]\nbroker = "{broker.url}"\nclient_id = "hubedge-PAY-01"\n'


def closings(hub) -> list[dict]:
    db = sqlite3.connect(hub.db_path, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM terminal_closings ORDER BY id")]
    finally:
        db.close()


def received(listener: CloudClient, type_: str) -> list[dict]:
    """What the cloud got of one event type (the outbox drops what it delivered)."""
    out = [json.loads(p) for _t, p, _r in listener.received("hub/PAY-01/event/")]
    return [e for e in out if e.get("type") == type_]


async def end_of_day_events(listener: CloudClient, n: int = 1, timeout: float = 15) -> list[dict]:
    await asyncio.to_thread(listener.wait_for, lambda: len(received(listener, "payment.end_of_day")) >= n, timeout)
    events = received(listener, "payment.end_of_day")
    assert len(events) >= n, f"the cloud got {len(events)} payment.end_of_day events, expected {n}"
    for e in events:
        validate_event(e)
    return events


async def paid_session(hub, charger) -> dict:
    """A bank-card session at C1, stopped at the arch and settled."""
    await hub.paid_start("C1")
    await asyncio.sleep(1.0)
    stop = await hub.stop_at_arch("C1")
    assert stop["ok"] and stop["data"]["stopped"], stop
    return await hub.wait_payment("settled")


async def test_hubctl_end_of_day_closes_the_settled_day_and_the_cloud_gets_its_total(make_hub, charger, terminal, cloud):
    broker, listener = cloud
    hub = await make_hub("tcp", extra=linked(broker))
    paid = await paid_session(hub, charger)
    amount = Decimal(paid["settle_amount"])
    tx = terminal.transaction(paid["receipt_no"])
    assert tx.state == "booked" and not tx.closed

    proc = await hub.hubctl("terminal", "end-of-day", "T1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().startswith("terminal T1 closed the day ")
    assert f"1 transaction, {amount} EUR booked" in proc.stdout
    # The simulator submitted the booking; the reservation is closed with it.
    assert tx.closed and len(terminal.closings) == 1
    assert (terminal.closings[0].transactions, terminal.closings[0].total) == (1, amount)
    # R-P4: the open reservations were asked for (06 23, receipt FF FF) before the closing.
    asked = [c for c in terminal.commands if c in ("partial reversal", "end-of-day")]
    assert asked[-2:] == ["partial reversal", "end-of-day"], terminal.commands
    [row] = [c for c in closings(hub) if c["outcome"] == "done"]
    assert (row["trigger"], row["attempts"], Decimal(row["total"]), row["currency"]) == ("hubctl", 1, amount, "EUR")
    [event] = await end_of_day_events(listener)
    assert event["stream"] == "payment"
    assert event["data"]["total"] == {"amount": str(amount), "currency": "EUR"}
    assert (event["data"]["outcome"], event["data"]["trigger"], event["data"]["transactions"]) == ("done", "hubctl", 1)
    audits = [e["data"] for e in received(listener, "audit.action") if e["data"]["action"] == "terminal.end_of_day"]
    assert audits and audits[0]["result"] == "done" and audits[0]["target"] == "T1"
    status = await hub.ok("status")
    t1 = next(t for t in status["terminals"] if t["terminal"] == "T1")
    assert t1["last_closing"].endswith(" done") and t1["next_closing"].endswith(" 03:00 UTC")

    # A second closing the same day submits nothing more.
    again = await hub.hubctl("--json", "terminal", "end-of-day", "T1")
    assert again.returncode == 0, again.stdout + again.stderr
    data = json.loads(again.stdout)
    jsonschema.Draft202012Validator(json.loads((SCHEMAS / "terminal_end_of_day.json").read_text())).validate(data)
    assert data["total"] == {"amount": "0.00", "currency": "EUR"} and data["transactions"] == 0
    assert terminal.closings[-1].transactions == 0


async def test_refused_end_of_day_is_exit_3_and_nothing_is_recorded_as_done(make_hub, terminal, cloud):
    broker, listener = cloud
    hub = await make_hub("tcp", extra=linked(broker))
    terminal.end_of_day_refusals = 1
    proc = await hub.hubctl("terminal", "end-of-day", "T1")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "refused the end-of-day (end-of-day not possible now" in proc.stdout
    assert "nothing was closed; try again in a few minutes" in proc.stdout
    assert "end_of_day_refused" in terminal.events and terminal.closings == []
    assert [c["outcome"] for c in closings(hub)] == ["baseline"]
    as_json = await hub.hubctl("--json", "terminal", "end-of-day", "T9")
    assert as_json.returncode == 4 and json.loads(as_json.stdout)["code"] == "not_found"
    await asyncio.to_thread(listener.wait_for, lambda: received(listener, "audit.action"), 10)
    assert received(listener, "payment.end_of_day") == []
    assert received(listener, "audit.action")[0]["data"]["result"] == "refused"
    # Once the terminal can, it closes.
    ok = await hub.hubctl("terminal", "end-of-day", "T1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(terminal.closings) == 1
    await end_of_day_events(listener)


async def test_the_daily_closing_comes_by_itself_at_its_time(make_hub, charger, terminal, cloud):
    broker, listener = cloud
    # The hub's time zone is UTC here: a whole minute 40 to 100 s away, time
    # enough for a paid session before it.
    now = datetime.now(timezone.utc)
    slot = (now + timedelta(seconds=100)).replace(second=0, microsecond=0)
    hub = await make_hub("tcp", extra=linked(broker, slot.strftime("%H:%M")))
    [baseline] = closings(hub)
    assert baseline["outcome"] == "baseline"  # the day before the hub ran is not closed late
    paid = await paid_session(hub, charger)
    assert terminal.closings == []
    deadline = time.monotonic() + (slot - datetime.now(timezone.utc)).total_seconds() + 40
    while time.monotonic() < deadline and not terminal.closings:
        await asyncio.sleep(0.5)
    assert terminal.closings, f"no end-of-day by {slot:%H:%M} UTC\n{hub.log_tail()}"
    assert datetime.now(timezone.utc) >= slot  # not before its time
    assert terminal.transaction(paid["receipt_no"]).closed
    [event] = await end_of_day_events(listener)
    assert (event["data"]["trigger"], event["data"]["outcome"], event["data"]["day"]) == (
        "schedule", "done", slot.date().isoformat())
    assert event["data"]["total"] == {"amount": paid["settle_amount"], "currency": "EUR"}
    assert [c["outcome"] for c in closings(hub)] == ["baseline", "done"]
