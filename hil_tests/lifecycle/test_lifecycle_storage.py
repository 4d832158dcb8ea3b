"""R-D2, R-M2 with a real daemon: a damaged database never stops the hub and
never comes back silently empty. The daemon keeps an online copy of each
database ([storage] backup_interval_min, sqlite's backup API); a file found
damaged at start - truncated, random bytes over its pages, a garbage header,
emptied to 0 bytes - is moved aside, alarmed (device.alarm store_recovered)
and restored from that copy. A damaged token list without a copy starts
empty, alarmed, and the hub asks the cloud for the whole list.

Before: a damaged tokens.sqlite3 made the daemon exit at every start (systemd
gave up), and a damaged hub.sqlite3 came back empty (no backup was ever
made outside the tests)."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from edge.parts.cards.tokens import TokenStore
from hil_tests.bare_hub import BareHub, until

pytestmark = pytest.mark.hil

BACKUPS = "backup_interval_min = 0.01"  # a copy every 0.6 s


def truncated(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)


def random_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    rnd = random.Random(15)
    for n in (2, 3, 5):  # whole pages: their headers too
        data[(n - 1) * page:n * page] = rnd.randbytes(page)
    path.write_bytes(bytes(data))


def garbage_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(random.Random(8).randbytes(100) + data[100:])


def emptied(path: Path) -> None:
    path.write_bytes(b"")


DAMAGES = {"truncated": truncated, "random bytes in pages": random_pages, "garbage header": garbage_header,
           "emptied to 0 bytes": emptied}


def settle(path: Path) -> None:
    """What the killed daemon committed, folded into the main file, so the
    damage hits the data and not pages the WAL would still supply."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def read(path: Path, query: str) -> list:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()




def alarms(hub: BareHub) -> list[str]:
    return [e["data"]["message"] for e in hub.events("device.alarm") if e["data"]["alarm"] == "store_recovered"]


async def test_lifecycle_damaged_hub_database_is_restored_from_the_online_backup_R_D2(tmp_path):
    hub = BareHub(tmp_path, storage=BACKUPS)
    db_path = hub.state / "hub.sqlite3"
    bak = hub.state / "hub.sqlite3.bak"
    hub.start()
    try:
        await hub.wait_ready()
        # Records that must survive: audited technician actions in the outbox.
        assert (await hub.ask("resync", {"timeout": 1}))["ok"]
        await until(lambda: bak.exists() and read(bak, "SELECT count(*) FROM outbox WHERE stream = 'audit'")[0][0],
                    what="an online backup holding the audit event")
        for n, (name, damage) in enumerate(DAMAGES.items(), start=1):
            hub.kill()
            settle(db_path)
            damage(db_path)
            hub.start()
            await hub.wait_ready()
            audits = hub.events("audit.action")
            assert [a["data"]["action"] for a in audits][:1] == ["hub.resync"], (name, hub.log_tail())
            aside = sorted(hub.state.glob("hub.sqlite3.corrupt-*Z"))
            assert len(aside) == n, name
            found = alarms(hub)
            assert f"moved to {aside[-1].name}; restored the backup hub.sqlite3.bak" in found[-1], (name, found)
    finally:
        hub.terminate()


async def test_lifecycle_damaged_token_list_is_restored_or_started_empty_and_asked_for_R_A3(
        tmp_path, broker, cloud_client):
    state = tmp_path / "state"
    state.mkdir()
    tokens = TokenStore(state / "tokens.sqlite3")
    result = tokens.apply({"id": "t-v3", "version": 3, "kind": "full", "remove": [],
                           "upsert": [{"uid": "04BAD001", "status": "Blocked", "type": "own"}] +
                                     [{"uid": f"04{i:06X}", "status": "Active", "type": "own"} for i in range(3000)]})
    assert result.ok
    tokens.close()
    cloud = cloud_client(broker.url, topics=("hub/TOK-01/event/#",))
    hub = BareHub(tmp_path, hub_id="TOK-01", broker_url=broker.url, storage=BACKUPS)
    db_path, bak = state / "tokens.sqlite3", state / "tokens.sqlite3.bak"
    hub.start()
    try:
        await hub.wait_ready()
        await until(bak.exists, what="the token list's online backup")
        for n, (name, damage) in enumerate(DAMAGES.items(), start=1):
            hub.kill()
            settle(db_path)
            damage(db_path)
            hub.start()
            await hub.wait_ready()  # it used to exit here, at every start
            assert read(db_path, "SELECT value FROM token_meta WHERE key = 'version'") == [(3,)], name
            assert read(db_path, "SELECT status FROM token WHERE uid = '04BAD001'") == [("Blocked",)], name
            assert len(list(state.glob("tokens.sqlite3.corrupt-*Z"))) == n, name

        # No copy to fall back on: an empty list, alarmed, and the cloud asked
        # for all of it (it holds version 0).
        hub.kill()
        bak.unlink()
        garbage_header(db_path)
        hub.start()
        await hub.wait_ready()

        def seen(type_: str) -> list[dict]:
            # At least once: an event whose delivery a SIGKILL cut short is
            # sent again with the same id; the cloud counts it once.
            events = {e["id"]: e for e in (json.loads(p) for _, p, _ in cloud.received("hub/TOK-01/event/"))}
            return [e["data"] for e in sorted(events.values(), key=lambda e: (e["stream"], e["seq"])) if e["type"] == type_]

        await until(lambda: any("started empty" in a["message"] for a in seen("device.alarm")),
                    what="the alarm for an empty token list")
        recovered = [a["message"] for a in seen("device.alarm") if "tokens.sqlite3" in a["message"]]
        assert len(recovered) == len(DAMAGES) + 1, recovered
        assert all("restored the backup" in m for m in recovered[:-1]) and "unknown_offline" in recovered[-1]
        asked = await until(lambda: [r for r in seen("sync.resync_requested") if r["held"]["tokens"]["version"] == 0],
                            what="a resync request for the whole list")
        assert asked[-1]["reason"] == "start"
        assert read(db_path, "SELECT count(*) FROM token") == [(0,)]
    finally:
        hub.terminate()
