"""The daemon driving simulated chargers over Modbus TCP (Foundation HIL)."""

import asyncio
import json
import socket
import time

import pytest

from hil_tests.hub.conftest import DaemonUnderTest

pytestmark = pytest.mark.hil


async def test_r_c1_r_c5_plug_charge_stop_unlock(daemon, sims):
    ch1 = sims["CH1"]
    ch1.plug(0, soc=20, battery_kwh=600)
    c = await daemon.wait_connector("C1", "Charging")
    sid = c["session"]
    assert sid
    await asyncio.sleep(0.5)
    proc = await daemon.hubctl("session", "stop", sid, "--reason", "HIL test")
    assert proc.returncode == 0, proc.stderr
    await daemon.wait_connector("C1", "Finishing")
    # R-C5: the hub unlocks after the stop; the truck can leave.
    for _ in range(50):
        if not ch1.connectors[0].locked:
            break
        await asyncio.sleep(0.1)
    ch1.unplug(0)
    await daemon.wait_connector("C1", "Available")
    s = [x for x in daemon.sessions() if x["id"] == sid][0]
    assert s["status"] == "stopped" and s["stop_reason"] == "technician"
    assert s["energy_wh"] > 0 and s["meter_stop_wh"] - s["meter_start_wh"] == s["energy_wh"]
    types = [e["type"] for e in daemon.events()]
    assert "session.started" in types and "session.stopped" in types and "audit.action" in types
    audit = [e for e in daemon.events() if e["type"] == "audit.action"][0]
    assert audit["data"]["action"] == "session.stop" and audit["data"]["reason"] == "HIL test"
    assert ch1.command_count(0, "start") == 1


async def test_r_c6_silent_charger_faults_its_connectors_and_recovers(daemon, sims):
    ch2 = sims["CH2"]
    await ch2.silence("no_answer")
    await daemon.wait_connector("C3", "Faulted", timeout=10)
    # The other charger keeps being polled: its connector still follows the truck.
    sims["CH1"].plug(1, soc=40)
    await daemon.wait_connector("C2", "Charging", timeout=10)
    st = await daemon.status()
    dev = next(d for d in st["devices"] if d["device"] == "CH2")
    assert dev["state"] == "fault" and dev["last_error"]
    await ch2.speak()
    await daemon.wait_connector("C3", "Available", timeout=10)
    types = [e["type"] for e in daemon.events()]
    assert types.count("device.fault") == 1 and types.count("device.recovered") == 1


async def test_r_c9_sigkill_while_charging_the_same_session_goes_on(tmp_path, sims):
    d = DaemonUnderTest(tmp_path, sims)
    d.start()
    await d.wait_ready()
    sims["CH1"].plug(0, soc=10, battery_kwh=900)
    c = await d.wait_connector("C1", "Charging")
    sid = c["session"]
    d.kill()
    await asyncio.sleep(0.5)
    d.start()
    await d.wait_ready()
    c = await d.wait_connector("C1", "Charging")
    assert c["session"] == sid
    await asyncio.sleep(1.0)
    assert sims["CH1"].command_count(0, "start") == 1  # no second start
    open_ = [s for s in d.sessions() if s["status"] in ("starting", "active")]
    assert [s["id"] for s in open_] == [sid]
    started = [e for e in d.events() if e["type"] == "session.started"]
    assert len(started) == 1
    # seq per stream stays gapless across the kill
    for stream in {e["stream"] for e in d.events()}:
        seqs = [e["seq"] for e in d.events() if e["stream"] == stream]
        assert seqs == list(range(1, len(seqs) + 1)), stream
    assert d.terminate() == 0


async def test_r_c5_unlock_that_fails_is_retried_then_faulted_and_a_technician_unlocks(daemon, sims):
    ch1 = sims["CH1"]
    ch1.stuck_lock(0, True)
    ch1.plug(0, soc=97, battery_kwh=300)
    await daemon.wait_connector("C1", "Charging")
    ch1.full(0)
    await daemon.wait_connector("C1", "Faulted", timeout=10)
    ev = [e for e in daemon.events() if e["type"] == "connector.unlock_failed"]
    assert len(ev) == 1 and ev[0]["data"]["attempts"] == 3
    assert ch1.command_count(0, "unlock") >= 3
    ch1.stuck_lock(0, False)
    proc = await daemon.hubctl("connector", "unlock", "C1", "--reason", "latch freed")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    await daemon.wait_connector("C1", "Finishing")


