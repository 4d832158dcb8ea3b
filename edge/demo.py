"""`hubedge demo`: the whole hub on simulated hardware, on this machine.

It starts every simulator on loopback, writes a configuration pointing the
daemon at them, runs the real daemon (`hubedge run`) as a child process, and
plays a scripted day against the simulators: trucks arriving, charging,
leaving; a charger going silent and coming back; a technician taking a
connector out of service. A live view shows the hub as `hubctl status` does;
at the end a summary says what happened. No hardware and no cloud needed;
with `--broker` the daemon syncs to that broker exactly as in the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from edge.core.control import request
from edge.hubctl import METHODS, Style, render_status

ROOT = Path(__file__).resolve().parent.parent
MAPS = ROOT / "config" / "register-maps"


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


@dataclass
class Step:
    """One line of the demo day's story. It is told once what it tells of
    has been seen (``until``), so the same day tells the same story at any
    speed; a step whose effect never comes says so instead."""

    at_s: float  # seconds from the start of the demo day
    what: str
    run: Callable[[], Awaitable[None] | None] | None = None
    # What the narration tells of, as the daemon shows it (a state, an event).
    until: Callable[[], Awaitable[bool]] | None = None
    # The hub reacts at once (a poll, a decision): the day's clock stands
    # while it does. A natural step (a battery filling) lets the day run.
    natural: bool = False
    within_s: float = 3600.0  # demo seconds a natural effect may take
    hold: bool = True  # False: the step runs a scene that keeps the clock itself


class DayClock:
    """The demo day's clock: ``speed`` times real time, standing still while
    the story waits for the hub to react. The chargers' physics keep this
    clock too (DemoHub.hold), so a battery fills at the same point of the
    story however fast the demo or the machine runs."""

    def __init__(self, speed: float):
        self.speed = speed
        self._mono = time.monotonic()
        self._day = 0.0
        self._held = 0
        # (wall time, day seconds, running after it): to place the daemon's
        # wall-clock times (booking slots, "since") on the day.
        self._marks: list[tuple[float, float, bool]] = [(time.time(), 0.0, True)]

    def now(self) -> float:
        if self._held:
            return self._day
        return self._day + (time.monotonic() - self._mono) * self.speed

    def hold(self) -> None:
        if self._held == 0:
            self._day = self.now()
            self._marks.append((time.time(), self._day, False))
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        if self._held == 0:
            self._mono = time.monotonic()
            self._marks.append((time.time(), self._day, True))

    def day_of(self, wall: float) -> float:
        """The day's time at a wall-clock instant (past or future)."""
        mark = self._marks[0]
        for m in self._marks:
            if m[0] > wall:
                break
            mark = m
        wall0, day0, running = mark
        if not running and mark is self._marks[-1] and wall > time.time():
            wall0, running = time.time(), True  # a future instant: the clock will run again
        return day0 + (max(0.0, wall - wall0) * self.speed if running else 0.0)

    def text(self, day_s: float | None = None) -> str:
        return _clock(self.now() if day_s is None else day_s)


# The demo site's cards, tapped in more than one part's scenes.
OWN = "04A1B2C3"  # own card, fleet Demo Haulage, truck plate on the list
OWN_OTHER = "04D4E5F6"  # own card of another fleet
BLOCKED = "0BADBAD0"  # own card reported stolen: Blocked
ROAMING = "04C0FFEE"  # a roaming (eMSP) card the cloud accepts
STRANGER = "04DEAD01"  # a roaming card nobody answers for


# Parts of the demo contributed by the hub's parts (cards, payments, site
# access). Each module exposes demo_part(demo: DemoHub) -> DemoPart.
DEMO_PARTS = ("edge.parts.cards.demo", "edge.parts.payments.demo", "edge.parts.site.demo", "edge.parts.chargers.ocpp.demo")


