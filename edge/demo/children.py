"""The demo's child processes (the daemon, mosquitto): started so that none
outlives the demo (R-D3)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Children:
    """The demo's child processes - the daemon and mosquitto - in one process
    group of their own, each told by the kernel to stop (SIGTERM) when the
    demo dies, however it dies: a SIGKILL leaves no handler to run, so only
    the parent-death signal reaches them then (R-D3). Being in their own
    group, a Ctrl-C at the terminal reaches the demo alone, which stops them
    in order (the daemon first, so it can say goodbye to the broker)."""

    def __init__(self) -> None:
        self.pgid: int | None = None
        self._procs: list[subprocess.Popen] = []
        try:
            self._prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
        except (OSError, AttributeError):
            self._prctl = None  # not Linux: the signal handlers still stop the children

    def popen_options(self) -> dict:
        """Options for subprocess.Popen, asked for at each start. The kernel
        sends the parent-death signal when the *thread* that forked exits,
        so it is asked for only from the main thread, which lives as long as
        the demo does."""
        bind = self._prctl is not None and threading.current_thread() is threading.main_thread()
        # Join the group while one of ours still holds it (its number cannot
        # have passed to anyone else then); otherwise lead a new one.
        pgid = self.pgid if any(p.poll() is None for p in self._procs) else 0
        parent, prctl = os.getpid(), self._prctl

        def in_child() -> None:  # between fork and exec: nothing that takes a lock
            if bind:
                prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != parent:  # the demo died before the line above
                    os.kill(os.getpid(), signal.SIGTERM)
            try:
                os.setpgid(0, pgid)
            except OSError:  # the group emptied just now
                os.setpgid(0, 0)

        return {"preexec_fn": in_child}

    def started(self, proc: subprocess.Popen) -> subprocess.Popen:
        self._procs = [p for p in self._procs if p.poll() is None]
        if not self._procs:  # the group died with its last member: this child leads a new one
            self.pgid = os.getpgid(proc.pid)
        self._procs.append(proc)
        return proc

    def kill_all(self) -> None:
        """The last resort once each child was asked to stop: nothing of the
        group outlives the demo. Only while one of ours is still in it, so
        the number can never name someone else's group."""
        if self.pgid is not None and any(p.poll() is None for p in self._procs):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except OSError:
                pass
