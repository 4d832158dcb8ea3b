"""The OCPP part of `hubedge demo`: station CS-OCPP1 (the OCPP 1.6J station
simulator over a real websocket, two MCS connectors C7 and C8) beside the
Modbus chargers, in the yard outside the bookable bays, and a second arch
terminal T2 serving its connectors. Its
day crosses OCPP both ways (issue 17 §7):

  0.00  the station connects to the hub's listener (HTTP Basic, ocpp1.6), and again
        whenever the link goes (as real stations do):
        boot accepted, vendor, model and firmware kept (`hubctl chargers`)
  0.52  a truck plugs in at C7; its driver taps own card *B2C3 at the
        station's own reader: the station asks the hub (Authorize), the hub
        decides as for its readers, the station starts the transaction
  1.40  the same card at the station's reader stops it (R-C4)
  1.55  a truck plugs in at C8; its driver pays at arch terminal T2: the hub
        sends a remote start, the station's transaction joins the session
  2.40  the driver stops at T2 with the same card: a remote stop, the
        station's StopTransaction ends the session, the amount is booked

Every truck is full before its driver stops, so each session's energy is
the same at any demo speed. Without a broker there is no token list, so
the card at C7 is refused (unknown, offline), which the day tells.
"""

from __future__ import annotations

import asyncio
import os

from edge.demo import OWN, DemoHub, DemoPart, Step

HOUR = 3600.0
STATION = "CS-OCPP1"


