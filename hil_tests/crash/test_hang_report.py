"""A restarted daemon that stops answering is reported while it hangs, with
where its event loop's thread stood (hil_tests/crash/site.py): the commit-
point run once saw a daemon go silent and could only say so at the end of
the run, when whatever held it may have passed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from hil_tests.crash.site import HANG_S, CrashSite, Run, loop_thread_at

pytestmark = pytest.mark.hil

# A process that answers SIGUSR1 as the counting daemon does, then blocks
# its main thread for good on a lock nobody releases (as a deadlock would).
STUCK = """
import faulthandler, signal, sys, threading
faulthandler.register(signal.SIGUSR1, all_threads=True)
held = threading.Lock()
held.acquire()

def wait_for_the_writer():
    held.acquire()

print("up", flush=True)
wait_for_the_writer()
"""


async def test_a_running_daemon_that_stops_answering_is_reported_with_where_its_loop_stood(tmp_path):
    site = CrashSite(tmp_path)
    run = Run(site, 1, "bank_card")
    script = tmp_path / "stuck_daemon.py"
    script.write_text(STUCK)
    with open(run.log, "ab") as log:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=log)
    try:
        # Its control socket never answers: there is none.
        site.hub = SimpleNamespace(daemon=proc, log_path=run.log, socket=tmp_path / "control.sock")
        for _ in range(100):
            if run.log.exists() and "up" in run.log.read_text():
                break
            await asyncio.sleep(0.05)
        site._answered_at = time.monotonic() - 4.0
        await site._watch_answers(run, proc)
        assert run.hangs == [], "four seconds of silence are not yet a hang"
        site._answered_at = time.monotonic() - HANG_S - 1
        await site._watch_answers(run, proc)
        [hang] = run.hangs
        assert f"pid {proc.pid}" in hang and "did not answer its control socket" in hang
        assert "wait_for_the_writer" in hang and "stuck_daemon.py" in hang, hang
        assert "Current thread" in run.log.read_text(), "every thread's stack is in the daemon's log"
        await site._watch_answers(run, proc)
        assert len(run.hangs) == 1, "one silence is reported once"
    finally:
        proc.kill()
        proc.wait(5)


def test_loop_thread_at_reads_the_innermost_frames_of_the_thread_that_took_the_signal():
    dump = (
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/x/threading.py", line 331 in wait\n'
        "\n"
        "Current thread 0x00007f0000000002 (most recent call first):\n"
        '  File "/x/edge/core/store.py", line 844 in durable\n'
        '  File "/x/edge/core/hub.py", line 12 in save_bookings\n'
        '  File "/x/asyncio/events.py", line 84 in _run\n'
        "\n"
    )
    assert loop_thread_at(dump, frames=2) == '"/x/edge/core/store.py", line 844 in durable < "/x/edge/core/hub.py", line 12 in save_bookings'
    assert loop_thread_at("no dump here") is None
