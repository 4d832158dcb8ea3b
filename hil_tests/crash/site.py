"""The whole simulated hub for the commit-point runs, started once and reused.

`edge.demo.DemoHub` brings every simulator (chargers CH1/CH2, readers R1/R2,
arch terminal T1, the entry and exit gates), a private mosquitto and the
simulated cloud. A run of one journey needs only a fresh daemon: its own
hub id (so nothing the broker keeps for one run reaches the next), an empty
state directory, simulators put back to an empty site, and a cloud checker
of its own. The daemon is `python -m hil_tests.crash.daemon`, the real
`hubedge run` with its commits counted (hil_tests/crash/daemon.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge.core.control import request
from edge.demo import DEMO_PARTS, ROOT, DemoHub
from drivers.device import cancel_and_wait

SPEED = 60.0  # simulated seconds per real second: about 5 kWh a real second at 300 kW
DEMO_ID = "DEMO-01"


class CrashHub(DemoHub):
    """The demo hub whose daemon is the counting entry point; it starts
    no daemon of its own: each run starts one with its arguments. The demo's
    OCPP station is left out: no journey uses it, and its connection is
    the demo day's first step, which these runs do not play."""

    daemon_argv: list[str] | None = None

    def start_daemon(self, env_extra: dict | None = None) -> None:
        if self.daemon_argv is None:
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
        with open(self.log_path, "ab") as logf:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "hil_tests.crash.daemon", *self.daemon_argv, "run",
                 "--config", str(self.config_path)],
                stdout=logf, stderr=logf, env=env, cwd=str(ROOT))


class Run:
    """One run of one journey on a fresh daemon: where its files are, what
    the terminal did before it, and the crashes it went through."""

    def __init__(self, site: "CrashSite", number: int, journey: str):
        self.site = site
        self.number = number
        self.journey = journey
        self.hub_id = f"CP{number:04d}"
        self.dir = site.base / "runs" / f"{number:04d}-{journey}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trace = self.dir / "commits.jsonl"
        self.arm = self.dir / "armed"
        self.log = self.dir / "hubedge.log"
        self.contract = None  # hil_tests.scenarios.cloud_contract.CloudContract
        self.terminal_from = 0  # T1's transactions before this run
        self.crashes: list[dict] = []  # each SIGKILL at the chosen point, as the daemon noted it
        self.unexpected_exits = 0
        self.notes: list[str] = []
        self.hangs: list[str] = []  # a running daemon that stopped answering: when, how long, where it stood

    # ------------------------------------------------------------ records
    def commits(self) -> list[tuple[str, int]]:
        """The commit points counted while armed, in the order they landed."""
        if not self.trace.exists():
            return []
        out = []
        for line in self.trace.read_text().splitlines():
            rec = json.loads(line)
            if "label" in rec:
                out.append((rec["label"], rec["n"]))
        return out

    def terminal_transactions(self) -> list[dict]:
        t1 = self.site.terminal
        return [{"terminal": "T1", "receipt_no": t.receipt_no, "amount": t.amount, "state": t.state, "booked": t.booked}
                for t in t1.transactions[self.terminal_from:]]

    @property
    def db_path(self) -> Path:
        return self.site.state / "hub.sqlite3"


PROBE_S = 5.0  # no answer for this long: the site asks the daemon itself
HANG_S = 15.0  # a running daemon silent on its control socket this long has stopped answering


