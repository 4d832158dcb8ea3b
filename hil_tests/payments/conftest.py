"""Payment HIL rig: the real daemon (`hubedge run` as a child process) with a
charger simulator over Modbus TCP and the ZVT terminal simulator over a serial
pty or TCP, all on loopback with ports picked at run time (R-H1).

Simulators run on the test's event loop, so every call into the daemon from a
test is a coroutine (control socket) or runs hubctl in a thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.register_map import load_register_map
from hil_tests.daemon import RunningDaemon
from edge.cloud.envelope import validate_event
from simulators.charger import ChargerSimulator
from simulators.zvt_terminal import ZvtTerminalSimulator

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"
TIME_SCALE = 20.0


class PaidHub(RunningDaemon):
    """One daemon under test with its terminal T1 serving C1 and C2 (C3 has no
    terminal, R-P7)."""

    def __init__(self, tmp: Path, charger: ChargerSimulator, terminal: ZvtTerminalSimulator, transport: str,
                 *, preauth: str = "199.00", extra: str = ""):
        super().__init__(tmp)
        self.charger, self.terminal, self.transport = charger, terminal, transport
        self.db_path = tmp / "state" / "hub.sqlite3"
        port = terminal.pty_path if transport == "pty" else terminal.tcp_url
        self.config.write_text(f"""
[hub]
id = "PAY-01"
country = "DE"
currency = "EUR"
vat_rate = "0.19"
preauth_amount = "{preauth}"
price_per_kwh = "0.399"
receipt_base_url = "https://receipts.example.test/r/"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{self.socket}"
[charging]
poll_interval_s = 0.2
fault_after_polls = 3
modbus_timeout_s = 0.3
unlock_retries = 2
unlock_retry_s = 0.2
start_timeout_s = 20
[[chargers]]
id = "CH1"
address = "127.0.0.1:{charger.port}"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1 }}, {{ id = "C2", index = 2 }}, {{ id = "C3", index = 3 }} ]
[[terminals]]
id = "T1"
port = "{port}"
connectors = ["C1", "C2"]
password = "123456"
{extra}
""")

    # ---------------------------------------------------------- process
    async def wait_exit(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        raise AssertionError(f"daemon did not die at its crash point: {self.log_text()[-2000:]}")

    # ---------------------------------------------------------- control
    async def ok(self, cmd: str, args: dict | None = None) -> dict | list:
        resp = await self.ask(cmd, args)
        assert resp["ok"], resp
        return resp["data"]

    async def select(self, connector: str, terminal: str = "T1") -> dict:
        return await self.ask("arch_select", {"terminal": terminal, "connector": connector}, timeout=30)

    async def paid_start(self, connector: str = "C1", index: int = 0) -> str:
        """A truck plugged in at ``connector`` (the charger's ``index``) and
        paid at the arch; returns its session once it charges."""
        self.charger.plug(index, soc=20, battery_kwh=900, max_power_w=350_000)
        await self.wait_connector(connector, "Preparing")
        answer = await self.select(connector)
        assert answer["ok"] and answer["data"]["started"], answer
        return (await self.wait_connector(connector, "Charging"))["session"]

    async def stop_at_arch(self, connector: str, terminal: str = "T1") -> dict:
        return await self.ask("arch_stop", {"terminal": terminal, "connector": connector}, timeout=30)

    # ---------------------------------------------------------- records
    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=5)
        db.row_factory = sqlite3.Row
        return db

    def payments(self) -> list[dict]:
        db = self._db()
        try:
            return [dict(r) for r in db.execute("SELECT * FROM payment_holds ORDER BY created_at")]
        finally:
            db.close()

    def sessions(self) -> list[dict]:
        db = self._db()
        try:
            return [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY started_at")]
        finally:
            db.close()

    def events(self, prefix: str = "") -> list[dict]:
        """Every event in the outbox, each checked against its schema."""
        db = self._db()
        try:
            out = [json.loads(r[0]) for r in db.execute("SELECT body FROM outbox ORDER BY pos")]
        finally:
            db.close()
        for e in out:
            if "type" in e:
                validate_event(e)
        return [e for e in out if e.get("type", "").startswith(prefix)]

    async def wait_payment(self, state: str | tuple, timeout: float = 20, index: int = -1) -> dict:
        states = (state,) if isinstance(state, str) else state
        deadline = time.monotonic() + timeout
        rows: list = []
        while time.monotonic() < deadline:
            rows = [p for p in self.payments() if p["kind"] == "session"]
            if rows and rows[index]["state"] in states:
                return rows[index]
            await asyncio.sleep(0.1)
        raise AssertionError(f"payment did not reach {states}: {rows}\n{self.log_text()[-3000:]}")

    async def wait_no_open_holds(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.terminal.open_reservations() and all(
                    p["state"] in ("declined", "settled", "released", "lapsed") for p in self.payments()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"holds left open: terminal {self.terminal.open_reservations()} ledger "
                             f"{[(p['id'][:8], p['state']) for p in self.payments()]}\n{self.log_text()[-3000:]}")

    async def restart(self) -> None:
        """After a crash: start again without crash points, wait until ready."""
        if self.proc.poll() is None:
            self.kill()
        self.start()
        await self.wait_ready()

    def assert_every_hold_ended_once(self) -> None:
        """R-P4: the terminal holds nothing; each of its reservations was
        booked or reversed once, and the ledger agrees, with one event each."""
        assert self.terminal.open_reservations() == {}
        ledger = {p["receipt_no"]: p for p in self.payments() if p["receipt_no"] is not None}
        for tx in self.terminal.transactions:
            if tx.receipt_no is None:
                continue
            assert tx.state in ("booked", "reversed"), tx
            p = ledger[tx.receipt_no]
            assert p["state"] == ("settled" if tx.state == "booked" else "released"), (tx, p)
            if tx.state == "booked":
                assert Decimal(p["settle_amount"]) == tx.booked
        for type_ in ("payment.settled", "payment.released"):
            ids = [e["data"]["payment"] for e in self.events(type_)]
            assert len(ids) == len(set(ids)), f"{type_} sent twice for one payment"

    async def unplug_when_unlocked(self, i: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.charger.connectors[i].locked:
                self.charger.unplug(i)
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"connector index {i} stayed locked")


def expected_cost(energy_wh: int, price: str = "0.399", vat: str = "0.19") -> Decimal:
    from edge.parts.payments.pricing import Tariff, session_cost
    from datetime import datetime, timezone

    t = Tariff("x", "EUR", Decimal(price), Decimal(vat), datetime(2000, 1, 1, tzinfo=timezone.utc))
    return session_cost(energy_wh, t).gross


@pytest.fixture
async def charger():
    sim = ChargerSimulator(load_register_map(MAPS / "hubcharge-mcs1200.toml"), 3, time_scale=TIME_SCALE)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def terminal():
    sim = ZvtTerminalSimulator()
    sim.t2_ack = 0.3
    await sim.start(tcp_port=0, pty=True)
    yield sim
    await sim.stop()


@pytest.fixture
def make_hub(tmp_path, charger, terminal):
    made: list[PaidHub] = []

    async def make(transport: str = "tcp", *, kill: tuple[str, str] | None = None, **kw) -> PaidHub:
        hub = PaidHub(tmp_path, charger, terminal, transport, **kw)
        hub.start(kill=kill)
        await hub.wait_ready()
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.terminate()