async def test_r_t1_hubctl_json_and_errors_against_the_daemon(daemon):
    proc = await daemon.hubctl("--json", "status")
    assert proc.returncode == 0
    st = json.loads(proc.stdout)
    assert {c["connector"] for c in st["connectors"]} == {"C1", "C2", "C3"}
    assert all(c["status"] == "Available" for c in st["connectors"])
    human = await daemon.hubctl("status")
    assert "CONNECTOR" in human.stdout and "C3" in human.stdout and "\033[" not in human.stdout
    assert (await daemon.hubctl("connector", "unavailable", "C9", "--reason", "x")).returncode == 4
    missing_reason = await daemon.hubctl("connector", "unavailable", "C2")
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    assert (await daemon.hubctl("connector", "unavailable", "C2", "--reason", "cable check")).returncode == 0
    await daemon.wait_connector("C2", "Unavailable")
    assert (await daemon.hubctl("connector", "available", "C2")).returncode == 0
    await daemon.wait_connector("C2", "Available")
    stop_unknown = await daemon.hubctl("session", "stop", "nope", "--reason", "x")
    assert stop_unknown.returncode == 4 and "hubctl sessions" in stop_unknown.stderr
    devs = json.loads((await daemon.hubctl("--json", "devices")).stdout)
    assert {d["device"] for d in devs if d["class"] != "task"} == {"CH1", "CH2"}
    tasks = {d["device"]: d for d in devs if d["class"] == "task"}
    assert set(tasks) == {"charger CH1 polling", "charger CH2 polling", "ticks (timeouts, schedules)", "store writer"}
    assert all(t["state"] == "ok" for t in tasks.values()), tasks
    assert "hub tasks: 4 running" in human.stdout
    sess = await daemon.hubctl("--json", "sessions", "--since", "1h", "--connector", "C1")
    assert sess.returncode == 0 and json.loads(sess.stdout) == []


async def test_r_d1_systemd_notify_ready_watchdog_and_stopping(tmp_path, sims):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    d = DaemonUnderTest(tmp_path, sims)
    d.env_extra = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    d.start()
    got: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and sum("WATCHDOG=1" in g for g in got) < 2:
        try:
            got.append(sock.recv(4096).decode())
        except BlockingIOError:
            await asyncio.sleep(0.05)
    assert any(g.startswith("READY=1") for g in got), got
    assert got[0].startswith("READY=1")  # ready comes before the first watchdog ping
    assert d.terminate() == 0
    await asyncio.sleep(0.1)
    rest = []
    while True:
        try:
            rest.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert "STOPPING=1" in rest
    assert "daemon.stopped" in d.log.read_text()
    sock.close()


async def test_every_event_the_daemon_emits_matches_its_schema(daemon, sims):
    """Issue 3 item 5: events carry the envelope of docs/cloud-contract.md and each
    type's data schema (edge/cloud/schemas/events)."""
    from edge.cloud.envelope import validate_event

    ch1 = sims["CH1"]
    ch1.plug(0, soc=95, battery_kwh=200)
    await daemon.wait_connector("C1", "Charging")
    ch1.full(0)
    await daemon.wait_connector("C1", "Finishing")
    await sims["CH2"].silence("no_answer")
    await daemon.wait_connector("C3", "Faulted", timeout=10)
    await sims["CH2"].speak()
    await daemon.wait_connector("C3", "Available", timeout=10)
    events = daemon.events()
    assert {"connector.status", "session.started", "session.stopped", "device.fault", "device.recovered"} <= {e["type"] for e in events}
    for e in events:
        validate_event(e)
        assert e["hub"] == "HIL-01" and e["v"] == 1