class DemoPart:
    """What a part adds to the demo day: its simulators, its configuration,
    its script steps and its lines of the summary."""

    def __init__(self, demo: "DemoHub"):
        self.demo = demo

    async def start(self) -> str:
        """Start simulators; return TOML appended to the demo configuration."""
        return ""

    def steps(self) -> list[Step]:
        return []

    async def stop(self) -> None:
        pass

    def summary(self, status: dict, sessions: list[dict]) -> list[str]:
        return []


@dataclass
class DemoHub:
    state_dir: Path
    socket: Path
    speed: float
    chargers: dict = field(default_factory=dict)  # id -> ChargerSimulator
    daemon: subprocess.Popen | None = None
    log_path: Path | None = None
    script_log: list[str] = field(default_factory=list)
    parts: list = field(default_factory=list)
    # Simulators the parts share, e.g. readers["R1"] -> CardSimulator,
    # terminals["T1"] -> ZvtTerminalSimulator, cameras / barriers by gate id.
    devices: dict = field(default_factory=dict)
    broker: str | None = None
    cloud: object | None = None  # simulators.cloud.CloudSimulator when a broker is there
    private_broker: object | None = None  # the demo's own mosquitto when no --broker was given
    command_key_file: Path | None = None  # the cloud's signing key, shared by the hub and the simulated cloud
    config_path: Path | None = None
    children: Children = field(default_factory=Children)
    clock: DayClock | None = None
    news: list[str] = field(default_factory=list)  # story lines not yet shown by the live view
    _mark: int = 0  # the daemon log's size when the current step began

    def __post_init__(self):
        self.clock = DayClock(self.speed)

    def connector_sim(self, connector_id: str):
        """(charger simulator, 0-based index) of a demo connector."""
        return CONNECTOR_SIMS[connector_id][0](self), CONNECTOR_SIMS[connector_id][1]

    async def sim_sleep(self, sim_seconds: float) -> None:
        """Let the day run on for ``sim_seconds`` of its own time (while the
        clock stands, that much time at the demo's speed)."""
        if self.clock._held:
            await asyncio.sleep(sim_seconds / self.speed)
        else:
            await self.until_day(self.clock.now() + sim_seconds)

    async def until_day(self, day_s: float) -> None:
        while (left := day_s - self.clock.now()) > 0:
            await asyncio.sleep(min(left / self.speed, 0.2))

    # ----------------------------------------------------------- the story
    def tell(self, what: str) -> None:
        """A line of the day's story, at the day's time now."""
        line = f"[{self.clock.text()}] {what}"
        self.script_log.append(line)
        self.news.append(line)

    @contextlib.asynccontextmanager
    async def hold(self):
        """The day's clock, and the chargers' physics with it, stand still
        while the hub reacts to what just happened."""
        self.clock.hold()
        if self.clock._held == 1:
            for sim in self.chargers.values():
                sim.advance(0)
                sim.time_scale = 0.0
        try:
            yield
        finally:
            if self.clock._held == 1:
                for sim in self.chargers.values():
                    sim.advance(0)
                    sim.time_scale = self.speed
            self.clock.release()

    async def react(self, check: Callable[[], Awaitable[bool]], real_timeout_s: float = 20.0) -> bool:
        """Wait, the clock standing, until the hub shows ``check``."""
        async with self.hold():
            return bool(await first_answer(check, real_timeout_s))

    async def play(self, step: Step) -> None:
        """Run one step and tell it once its effect is seen."""
        self._mark = self.log_size()
        try:
            if step.hold:
                async with self.hold():
                    await _maybe_await(step.run)
                    seen = True if step.until is None or step.natural else bool(await first_answer(step.until, 20.0))
            else:
                await _maybe_await(step.run)
                seen = True if step.until is None or step.natural else await self.react(step.until)
            if step.until is not None and step.natural:
                seen = await self.until_seen(step.until, step.within_s)
        except Exception as exc:
            self.tell(f"{step.what} — the script step failed: {exc}")
            return
        self.tell(step.what if seen else f"{step.what} — not seen in time, so this part of the story did not happen")

    async def until_seen(self, check: Callable[[], Awaitable[bool]], within_s: float) -> bool:
        """Wait, the day running, up to ``within_s`` of its time (and at
        least 20 real seconds) for ``check``."""
        deadline_day = self.clock.now() + within_s
        real_deadline = time.monotonic() + 20.0
        while self.clock.now() < deadline_day or time.monotonic() < real_deadline:
            if await check():
                return True
            await asyncio.sleep(0.1)
        return False

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.log_path else 0
        except OSError:
            return 0

    def events_since_step(self, type_: str, **fields: str) -> list[str]:
        """The daemon's log lines of events of ``type_`` (with these fields)
        since the current step began."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._mark)
                text = f.read().decode(errors="replace")
        except (OSError, TypeError):
            return []
        wanted = [f" {k}={v}" for k, v in fields.items()]
        return [line for line in text.splitlines() if f" event type={type_} " in line + " "
                and all(w in line + " " for w in wanted)]

    def event(self, type_: str, count: int = 1, **fields: str) -> Callable[[], Awaitable[bool]]:
        """A check: ``count`` events of ``type_`` since the step began."""
        async def check() -> bool:
            return len(self.events_since_step(type_, **fields)) >= count
        return check

    def connector_is(self, connector_id: str, *states: str, session: bool | None = None) -> Callable[[], Awaitable[bool]]:
        """A check: the connector is in one of ``states`` (with or without a session)."""
        async def check() -> bool:
            status = await self.ask("status")
            c = next(c for c in status["connectors"] if c["connector"] == connector_id)
            return c["status"] in states and (session is None or bool(c.get("session")) == session)
        return check

    # ----------------------------------------------------- the whole site
    async def start(self, *, broker: str | None = None, hub_config_extra: str = "") -> list[str]:
        """Start every simulator, the broker and simulated cloud (unless a
        broker is given), write the configuration and start the daemon.
        Returns notes for a person (what runs without what). Used by the
        demo, the scenario tests and the chaos run alike."""
        from simulators.broker import Broker, mosquitto_available

        notes = []
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if broker:
            self.broker = broker
        elif mosquitto_available():
            # The demo brings its own broker and a simulated cloud on
            # loopback, so roaming checks, token lists and bookings take part.
            self.private_broker = Broker(self.state_dir / "broker", persistence=True,
                                         spawn=self.children.popen_options).start()
            self.children.started(self.private_broker.proc)
            self.broker = self.private_broker.url
        else:
            notes.append("mosquitto is not installed, so the day runs without a cloud "
                         "(install it with apt-get install mosquitto to see roaming checks and bookings)")
        if self.broker:
            from simulators.cloud import CloudSimulator

            # The hub obeys only what the cloud signs: both get the same key.
            self.command_key_file = self.state_dir / "command.key"
            try:
                self.cloud = CloudSimulator(self.broker, "DEMO-01",
                                            command_key=_command_key(self.command_key_file)).start()
            except RuntimeError as exc:
                notes.append(f"{exc}; the day runs without the simulated cloud")
        ports = await _start_simulators(self)
        self.parts = load_parts(self)
        config = _config(self, ports, self.broker) + hub_config_extra
        for part in self.parts:
            config += "\n" + await part.start()
        self.config_path = self.state_dir / "hub.toml"
        self.config_path.write_text(config)
        self.log_path = self.state_dir / "hubedge.log"
        self.start_daemon()
        return notes

    def start_daemon(self, env_extra: dict | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
        with open(self.log_path, "ab") as logf:
            # In the children's own process group: a Ctrl-C at the terminal
            # reaches the demo alone, which asks the daemon for the summary,
            # then stops it.
            self.daemon = self.children.started(subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "run", "--config", str(self.config_path)],
                stdout=logf, stderr=logf, env=env, cwd=str(ROOT), **self.children.popen_options(),
            ))

    def kill_daemon(self) -> None:
        """A power cut, as far as the daemon can tell (SIGKILL)."""
        if self.daemon and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)

    def stop_daemon(self) -> int | None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                return self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                return None
        return self.daemon.returncode if self.daemon else None

    async def wait_ready(self, timeout: float = 30) -> None:
        await _wait_for_daemon(self, timeout)

    async def stop(self) -> None:
        self.stop_daemon()
        for part in self.parts:
            try:
                await part.stop()
            except Exception:
                pass
        for sim in self.chargers.values():
            try:
                await sim.stop()
            except Exception:
                pass
        if self.cloud is not None:
            self.cloud.stop()
        if self.private_broker is not None:
            self.private_broker.kill()
        self.children.kill_all()

    async def unplug_when_unlocked(self, connector_id: str, tries: int = 50) -> bool:
        """The driver pulls the cable once the hub has unlocked it."""
        sim, i = self.connector_sim(connector_id)
        for _ in range(tries):
            try:
                sim.unplug(i)
                return True
            except Exception:
                await asyncio.sleep(0.2)
        return False

    def leaves(self, connector_id: str, at_s: float, what: str) -> Step:
        """A truck leaves: its cable is pulled once unlocked, and the
        connector is free again."""
        async def leave() -> None:
            if not await self.unplug_when_unlocked(connector_id):
                raise RuntimeError(f"the cable of {connector_id} stayed locked")
        return Step(at_s, what, leave, until=self.connector_is(connector_id, "Available", "Reserved", "Unavailable"))

    async def ask(self, cmd: str, args: dict | None = None) -> dict:
        resp = await request(self.socket, cmd, args or {}, timeout=10)
        if not resp.get("ok"):
            raise RuntimeError(resp.get("message"))
        return resp["data"]


CONNECTOR_SIMS = {
    "C1": (lambda d: d.chargers["CH1"], 0),
    "C2": (lambda d: d.chargers["CH1"], 1),
    "C3": (lambda d: d.chargers["CH1"], 2),
    "C4": (lambda d: d.chargers["CH1"], 3),
    "C5": (lambda d: d.chargers["CH2"], 0),
    "C6": (lambda d: d.chargers["CH2"], 1),
}


def load_parts(demo: "DemoHub") -> list[DemoPart]:
    import importlib

    parts = []
    for name in DEMO_PARTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        parts.append(module.demo_part(demo))
    return parts


# The four MCS bays under the arch on charger CH1 (C1-C4), as the demo and
# the site tests configure them.
MCS_BAYS = """[[bays]]
id = "B1"
connector = "C1"
connector_type = "MCS"
side = "left"

