"""Supervised tasks (R-D1): an iteration's error is counted and the loop goes
on; a loop that ends is reported and started again with a back-off; the
systemd watchdog is pinged only while every critical loop makes progress."""

from __future__ import annotations

import asyncio
import json
import socket

from edge.core import supervision

from edge.core import systemd
from units import FakeClock
from edge.cloud.schemas import validator
from edge.core.supervision import Supervisor


class Rig:
    def __init__(self, backoff=(0.05, 0.4)):
        self.alarms: list[tuple[str, str]] = []
        self.tasks: list[asyncio.Task] = []
        self.stopping = False
        self.sup = Supervisor(clock=FakeClock(), spawn=self._spawn, alarm=lambda c, m: self.alarms.append((c, m)),
                              stopping=lambda: self.stopping, backoff=backoff)

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    async def stop(self):
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def row(self, name):
        return next(r for r in self.sup.views() if r["device"] == name)


async def test_a_failing_round_is_counted_and_the_loop_goes_on():
    rig = Rig()
    rounds = []

    def step():
        rounds.append(1)
        if len(rounds) in (2, 3):
            raise RuntimeError("disk I/O error")

    rig.sup.loop("charger CH1 polling", step, every=0.01, stall_after_s=5)
    await asyncio.sleep(0.2)
    row = rig.row("charger CH1 polling")
    assert len(rounds) > 5, "the loop stopped at the error"
    assert row["state"] == "ok" and row["detail"]["failed_iterations"] == 2 and row["detail"]["restarts"] == 0
    assert "RuntimeError: disk I/O error" in row["last_error"]
    assert rig.sup.problems() == []
    await rig.stop()


async def test_a_loop_that_ends_is_reported_and_started_again_with_a_back_off():
    rig = Rig(backoff=(0.05, 0.4))
    starts = []

    async def body():
        starts.append(asyncio.get_running_loop().time())
        raise ValueError("a bug")

    rig.sup.run("payments: terminal T1", body)
    await asyncio.sleep(0.5)
    assert len(starts) >= 3, "not started again"
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[1] > gaps[0] * 1.5, f"no back-off: {gaps}"
    assert [c for c, _ in rig.alarms[:2]] == ["task_died", "task_died"]
    assert "payments: terminal T1 stopped (ValueError: a bug)" in rig.alarms[0][1]
    row = rig.row("payments: terminal T1")
    assert row["detail"]["restarts"] >= 2
    await rig.stop()


async def test_a_critical_loop_that_stops_progressing_withholds_the_watchdog_until_it_does_again():
    rig = Rig()
    broken = {"yes": False}

    def step():
        if broken["yes"]:
            raise OSError(5, "Input/output error")

    rig.sup.loop("ticks", step, every=0.01, stall_after_s=0.2)
    rig.sup.loop("uplink extras", lambda: 1 / 0, every=0.01, critical=False, stall_after_s=0.2)
    await asyncio.sleep(0.1)
    assert rig.sup.problems() == []
    broken["yes"] = True
    await asyncio.sleep(0.35)
    problems = rig.sup.problems()
    assert len(problems) == 1 and problems[0].startswith("ticks: no progress for")  # the non-critical one is not named
    assert "Input/output error" in problems[0] and "restarts itself" in problems[0]
    rig.sup.check()
    assert ("task_stalled" in [c for c, _ in rig.alarms])
    assert rig.row("ticks")["state"] == "fault"
    broken["yes"] = False
    await asyncio.sleep(0.05)
    assert rig.sup.problems() == []
    rig.sup.check()
    assert rig.alarms[-1][0] == "task_recovered"
    await rig.stop()


async def test_a_loop_that_dies_on_every_start_counts_as_stalled_and_one_that_beats_must_keep_beating():
    rig = Rig(backoff=(0.02, 0.05))

    async def dies():
        raise RuntimeError("cannot open the terminal")

    async def beats_then_hangs():
        supervision.beat()
        await asyncio.Event().wait()  # stuck on an answer that never comes

    rig.sup.run("crash loop", dies, stall_after_s=0.3)
    rig.sup.run("hangs", beats_then_hangs, stall_after_s=0.3)
    await asyncio.sleep(0.15)
    assert rig.sup.problems() == []
    await asyncio.sleep(0.35)
    names = sorted(p.split(":")[0] for p in rig.sup.problems())
    assert names == ["crash loop", "hangs"]
    await rig.stop()


async def test_task_rows_fit_the_devices_schema():
    rig = Rig()
    rig.sup.loop("charger CH1 polling", lambda: 1 / 0, every=0.01, stall_after_s=0.05)
    await asyncio.sleep(0.1)
    rows = rig.sup.views()
    validator("hubctl/devices").validate(json.loads(json.dumps(rows)))
    assert rows[0]["class"] == "task" and rows[0]["state"] == "fault"
    await rig.stop()


async def test_the_watchdog_pings_only_while_there_are_no_problems_R_D1(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    problems: list[str] = []
    task = asyncio.ensure_future(systemd.watchdog(0.02, lambda: list(problems)))

    def received() -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except BlockingIOError:
                return out

    try:
        await asyncio.sleep(0.1)
        assert received().count("WATCHDOG=1") >= 3
        problems.append("charger CH1 polling: no progress for 40 s")
        await asyncio.sleep(0.1)
        got = received()
        assert "WATCHDOG=1" not in got[1:], got  # at most the one in flight when it went wrong
        assert any(m.startswith("STATUS=not pinging the watchdog: charger CH1 polling") for m in got)
        problems.clear()
        await asyncio.sleep(0.1)
        assert "WATCHDOG=1" in received()
    finally:
        task.cancel()
        sock.close()
