"""The demo site: its simulators, its configuration and the daemon run
against them (`DemoHub`), and the parts' share of it (`DemoPart`). The demo,
the scenario tests, the crash tests and the chaos run all start the hub
through `DemoHub`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from edge.core.control import request
from edge.demo.children import Children
from edge.demo.story import DayClock, Step, first_answer, maybe_await

ROOT = Path(__file__).resolve().parent.parent.parent
MAPS = ROOT / "config" / "register-maps"


# The demo site's cards, tapped in more than one part's scenes.
OWN = "04A1B2C3"  # own card, fleet Demo Haulage, truck plate on the list
OWN_OTHER = "04D4E5F6"  # own card of another fleet
BLOCKED = "0BADBAD0"  # own card reported stolen: Blocked
ROAMING = "04C0FFEE"  # a roaming (eMSP) card the cloud accepts
STRANGER = "04DEAD01"  # a roaming card nobody answers for

# Parts of the demo contributed by the hub's parts (cards, payments, site
# access). Each module exposes demo_part(demo: DemoHub) -> DemoPart.
DEMO_PARTS = ("edge.parts.cards.demo", "edge.parts.payments.demo", "edge.parts.site.demo", "edge.parts.chargers.ocpp.demo",
              "edge.parts.power.demo")


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
    part_modules: tuple = DEMO_PARTS  # the demo parts to bring (a test site may leave some out)
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

    def slot(self, start_in_h: float, length_h: float) -> tuple[str, str]:
        """A booking slot starting ``start_in_h`` demo hours from now and
        lasting ``length_h`` of them, as real UTC times. Slots last at least
        six real minutes, as the hub refuses shorter ones."""
        from datetime import datetime, timedelta, timezone

        from units import rfc3339

        start = datetime.now(timezone.utc) + timedelta(seconds=start_in_h * 3600 / self.speed)
        length = max(timedelta(seconds=length_h * 3600 / self.speed), timedelta(minutes=6))
        return rfc3339(start), rfc3339(start + length)

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
                    await maybe_await(step.run)
                    seen = True if step.until is None or step.natural else bool(await first_answer(step.until, 20.0))
            else:
                await maybe_await(step.run)
                seen = True if step.until is None or step.natural else await self.react(step.until)
            if step.until is not None and step.natural:
                seen = await self.until_seen(step.until, step.within_s)
        except Exception as exc:
            self.tell(f"{step.what} — the script step failed: {exc}")
            return
        self.tell(step.what if seen else f"{step.what} — not seen in time, so this part of the story did not happen")

    async def expect(self, check: Callable[[], Awaitable[bool]], what: str, within_s: float = 1800.0) -> None:
        """In a scene that keeps the clock itself: tell ``what`` once
        ``check`` holds, the day running; say so when it never does."""
        seen = await self.until_seen(check, within_s)
        self.tell(what if seen else f"{what} — not seen in time, so this part of the story did not happen")

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
    for name in demo.part_modules:
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
