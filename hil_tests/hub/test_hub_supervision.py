"""One error no longer ends a charger's polling (R-C6, R-D1): the real daemon
against simulated chargers, with a real sqlite error injected from outside
(a trigger another process puts into the database), and systemd's watchdog
played by a datagram socket."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time

import pytest

from hil_tests.hub.conftest import DaemonUnderTest

pytestmark = pytest.mark.hil

FAIL_CHARGING = ("CREATE TRIGGER disk_error BEFORE INSERT ON connector_state WHEN NEW.state = 'Charging' "
                 "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")


class Watchdog:
    """The systemd side of sd_notify: collects what the daemon sends."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def collect(self) -> list[tuple[float, str]]:
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except BlockingIOError:
                return self.messages

    def last_ping(self) -> float | None:
        pings = [t for t, m in self.collect() if m == "WATCHDOG=1"]
        return pings[-1] if pings else None

    def close(self):
        self.sock.close()


def _sql(daemon: DaemonUnderTest, statement: str) -> None:
    db = sqlite3.connect(daemon.tmp / "state" / "hub.sqlite3", timeout=10)
    try:
        db.execute(statement)
        db.commit()
    finally:
        db.close()


async def _task(daemon: DaemonUnderTest, name: str) -> dict:
    return next(d for d in (await daemon.status())["devices"] if d["device"] == name)


async def test_a_sqlite_error_in_a_poll_round_is_counted_polling_goes_on_and_the_watchdog_sees_the_stall(tmp_path, sims):
    dog = Watchdog(tmp_path / "notify.sock")
    d = DaemonUnderTest(tmp_path, sims)  # free vend: plugging in starts a session
    d.start(NOTIFY_SOCKET=str(dog.path), WATCHDOG_USEC="1000000")  # a ping every 0.5 s
    try:
        await d.wait_ready()
        await asyncio.sleep(1.0)
        assert dog.last_ping() is not None, "no watchdog pings at all"
        _sql(d, FAIL_CHARGING)  # from now on the hub cannot record a connector as Charging
        sims["CH1"].plug(0, soc=20, battery_kwh=600)
        await d.wait_connector("C1", "Preparing")
        for _ in range(100):  # the truck charges; every round that sees it fails
            if (await _task(d, "charger CH1 polling"))["detail"]["failed_iterations"] >= 3:
                break
            await asyncio.sleep(0.1)
        row = await _task(d, "charger CH1 polling")
        assert row["detail"]["failed_iterations"] >= 3 and "disk I/O error" in row["last_error"], row
        before = await d.connector("C1")
        assert before["status"] == "Preparing"  # as stored: nothing recorded half
        await asyncio.sleep(1.0)
        # CH1 is still read meanwhile: the energy the cost cap watches keeps coming in.
        assert (await d.connector("C1"))["energy_wh"] > before["energy_wh"]
        # The other charger is still followed meanwhile.
        sims["CH2"].plug(0, soc=50)
        await d.wait_connector("C3", "Preparing")
        # It goes on: CH1's polling makes no progress, so the watchdog is no longer pinged.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            last = dog.last_ping()
            if last is not None and time.monotonic() - last > 2.0:
                break
            await asyncio.sleep(0.2)
        assert time.monotonic() - dog.last_ping() > 2.0, f"still pinged while CH1's polling was stuck\n{d.log_tail()}"
        assert any(m.startswith("STATUS=not pinging the watchdog: charger CH1 polling") for _, m in dog.collect())
        assert (await _task(d, "charger CH1 polling"))["state"] == "fault"
        # The card answers again: the very next rounds record the change, with its events.
        _sql(d, "DROP TRIGGER disk_error")
        c1 = await d.wait_connector("C1", "Charging")
        started = [e for e in d.events() if e["type"] == "session.started" and e["data"]["connector"] == "C1"]
        assert len(started) == 1 and started[0]["data"]["session"] == c1["session"]
        charging = [e for e in d.events() if e["type"] == "connector.status"
                    and e["data"]["connector"] == "C1" and e["data"]["status"] == "Charging"]
        assert len(charging) == 1
        resumed = time.monotonic()
        for _ in range(50):
            if (dog.last_ping() or 0) > resumed:
                break
            await asyncio.sleep(0.1)
        assert (dog.last_ping() or 0) > resumed, "the watchdog pings did not come back"
        for _ in range(50):  # reported once the ticks look again
            alarms = [e["data"] for e in d.events() if e["type"] == "device.alarm"]
            if any(a["alarm"] == "task_recovered" and a["message"].startswith("charger CH1 polling") for a in alarms):
                break
            await asyncio.sleep(0.1)
        assert any(a["alarm"] == "task_stalled" and a["message"].startswith("charger CH1 polling") for a in alarms)
        assert any(a["alarm"] == "task_recovered" and a["message"].startswith("charger CH1 polling") for a in alarms)
    finally:
        d.terminate()
        dog.close()
