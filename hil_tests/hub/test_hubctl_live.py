"""`hubctl watch` on a real pseudo-terminal (issue 7 item 2): it redraws in
place, shows colour only on a terminal, follows the hub live, and leaves
cleanly on Ctrl-C."""

import asyncio
import os
import pty
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.hil


async def _read_until(fd: int, needle: bytes, timeout: float, buf: bytearray) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
            buf.extend(chunk)
        except BlockingIOError:
            await asyncio.sleep(0.05)
            continue
        except OSError:
            return needle in buf
        if needle in buf:
            return True
    return needle in buf


async def test_r_t2_watch_redraws_live_on_a_terminal(daemon, sims):
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen([sys.executable, "-m", "edge.hubctl", "--socket", str(daemon.socket), "watch", "--interval", "0.3"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True, env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    buf = bytearray()
    try:
        assert await _read_until(master, b"CONNECTOR", 15, buf), bytes(buf)[-500:]
        assert b"\x1b[H\x1b[2J" in buf  # redraw in place
        assert b"\x1b[32mAvailable" in buf  # colour on a terminal
        sims["CH1"].plug(0, soc=30)
        buf.clear()
        assert await _read_until(master, b"Charging", 15, buf), bytes(buf)[-800:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


async def test_watch_on_a_pipe_prints_plain_blocks(daemon):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.hubctl", "--socket", str(daemon.socket), "--json", "watch", "--interval", "0.2",
        stdout=asyncio.subprocess.PIPE)
    lines = []
    try:
        for _ in range(2):
            lines.append(await asyncio.wait_for(proc.stdout.readline(), 10))
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()
    import json

    for line in lines:
        d = json.loads(line)
        assert d["hub"] == "HIL-01" and b"\x1b" not in line
