"""R-M2: outbox durability, per-stream seq, stable ids, offline flag."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from units import FakeClock
from edge.cloud.envelope import Envelope, validate_event
from edge.core.outbox import Outbox, outbox_summary
from edge.core.store import Store


def test_outbox_seq_gapless_per_stream_and_persisted_R_M2(tmp_path):
    store = Store(tmp_path)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    for i in range(5):
        outbox.put("session.started", {"i": i})
        outbox.put("gate.opened", {"i": i})
    store.close()
    store = Store(tmp_path)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    outbox.put_many([{"type": "session.stopped", "data": {}}, {"type": "alarm", "data": {"alarm": "a", "message": "m"}}])
    store.wait_durable()  # only durable entries are read for sending
    envs = outbox.read_batch(100)
    by_stream: dict[str, list[int]] = {}
    for e in envs:
        by_stream.setdefault(e.stream, []).append(e.seq)
    assert by_stream == {"session": [1, 2, 3, 4, 5, 6], "gate": [1, 2, 3, 4, 5], "device": [1]}
    assert envs[-1].type == "device.alarm"
    # Delivered entries leave, but seqs keep counting from where they were.
    outbox.mark_delivered([e.id for e in envs])
    assert outbox.depth() == 0 and outbox.read_batch(10) == []
    assert outbox.put("session.started", {}).seq == 7
    store.close()


def test_outbox_failed_put_many_assigns_no_seq_R_M2(tmp_path):
    store = Store(tmp_path)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    outbox.put("session.started", {})
    with pytest.raises(ValueError):
        outbox.put_many([{"type": "session.stopped", "data": {}}, {"type": "nonsense.thing", "data": {}}])
    assert outbox.put("session.stopped", {}).seq == 2  # no gap from the failed batch
    assert outbox.counts() == {"session": 2}
    store.close()


def test_outbox_rolled_back_caller_transaction_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    outbox = Outbox(store, "H", quota_bytes=10**7)
    with pytest.raises(RuntimeError):
        with store.transaction():
            outbox.put("session.started", {})
            raise RuntimeError("the session row failed")
    assert outbox.depth() == 0 and outbox.read_batch(10) == []
    assert outbox.put("session.started", {}).seq == 1
    store.close()


def test_outbox_message_stored_as_sent_with_offline_flag_R_M2(tmp_path):
    clock = FakeClock()
    store = Store(tmp_path, clock=clock)
    outbox = Outbox(store, "HUB-7", clock=clock, quota_bytes=10**7)
    e1 = outbox.put("connector.status", {"connector": "c1", "status": "Charging", "previous": "Preparing"})
    outbox.link_up = True
    e2 = outbox.put("connector.status", {"connector": "c1", "status": "Finishing", "previous": "Charging"})
    e3 = outbox.put("connector.status", {"connector": "c1", "status": "Available", "previous": "Finishing"},
                    offline=True)
    assert (e1.offline, e2.offline, e3.offline) == (True, False, True)
    store.wait_durable()
    rows = outbox.rows_after(0, 10)
    assert [r[1] for r in rows] == [e1.id, e2.id, e3.id]
    assert rows[0][3] == e1.to_json()  # the stored bytes are what gets (re)sent
    d = json.loads(rows[0][3])
    validate_event(d)
    assert d["ts"] == "2026-01-01T00:00:00.000Z" and d["hub"] == "HUB-7" and d["v"] == 1
    assert Envelope.from_json(rows[1][3]) == e2
    assert outbox.read_batch(10, after=e1.id)[0].id == e2.id
    store.close()


def test_outbox_summary_for_hubctl(tmp_path):
    clock = FakeClock()
    store = Store(tmp_path, clock=clock)
    outbox = Outbox(store, "H", clock=clock, quota_bytes=10**6)
    a = outbox.put("session.started", {})
    outbox.put("payment.settled", {})
    clock.advance(90)
    outbox.mark_delivered([a.id])
    summary = outbox_summary(outbox, {"connected": False, "last_error": "x"})
    assert summary["streams"] == {"payment": 1} and summary["depth"] == 1
    assert summary["oldest_age_s"] == pytest.approx(90)
    assert summary["last_ack_at"] == "2026-01-01T00:01:30.000Z"
    assert summary["quota"]["state"] == "ok" and summary["link"]["connected"] is False
    json.dumps(summary)  # the control socket sends it as JSON
    assert outbox.oldest_age(clock.now() + timedelta(seconds=10)) == pytest.approx(100)
    store.close()


def test_envelope_type_to_stream():
    from edge.cloud.envelope import event_type_and_stream, topic_for

    assert event_type_and_stream("session.started") == ("session.started", "session")
    assert event_type_and_stream("alarm") == ("device.alarm", "device")
    assert event_type_and_stream("telemetry.meter", "telemetry") == ("telemetry.meter", "telemetry")
    with pytest.raises(ValueError):
        event_type_and_stream("banana.split")
    with pytest.raises(ValueError):
        event_type_and_stream("session.started", "payment")
    assert topic_for("H", "gate") == "hub/H/event/gate"
    assert topic_for("H", "telemetry") == "hub/H/telemetry/meter"
    assert topic_for("H", "reply") == "hub/H/reply"
