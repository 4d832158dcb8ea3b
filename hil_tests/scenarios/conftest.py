"""End-to-end scenarios on the whole simulated hub (R-H1, R-H2).

Each scenario runs the real daemon (`hubedge run` as a child process, started
by `edge.demo.DemoHub` exactly as the demo does) against every simulator -
chargers CH1 (C1-C4) and CH2 (C5-C6), card readers R1/R2 at C1/C2, arch
terminal T1 at C3/C4, entry and exit gates with cameras and barriers - and a
real mosquitto this fixture owns, with the simulated cloud (tokens, bookings,
roaming answers) and the cloud-side checker (`cloud_contract.py`) on it.

The `scene` fixture gives a `Scene`: the test's vocabulary (a truck plugs
in, a driver taps a card, pays at the arch, a plate at the gate, a power cut,
the broker stops) with each action written to the scenario's timeline, and
at the end `finish()`: the hub's outbox drained, every event at the cloud,
every contract check passed. The timeline is written to
artifacts/timelines/<scenario>.md whatever the outcome.
"""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest

from edge.parts.site.plates import mask_plate
from edge.parts.cards.tokens import mask
from hil_tests.broker import Broker
from hil_tests.scenarios.cloud_contract import CloudContract, Verdict
from hil_tests.scenarios.timeline import DeviceWatch, Timeline

HUB = "DEMO-01"  # the demo hub's id (edge/demo/site.py)
# Simulated seconds per real second, for chargers and booking timings alike:
# a truck takes in about 5 kWh a real second at 300 kW.
SPEED = 60.0
RECEIPT_BASE = "https://receipts.example.com/r/"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"_scenario_{rep.when}", rep)


