"""A state change and its event are one commit (R-C9, R-M2, R-P9): a crash
between any two commits of a charging journey leaves no session stopped or
started without its event, no connector state without its event; a commit
that fails leaves memory as the database says, and the next reading makes
the change again, with its event."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from edge.core import store as store_module
from tests.foundation.hub_rig import CrashImages, Rig, events_in


def invariant_violations(state: Path) -> list[str]:
    """What a hub restarted on this state directory could never put right."""
    db = sqlite3.connect(state / "hub.sqlite3")
    try:
        events = events_in(db)
        sessions = db.execute("SELECT id, status FROM sessions").fetchall()
        connectors = dict(db.execute("SELECT id, state FROM connector_state").fetchall())
    finally:
        db.close()
    problems = []
    by_type: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e["data"].get("session"):
            by_type[e["type"]].append(e["data"]["session"])
    for sid, status in sessions:
        stopped = by_type["session.stopped"].count(sid)
        started = by_type["session.started"].count(sid)
        if status in ("stopped", "failed") and stopped != 1:
            problems.append(f"session {sid} is {status} with {stopped} session.stopped events")
        if status in ("active", "stopped") and started != 1:
            problems.append(f"session {sid} is {status} with {started} session.started events")
        if status == "starting" and (started or stopped):
            problems.append(f"session {sid} is starting but has events")
    last_status = {}
    for e in events:
        if e["type"] == "connector.status":
            last_status[e["data"]["connector"]] = e["data"]["status"]
    for cid, state_ in connectors.items():
        if last_status.get(cid, "Available") != state_:
            problems.append(f"connector {cid} is {state_} but its last event says {last_status.get(cid)}")
    for stream in {e["stream"] for e in events}:
        seqs = [e["seq"] for e in events if e["stream"] == stream]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"stream {stream} seqs {seqs}")
    return problems


async def test_a_crash_after_any_commit_of_a_journey_leaves_every_change_with_its_event_R_C9(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHECKPOINT_AFTER_COMMITS", 10**6)
    monkeypatch.setattr(store_module, "CHECKPOINT_FORCED_AFTER_COMMITS", 10**6)
    rig = Rig(tmp_path)
    images = CrashImages(rig.hub.store, tmp_path / "images")
    charger = rig.charger
    try:
        # A session that charges and ends.
        rig.read(C1="plugged")
        s1 = await rig.hub.start_session("C1", method="remote")
        charger.energy["C1"] += 10
        rig.read(C1="charging")
        charger.energy["C1"] += 5000
        rig.read(C1="finished")
        rig.read(C1="unplugged")
        # A start the charger refuses: the session fails at once.
        rig.read(C2="plugged")
        charger.refuse_start = True
        with pytest.raises(Exception):
            await rig.hub.start_session("C2", method="remote")
        charger.refuse_start = False
        # A start the truck leaves before energy flows.
        s3 = await rig.hub.start_session("C2", method="remote")
        rig.read(C2="unplugged")
    finally:
        taken = images.stop()
    assert rig.hub.sessions.get(s1.id).status == "stopped" and rig.hub.sessions.get(s1.id).energy_wh == 5010
    assert rig.hub.sessions.get(s3.id).status == "failed"
    rig.close()
    assert len(taken) >= 8, f"only {len(taken)} commits seen"
    for image in taken:
        assert invariant_violations(image) == [], image.name
    for image in taken:  # and a hub starts again on each
        restarted = Rig(image.parent, state=image.name)
        assert restarted.hub.store.alarms == []
        restarted.close()


async def test_a_failed_commit_leaves_the_connector_as_stored_and_the_next_reading_makes_the_change(tmp_path):
    """One sqlite error on the way (the field saw "disk I/O error") must not
    leave the session stopped without its event, nor the connector moved on
    in memory only, where no later reading would ever report it."""
    rig = Rig(tmp_path)
    try:
        rig.read(C1="plugged")
        s = await rig.hub.start_session("C1", method="remote")
        rig.read(C1="charging")
        rig.hub.store.db.execute(
            "CREATE TEMP TRIGGER disk_error BEFORE INSERT ON outbox WHEN NEW.body LIKE '%session.stopped%' "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        rig.charger.energy["C1"] += 4000
        with pytest.raises(sqlite3.Error):
            rig.read(C1="finished")
        assert rig.state("C1") == "Charging"  # as the database says
        assert rig.hub.connectors["C1"].session_id == s.id
        assert rig.hub.sessions.get(s.id).status == "active"
        assert rig.events("session.stopped") == []
        rig.hub.store.db.execute("DROP TRIGGER disk_error")
        rig.read(C1="finished")  # the next poll
        assert rig.state("C1") == "Finishing"
        stopped = rig.events("session.stopped")
        assert [e["data"]["session"] for e in stopped] == [s.id] and stopped[0]["data"]["energy_wh"] == 4000
        assert [e["data"]["status"] for e in rig.events("connector.status")][-1] == "Finishing"
        assert invariant_violations(tmp_path / "state") == []
    finally:
        rig.close()


async def test_a_failed_start_commit_leaves_no_session_on_the_connector(tmp_path):
    rig = Rig(tmp_path)
    try:
        rig.read(C1="plugged")
        rig.hub.store.db.execute(
            "CREATE TEMP TRIGGER disk_error BEFORE INSERT ON sessions BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        with pytest.raises(sqlite3.Error):
            await rig.hub.start_session("C1", method="remote")
        assert rig.hub.connectors["C1"].session_id is None  # a later tap may start one
        assert rig.charger.commands == []  # the charger never heard of it
        rig.hub.store.db.execute("DROP TRIGGER disk_error")
        s = await rig.hub.start_session("C1", method="remote")
        assert rig.hub.connectors["C1"].session_id == s.id
    finally:
        rig.close()


def killed(rig: Rig) -> None:
    """The daemon dies right after its last commit: what that commit set
    going (an unlock, a start) never runs."""
    for task in list(rig.hub._tasks):
        task.cancel()
    rig.close()


async def settle(rig: Rig, commands: int) -> None:
    """Until the charger has had ``commands`` commands, 2 s at most (a start
    waits for the store's writer first)."""
    for _ in range(200):
        if len(rig.charger.commands) >= commands:
            return
        await asyncio.sleep(0.01)


async def test_r_c5_a_kill_right_after_the_finishing_commit_still_unlocks_the_truck_after_the_restart(tmp_path):
    """The commit that makes the connector Finishing (its session stopped)
    sets the unlock going only once it stands; killed in between, the
    restarted hub finds the connector Finishing with no session and owes
    the truck its unlock (R-C5, R-C9)."""
    rig = Rig(tmp_path)
    rig.read(C1="plugged")
    s = await rig.hub.start_session("C1", method="remote")
    rig.read(C1="charging")
    rig.read(C1="finished")
    assert rig.state("C1") == "Finishing" and rig.hub.sessions.get(s.id).status == "stopped"
    killed(rig)
    assert ("unlock", "C1") not in rig.charger.commands

    again = Rig(tmp_path)
    try:
        assert again.state("C1") == "Finishing" and again.hub.connectors["C1"].session_id is None
        again.read(C1="finished", C2="unplugged")  # the first poll after the start
        await settle(again, 1)
        assert again.charger.commands == [("unlock", "C1")]
        assert again.events("connector.unlock_failed") == []
    finally:
        again.close()


async def test_r_c9_a_kill_right_after_the_free_vend_preparing_commit_still_starts_the_session_after_the_restart(tmp_path):
    """A free-vend connector's start is set going by the commit that makes
    it Preparing; killed in between, the restarted hub finds it Preparing
    with no session and starts the charge the truck is owed."""
    rig = Rig(tmp_path, free_vend=True)
    rig.read(C1="plugged")
    assert rig.state("C1") == "Preparing"
    killed(rig)
    assert rig.charger.commands == []

    again = Rig(tmp_path, free_vend=True)
    try:
        again.read(C1="plugged", C2="unplugged")
        await settle(again, 1)
        c = again.hub.connectors["C1"]
        assert c.session_id is not None and again.hub.sessions.get(c.session_id).method == "free_vend"
        assert again.charger.commands == [("start", "C1")]
        assert again.hub.connectors["C2"].session_id is None  # nothing plugged there: nothing started
    finally:
        again.close()
