"""`hubedge demo`: the whole hub on simulated hardware ends with a summary,
and with --broker syncs its day exactly as docs/cloud-contract.md says (R-M2, R-M4)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.envelope import validate_event
from hil_tests.broker import Broker, CloudClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.hil


def test_demo_day_runs_and_syncs_to_the_broker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    cloud = CloudClient(broker.url, client_id="cloud-demo-check", topics=("hub/DEMO-01/#",)).start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edge.cli", "demo", "--duration", "26", "--speed", "900", "--no-view",
             "--broker", broker.url, "--state-dir", str(tmp_path / "demo")],
            capture_output=True, text=True, timeout=120, cwd=str(ROOT),
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "=== hub-edge demo summary ===" in out
        assert "charger CH2 goes silent" in out
        assert "device.fault" in out and "device.recovered" in out
        assert "waiting for the cloud: 0" in out
        # The bookings scene tells the same story at any speed (R-B3, R-B4):
        # the unbooked truck's plug is seen before DM-2 arrives, so DM-2 moves.
        assert "bookings: 5 assigned, 1 reassigned, 3 no-show, 2 arrived, 2 fulfilled" in out, out[-3000:]
        cloud.wait_for(lambda: any(b"\"online\":false" in p for _t, p, _r in cloud.received("hub/DEMO-01/status")), 10)
        events = [json.loads(p) for t, p, _ in cloud.received("hub/DEMO-01/event/")]
        assert events, "no events reached the broker"
        by_stream: dict[str, list[int]] = {}
        for e in events:
            validate_event(e)
            by_stream.setdefault(e["stream"], []).append(e["seq"])
        for stream, seqs in by_stream.items():
            assert sorted(set(seqs)) == list(range(1, max(seqs) + 1)), stream
        types = {e["type"] for e in events}
        assert {"session.started", "session.stopped", "connector.status", "device.fault", "device.recovered", "audit.action"} <= types
        states = [t for t, _, retained in cloud.received("hub/DEMO-01/state/connector/")]
        assert states, "no retained connector states"
    finally:
        cloud.stop()
        broker.kill()
