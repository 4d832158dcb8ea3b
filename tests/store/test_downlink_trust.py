"""Downlink trust (R-M3, docs/threat-model.md): what the hub refuses even from
a correctly signed or knowingly unsigned message - a command that lives too
long, one from too far in the future, a replay of a refused id, an old sync
replayed after a newer one - and that a message is applied at most once
while a copy of it is still being applied or after a crash mid-command."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from units import FakeClock, rfc3339
from edge.parts.payments.tariffs import apply_tariffs
from edge.cloud.downlink import Downlink, Rejected
from edge.cloud.schemas import event_data_validator, validator
from edge.cloud.signing import sign
from edge.core.store import Store

HUB = "H1"
KEY = bytes(range(32))
START = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def body(d) -> bytes:
    return json.dumps(d).encode()


class Rig:
    def __init__(self, directory, clock: FakeClock | None = None):
        self.clock = clock or FakeClock(START)
        self.store = Store(directory, clock=self.clock)
        self.replies: list[dict] = []
        self.events: list[tuple[str, dict]] = []
        self.gates: list[str] = []
        self.downlink = self.make()

    def make(self) -> Downlink:
        d = Downlink(HUB, self.store, clock=self.clock, reply=self.replies.append, keys=(KEY,),
                     on_event=lambda t, e: self.events.append((t, e)))
        d.register("cmd:open_gate", self.open_gate)
        d.register("tariffs", lambda m: apply_tariffs(self.store, m))  # as the payments part does
        return d

    def open_gate(self, message: dict) -> dict:
        gate = message["args"]["gate"]
        if gate == "G-BROKEN":
            raise Rejected("rejected", "gate G-BROKEN did not answer: send a technician")
        self.gates.append(gate)
        return {"gate": gate}

    async def send(self, topic: str, message: dict) -> dict:
        payload = body(message)
        full = f"hub/{HUB}/{topic}"
        return await self.downlink.handle(full, payload, sign(KEY, full, payload))

    def command(self, msg_id: str, *, ts: datetime | None = None, lives: float = 60, gate: str = "G-IN") -> dict:
        ts = ts or self.clock.now()
        return {"v": 1, "id": msg_id, "ts": rfc3339(ts), "expires": rfc3339(ts + timedelta(seconds=lives)),
                "args": {"gate": gate}}


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.store.close()


def tariffs(msg_id: str, price: str = "0.40", **extra) -> dict:
    return {"v": 1, "id": msg_id, **extra,
            "tariffs": [{"id": "t1", "currency": "EUR", "price_per_kwh": price, "vat_rate": "0.19",
                         "effective_from": "2026-01-01T00:00:00Z"}]}


def price(rig: Rig) -> str:
    return rig.store.documents("tariffs").all()[0]["price_per_kwh"]


# ------------------------------------------------------------- commands
async def test_a_command_living_longer_than_the_cap_is_refused(rig):
    """expires had no upper bound: a command signed to live 30 days could be
    replayed for 30 days. Now ts to expires is capped (1 h by default)."""
    reply = await rig.send("cmd/open_gate", rig.command("c1", lives=30 * 24 * 3600))
    assert reply["code"] == "too_long_lived" and "command_max_age_s" in reply["message"], reply
    assert rig.gates == []
    validator("reply").validate(reply)
    reply = await rig.send("cmd/open_gate", rig.command("c2", lives=3600))
    assert reply["code"] == "ok" and rig.gates == ["G-IN"]


async def test_a_command_whose_expires_is_before_its_ts_is_refused(rig):
    reply = await rig.send("cmd/open_gate", rig.command("c1", lives=-5))
    assert reply["code"] == "expired" and rig.gates == []
    ahead = rig.clock.now() + timedelta(minutes=2)
    reply = await rig.send("cmd/open_gate", rig.command("c2", ts=ahead, lives=-60))
    assert reply["code"] == "rejected" and "before it was made" in reply["message"] and rig.gates == []


async def test_a_command_from_the_future_is_refused_on_a_synchronised_clock(rig):
    ahead = rig.clock.now() + timedelta(minutes=10)
    reply = await rig.send("cmd/open_gate", rig.command("c1", ts=ahead))
    assert reply["code"] == "clock_skew" and "600 s ahead" in reply["message"], reply
    assert rig.gates == []
    # Within the allowed skew it runs.
    reply = await rig.send("cmd/open_gate", rig.command("c2", ts=rig.clock.now() + timedelta(minutes=2)))
    assert reply["code"] == "ok"


async def test_a_handled_command_replayed_after_its_id_is_forgotten_is_not_run(rig):
    """The finding: a command signed to live 30 days, handled, then replayed
    after 14 days (its id pruned) ran again. Such a command is refused from
    the start now, and a 1-hour one replayed then has expired."""
    month = rig.command("c-month", lives=30 * 24 * 3600)
    hour = rig.command("c-hour", lives=3600)
    first = [(await rig.send("cmd/open_gate", m))["code"] for m in (month, hour)]
    assert first == ["too_long_lived", "ok"]
    rig.clock.advance(15 * 24 * 3600)
    await rig.send("cmd/open_gate", rig.command("c-prune"))  # prunes ids older than 14 days
    assert rig.store.db.execute("SELECT count(*) FROM downlink_handled WHERE id LIKE 'c-%' AND id != 'c-prune'"
                                ).fetchone()[0] == 0
    again = [(await rig.send("cmd/open_gate", m))["code"] for m in (month, hour)]
    assert again == ["too_long_lived", "expired"], again
    assert rig.gates == ["G-IN", "G-IN"]  # c-hour once, c-prune once: nothing replayed ran


async def test_an_unsynchronised_clock_is_not_trusted_for_skew_but_a_later_command_shows_expiry(tmp_path):
    """A Pi without a real-time clock boots at the time it last saved, hours
    or days behind: commands are not refused as 'from the future' then. A
    replay is still caught: a later command the cloud sent shows that the
    replayed one's expiry has passed."""
    clock = FakeClock(START - timedelta(days=3), synced=False)
    rig = Rig(tmp_path, clock)
    try:
        old = rig.command("c-old", ts=START - timedelta(hours=2), lives=600)
        assert (await rig.send("cmd/open_gate", rig.command("c-now", ts=START)))["code"] == "ok"
        reply = await rig.send("cmd/open_gate", old)
        assert reply["code"] == "expired" and "a later command" in reply["message"], reply
        assert rig.gates == ["G-IN"]
        # The floor survives a restart.
        rig.downlink = rig.make()
        assert (await rig.send("cmd/open_gate", dict(old, id="c-old2")))["code"] == "expired"
        # Once synchronised, the clock is used for skew again.
        clock.set_synced(True)
        reply = await rig.send("cmd/open_gate", rig.command("c-ahead", ts=START))
        assert reply["code"] == "clock_skew"
    finally:
        rig.store.close()