class Scene:
    def __init__(self, tmp: Path, name: str):
        self.tmp = tmp
        self.name = name
        self.broker: Broker | None = None
        self.contract: CloudContract | None = None
        self.demo = None  # edge.demo.DemoHub
        self.timeline: Timeline | None = None
        self.watch: DeviceWatch | None = None
        self.verdict: Verdict | None = None

    # ================================================================ set-up
    async def begin(self, title: str, rules: list[str]) -> "Scene":
        from edge.demo import DemoHub

        self.timeline = Timeline(self.name, title, rules)
        self.broker = Broker(self.tmp / "broker", persistence=True).start()
        self.contract = CloudContract(self.broker.url, HUB, timeline=self.timeline).start()
        state = self.tmp / "hub"
        self.demo = DemoHub(state_dir=state, socket=state / "control.sock", speed=SPEED)
        notes = await self.demo.start(broker=self.broker.url)
        assert self.demo.cloud is not None, f"the simulated cloud did not start: {notes}"
        await self.demo.wait_ready()
        await self.wait_status(lambda st: st["cloud"].get("connected") and all(d["state"] == "ok" for d in st["devices"]),
                               "connected to the cloud with every device answering")
        self.watch = DeviceWatch(self.timeline, self.demo, self.demo.log_path).start()
        self.timeline.step(f"the hub is up: every simulator answers and the daemon is connected to the broker (x{SPEED:g} speed)")
        return self

    @property
    def cloud(self):
        return self.demo.cloud

    @property
    def terminal(self):
        return self.demo.devices["terminals"]["T1"]

    @property
    def db_path(self) -> Path:
        return self.demo.state_dir / "state" / "hub.sqlite3"

    def step(self, text: str) -> None:
        self.timeline.step(text)

    def hide_card(self, uid: str) -> str:
        shown = mask(uid)
        self.timeline.hide(uid, shown)
        return shown

    def hide_plate(self, plate: str) -> str:
        shown = mask_plate(plate)
        self.timeline.hide(plate, shown)
        return shown

    # ================================================================ looking
    async def status(self) -> dict:
        return await self.demo.ask("status")

    async def wait_status(self, predicate, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.demo.daemon.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.demo.daemon.returncode}) while waiting for: {what}\n"
                                     f"{self.log_tail()}")
            try:
                last = await self.status()
                if predicate(last):
                    return last
            except (OSError, RuntimeError, asyncio.TimeoutError, KeyError):
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"the hub was not {what} within {timeout:.0f} s; last status: {str(last)[:1500]}\n{self.log_tail()}")

    async def connector(self, cid: str) -> dict:
        return next(c for c in (await self.status())["connectors"] if c["connector"] == cid)

    async def wait_connector(self, cid: str, state: str, timeout: float = 15.0, **match) -> dict:
        def ok(st):
            c = next(c for c in st["connectors"] if c["connector"] == cid)
            return c["status"] == state and all(c.get(k) == v for k, v in match.items())
        st = await self.wait_status(ok, f"showing {cid} {state} {match or ''}".rstrip(), timeout)
        return next(c for c in st["connectors"] if c["connector"] == cid)

    async def sessions(self, **filters) -> list[dict]:
        return await self.demo.ask("sessions", {"limit": 1000, **filters})

    async def session(self, sid: str) -> dict:
        found = await self.sessions(session=sid)
        assert found, f"no session {sid}"
        return found[0]

    async def payments(self) -> list[dict]:
        return await self.demo.ask("payments", {"limit": 1000})

    def event(self, type_: str, timeout: float = 15.0, **match) -> dict:
        return self.contract.wait_event(type_, timeout, **match)

    async def wait_event(self, type_: str, timeout: float = 15.0, **match) -> dict:
        return await asyncio.to_thread(self.contract.wait_event, type_, timeout, **match)

    def log_tail(self, n: int = 2500) -> str:
        path = self.demo.log_path if self.demo else None
        return path.read_text(errors="replace")[-n:] if path and path.exists() else ""

    # ================================================================ acting
    async def load_tokens(self, tokens: list[dict], version: int, kind: str = "full", remove: list[str] = ()) -> dict:
        msg_id = self.cloud.send("tokens", {"version": version, "kind": kind, "upsert": tokens, "remove": list(remove)})
        reply = await asyncio.to_thread(self.cloud.reply_to, msg_id, 10.0)
        assert reply and reply.get("ok"), f"the token list v{version} was not applied: {reply}\n{self.log_tail()}"
        return reply

    async def send_bookings(self, bookings: list[dict]) -> dict:
        msg_id = self.cloud.send("bookings", {"upsert": bookings, "cancel": []})
        reply = await asyncio.to_thread(self.cloud.reply_to, msg_id, 10.0)
        assert reply and reply.get("ok"), f"the bookings were not applied: {reply}\n{self.log_tail()}"
        return reply

    def plug(self, cid: str, *, soc: float = 20, battery_kwh: float = 1000, max_power_w: float = 300_000) -> None:
        sim, i = self.demo.connector_sim(cid)
        sim.plug(i, soc=soc, battery_kwh=battery_kwh, max_power_w=max_power_w)

    def truck_full(self, cid: str) -> None:
        sim, i = self.demo.connector_sim(cid)
        sim.full(i)

    async def unplug(self, cid: str) -> None:
        assert await self.demo.unplug_when_unlocked(cid), f"{cid} stayed locked: the truck cannot leave"

    def start_commands(self, cid: str) -> int:
        sim, i = self.demo.connector_sim(cid)
        return sim.command_count(i, "start", accepted=True)

    async def tap(self, reader: str, uid: str, hold_s: float = 0.6) -> None:
        # Blocking (the card stays in the field): off this loop, where the
        # other simulators must keep answering.
        await asyncio.to_thread(self.demo.devices["readers"][reader].tap, uid, hold_s)

    async def arch_select(self, cid: str) -> dict:
        return await self.demo.ask("arch_select", {"terminal": "T1", "connector": cid})

    async def arch_stop(self, cid: str) -> dict:
        return await self.demo.ask("arch_stop", {"terminal": "T1", "connector": cid})

    async def plate(self, gate: str, plate: str, *, confidence: float = 0.95, direction: str = "approach") -> None:
        reply = await self.demo.devices["cameras"][gate].send_plate(plate, confidence, "truck", direction)
        assert reply.status == 200, f"the {gate} camera listener answered {reply.status}"

    async def technician(self, action: str, cid: str, reason: str) -> dict:
        return await self.demo.ask("connector", {"action": action, "id": cid, "reason": reason})

    # ------------------------------------------------------------ taking things away
    def power_cut(self) -> None:
        """SIGKILL: the daemon gets no chance to save anything or say goodbye."""
        # The broker publishes the last will only if it is there to see the link drop.
        self.contract.link_lost("power cut", power_cut=self.broker.running)
        self.step("POWER CUT: the hub's computer loses power (the daemon is killed with SIGKILL)")
        self.demo.kill_daemon()

    async def power_back(self, *, expect_link: bool = True) -> None:
        self.step("power is back: the daemon starts again from what it wrote to disk")
        self.demo.start_daemon()
        await self.demo.wait_ready()
        if expect_link:
            await self.wait_status(lambda st: st["cloud"].get("connected"), "connected to the cloud again")

    def broker_down(self) -> None:
        self.contract.link_lost("broker stopped")
        self.step("the cloud is gone: the MQTT broker stops (it keeps its queued messages on disk)")
        self.broker.stop()

    async def broker_up(self) -> None:
        self.step("the cloud is back: the MQTT broker starts again")
        self.broker.start()
        await self.wait_status(lambda st: st["cloud"].get("connected"), "connected to the cloud again", timeout=30)

    # ================================================================ checking
    def assert_no_hold_open(self) -> None:
        """R-P4: the terminal holds nothing; each reservation was booked or
        released once, and the ledger agrees, with one event each."""
        assert self.terminal.open_reservations() == {}, f"holds left open: {self.terminal.open_reservations()}"
        for type_ in ("payment.settled", "payment.released"):
            ids = [e["data"]["payment"] for e in self.contract.events(type_)]
            assert len(ids) == len(set(ids)), f"{type_} sent twice for one payment: {ids}"

    async def assert_settled_exactly(self, sid: str) -> dict:
        """R-P3/R-P5: the amount booked at the terminal is the session's cost,
        the cloud's payment.settled says the same, and the receipt link is there."""
        s = await self.session(sid)
        settled = [e for e in self.contract.events("payment.settled") if e["data"]["session"] == sid]
        assert len(settled) == 1, f"session {sid[:8]} settled {len(settled)} times"
        data = settled[0]["data"]
        tx = self.terminal.transaction(data["terminal_receipt"])
        assert tx is not None and tx.state == "booked", tx
        assert tx.booked == Decimal(s["cost_gross"]) == Decimal(data["amount"]["amount"]), (tx, s["cost_gross"], data)
        assert Decimal(s["cost_gross"]) <= Decimal(data["hold"]["amount"])
        assert s["receipt_url"] and s["receipt_url"].startswith(RECEIPT_BASE) and s["receipt_url"] == data["receipt_url"]
        self.timeline.note(f"session {sid[:8]}: {s['energy_wh']} Wh, cost {s['cost_gross']} {s['currency']} = "
                           f"booked at the terminal {tx.booked} (hold {data['hold']['amount']}); receipt {s['receipt_url']}")
        return s

    async def finish(self, timeout: float = 30.0) -> Verdict:
        """The end of every scenario: the outbox drains, every event reaches
        the cloud, and the contract holds on everything the cloud saw."""
        await self.wait_status(lambda st: st["outbox"].get("depth", 1) == 0 and st["cloud"].get("connected"),
                               "drained (every message acknowledged by the broker)", timeout)
        await asyncio.to_thread(lambda: time.sleep(0.3))  # the last PUBACKed messages reach the subscriber
        self.verdict = await asyncio.to_thread(self.contract.final_check, self.db_path)
        self.step("the hub's outbox is empty; the cloud-side checker looks at everything it received")
        assert self.verdict.ok, "the cloud saw the contract broken:\n  " + "\n  ".join(self.verdict.problems)
        closes = {gid: len(sim.close_commands) for gid, sim in self.demo.devices["barriers"].items()}
        assert not any(closes.values()), f"R-G5: software commanded a barrier to close: {closes}"
        return self.verdict

    # ================================================================ tear-down
    async def end(self, outcome: str) -> Path | None:
        path = None
        if self.watch is not None:
            await self.watch.stop()
        if self.timeline is not None:
            if self.verdict is None and self.contract is not None:
                self.verdict = self.contract.verdict()
            checks = self.verdict.facts + [f"PROBLEM: {p}" for p in self.verdict.problems] if self.verdict else []
            path = self.timeline.write(outcome, checks)
        if self.demo is not None:
            await self.demo.stop()
        if self.contract is not None:
            self.contract.stop()
        if self.broker is not None:
            self.broker.kill()
        return path


def _scenario_name(node_name: str) -> str:
    name = node_name.removeprefix("test_")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


@pytest.fixture
async def scene(request, tmp_path):
    s = Scene(tmp_path, _scenario_name(request.node.name))
    try:
        yield s
    finally:
        call = getattr(request.node, "_scenario_call", None)
        setup = getattr(request.node, "_scenario_setup", None)
        if call is not None and hasattr(call, "wasxfail"):
            outcome = f"known defect, failed as expected ({call.wasxfail})" if call.skipped else \
                f"passed, though marked as a known defect ({call.wasxfail}): remove the mark"
        elif call is not None:
            outcome = "passed" if call.passed else "skipped" if call.skipped else "FAILED: " + _first_line(call)
        else:
            outcome = "FAILED in set-up: " + _first_line(setup) if setup is not None and setup.failed else "not run"
        await s.end(outcome)


def _first_line(rep) -> str:
    text = str(getattr(rep, "longreprtext", "") or "")
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")]
    return (lines[0][1:].strip() if lines else text.splitlines()[-1] if text else "?")[:300]