class CrashSite:
    def __init__(self, base: Path):
        self.base = Path(base)
        self.hub: CrashHub | None = None
        self.runs = 0
        self.run: Run | None = None
        self._watch: asyncio.Task | None = None
        self._answered_at = 0.0  # monotonic time of the daemon's last answer (or of its start)
        self._silence_reported = False

    @property
    def state(self) -> Path:
        return self.hub.state_dir / "state"

    @property
    def terminal(self):
        return self.hub.devices["terminals"]["T1"]

    # ------------------------------------------------------------ the site
    async def start(self) -> "CrashSite":
        self.hub = CrashHub(state_dir=self.base / "site", socket=self.base / "site" / "control.sock", speed=SPEED,
                            part_modules=tuple(name for name in DEMO_PARTS if ".ocpp." not in name))
        notes = await self.hub.start()
        if self.hub.private_broker is None or self.hub.cloud is None:
            await self.hub.stop()
            raise RuntimeError("the commit-point runs need mosquitto (apt-get install mosquitto): " + "; ".join(notes))
        # Polled twice as often as the demo does: the same commits, sooner.
        self.config_text = self.hub.config_path.read_text().replace("poll_interval_s = 1.0", "poll_interval_s = 0.5")
        return self

    async def stop(self) -> None:
        await self._end_daemon()
        if self.run is not None and self.run.contract is not None:
            self.run.contract.stop()
        if self.hub is not None:
            await self.hub.stop()

    # ------------------------------------------------------------ runs
    async def begin(self, journey: str, kill: tuple[str, str] | None = None) -> Run:
        """A fresh daemon for one run of ``journey``: empty state, empty site,
        its own hub id and cloud; killed at ``kill`` = (before|after, point)."""
        from hil_tests.scenarios.cloud_contract import CloudContract
        from simulators.cloud import CloudSimulator

        await self._end_daemon()
        if self.run is not None and self.run.contract is not None:
            self.run.contract.stop()
        self.runs += 1
        run = self.run = Run(self, self.runs, journey)
        shutil.rmtree(self.state, ignore_errors=True)
        await self._empty_site()
        run.terminal_from = len(self.terminal.transactions)
        hub = self.hub
        hub.config_path.write_text(self.config_text.replace(f'"{DEMO_ID}"', f'"{run.hub_id}"')
                                   .replace(f'"hubedge-{DEMO_ID}"', f'"hubedge-{run.hub_id}"'))
        hub.cloud.stop()
        hub.cloud = CloudSimulator(hub.broker, run.hub_id, client_id=f"cloud-sim-{run.hub_id}",
                                   command_key=_key(hub.command_key_file)).start()
        run.contract = CloudContract(hub.broker, run.hub_id, client_id=f"cloud-checker-{run.hub_id}").start()
        hub.log_path = run.log
        argv = ["--trace", str(run.trace), "--arm", str(run.arm)]
        if kill is not None:
            argv += ["--kill", kill[0], kill[1]]
        hub.daemon_argv = argv
        hub.start_daemon()
        self._answered_at, self._silence_reported = time.monotonic(), False
        await self.wait_up()
        self._watch = asyncio.get_running_loop().create_task(self._supervise(run))
        return run

    async def _empty_site(self) -> None:
        """Every truck gone, every card out of the field, no vehicle on a
        loop, every barrier down, no fault left over; what a run that failed
        left behind (a reservation at the terminal, a barrier's relay still
        on) is undone here: that run has reported it."""
        for sim in self.hub.chargers.values():
            for i, c in enumerate(sim.connectors):
                sim.garbage_status(i, None)
                sim.stuck_lock(i, False)
                sim.fault(i, False)
                if c.truck is not None:
                    c.locked = False  # a truck a failed run left locked in: the technician's key
                    sim.unplug(i)
            sim.commands.clear()
        for reader in self.hub.devices["readers"].values():
            reader.remove()
        t1 = self.terminal
        for tx in t1.transactions:
            if tx.state == "open":
                tx.state = "reversed"
        now = asyncio.get_running_loop().time()
        barriers = self.hub.devices["barriers"].values()
        for bar in barriers:
            bar.silence(False)
            bar.vehicle_leaves()
            bar.mechanics.set_open_input(False, now)
            bar.mechanics.set_hold(False, now)
        await self.barriers_down()

    async def barriers_down(self, within: float = 5.0) -> dict[str, str]:
        """Wait (a little) for every barrier to close by itself; what each
        shows then: closed, or why not."""
        deadline = time.monotonic() + within
        while True:
            left = {gid: bar for gid, bar in self.hub.devices["barriers"].items() if bar.position != "closed"}
            if not left or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        out = {}
        for gid, bar in self.hub.devices["barriers"].items():
            m = bar.mechanics
            why = [what for what, on in (("a vehicle on its loop", m.presence), ("its OPEN input still on", m.open_input_level),
                                         ("its HOLD-OPEN input still on", m.hold)) if on]
            out[gid] = "closed" if bar.position == "closed" else f"{bar.position}" + (f" ({', '.join(why)})" if why else "")
        return out

    async def end(self) -> None:
        """Stop watching the daemon (the run's checks are done)."""
        await self._end_daemon()

    async def _end_daemon(self) -> None:
        if self._watch is not None:
            await cancel_and_wait([self._watch])
            self._watch = None
        if self.hub is not None:
            self.hub.kill_daemon()

    async def stacks(self) -> str | None:
        """The daemon's threads' stacks into its log (hil_tests/crash/daemon.py
        answers SIGUSR1 so), for a daemon that stopped answering; returns
        where its event loop's thread stood, or None if it is not running."""
        proc = self.hub.daemon
        if proc is None or proc.poll() is not None:
            return None
        size = self.hub.log_path.stat().st_size if self.hub.log_path.exists() else 0
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        with open(self.hub.log_path, "rb") as f:
            f.seek(size)
            return loop_thread_at(f.read().decode(errors="replace"))

    async def _watch_answers(self, run: Run, proc: subprocess.Popen) -> None:
        """A daemon that runs but has not answered its control socket for
        HANG_S: its stacks go to its log at once, while it hangs, and the run
        says when, for how long and where its loop's thread stood."""
        if self._silence_reported or proc.poll() is not None or time.monotonic() - self._answered_at < PROBE_S:
            return
        await self.status()  # its own question: the journey may be waiting on a long one (a payment)
        silent = time.monotonic() - self._answered_at
        if silent < HANG_S or proc.poll() is not None:
            return
        self._silence_reported = True
        at = await self.stacks()
        run.hangs.append(f"the running daemon (pid {proc.pid}) did not answer its control socket for {silent:.0f} s "
                         f"(from {datetime.now(timezone.utc) - timedelta(seconds=silent):%H:%M:%S} UTC); "
                         f"its event loop's thread stood at: {at or 'no stacks in the log'} "
                         f"(every thread's stack is in {run.log.name})")

    async def _supervise(self, run: Run) -> None:
        """Restart the daemon whenever it dies: after its SIGKILL at the
        chosen point (a crash), or by itself (counted as unexpected)."""
        from hil_tests.scenarios.cloud_contract import LinkWindow

        while True:
            await asyncio.sleep(0.05)
            proc = self.hub.daemon
            if proc is not None and proc.poll() is None:
                await self._watch_answers(run, proc)
            if proc is None or proc.poll() is None:
                continue
            kill = _last_kill(run.trace)
            if proc.returncode == -9 and kill is not None and len(run.crashes) < _kills(run.trace):
                run.crashes.append(kill)
                # The link went with the process: events the restarted daemon
                # queues before it is back online must say offline.
                at = datetime.fromtimestamp(kill["t"], timezone.utc)
                run.contract.windows.append(LinkWindow(f"SIGKILL {kill['kill']} {kill['point']}", at, kill["mono"],
                                                       power_cut=True))
            else:
                run.unexpected_exits += 1
                run.notes.append(f"the daemon exited by itself with status {proc.returncode}")
            # Restarted as the field would: the same state, nothing counted.
            self.hub.daemon_argv = []
            self.hub.start_daemon()
            self._answered_at, self._silence_reported = time.monotonic(), False
            try:
                await self.wait_up(60)
            except RuntimeError as exc:
                run.notes.append(f"restart: {exc}")

    async def wait_up(self, timeout: float = 60) -> dict:
        """Ready, linked to the cloud, every device answering."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.hub.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.hub.daemon.returncode}; see {self.hub.log_path}")
            last = await self.status()
            if last and last.get("ready") and last["cloud"].get("connected") \
                    and all(d["state"] == "ok" for d in last["devices"]):
                return last
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the daemon was not up within {timeout:.0f} s (last status {str(last)[:300]}); "
                           f"see {self.hub.log_path}")

    def arm(self) -> None:
        """From here on the daemon counts commits: the journey begins."""
        self.run.arm.touch()

    # ------------------------------------------------------------ control
    async def call(self, cmd: str, args: dict | None = None, timeout: float = 15) -> dict | None:
        """One control request; None while the daemon is away."""
        try:
            resp = await request(self.hub.socket, cmd, args or {}, timeout=timeout)
        except (OSError, ConnectionError, asyncio.TimeoutError, ValueError):
            return None
        self._answered_at = time.monotonic()
        return resp

    async def status(self) -> dict | None:
        resp = await self.call("status", timeout=10)
        return resp["data"] if resp and resp.get("ok") else None

    async def connector(self, cid: str) -> dict | None:
        st = await self.status()
        if st is None:
            return None
        return next(c for c in st["connectors"] if c["connector"] == cid)


def _key(path: Path) -> bytes:
    from edge.cloud.signing import load_keys

    return load_keys(path)[0]


def _kill_records(trace: Path) -> list[dict]:
    if not trace.exists():
        return []
    return [r for r in map(json.loads, trace.read_text().splitlines()) if "kill" in r]


def _last_kill(trace: Path) -> dict | None:
    kills = _kill_records(trace)
    return kills[-1] if kills else None


def _kills(trace: Path) -> int:
    return len(_kill_records(trace))


def loop_thread_at(dump: str, frames: int = 4) -> str | None:
    """Where the thread that took SIGUSR1 (the main thread: the daemon's
    event loop) stood in a faulthandler dump: its innermost frames."""
    lines = dump.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Current thread ")), None)
    if start is None:
        return None
    out = []
    for line in lines[start + 1:]:
        line = line.strip()
        if not line.startswith("File "):
            break
        out.append(line.replace("File ", "", 1))
        if len(out) == frames:
            break
    return " < ".join(out) or None
