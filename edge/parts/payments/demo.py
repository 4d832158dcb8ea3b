"""The payment part of `hubedge demo`: arch terminal T1 (the ZVT terminal
simulator over TCP) serving C3 and C4, and a day of bank-card drivers
(C3 from 0.3 h to 1.25 h, C4 from 2.4 h to 3.45 h):

- a truck plugs in at C3, its driver picks C3 on the arch and pays by card
  (pre-authorisation approved, R-P1), charges to the limit the driver set,
  and later stops at the arch with the same card: the amount is booked and
  the session gets its receipt link (R-P3, R-P5);
- at C4 a card is declined for insufficient funds: nothing starts (R-P1);
  the driver pays with another card and charges;
- at 02:57 of the demo day T1 runs its end-of-day (ZVT 06 50): the day's
  bookings go to the acquirer; C4's hold stays open while its session
  charges. The daemon keeps real time, so the demo asks for it at its own
  time as a technician would (`hubctl terminal end-of-day T1`); the daily
  schedule (`end_of_day = "03:00"`) runs on the real clock;
- C4's driver stops at the arch too, and both sessions are paid.

Every truck charges to a limit its driver set, so each session's energy,
and so the revenue, is the same at any demo speed. The cost cap (R-P2)
stops a session by a forecast made in real seconds, which a demo running
600 times faster cannot repeat exactly: no truck here reaches it; the
payment tests show it.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from edge.demo import DemoHub, DemoPart, Step

HOUR = 3600.0


class PaymentsDemo(DemoPart):
    def __init__(self, demo: DemoHub):
        super().__init__(demo)
        self.terminal = None
        self.notes: list[str] = []
        self.closed = False  # T1's end-of-day done

    async def start(self) -> str:
        from simulators.zvt_terminal import ZvtTerminalSimulator

        self.terminal = ZvtTerminalSimulator(terminal_id="29001001")
        await self.terminal.start(tcp_port=0, pty=False)
        self.demo.devices["terminals"] = {"T1": self.terminal}
        return f"""