class OcppDemo(DemoPart):
    def __init__(self, demo: DemoHub):
        super().__init__(demo)
        self.station = None
        self.terminal = None
        self.notes: list[str] = []
        self._keeper: asyncio.Task | None = None

    async def start(self) -> str:
        from simulators.broker import free_port
        from simulators.ocpp_station import OcppStation
        from simulators.zvt_terminal import ZvtTerminalSimulator
        from edge.core.store import atomic_write

        port = free_port()
        password = os.urandom(12).hex()
        key = self.demo.state_dir / "cs-ocpp1.key"
        atomic_write(key, (password + "\n").encode(), mode=0o600)
        self.station = OcppStation(STATION, "ocpp1.6", f"ws://127.0.0.1:{port}/ocpp", password=password,
                                   connectors=2, time_scale=self.demo.speed, tick_s=0.1, meter_interval_s=60,
                                   vendor="SimCharge", model="SIM-MCS-1200", signed=True)
        self.terminal = ZvtTerminalSimulator(terminal_id="29001002")
        await self.terminal.start(tcp_port=0, pty=False)
        self.demo.devices.setdefault("terminals", {})["T2"] = self.terminal
        self.demo.devices["ocpp_stations"] = {STATION: self.station}
        self._keeper = asyncio.get_running_loop().create_task(self._keep_connected())
        return f"""
# OCPP (edge/parts/chargers/ocpp/demo.py): station {STATION} connects to the
# hub's listener as a real station does.
[ocpp]
listen = "127.0.0.1:{port}"
heartbeat_interval_s = 10
offline_after_s = 60
meter_interval_s = 60

[[chargers]]
id = "{STATION}"
protocol = "ocpp1.6"
password_file = "{key}"
connectors = [ {{ id = "C7", evse = 1 }}, {{ id = "C8", evse = 2 }} ]

[[terminals]]
id = "T2"
port = "{self.terminal.tcp_url}"
connectors = ["C7", "C8"]
password = "000000"
"""

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        if self.station is not None:
            await self.station.close()
        if self.terminal is not None:
            await self.terminal.stop()

    # -- the script --------------------------------------------------------------------
    async def _keep_connected(self) -> None:
        """As a real station does: connect, and again whenever the link is
        gone (the daemon starting, restarting, killed); boot the first time."""
        booted = False
        while True:
            if not self.station.connected:
                try:
                    await self.station.connect(boot=not booted)
                    booted = True
                except Exception:
                    pass
            await asyncio.sleep(0.2)

    async def _booted(self) -> bool:
        rows = await self.demo.ask("chargers")
        row = next((r for r in rows if r["charger"] == STATION), None)
        return bool(row and row.get("connected") and row.get("vendor"))

    def _plug(self, i: int, soc: float, battery_kwh: float):
        def run():
            self.station.plug(i, soc=soc, battery_kwh=battery_kwh, max_power_w=300_000)
        return run

    def _tap(self, i: int, uid: str):
        async def run():
            answer = await self.station.tap(uid, i)
            self.notes.append(f"card {uid[-4:]} at {STATION}'s reader: {answer}")
        return run

    async def _pay(self, cid: str) -> None:
        answer = await self.demo.ask("arch_select", {"terminal": "T2", "connector": cid})
        self.notes.append(f"{cid} at T2: " + ("approved" if answer.get("started") else str(answer.get("reason"))))

    async def _stop_at_arch(self, cid: str) -> None:
        answer = await self.demo.ask("arch_stop", {"terminal": "T2", "connector": cid})
        self.notes.append(f"{cid}: stop at T2: {answer.get('message') or answer.get('reason')}")

    def _paid(self, cid: str):
        async def check() -> bool:
            rows = await self.demo.ask("sessions", {"connector": cid, "limit": 1})
            return bool(rows) and rows[0]["status"] == "stopped" and bool(rows[0].get("receipt_url"))
        return check

    def _full(self, i: int):
        async def check() -> bool:
            c = self.station.connectors[i]
            return c.truck is not None and c.truck.soc >= 100.0
        return check

    def _leaves(self, i: int, cid: str, at_h: float, what: str) -> Step:
        def run():
            self.station.unplug(i)
        return Step(at_h * HOUR, what, run, until=self.demo.connector_is(cid, "Available"))

    def steps(self) -> list[Step]:
        d = self.demo
        steps = [
            Step(0.0, f"OCPP station {STATION} connects to the hub (OCPP 1.6J, HTTP Basic): boot accepted, its vendor, "
                      "model and firmware kept (hubctl chargers)", until=self._booted),
            Step(0.52 * HOUR, f"a truck plugs in at C7 of OCPP station {STATION}", self._plug(0, 50, 100),
                 until=d.connector_is("C7", "Preparing")),
        ]
        if d.cloud is None:
            steps.append(Step(0.55 * HOUR, "its driver taps card *B2C3 at the station's own reader: no token list "
                                           "without the cloud, the hub refuses it as unknown offline",
                              self._tap(0, OWN), until=d.event("auth.rejected", connector=STATION)))
            steps.append(self._leaves(0, "C7", 0.7, "C7's truck leaves uncharged"))
        else:
            steps += [
                Step(0.55 * HOUR, "its driver taps own card *B2C3 at the station's own reader: the station asks the "
                                  "hub (Authorize), the hub decides as at its own readers, charging starts (R-O2)",
                     self._tap(0, OWN), until=d.connector_is("C7", "Charging", session=True)),
                Step(1.20 * HOUR, "C7's truck is full: the station reports it suspended by the truck",
                     until=self._full(0), natural=True),
                Step(1.40 * HOUR, "the same card at the station's reader stops the session; the station's own "
                                  "meter values, signed, are kept with it (R-O4)",
                     self._tap(0, OWN), until=d.connector_is("C7", "Finishing", "Available", session=False)),
                self._leaves(0, "C7", 1.5, "C7's truck leaves"),
            ]
        steps += [
            Step(1.55 * HOUR, f"a truck plugs in at C8 of {STATION}", self._plug(1, 50, 80),
                 until=d.connector_is("C8", "Preparing")),
            Step(1.58 * HOUR, "its driver pays at arch terminal T2: the hub sends the station a remote start and "
                              "the station's transaction joins the paid session (R-O2)",
                 lambda: self._pay("C8"), until=d.connector_is("C8", "Charging", session=True)),
            Step(2.25 * HOUR, "C8's truck is full", until=self._full(1), natural=True),
            Step(2.40 * HOUR, "C8's driver stops at T2 with the same card: a remote stop, the station's "
                              "StopTransaction ends the session, the amount is booked, receipt link made",
                 lambda: self._stop_at_arch("C8"), until=self._paid("C8")),
            self._leaves(1, "C8", 2.5, "C8's truck leaves"),
        ]
        return steps

    def summary(self, status: dict, sessions: list[dict]) -> list[str]:
        ours = [s for s in sessions if s["connector"] in ("C7", "C8")]
        energy = sum(s.get("energy_wh") or 0 for s in ours) / 1000
        ocpp = status.get("ocpp") or {}
        lines = [f"ocpp: station {STATION} {'connected' if ocpp.get('connected') else 'not connected'}; "
                 f"{len(ours)} sessions over OCPP, {energy:.1f} kWh; handshakes refused: "
                 f"{ocpp.get('handshakes_refused', 0)}"]
        lines += [f"ocpp: {n}" for n in self.notes]
        return lines


def demo_part(demo: DemoHub) -> DemoPart:
    return OcppDemo(demo)