[[bays]]
id = "B2"
connector = "C2"
connector_type = "MCS"
side = "right"

[[bays]]
id = "B3"
connector = "C3"
connector_type = "MCS"
side = "left"

[[bays]]
id = "B4"
connector = "C4"
connector_type = "MCS"
side = "right"
"""


def _command_key(path: Path) -> bytes:
    """The demo's command key: made once (mode 0600) and kept with its state,
    so a demo restarted on the same state directory still verifies."""
    from edge.cloud.signing import load_keys
    from edge.core.store import atomic_write

    if not path.exists():
        atomic_write(path, (os.urandom(32).hex() + "\n").encode(), mode=0o600)
    return load_keys(path)[0]


def _own_group() -> str:
    """The demo's control socket belongs to whoever runs the demo: their own
    group stands in for the technicians' group of a real hub."""
    import grp

    try:
        return grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        return "hubtech"


def _config(hub: DemoHub, ports: dict[str, int], broker: str | None) -> str:
    cloud = f'broker = "{broker}"\nclient_id = "hubedge-DEMO-01"' if broker else 'broker = ""'
    if broker and hub.command_key_file is not None:
        cloud += f'\ncommand_key_file = "{hub.command_key_file}"'
    return f"""# Written by `hubedge demo`: the demo hub on simulated hardware.
# C1-C4 (MCS) start with a card at their reader or the arch terminal;
# C5-C6 (CCS) are free vend so the base day runs without either.
[hub]
id = "DEMO-01"
name = "Demo hub"
country = "NL"
currency = "EUR"
timezone = "Europe/Amsterdam"
vat_rate = "0.21"
receipt_base_url = "https://receipts.example.com/r/"

[cloud]
{cloud}

[storage]
state_dir = "{hub.state_dir / 'state'}"
outbox_quota_mb = 64

[control]
socket = "{hub.socket}"
group = "{_own_group()}"

[charging]
poll_interval_s = 1.0
fault_after_polls = 3
idle_in_bay_after_s = {max(5.0, 900 / hub.speed):.1f}
unlock_retry_s = 1.0
meter_interval_s = {max(1.0, 600 / hub.speed):.1f}

[[chargers]]
id = "CH1"
address = "127.0.0.1:{ports['CH1']}"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [
  {{ id = "C1", index = 1 }},
  {{ id = "C2", index = 2 }},
  {{ id = "C3", index = 3 }},
  {{ id = "C4", index = 4 }},
]

[[chargers]]
id = "CH2"
address = "127.0.0.1:{ports['CH2']}"
register_map = "{MAPS / 'voltflow-ccs400.toml'}"
connectors = [
  {{ id = "C5", index = 1, free_vend = true }},
  {{ id = "C6", index = 2, free_vend = true }},
]

{MCS_BAYS}
[[bays]]
id = "B5"
connector = "C5"
connector_type = "CCS"
side = "left"
length_m = 20

[[bays]]
id = "B6"
connector = "C6"
connector_type = "CCS"
side = "right"
length_m = 20
"""