async def test_a_refused_command_replayed_is_a_duplicate_and_never_runs(rig):
    """Refusals were not remembered, so a refused command replayed later (when
    the refusal's reason had gone) applied. Now the first answer stands."""
    cmd = rig.command("c1", gate="G-BROKEN")
    assert (await rig.send("cmd/open_gate", cmd))["code"] == "rejected"
    reply = await rig.send("cmd/open_gate", dict(cmd, args={"gate": "G-IN"}))
    assert reply["code"] == "duplicate" and reply["data"]["original"]["code"] == "rejected"
    expired = rig.command("c2", ts=rig.clock.now() - timedelta(minutes=5))
    assert (await rig.send("cmd/open_gate", expired))["code"] == "expired"
    rig.clock.advance(-600)  # the hub's clock is set back: the same command would now be in time
    assert (await rig.send("cmd/open_gate", expired))["code"] == "duplicate"
    assert rig.gates == []


async def test_a_bad_signature_is_not_remembered_so_a_forger_cannot_use_up_an_id(rig):
    cmd = rig.command("c1")
    payload = body(cmd)
    topic = f"hub/{HUB}/cmd/open_gate"
    assert (await rig.downlink.handle(topic, payload, "hmac-sha256=" + "0" * 64))["code"] == "bad_signature"
    assert (await rig.send("cmd/open_gate", cmd))["code"] == "ok" and rig.gates == ["G-IN"]


async def test_a_command_interrupted_by_a_crash_is_not_run_again_on_redelivery(rig):
    """The broker delivers a message again when the hub died before
    acknowledging it; a command that may have run must not run twice."""
    started = asyncio.Event()

    async def hangs(message):
        started.set()
        await asyncio.sleep(3600)

    rig.downlink.register("cmd:open_gate", hangs)
    cmd = rig.command("c1")
    task = asyncio.create_task(rig.send("cmd/open_gate", cmd))
    await started.wait()
    task.cancel()  # the process dies here, as far as the store can tell
    with pytest.raises(asyncio.CancelledError):
        await task
    rig.downlink = rig.make()  # the restarted hub
    reply = await rig.send("cmd/open_gate", cmd)
    assert reply["code"] == "duplicate" and reply["data"]["original"]["code"] == "interrupted", reply
    assert "hubctl status" in reply["data"]["original"]["message"]
    assert rig.gates == []


