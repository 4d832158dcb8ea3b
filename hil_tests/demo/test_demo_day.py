"""`hubedge demo`: the whole hub on simulated hardware tells the same day at
every speed and ends with a summary; with --broker it syncs its day exactly
as docs/cloud-contract.md says (R-M2, R-M4) and says where the command key
is; its live view keeps the hubctl line and one clock; Ctrl-C still gives
the summary (issue 19)."""

import concurrent.futures
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.cloud.envelope import validate_event
from hil_tests.broker import Broker, CloudClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.hil

# The lines of the summary that must not depend on the speed.
SAME_AT_EVERY_SPEED = ("sessions:", "energy delivered:", "bank-card sessions:", "payment holds:",
                       "payments: terminal T1 closed the day", "card taps:", "card sessions:", "gate decisions:",
                       "bookings:")


def demo(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "edge.cli", "demo", "--no-view", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def story(out: str) -> list[str]:
    """The day's lines, without their times."""
    day = out.split("\nthe day:\n", 1)[1]
    return [re.sub(r"^  \[\d\d:\d\d:\d\d\] ", "", line) for line in day.splitlines() if line.startswith("  [")]


def summary_lines(out: str) -> list[str]:
    summary = out.split("=== hub-edge demo summary ===", 1)[1].split("\nthe day:\n", 1)[0]
    return [line for line in summary.splitlines() if line.startswith(SAME_AT_EVERY_SPEED)]


def test_the_same_day_at_two_speeds_and_synced_to_a_broker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    cloud = CloudClient(broker.url, client_id="cloud-demo-check", topics=("hub/DEMO-01/#",)).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            fast = pool.submit(demo, "--speed", "900", "--broker", broker.url)
            slower = pool.submit(demo, "--speed", "600")
            fast, slower = fast.result(), slower.result()
        for proc in (fast, slower):
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert "=== hub-edge demo summary ===" in proc.stdout
            assert "not seen in time" not in proc.stdout and "script step failed" not in proc.stdout, proc.stdout[-4000:]
            assert "group_missing" not in proc.stdout + proc.stderr
        # The same story, line by line, and the same day's figures.
        assert story(fast.stdout) == story(slower.stdout)
        assert summary_lines(fast.stdout) == summary_lines(slower.stdout)
        assert len(summary_lines(fast.stdout)) == len(SAME_AT_EVERY_SPEED), summary_lines(fast.stdout)
        out = fast.stdout
        day = story(out)
        # No narration without its event: the full battery ends B5's session
        # after CH2 is back, and the bookings scene is over after its last line.
        assert day.index("charger CH2 answers again: its connectors recover by themselves and both sessions go on") \
            < day.index("B5's truck is full: its session ends and the connector unlocks")
        # DM-7, booked over OCPP for the night, leaves after the bookings scene.
        assert day.index("the bookings scene is over") < day.index(
            "the morning: DM-7's driver taps the card at the station's reader: the session ends and fulfils the booking")
        assert day[-1] == "DM-7's truck leaves through the exit"
        # T1's two sessions (164.15 EUR) and the one paid at T2 on OCPP station CS-OCPP1 (40 kWh).
        assert re.search(r"revenue 183\.46 EUR", out), out
        # Over OCPP: a card at the station's reader (50 kWh), a bank-card start from the arch (40 kWh) and
        # booked truck DM-7 on the station's reservation (140 kWh).
        assert "ocpp: station CS-OCPP1 connected; 3 sessions over OCPP, 230.0 kWh" in out
        assert "1 transaction, 67.59 EUR booked" in out
        assert "bookings: 6 assigned, 1 reassigned, 3 no-show, 3 arrived, 3 fulfilled" in out
        assert "device.fault" in out and "device.recovered" in out
        assert "waiting for the cloud: 0" in out
        # With --broker: where the command key is, and that it goes with the temporary state.
        assert re.search(r"command key in /\S+/command\.key; it is deleted with the demo's temporary state", out), out[:2000]
        assert re.search(r"watch it from another terminal with: \S+ --socket \S+/control\.sock status", out)
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
        assert cloud.received("hub/DEMO-01/telemetry/meter"), "no meter samples"
        states = [t for t, _, retained in cloud.received("hub/DEMO-01/state/connector/")]
        assert states, "no retained connector states"
    finally:
        cloud.stop()
        broker.kill()


def test_a_broker_without_scheme_gets_a_clear_error():
    proc = demo("--broker", "127.0.0.1:18831", timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--broker mqtt://127.0.0.1:18831" in proc.stderr, proc.stderr


def test_live_view_keeps_the_hubctl_line_and_ctrl_c_gives_the_summary(tmp_path):
    """On a terminal: every redraw keeps the command to watch the hub and
    says how the day ends; the view speaks in words; Ctrl-C (to the whole
    process group, as a terminal sends it) prints the summary, exit 130."""
    main, sub = pty.openpty()
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", LINES="80")
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "demo", "--speed", "600", "--state-dir", str(tmp_path / "d")],
                            stdin=sub, stdout=sub, stderr=sub, cwd=str(ROOT), env=env, start_new_session=True)
    os.close(sub)
    chunks = []

    def read_for(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunks.append(os.read(main, 65536).decode(errors="replace"))
                except OSError:
                    return

    try:
        read_for(12)
        os.killpg(proc.pid, signal.SIGINT)
        read_for(15)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(main)
    out = "".join(chunks)
    screens = out.split("\033[H\033[2J")[1:]
    assert len(screens) >= 5, out[-2000:]
    for screen in screens:
        assert re.search(r"watch it from another terminal: \S+ --socket \S+/control\.sock status", screen), screen[:500]
        assert "Ctrl-C ends it early, with the summary" in screen and "the day ends by itself" in screen
        assert "PRESENCE" not in screen and "DECIDED_AGO_S" not in screen and "LAST_TAP_AGE_S" not in screen
        assert "group_missing" not in screen
    assert proc.returncode == 130, out[-3000:]
    assert "=== hub-edge demo summary === (cut short at demo time" in out
