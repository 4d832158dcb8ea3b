"""The payment part of `hubedge demo`: arch terminal T1 (the ZVT terminal
simulator over TCP) serving C3 and C4, and a day of bank-card drivers
(C3 from 0.3 h to 1.25 h, C4 from 2.4 h to 4.4 h, after the site part's
bookings have left it):

- a truck plugs in at C3, its driver picks C3 on the arch and pays by card
  (pre-authorisation approved, R-P1), charges, and later stops at the arch
  with the same card: the amount is booked and the session gets its receipt
  link (R-P3, R-P5);
- at C4 a card is declined for insufficient funds: nothing starts (R-P1);
- the driver pays with another card and charges until the cost cap stops the
  session before it would cost more than the hold (R-P2), then it is booked;
- at 03:00 of the demo day T1 runs its end-of-day (ZVT 06 50): the day's
  bookings go to the acquirer; a hold whose session still charges stays open.
  The daemon keeps real time, so the demo asks for it at its own 03:00 as a
  technician would (`hubctl terminal end-of-day T1`); the daily schedule
  (`end_of_day = "03:00"`) runs on the real clock.
"""

from __future__ import annotations

from decimal import Decimal

from edge.demo import DemoHub, DemoPart, Step

HOUR = 3600.0


class PaymentsDemo(DemoPart):
    def __init__(self, demo: DemoHub):
        super().__init__(demo)
        self.terminal = None
        self.notes: list[str] = []
        self._tasks: set = set()

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
        for task in list(self._tasks):
            task.cancel()
        if self.terminal is not None:
            await self.terminal.stop()

    # -- the script --------------------------------------------------------------------
    def _plug(self, cid: str, soc: float, battery_kwh: float, max_power_w: float):
        def run():
            sim, i = self.demo.connector_sim(cid)
            sim.plug(i, soc=soc, battery_kwh=battery_kwh, max_power_w=max_power_w)
        return run

    async def _wait_plugged(self, cid: str, timeout_s: float = 6.0) -> None:
        """The hub sees a plug at its next poll (a real second away, however
        fast the demo runs): the driver walks to the arch after that."""
        import asyncio
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = await self.demo.ask("status")
            if any(c["connector"] == cid and c["status"] == "Preparing" for c in status["connectors"]):
                return
            await asyncio.sleep(0.2)

    def _in_background(self, coro_fn):
        # The driver at the arch takes real seconds (the terminal, the card):
        # the rest of the demo day must not wait for it.
        import asyncio

        def run():
            async def guarded():
                try:
                    await coro_fn()
                except Exception as exc:
                    self.notes.append(f"arch step failed: {exc}")
            task = asyncio.get_running_loop().create_task(guarded())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return run

    async def _pay(self, cid: str, decline: str | None = None) -> None:
        await self._wait_plugged(cid)
        if decline:
            self.terminal.decline_next(decline)
        answer = await self.demo.ask("arch_select", {"terminal": "T1", "connector": cid})
        if answer.get("started"):
            self.notes.append(f"{cid}: approved, hold {answer['hold']['amount']} {answer['hold']['currency']}")
        else:
            self.notes.append(f"{cid}: {answer.get('reason')}")

    def _select(self, cid: str):
        return self._in_background(lambda: self._pay(cid))

    def _declined_then_paid(self, cid: str):
        async def run():
            await self._pay(cid, decline="funds")
            await self.demo.sim_sleep(0.05 * HOUR)  # the driver takes another card
            await self._pay(cid)
        return self._in_background(run)

    def _stop(self, cid: str):
        async def run():
            answer = await self.demo.ask("arch_stop", {"terminal": "T1", "connector": cid})
            self.notes.append(f"{cid}: stop at the arch: {answer.get('message') or answer.get('reason')}")
        return self._in_background(run)

    def _end_of_day(self):
        async def run():
            for _try in range(3):
                try:
                    answer = await self.demo.ask("terminal_end_of_day", {"id": "T1"})
                except RuntimeError as exc:  # a driver at the terminal: try again a little later
                    answer = {"message": str(exc)}
                    await self.demo.sim_sleep(0.05 * HOUR)
                    continue
                if answer.get("outcome") == "done":
                    self.notes.append(answer["message"])  # the daemon's own words, as hubctl shows them
                    return
                break
            self.notes.append(f"terminal T1 end-of-day: {answer.get('message')}")
        return self._in_background(run)

    def steps(self) -> list[Step]:
        return [
            Step(0.30 * HOUR, "truck plugs in at C3 (arch terminal T1)", self._plug("C3", 25, 700, 300_000)),
            Step(0.35 * HOUR, "C3's driver picks C3 on terminal T1 and pays by bank card: pre-authorised, charging starts",
                 self._select("C3")),
            Step(1.10 * HOUR, "C3's driver stops at the arch with the same card: the amount is booked, receipt link made",
                 self._stop("C3")),
            Step(1.25 * HOUR, "C3's truck leaves", lambda: self.demo.unplug_when_unlocked("C3")),
            # C4 is held for a booking until 2.3 h (the site part's day).
            Step(2.40 * HOUR, "a big truck plugs in at C4", self._plug("C4", 5, 1000, 600_000)),
            Step(2.42 * HOUR, "C4's driver pays at T1: card declined (insufficient funds), nothing starts; then pays "
                 "with another card: approved, and the cost cap will end this session", self._declined_then_paid("C4")),
            Step(3.00 * HOUR, "terminal T1 runs its end-of-day: the day's card bookings go to the acquirer "
                 "(a hold whose session still charges stays open)", self._end_of_day()),
            Step(4.40 * HOUR, "C4's truck leaves", lambda: self.demo.unplug_when_unlocked("C4")),
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