def _script(hub: DemoHub) -> list[Step]:
    """The base day on the CCS bays (free vend): trucks charge and leave, the
    charger goes silent and comes back, a technician takes a connector out
    of service. The parts add card, terminal and gate traffic on C1-C4.

    The trucks fill in the same demo time at any speed (the chargers keep
    the day's clock), B5's at about 02:15 and B6's at about 02:40, after
    CH2 has answered again."""
    ch2 = hub.chargers["CH2"]

    async def technician(action: str, cid: str, reason: str) -> None:
        await hub.ask("connector", {"action": action, "id": cid, "reason": reason})

    def charging(*cids: str):
        checks = [hub.connector_is(c, "Charging", session=True) for c in cids]
        return _all_of(*checks)

    def finished(cid: str):
        return hub.connector_is(cid, "Finishing", session=False)

    hour = 3600.0
    return [
        Step(0.2 * hour, "a truck plugs in at bay B5 (CCS, free vend on this demo hub): charging starts",
             lambda: ch2.plug(0, soc=40, battery_kwh=480, max_power_w=200_000), until=charging("C5")),
        Step(0.5 * hour, "a truck plugs in at bay B6 (CCS): charging starts",
             lambda: ch2.plug(1, soc=50, battery_kwh=400, max_power_w=150_000), until=charging("C6")),
        Step(0.7 * hour, "B6's truck pauses (its battery is cooling)", lambda: ch2.pause_ev(1),
             until=hub.connector_is("C6", "SuspendedEV")),
        Step(0.9 * hour, "B6's truck resumes", lambda: ch2.resume_ev(1), until=charging("C6")),
        Step(1.0 * hour, "charger CH2 goes silent (network cable pulled): its connectors turn Faulted, "
                         "while the trucks charge on", lambda: ch2.silence("no_answer"),
             until=_all_of(hub.connector_is("C5", "Faulted"), hub.connector_is("C6", "Faulted"))),
        Step(1.8 * hour, "charger CH2 answers again: its connectors recover by themselves and both sessions go on",
             lambda: ch2.speak(), until=charging("C5", "C6")),
        Step(2.2 * hour, "B5's truck is full: its session ends and the connector unlocks", until=finished("C5"),
             natural=True),
        hub.leaves("C5", 2.4 * hour, "B5's truck leaves"),
        Step(2.6 * hour, "B6's truck is full: its session ends", until=finished("C6"), natural=True),
        hub.leaves("C6", 2.8 * hour, "B6's truck leaves"),
        Step(3.2 * hour, "a technician takes connector C6 out of service (hubctl connector unavailable)",
             lambda: technician("unavailable", "C6", "cable inspection"), until=hub.connector_is("C6", "Unavailable")),
        Step(3.8 * hour, "the technician returns connector C6 to service",
             lambda: technician("available", "C6", "inspection done"), until=hub.connector_is("C6", "Available")),
    ]


