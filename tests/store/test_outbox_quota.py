"""R-M6: the outbox quota policy."""

from __future__ import annotations

from units import FakeClock
from edge.core.outbox import FULL_REASON, Outbox
from edge.core.store import Store


def test_outbox_quota_telemetry_shed_oldest_first_sessions_kept_R_M6(tmp_path):
    store = Store(tmp_path, clock=FakeClock())
    outbox = Outbox(store, "H", quota_bytes=60_000, near_ratio=0.8)
    sample = {"samples": [{"connector": "c1", "ts": "2026-01-01T00:00:00.000Z", "energy_wh": 1, "pad": "x" * 200}]}
    telemetry = [outbox.put_telemetry(sample) for _ in range(150)]
    assert outbox.dropped_telemetry > 0, "telemetry alone must not grow past the near mark"
    assert outbox.bytes_used() <= 0.8 * outbox.quota_bytes
    store.wait_durable()  # only durable entries are read for sending
    kept_telemetry = [e.id for e in outbox.read_batch(10_000) if e.stream == "telemetry"]
    assert kept_telemetry == [e.id for e in telemetry[-len(kept_telemetry):]], "not dropped oldest first"
    assert outbox.take_quota_alarm() is None  # telemetry never raises the alarm by itself

    billing = []
    state_seen = set()
    while outbox.quota_state() != "full":
        billing.append(outbox.put("session.stopped", {"session": f"s{len(billing)}", "pad": "y" * 300}))
        billing.append(outbox.put("payment.settled", {"session": f"s{len(billing)}", "pad": "y" * 300}))
        state_seen.add(outbox.quota_state())
    assert "near" in state_seen
    assert outbox.counts().get("telemetry", 0) == 0, "telemetry must give way to billing data"
    # Over the quota billing events are still stored, never dropped.
    billing.append(outbox.put("session.stopped", {"session": "late"}))
    store.wait_durable()
    ids = {e.id for e in outbox.read_batch(100_000)}
    assert all(e.id in ids for e in billing)
    assert outbox.bytes_used() > outbox.quota_bytes
    ok, reason = outbox.accepting_sessions()
    assert ok is False and reason == FULL_REASON and "hubctl outbox" in reason
    # Telemetry put at the limit is not kept.
    outbox.put_telemetry(sample)
    assert outbox.counts().get("telemetry", 0) == 0

    # Draining brings it back.
    outbox.mark_delivered([e.id for e in billing])
    assert outbox.quota_state() == "ok" and outbox.accepting_sessions() == (True, "")
    store.close()


def test_outbox_quota_alarm_once_per_crossing_R_M6(tmp_path):
    store = Store(tmp_path, clock=FakeClock())
    outbox = Outbox(store, "H", quota_bytes=20_000)
    alarms = []
    envs = []
    while outbox.quota_state() != "full":
        envs.append(outbox.put("audit.action", {"pad": "z" * 500}))
        if (a := outbox.take_quota_alarm()) is not None:
            alarms.append(a)
    assert [a["alarm"] for a in alarms] == ["outbox.near", "outbox.full"]
    assert all("hubctl outbox" in a["message"] for a in alarms)
    outbox.put("audit.action", {})
    assert outbox.take_quota_alarm() is None  # still full: no repeat
    outbox.mark_delivered([e.id for e in envs])
    assert outbox.take_quota_alarm() is None
    while outbox.quota_state() == "ok":
        outbox.put("audit.action", {"pad": "z" * 500})
    assert outbox.take_quota_alarm()["alarm"] == "outbox.near"  # re-armed after it drained
    store.close()


def test_outbox_quota_state_survives_restart(tmp_path):
    store = Store(tmp_path)
    outbox = Outbox(store, "H", quota_bytes=5_000)
    while outbox.quota_state() != "full":
        outbox.put("session.started", {"pad": "q" * 200})
    used = outbox.bytes_used()
    store.close()
    store = Store(tmp_path)
    outbox = Outbox(store, "H", quota_bytes=5_000)
    assert outbox.bytes_used() == used and outbox.accepting_sessions()[0] is False
    assert outbox.take_quota_alarm()["alarm"] == "outbox.full"  # the restarted daemon alarms again
    store.close()