async def test_a_copy_delivered_while_the_first_is_applied_waits_and_is_a_duplicate(rig):
    release = asyncio.Event()
    applied = []

    async def slow_bookings(message):
        applied.append(message["id"])
        await release.wait()
        return {}

    rig.downlink.register("bookings", slow_bookings)
    msg = {"v": 1, "id": "b1", "upsert": [], "cancel": []}
    first = asyncio.create_task(rig.send("sync/bookings", msg))
    second = asyncio.create_task(rig.send("sync/bookings", msg))
    await asyncio.sleep(0.05)
    assert applied == ["b1"] and not second.done()
    release.set()
    assert (await first)["code"] == "ok"
    assert (await second)["code"] == "duplicate"
    assert applied == ["b1"]


# ----------------------------------------------------------------- syncs
async def test_an_old_sync_replayed_after_a_newer_one_is_refused_by_version(rig):
    assert (await rig.send("sync/tariffs", tariffs("m5", "0.50", version=5)))["code"] == "ok"
    reply = await rig.send("sync/tariffs", tariffs("m4", "0.40", version=4))
    assert reply["code"] == "stale" and "version 4 is older than version 5" in reply["message"], reply
    assert price(rig) == "0.50"
    rejected = [e for t, e in rig.events if t == "sync.rejected"]
    assert rejected and rejected[-1]["code"] == "stale"
    event_data_validator("sync.rejected").validate(rejected[-1])
    # The same version again (a resend under a new id) and newer ones apply.
    assert (await rig.send("sync/tariffs", tariffs("m5b", "0.51", version=5)))["code"] == "ok"
    assert (await rig.send("sync/tariffs", tariffs("m6", "0.60", version=6)))["code"] == "ok"
    assert price(rig) == "0.60"
    # It holds across a restart.
    rig.downlink = rig.make()
    assert (await rig.send("sync/tariffs", tariffs("m5c", "0.40", version=5)))["code"] == "stale"


async def test_an_old_sync_replayed_after_a_newer_one_is_refused_by_ts(rig):
    now = rig.clock.now()
    win = {"id": "w1", "connectors": ["C1"], "start": rfc3339(now + timedelta(hours=1)),
           "end": rfc3339(now + timedelta(hours=2)), "reason": "inverter"}
    newer = {"v": 1, "id": "mw2", "ts": rfc3339(now), "windows": [], "cancel": ["w1"]}
    older = {"v": 1, "id": "mw1", "ts": rfc3339(now - timedelta(minutes=1)), "windows": [win]}
    assert (await rig.send("sync/maintenance", newer))["code"] == "ok"
    reply = await rig.send("sync/maintenance", older)
    assert reply["code"] == "stale", reply
    assert rig.store.documents("maintenance").all() == []


async def test_a_sync_from_the_future_is_refused_so_it_cannot_block_later_ones(rig):
    ahead = rfc3339(rig.clock.now() + timedelta(days=1))
    assert (await rig.send("sync/tariffs", tariffs("m1", ts=ahead)))["code"] == "clock_skew"
    assert (await rig.send("sync/tariffs", tariffs("m2", ts=rfc3339(rig.clock.now()))))["code"] == "ok"


async def test_a_sync_without_version_or_ts_applies_as_before(rig):
    """The new fields are optional: a cloud that does not send them keeps
    working, judged by id alone."""
    assert (await rig.send("sync/tariffs", tariffs("m1", "0.41")))["code"] == "ok"
    assert (await rig.send("sync/tariffs", tariffs("m2", "0.42")))["code"] == "ok"
    assert price(rig) == "0.42"
    assert (await rig.send("sync/tariffs", tariffs("m3", "0.43", version="7")))["code"] == "schema"


async def test_resync_request_names_the_reason_and_what_the_hub_holds(rig):
    await rig.send("sync/tariffs", tariffs("m5", version=5, ts=rfc3339(rig.clock.now())))
    assert rig.downlink.ask_resync("start", held={"tokens": {"version": 12}})
    kind, data = rig.events[-1]
    assert kind == "sync.resync_requested"
    event_data_validator("sync.resync_requested").validate(data)
    assert data["reason"] == "start" and data["requested_by"] == "hub"
    assert data["held"] == {"tokens": {"version": 12}, "tariffs": {"version": 5, "ts": rfc3339(rig.clock.now())}}
    # A flapping link asks once every few minutes, not at every reconnect.
    assert rig.downlink.ask_resync("reconnect") is False
    assert rig.downlink.ask_resync("session_lost") is True