def _all_of(*checks: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        for c in checks:
            if not await c():
                return False
        return True
    return check


async def _maybe_await(run) -> None:
    if run is not None:
        res = run()
        if asyncio.iscoroutine(res):
            await res


async def first_answer(check: Callable[[], Awaitable], real_timeout_s: float):
    """``check()``'s first truthy answer, asked every 50 ms for up to
    ``real_timeout_s`` real seconds; None when it never comes."""
    deadline = time.monotonic() + real_timeout_s
    while True:
        try:
            answer = await check()
        except (OSError, RuntimeError, asyncio.TimeoutError):
            answer = None
        if answer or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def _start_simulators(hub: DemoHub) -> dict[str, int]:
    from drivers.register_map import load_register_map
    from simulators.charger import ChargerSimulator

    ch1 = ChargerSimulator(load_register_map(MAPS / "hubcharge-mcs1200.toml"), 4, time_scale=hub.speed)
    ch2 = ChargerSimulator(load_register_map(MAPS / "voltflow-ccs400.toml"), 2, time_scale=hub.speed)
    ports = {"CH1": await ch1.start(), "CH2": await ch2.start()}
    hub.chargers = {"CH1": ch1, "CH2": ch2}
    return ports


async def _wait_for_daemon(hub: DemoHub, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.daemon and hub.daemon.poll() is not None:
            raise RuntimeError(f"the demo daemon exited with status {hub.daemon.returncode}; its log is {hub.log_path}")
        try:
            status = await hub.ask("status")
            if status.get("ready"):
                return
        except (OSError, RuntimeError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the demo daemon did not become ready within {timeout:.0f} s; its log is {hub.log_path}")


def _events_since(log_path: Path, offset: int) -> tuple[list[str], int]:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    lines = chunk.decode(errors="replace").splitlines()
    return [line for line in lines if " event type=" in line or line.split(" ", 2)[1:2] in (["warning"], ["error"])], offset + len(chunk)


def hubctl_command() -> str:
    """How to run hubctl on this machine, as a person would type it: through
    ./dev when the demo was started by it, else the hubctl beside this Python."""
    if os.environ.get("HUBEDGE_HUBCTL"):
        return os.environ["HUBEDGE_HUBCTL"]
    beside = Path(sys.executable).parent / "hubctl"
    if shutil.which("hubctl") == str(beside):
        return "hubctl"
    if beside.exists():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m edge.hubctl"


def broker_problem(broker: str | None) -> str | None:
    """What is wrong with a --broker URL, in words, or None."""
    if broker is None:
        return None
    if re.fullmatch(r"[\w.\-\[\]:]+:\d+", broker) and "://" not in broker:
        return f"--broker {broker} has no scheme: the demo needs a URL such as --broker mqtt://{broker}"
    if not broker.startswith("mqtt://"):
        return (f"--broker {broker} is not a plain mqtt:// URL: the demo and its simulated cloud speak MQTT without "
                f"TLS on this machine, e.g. --broker mqtt://127.0.0.1:1883")
    return None


async def _tell_the_day(hub: DemoHub, steps: list[Step]) -> None:
    for step in steps:
        await hub.until_day(step.at_s)
        await hub.play(step)


async def _run(args) -> int:
    speed = max(1.0, float(args.speed))
    own_dir = args.state_dir is None
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="hubedge-demo-")).resolve()
    socket = Path(args.socket).resolve() if args.socket else state_dir / "control.sock"
    hub = DemoHub(state_dir=state_dir, socket=socket, speed=speed)
    # SIGTERM (and SIGHUP, a closed terminal) end the demo as Ctrl-C does:
    # through the finally below, which stops every child.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, main.cancel)
    tty = sys.stdout.isatty() and not args.no_view
    style = Style(tty and os.environ.get("NO_COLOR") is None)
    watch = f"{hubctl_command()} --socket {shlex.quote(str(socket))} status"
    notes: list[str] = []
    story: asyncio.Task | None = None
    cut = ""  # why the day did not end by itself
    interrupted = False
    try:
        try:
            for note in await hub.start(broker=args.broker):
                print(f"hub-edge demo: {note}", flush=True)
            if args.broker and hub.command_key_file is not None:
                kept = ("it is deleted with the demo's temporary state when the demo ends (give --state-dir DIR to keep it)"
                        if own_dir else "it stays there after the demo")
                notes.append(f"the hub obeys only what is signed with the command key in {hub.command_key_file}; {kept}")
            print(f"hub-edge demo: state in {state_dir}", flush=True)
            print(f"hub-edge demo: watch it from another terminal with: {watch}", flush=True)
            for note in notes:
                print(f"hub-edge demo: {note}", flush=True)
            await hub.wait_ready()
            steps = _script(hub)
            for part in hub.parts:
                steps += part.steps()
            steps.sort(key=lambda st: st.at_s)
            t0 = time.monotonic()
            hub.clock = DayClock(speed)  # the day starts now that the hub is ready
            story = asyncio.get_running_loop().create_task(_tell_the_day(hub, steps))
            offset = hub.log_size()
            recent: list[str] = []
            duration = args.duration
            ends = (f"the day ends by itself after {duration:g} s" if duration is not None
                    else "the day ends by itself when its story is told")
            while True:
                elapsed = time.monotonic() - t0
                recent += hub.news
                hub.news.clear()
                events, offset = _events_since(hub.log_path, offset)
                for e in events:
                    recent.append("    " + _brief(e, 150 if tty else 400))
                if hub.daemon.poll() is not None:
                    print(f"hub-edge demo: the daemon stopped unexpectedly (status {hub.daemon.returncode}); see {hub.log_path}", file=sys.stderr)
                    return 1
                if tty:
                    try:
                        status = await hub.ask("status")
                        screen = render_status(status, style, _day_view(hub, status), hide=("LAST END-OF-DAY", "NEXT END-OF-DAY"))
                    except Exception as exc:
                        screen = f"(daemon not answering: {exc})"
                    head = (f"hub-edge demo — demo time {hub.clock.text()} (x{speed:g}); {ends}; Ctrl-C ends it early, "
                            f"with the summary\nwatch it from another terminal: {watch}\n\n")
                    sys.stdout.write("\033[H\033[2J" + head + screen + "\n\nthe day so far:\n" + "\n".join(recent[-12:]) + "\n")
                    sys.stdout.flush()
                else:
                    for line in recent:
                        print(line, flush=True)
                    recent.clear()
                if story.done():
                    break
                if duration is not None and elapsed >= duration:
                    cut = f"ended by --duration {duration:g} at demo time {hub.clock.text()}, before the day was over"
                    break
                await asyncio.sleep(1.0 if tty else 0.5)
        except asyncio.CancelledError:
            # Ctrl-C: the day is cut short, the summary still comes.
            asyncio.current_task().uncancel()
            interrupted = True
            cut = f"cut short at demo time {hub.clock.text()} by Ctrl-C"
        if story is not None and not story.done():
            story.cancel()
            await asyncio.gather(story, return_exceptions=True)
        if hub.daemon is not None and hub.daemon.poll() is None:
            try:
                summary = await _summary(hub, notes, cut=cut)
            except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
                summary = f"hub-edge demo: no summary, the daemon did not answer ({exc}); its log is {hub.log_path}"
            print(summary, flush=True)
        return 130 if interrupted else 0
    finally:
        await hub.stop()
        if own_dir and os.environ.get("HUBEDGE_DEMO_KEEP") is None:
            shutil.rmtree(state_dir, ignore_errors=True)


def _day_view(hub: DemoHub, status: dict):
    """The live view on the demo day's clock: ages and instants in demo time."""
    from datetime import datetime

    from edge.hubctl import TimeView

    def elapsed(when: datetime) -> float:
        return hub.clock.now() - hub.clock.day_of(when.timestamp())

    return TimeView(status.get("timezone"), elapsed=elapsed, instant=lambda when: _clock(hub.clock.day_of(when.timestamp()))[:5])


_UUID = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def _brief(line: str, width: int) -> str:
    """A daemon log line as the live view shows it: no time stamp, ids
    shortened, cut to the width."""
    parts = line.split(" ", 3)
    if len(parts) == 4 and parts[0][:4].isdigit():
        line = parts[3] if parts[1] == "info" else f"{parts[1]}: {parts[3]}"
    line = _UUID.sub(r"\1", line.replace("event type=", ""))
    return line if len(line) <= width else line[: width - 1] + "…"


def _clock(sim_s: float) -> str:
    sim_s = int(sim_s)
    return f"{sim_s // 3600:02d}:{(sim_s % 3600) // 60:02d}:{sim_s % 60:02d}"


async def _summary(hub: DemoHub, notes: list[str] = (), *, cut: str = "") -> str:
    status = await hub.ask("status")
    sessions = await hub.ask("sessions", {"limit": 10000})
    outbox = await hub.ask("outbox")
    done = [s for s in sessions if s["status"] == "stopped"]
    energy = sum(s.get("energy_wh") or 0 for s in sessions) / 1000
    by_method: dict[str, int] = {}
    for s in sessions:
        by_method[s["method"]] = by_method.get(s["method"], 0) + 1
    faults = [d for d in status["devices"] if d["state"] == "fault"]
    still = sum(1 for s in sessions if s["status"] in ("starting", "active"))
    lines = [
        "",
        "=== hub-edge demo summary ===" + (f" ({cut})" if cut else ""),
        f"sessions: {len(sessions)} ({len(done)} ended, {still} still charging); by method: "
        + (", ".join(f"{n} {METHODS.get(m, m)}" for m, n in sorted(by_method.items())) or "none"),
        f"energy delivered: {energy:.1f} kWh",
        "connectors now: " + ", ".join(f"{c['connector']} {c['status']}" for c in status["connectors"]),
        f"devices in fault now: {len(faults)}",
        f"events recorded: {outbox.get('total_put', '?')}; waiting for the cloud: {outbox.get('depth', 0)}",
    ]
    for part in hub.parts:
        lines += part.summary(status, sessions)
    lines += [f"note: {n}" for n in notes]
    lines += ["the day:", *("  " + line for line in hub.script_log)]
    return "\n".join(lines)


def run_demo(args) -> int:
    from edge.core.journal import setup_logging

    problem = broker_problem(args.broker)
    if problem:
        print(f"hub-edge demo: {problem}", file=sys.stderr)
        return 2
    setup_logging("warning")
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM or SIGHUP: stopped cleanly all the same
        return 143
    except RuntimeError as exc:
        print(f"hub-edge demo: {exc}", file=sys.stderr)
        return 1
