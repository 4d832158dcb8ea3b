"""R-M3 (unit): cloud-to-hub messages validated, refused with a reason and no
change, applied whole and once; R-C7 maintenance windows, R-P8 tariffs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from units import FakeClock, rfc3339
from edge.cloud.downlink import Downlink, Rejected, kind_of_topic, maintenance_in_force
from edge.parts.payments.tariffs import apply_tariffs, tariff_in_force
from edge.cloud.schemas import validator
from edge.core.store import Store

HUB = "H1"


@pytest.fixture
def hub(tmp_path):
    clock = FakeClock()
    store = Store(tmp_path, clock=clock)
    replies: list[dict] = []
    events: list[tuple[str, dict]] = []
    downlink = Downlink(HUB, store, clock=clock, reply=replies.append, on_event=lambda t, d: events.append((t, d)),
                        allow_unsigned=True)
    downlink.register("tariffs", lambda m: apply_tariffs(store, m))  # as the payments part does
    yield downlink, store, clock, replies, events
    store.close()


def tariff(**kw):
    t = {"id": "t1", "currency": "EUR", "price_per_kwh": "0.399", "vat_rate": "0.19",
         "effective_from": "2026-01-01T00:00:00Z"}
    t.update(kw)
    return t


def body(d) -> bytes:
    return json.dumps(d).encode()


async def test_store_downlink_every_refusal_code_and_no_change_R_M3(hub, tmp_path):
    downlink, store, clock, replies, events = hub
    await downlink.handle(f"hub/{HUB}/sync/tariffs", body({"v": 1, "id": "ok1", "tariffs": [tariff()]}))
    assert replies[-1]["code"] == "ok" and replies[-1]["ok"]
    snapshot = (tmp_path / "tariffs.json").read_bytes()
    cmd = {"v": 1, "id": "c1", "ts": rfc3339(clock.now()), "expires": rfc3339(clock.now() + timedelta(minutes=1)),
           "args": {}}
    cases = [
        ("sync/tariffs", b"x" * (256 * 1024 + 1), "too_large"),
        ("sync/tariffs", b"\xc3\x28", "invalid_json"),
        ("sync/tariffs", b"[1,2]", "invalid_json"),
        ("sync/tariffs", body({"v": "1", "id": "a1", "tariffs": []}), "wrong_version"),
        ("sync/tariffs", body({"id": "a2", "tariffs": []}), "wrong_version"),
        ("sync/tariffs", body({"v": 1, "id": "a3", "tariffs": [tariff(currency="euro")]}), "schema"),
        ("sync/tariffs", body({"v": 1, "id": "a4", "tariffs": [tariff(effective_from="tomorrow")]}), "schema"),
        ("sync/tariffs", body({"v": 1, "id": "a5", "tariffs": [tariff(id="t2"), tariff(id="t2")]}), "rejected"),
        ("sync/tariffs", body({"v": 1, "id": "b", "tariffs": [tariff(id="t3"), tariff(id="t4", vat_rate="1.5")]}),
         "rejected"),
        ("sync/tokens", body({"v": 1, "id": "a6", "version": 1, "kind": "full", "upsert": [{"uid": "x"}],
                              "remove": []}), "schema"),
        ("sync/tokens", body({"v": 1, "id": "a7", "version": 1, "kind": "full", "upsert": [], "remove": []}),
         "unknown_kind"),  # valid, but nobody registered a tokens handler here
        ("sync/weather", body({"v": 1, "id": "a8"}), "unknown_kind"),
        ("cmd/reboot", body(cmd), "unknown_command"),
        ("cmd/resync", body(dict(cmd, id="c2")), "unknown_command"),  # known name, no handler registered
        ("sync/tariffs", body({"v": 1, "id": "ok1", "tariffs": [tariff(price_per_kwh="9.99")]}), "duplicate"),
        # A refusal is remembered too: the same id, corrected, is not applied.
        ("sync/tariffs", body({"v": 1, "id": "a5", "tariffs": [tariff(id="t2")]}), "duplicate"),
    ]
    for topic, payload, code in cases:
        reply = await downlink.handle(f"hub/{HUB}/{topic}", payload)
        assert reply is replies[-1]
        assert reply["code"] == code, (topic, reply)
        assert list(validator("reply").iter_errors(reply)) == []
        assert reply["message"]
    assert (tmp_path / "tariffs.json").read_bytes() == snapshot
    assert replies[-2]["ok"] is True and replies[-2]["data"]["original"]["code"] == "ok"
    assert replies[-1]["ok"] is False and replies[-1]["data"]["original"]["code"] == "rejected"
    assert [t for t, _ in events].count("sync.applied") == 1
    assert all(t == "sync.rejected" for t, _ in events[1:])


async def test_store_downlink_command_once_and_expiry_R_M3(hub):
    downlink, store, clock, replies, _ = hub
    calls = []

    async def stop_session(message):
        calls.append(message["args"]["session"])
        if message["args"]["session"] == "nope":
            raise Rejected("rejected", "no session nope in progress: check hubctl sessions")
        return {"stopped": message["args"]["session"]}

    downlink.register("cmd:stop_session", stop_session)
    exp = rfc3339(clock.now() + timedelta(seconds=30))
    cmd = {"v": 1, "id": "c1", "ts": rfc3339(clock.now()), "expires": exp, "args": {"session": "s1"}}
    r1 = await downlink.handle(f"hub/{HUB}/cmd/stop_session", body(cmd))
    assert r1["ok"] and r1["data"] == {"stopped": "s1"}
    r2 = await downlink.handle(f"hub/{HUB}/cmd/stop_session", body(cmd))
    assert r2["code"] == "duplicate" and calls == ["s1"]
    clock.advance(31)
    r3 = await downlink.handle(f"hub/{HUB}/cmd/stop_session", body(dict(cmd, id="c2")))
    assert r3["code"] == "expired" and not r3["ok"] and calls == ["s1"]
    r4 = await downlink.handle(f"hub/{HUB}/cmd/stop_session",
                               body(dict(cmd, id="c3", expires=rfc3339(clock.now() + timedelta(seconds=5)),
                                         args={"session": "nope"})))
    assert r4["code"] == "rejected" and "hubctl" in r4["message"]
    # handled ids survive a restart, and are pruned by age
    store2 = Store(store.state_dir, clock=clock)
    d2 = Downlink(HUB, store2, clock=clock, reply=replies.append, allow_unsigned=True)
    d2.register("tariffs", lambda m: apply_tariffs(store2, m))
    d2.register("cmd:stop_session", stop_session)
    cmd_late = dict(cmd, expires=rfc3339(clock.now() + timedelta(days=30)))
    assert (await d2.handle(f"hub/{HUB}/cmd/stop_session", body(cmd_late)))["code"] == "duplicate"
    clock.advance(15 * 24 * 3600)
    await d2.handle(f"hub/{HUB}/cmd/stop_session", body(dict(cmd_late, id="c9")))  # triggers pruning
    assert store2.db.execute("SELECT count(*) FROM downlink_handled WHERE id = 'c1'").fetchone()[0] == 0
    store2.close()


async def test_store_downlink_handler_crash_is_not_remembered(hub):
    downlink, store, clock, replies, _ = hub
    attempts = []

    def flaky(message):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk busy")
        return None

    downlink.register("bookings", flaky)
    msg = body({"v": 1, "id": "b1", "upsert": [], "cancel": []})
    assert (await downlink.handle(f"hub/{HUB}/sync/bookings", msg))["code"] == "error"
    assert (await downlink.handle(f"hub/{HUB}/sync/bookings", msg))["code"] == "ok"
    assert len(attempts) == 2


async def test_store_downlink_auth_response_replies_only_on_refusal(hub):
    downlink, _, _, replies, _ = hub
    got = []
    downlink.register("auth_response", got.append)
    ok = {"v": 1, "id": "r1", "status": "Accepted", "expires": "2026-01-02T00:00:00Z", "group": None,
          "reference": "ACME"}
    assert await downlink.handle(f"hub/{HUB}/auth/response", body(ok)) is None and len(got) == 1
    bad = await downlink.handle(f"hub/{HUB}/auth/response", body(dict(ok, id="r2", status="Maybe")))
    assert bad["code"] == "schema" and len(got) == 1
    assert await downlink.handle("hub/OTHER/auth/response", body(ok)) is None


async def test_store_downlink_maintenance_windows_R_C7(hub):
    downlink, store, clock, replies, _ = hub
    now = clock.now()
    windows = [{"id": "w1", "connectors": ["c1", "c2"], "start": rfc3339(now + timedelta(hours=1)),
                "end": rfc3339(now + timedelta(hours=3)), "reason": "inverter service"},
               {"id": "w2", "connectors": ["*"], "start": rfc3339(now + timedelta(hours=2)),
                "end": rfc3339(now + timedelta(hours=4)), "reason": "grid works"}]
    r = await downlink.handle(f"hub/{HUB}/sync/maintenance", body({"v": 1, "id": "m1", "windows": windows}))
    assert r["ok"], r
    stored = store.documents("maintenance").all()
    assert maintenance_in_force(stored, "c1", now) is None
    assert maintenance_in_force(stored, "c1", now + timedelta(hours=1))["id"] == "w1"
    assert maintenance_in_force(stored, "c3", now + timedelta(hours=1)) is None
    assert maintenance_in_force(stored, "c1", now + timedelta(hours=2, minutes=30))["id"] == "w2"  # ends last
    assert maintenance_in_force(stored, "c3", now + timedelta(hours=4)) is None  # end is exclusive
    bad = dict(windows[0], id="w3", end=windows[0]["start"])
    r = await downlink.handle(f"hub/{HUB}/sync/maintenance", body({"v": 1, "id": "m2", "windows": [bad]}))
    assert r["code"] == "rejected"
    r = await downlink.handle(f"hub/{HUB}/sync/maintenance",
                              body({"v": 1, "id": "m3", "windows": [], "cancel": ["w2"]}))
    assert r["data"]["counts"]["cancelled"] == 1
    assert [w["id"] for w in store.documents("maintenance").all()] == ["w1"]


def test_store_tariff_in_force_R_P8():
    from datetime import datetime, timezone
    tariffs = [tariff(id="a", effective_from="2025-01-01T00:00:00.000Z"),
               tariff(id="b", effective_from="2026-01-01T00:00:00.000Z", price_per_kwh="0.45"),
               tariff(id="c", effective_from="2026-06-01T00:00:00.000Z", currency="CHF")]
    at = datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert tariff_in_force(tariffs, at, "EUR")["id"] == "b"
    assert tariff_in_force(tariffs, datetime(2025, 6, 1, tzinfo=timezone.utc))["id"] == "a"
    assert tariff_in_force(tariffs, at, "CHF") is None


def test_store_downlink_topic_kinds():
    assert kind_of_topic("H", "hub/H/sync/tariffs") == "tariffs"
    assert kind_of_topic("H", "hub/H/cmd/open_gate") == "cmd:open_gate"
    assert kind_of_topic("H", "hub/H/auth/response") == "auth_response"
    assert kind_of_topic("H", "hub/H2/sync/tariffs") is None
    assert kind_of_topic("H", "hub/H/event/session") is None


async def test_store_tariff_in_a_currency_the_site_cannot_price_is_refused_R_P8(tmp_path):
    """A tariff the hub would store and never apply (unknown currency, or not
    the site's) is refused whole, naming the currency; nothing stored."""
    clock = FakeClock()
    store = Store(tmp_path, clock=clock)
    replies: list[dict] = []
    downlink = Downlink(HUB, store, clock=clock, reply=replies.append, allow_unsigned=True)
    downlink.register("tariffs", lambda m: apply_tariffs(store, m, currency="EUR"))
    try:
        for n, code in enumerate(("XYZ", "GBP")):
            await downlink.handle(f"hub/{HUB}/sync/tariffs",
                                  body({"v": 1, "id": f"x{n}", "tariffs": [tariff(id="ok"), tariff(id="t", currency=code)]}))
            assert replies[-1]["code"] == "rejected" and code in replies[-1]["message"], replies[-1]
        assert not store.documents("tariffs").all()
        await downlink.handle(f"hub/{HUB}/sync/tariffs", body({"v": 1, "id": "ok", "tariffs": [tariff()]}))
        assert replies[-1]["ok"], replies[-1]
    finally:
        store.close()


def test_store_tariff_in_force_equal_start_highest_id_wins_in_any_order_R_P8():
    """Same rule as edge.parts.payments.pricing.tariff_in_force: the stored order never decides."""
    at = datetime(2026, 6, 1, tzinfo=timezone.utc)
    a, b = tariff(id="a", price_per_kwh="0.40"), tariff(id="b", price_per_kwh="0.50")
    assert tariff_in_force([a, b], at)["id"] == "b"
    assert tariff_in_force([b, a], at)["id"] == "b"
