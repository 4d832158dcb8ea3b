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
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from edge.control import request
from edge.hubctl import Style, render_status

ROOT = Path(__file__).resolve().parent.parent
MAPS = ROOT / "config" / "register-maps"


@dataclass
class Step:
    at_s: float  # simulated seconds from the start of the day
    what: str
    run: Callable[[], Awaitable[None] | None]


# Parts of the demo contributed by the hub's parts (cards, payments, site
# access). Each module exposes demo_part(demo: DemoHub) -> DemoPart.
DEMO_PARTS = ("edge.demo_cards", "edge.demo_payments", "edge.demo_site")


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

    def connector_sim(self, connector_id: str):
        """(charger simulator, 0-based index) of a demo connector."""
        return CONNECTOR_SIMS[connector_id][0](self), CONNECTOR_SIMS[connector_id][1]

    async def sim_sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(sim_seconds / self.speed)

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
            self.private_broker = Broker(self.state_dir / "broker", persistence=True).start()
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
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "run", "--config", str(self.config_path)],
                stdout=logf, stderr=logf, env=env, cwd=str(ROOT),
            )

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
    from edge.signing import load_keys
    from edge.store import atomic_write

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
    of service. The parts add card, terminal and gate traffic on C1-C4."""
    ch2 = hub.chargers["CH2"]

    async def technician(action: str, cid: str, reason: str) -> None:
        await hub.ask("connector", {"action": action, "id": cid, "reason": reason})

    hour = 3600.0
    return [
        Step(0.2 * hour, "truck plugs in at bay B5 (CCS, free vend on this demo hub)", lambda: ch2.plug(0, soc=35, battery_kwh=480, max_power_w=300_000)),
        Step(0.5 * hour, "truck plugs in at bay B6 (CCS)", lambda: ch2.plug(1, soc=60, battery_kwh=400, max_power_w=300_000)),
        Step(0.7 * hour, "B6's truck pauses (its battery is cooling)", lambda: ch2.pause_ev(1)),
        Step(0.9 * hour, "B6's truck resumes", lambda: ch2.resume_ev(1)),
        Step(1.0 * hour, "charger CH2 goes silent (network cable pulled): its connectors turn Faulted", lambda: ch2.silence("no_answer")),
        Step(1.8 * hour, "charger CH2 answers again: its connectors recover by themselves", lambda: ch2.speak()),
        Step(2.3 * hour, "B5's truck is full: the session ends and the connector unlocks", lambda: ch2.full(0)),
        Step(2.5 * hour, "B5's truck leaves", lambda: hub.unplug_when_unlocked("C5")),
        Step(2.8 * hour, "B6's truck is full", lambda: ch2.full(1)),
        Step(3.0 * hour, "B6's truck leaves", lambda: hub.unplug_when_unlocked("C6")),
        Step(3.2 * hour, "technician takes connector C6 out of service", lambda: technician("unavailable", "C6", "cable inspection")),
        Step(3.8 * hour, "technician returns connector C6 to service", lambda: technician("available", "C6", "inspection done")),
    ]


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


async def _run(args) -> int:
    speed = max(1.0, float(args.speed))
    own_dir = args.state_dir is None
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="hubedge-demo-")).resolve()
    socket = Path(args.socket).resolve() if args.socket else state_dir / "control.sock"
    hub = DemoHub(state_dir=state_dir, socket=socket, speed=speed)
    tty = sys.stdout.isatty() and not args.no_view
    style = Style(tty and os.environ.get("NO_COLOR") is None)
    try:
        for note in await hub.start(broker=args.broker):
            print(f"hub-edge demo: {note}", flush=True)
        print(f"hub-edge demo: state in {state_dir}; try `hubctl --socket {socket} status` in another terminal", flush=True)
        await hub.wait_ready()
        steps = _script(hub)
        for part in hub.parts:
            steps += part.steps()
        steps.sort(key=lambda st: st.at_s)
        t0 = time.monotonic()
        offset = 0
        recent: list[str] = []
        duration = args.duration
        next_step = 0
        while True:
            elapsed = time.monotonic() - t0
            sim_s = elapsed * speed
            while next_step < len(steps) and steps[next_step].at_s <= sim_s:
                step = steps[next_step]
                next_step += 1
                line = f"[{_clock(step.at_s)}] {step.what}"
                hub.script_log.append(line)
                recent.append(line)
                try:
                    res = step.run()
                    if asyncio.iscoroutine(res):
                        await res
                except Exception as exc:
                    recent.append(f"[{_clock(sim_s)}] (script step failed: {exc})")
            events, offset = _events_since(hub.log_path, offset)
            for e in events:
                recent.append("    " + _brief(e, 150 if tty else 400))
            if hub.daemon.poll() is not None:
                print(f"hub-edge demo: the daemon stopped unexpectedly (status {hub.daemon.returncode}); see {hub.log_path}", file=sys.stderr)
                return 1
            if tty:
                try:
                    status = await hub.ask("status")
                    screen = render_status(status, style)
                except Exception as exc:
                    screen = f"(daemon not answering: {exc})"
                sys.stdout.write("\033[H\033[2J" + f"hub-edge demo — simulated {_clock(sim_s)} (x{speed:g})\n\n" + screen + "\n\nlatest:\n" + "\n".join(recent[-12:]) + "\n")
                sys.stdout.flush()
            else:
                for line in recent:
                    print(line, flush=True)
                recent.clear()
            if duration is not None and elapsed >= duration:
                break
            if next_step >= len(steps) and duration is None and sim_s > steps[-1].at_s + 600:
                break
            await asyncio.sleep(1.0 if tty else 0.5)
        summary = await _summary(hub)
        print(summary, flush=True)
        return 0
    finally:
        await hub.stop()
        if own_dir and os.environ.get("HUBEDGE_DEMO_KEEP") is None:
            shutil.rmtree(state_dir, ignore_errors=True)


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


async def _summary(hub: DemoHub) -> str:
    status = await hub.ask("status")
    sessions = await hub.ask("sessions", {"limit": 10000})
    outbox = await hub.ask("outbox")
    done = [s for s in sessions if s["status"] == "stopped"]
    energy = sum(s.get("energy_wh") or 0 for s in sessions) / 1000
    by_method: dict[str, int] = {}
    for s in sessions:
        by_method[s["method"]] = by_method.get(s["method"], 0) + 1
    faults = [d for d in status["devices"] if d["state"] == "fault"]
    lines = [
        "",
        "=== hub-edge demo summary ===",
        f"sessions: {len(sessions)} ({len(done)} ended, {sum(1 for s in sessions if s['status'] in ('starting', 'active'))} still charging) by method: {json.dumps(by_method)}",
        f"energy delivered: {energy:.1f} kWh",
        "connectors now: " + ", ".join(f"{c['connector']}={c['status']}" for c in status["connectors"]),
        f"devices in fault now: {len(faults)}",
        f"events recorded: {outbox.get('total_put', '?')}; waiting for the cloud: {outbox.get('depth', 0)}",
    ]
    for part in hub.parts:
        lines += part.summary(status, sessions)
    lines += ["script:", *("  " + line for line in hub.script_log)]
    return "\n".join(lines)


def run_demo(args) -> int:
    from edge.journal import setup_logging

    setup_logging("warning")
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"hub-edge demo: {exc}", file=sys.stderr)
        return 1