[[terminals]]
id = "T1"
port = "{self.terminal.tcp_url}"
connectors = ["C3", "C4"]
password = "000000"
end_of_day = "03:00"
"""

    async def stop(self) -> None:
        if self.terminal is not None:
            await self.terminal.stop()

    # -- the script --------------------------------------------------------------------
    def _plug(self, cid: str, soc: float, battery_kwh: float, max_power_w: float, limit_soc: float):
        def run():
            sim, i = self.demo.connector_sim(cid)
            sim.plug(i, soc=soc, battery_kwh=battery_kwh, max_power_w=max_power_w, limit_soc=limit_soc)
        return run

    async def _pay(self, cid: str, decline: str | None = None) -> None:
        if decline:
            self.terminal.decline_next(decline)
        answer = await self.demo.ask("arch_select", {"terminal": "T1", "connector": cid})
        if answer.get("started"):
            self.notes.append(f"{cid}: approved, hold {answer['hold']['amount']} {answer['hold']['currency']}")
        else:
            self.notes.append(f"{cid}: {answer.get('reason')}")

    async def _stop(self, cid: str) -> None:
        answer = await self.demo.ask("arch_stop", {"terminal": "T1", "connector": cid})
        self.notes.append(f"{cid}: stop at the arch: {answer.get('message') or answer.get('reason')}")

    def _paid(self, cid: str):
        """A check: the connector's last session is paid, with its receipt link."""
        async def check() -> bool:
            rows = await self.demo.ask("sessions", {"connector": cid, "limit": 1})
            return bool(rows) and rows[0]["status"] == "stopped" and bool(rows[0].get("receipt_url"))
        return check

    async def _end_of_day(self) -> None:
        for _try in range(3):
            try:
                answer = await self.demo.ask("terminal_end_of_day", {"id": "T1"})
            except RuntimeError as exc:  # a driver at the terminal: try again a little later
                answer = {"message": str(exc)}
                await asyncio.sleep(1.0)
                continue
            if answer.get("outcome") == "done":
                self.notes.append(answer["message"])  # the daemon's own words, as hubctl shows them
                self.closed = True
                return
            break
        self.notes.append(f"terminal T1 end-of-day: {answer.get('message')}")

    def steps(self) -> list[Step]:
        d = self.demo

        async def closed() -> bool:
            return self.closed

        return [
            Step(0.30 * HOUR, "a truck plugs in at C3 (arch terminal T1); its driver has set a charge limit of 45 %",
                 self._plug("C3", 25, 700, 300_000, 45), until=d.connector_is("C3", "Preparing")),
            Step(0.35 * HOUR, "C3's driver picks C3 on terminal T1 and pays by bank card: pre-authorised, charging starts",
                 lambda: self._pay("C3"), until=d.connector_is("C3", "Charging", session=True)),
            Step(0.80 * HOUR, "C3's truck reaches its charge limit: it stops drawing power, its session waits",
                 until=d.connector_is("C3", "SuspendedEV"), natural=True),
            Step(1.10 * HOUR, "C3's driver stops at the arch with the same card: the amount is booked, receipt link made",
                 lambda: self._stop("C3"), until=self._paid("C3")),
            d.leaves("C3", 1.25 * HOUR, "C3's truck leaves"),
            Step(2.40 * HOUR, "a big truck plugs in at C4; its driver has set a charge limit of 60 %",
                 self._plug("C4", 40, 1000, 300_000, 60), until=d.connector_is("C4", "Preparing")),
            Step(2.42 * HOUR, "C4's driver pays at T1: the card is declined (insufficient funds), nothing starts",
                 lambda: self._pay("C4", decline="funds"), until=d.event("payment.declined")),
            Step(2.45 * HOUR, "C4's driver pays with another card: approved, charging starts",
                 lambda: self._pay("C4"), until=d.connector_is("C4", "Charging", session=True)),
            Step(2.95 * HOUR, "terminal T1 runs its end-of-day: C3's booking goes to the acquirer; C4's hold stays open, "
                              "its session still charges", self._end_of_day, until=closed),
            Step(3.10 * HOUR, "C4's truck reaches its charge limit", until=d.connector_is("C4", "SuspendedEV"), natural=True),
            Step(3.30 * HOUR, "C4's driver stops at the arch with the same card: the amount is booked, receipt link made",
                 lambda: self._stop("C4"), until=self._paid("C4")),
            d.leaves("C4", 3.45 * HOUR, "C4's truck leaves"),
        ]

    def summary(self, status: dict, sessions: list[dict]) -> list[str]:
        paid = [s for s in sessions if s.get("method") == "bank_card"]
        with_receipt = [s for s in paid if s.get("receipt_url")]
        revenue = sum((Decimal(s["cost_gross"]) for s in with_receipt), Decimal("0"))
        currency = with_receipt[0]["currency"] if with_receipt else "EUR"
        holds = sum(t.get("open_holds", 0) for t in status.get("terminals", []))
        counts = status.get("payments") or {}
        capped = sum(1 for s in paid if s.get("stop_reason") == "cost_cap")
        lines = [
            f"bank-card sessions: {len(paid)} ({len(with_receipt)} paid with a receipt link, {capped} stopped by the cost cap); "
            f"revenue {revenue} {currency}",
            f"payment holds: settled {counts.get('settled', 0)}, released {counts.get('released', 0)}, "
            f"declined {counts.get('declined', 0)}; holds open now: {holds}",
        ]
        lines += [f"  receipt: {s['receipt_url']} ({s['cost_gross']} {s['currency']})" for s in with_receipt]
        lines += [f"payments: {n}" for n in self.notes]
        return lines


def demo_part(demo: DemoHub) -> DemoPart:
    return PaymentsDemo(demo)
