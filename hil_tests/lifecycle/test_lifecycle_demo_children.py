"""R-D3: `hubedge demo` takes its children with it. Killed (SIGKILL), stopped
(SIGTERM) or interrupted (SIGINT), the demo leaves neither its daemon nor its
mosquitto running - they used to live on, the broker in a session of its
own - and a demo started again on the same state directory runs its day."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.core.control import request
from hil_tests.daemon import ROOT
from simulators.broker import mosquitto_available

pytestmark = [pytest.mark.hil, pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its new parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def demo(state: Path, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "edge.cli", "demo", "--state-dir", str(state), "--no-view",
                                 "--speed", "60", *args], stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)


async def wait_ready(proc: subprocess.Popen, sock: Path, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if (await request(sock, "status", {}, timeout=5))["data"]["ready"]:
                return
        except (OSError, KeyError, asyncio.TimeoutError, ConnectionError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"demo not ready: {log.read_text()[-3000:]}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
async def test_lifecycle_demo_children_die_with_it_and_a_rerun_starts_clean_R_D3(tmp_path, sig):
    state, log = tmp_path / "demo", tmp_path / "demo.log"
    proc = demo(state, log, "--duration", "300")
    kids: list[int] = []
    try:
        await wait_ready(proc, state / "control.sock", log)
        kids = children_of(proc.pid)
        names = sorted(Path(f"/proc/{k}/comm").read_text().strip() for k in kids)
        assert names == ["mosquitto", "python"] or names == ["mosquitto", sys.executable.rsplit("/", 1)[-1]], names
        groups = {os.getpgid(k) for k in kids}
        proc.send_signal(sig)
        deadline = time.monotonic() + 10
        while (any(alive(k) for k in kids) or any(in_group(g) for g in groups)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = [k for k in kids if alive(k)] + [k for g in groups for k in in_group(g)]
        assert not left, f"still running 10 s after {sig.name}: {left}\n{log.read_text()[-2000:]}"
        # One group of their own: a Ctrl-C at the terminal reaches the demo
        # alone, which stops them in order.
        assert len(groups) == 1 and groups != {os.getpgid(proc.pid)}, groups
        await asyncio.to_thread(proc.wait, 20)
        if sig != signal.SIGKILL:
            assert proc.returncode in (130, 143, -sig), proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in kids:  # only what this test started, should the demo not have stopped it
            if alive(k):
                os.kill(k, signal.SIGKILL)

    # The same state directory, again: the day runs and ends with its summary
    # (a SIGTERM or Ctrl-C above printed one of its own).
    before = log.read_text().count("=== hub-edge demo summary ===")
    assert before == (0 if sig == signal.SIGKILL else 1), log.read_text()[-3000:]
    again = demo(state, log, "--duration", "4", "--speed", "600")
    try:
        assert await asyncio.to_thread(again.wait, 90) == 0, log.read_text()[-3000:]
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
    assert log.read_text().count("=== hub-edge demo summary ===") == before + 1
