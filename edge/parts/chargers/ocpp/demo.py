"""The OCPP part of `hubedge demo`: station CS-OCPP1 (the OCPP 1.6J station
simulator over a real websocket, two MCS connectors C7 and C8) beside the
Modbus chargers, and a second arch terminal T2 serving its connectors. C8
stands in the yard; C7 is bay B7, the site's long bay (30 m, for a road
train). Its day crosses OCPP every way a truck starts (issue 17 §7):

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
  4.32  once the other parts' trucks have gone, the cloud books the long bay
        for DM-7, a 25.25 m road train staying the night with fleet card
        *E5F6: the hub holds B7 (the other bays are 25 m) and sends the
        station ReserveNow for that card (R-B2, R-B3); DM-7 at the entry
        gate, early: in at once (R-G2); it plugs in at C7, its driver taps
        the card at the station's reader, the station starts the reserved
        transaction and the booking is charging
  5.50  the next morning, after the bookings scene (which holds every
        other bay): the card stops the session, which fulfils the booking,
        and the truck leaves through the exit

Every truck is full before its driver stops, so each session's energy is
the same at any demo speed. Without a broker there is no token list, so
the card at C7 is refused (unknown, offline), which the day tells, and no
booking comes.
"""

from __future__ import annotations

import asyncio
import os

from edge.demo import OWN, OWN_OTHER, DemoHub, DemoPart, Step, all_of

HOUR = 3600.0
STATION = "CS-OCPP1"
BOOKED = "DM-7"  # the booked truck staying the night in the long bay B7
BOOKED_PLATE = "NL-VT-207-X"


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

[[bays]]
id = "B7"
connector = "C7"
connector_type = "MCS"
side = "left"
length_m = 30

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
        return Step(at_h * HOUR, what, run, until=self.demo.connector_is(cid, "Available", "Reserved"))

    # -- DM-7, booked for the night in the long bay B7 ---------------------------------
    def _book(self) -> None:
        start, end = self.demo.slot(0.15, 3.5)
        self.demo.cloud.send("bookings", {"cancel": [], "upsert": [{
            "id": BOOKED, "slot_start": start, "slot_end": end, "connector_type": "MCS", "side": "left",
            "plates": [BOOKED_PLATE], "customer": "other-fleet", "token_uid": OWN_OTHER, "vehicle_length_m": 25.25}]})

    async def _reserved_at_station(self) -> bool:
        return any(action == "ReserveNow" and p.get("idTag") == OWN_OTHER for action, p in self.station.received)

    def _booking_is(self, *states: str):
        async def check() -> bool:
            rows = await self.demo.ask("bookings", {})
            return any(b["booking"] == BOOKED and b.get("state") in states and b.get("connector") == "C7"
                       for b in rows)
        return check

    def _at_gate(self, gate: str, direction: str):
        async def run() -> None:
            reply = await self.demo.devices["cameras"][gate].send_plate(BOOKED_PLATE, 0.95, "truck", direction)
            if reply.status != 200:
                raise RuntimeError(f"the {gate} listener answered {reply.status}")
        return run

    async def _booked_scene(self) -> None:
        """DM-7 arrives for the night. Its timings are the hub's booking
        rules on the daemon's clock, so the day's clock runs through it and
        each line is told once what it tells of has happened."""
        d = self.demo
        self._book()
        await d.expect(all_of(d.connector_is("C7", "Reserved"), self._reserved_at_station),
                       f"the cloud books the long bay B7 for {BOOKED}, a 25.25 m road train staying the night with fleet "
                       f"card *E5F6: the hub holds it and sends station {STATION} ReserveNow for that card (R-B2, R-B3)")
        await d.sim_sleep(0.05 * HOUR)
        await self._at_gate("G-IN", "approach")()
        await d.expect(self._booking_is("arrived"), f"{BOOKED}'s truck at the entry, early within its grace: in at once (R-G2)")
        self.station.plug(0, soc=30, battery_kwh=200, max_power_w=300_000)
        await d.expect(d.connector_is("C7", "Preparing"), f"{BOOKED}'s truck plugs in at C7, in its booked bay")
        await self._tap(0, OWN_OTHER)()
        await d.expect(all_of(d.connector_is("C7", "Charging", session=True), self._booking_is("charging")),
                       "its driver taps card *E5F6 at the station's reader: the reservation is for that card, the hub "
                       "accepts it, the station starts the transaction and the booking is charging (R-O2)")

    def _booked_truck(self) -> list[Step]:
        """DM-7's night: booked, in at the gate and charging over OCPP on the
        station's reservation just before the bookings scene; out the next
        morning, after it."""
        d = self.demo
        return [
            Step(4.32 * HOUR, f"{BOOKED} is in for the night", self._booked_scene, hold=False),
            Step(5.45 * HOUR, f"overnight, {BOOKED}'s truck has filled its battery", until=self._full(0),
                 natural=True, within_s=3 * HOUR),
            Step(5.50 * HOUR, f"the morning: {BOOKED}'s driver taps the card at the station's reader: the session "
                              "ends and fulfils the booking", self._tap(0, OWN_OTHER),
                 until=all_of(d.connector_is("C7", "Finishing", "Available", session=False),
                              d.event("booking.fulfilled"))),
            self._leaves(0, "C7", 5.55, f"{BOOKED}'s truck pulls the cable"),
            Step(5.60 * HOUR, f"{BOOKED}'s truck leaves through the exit", self._at_gate("G-OUT", "leave"),
                 until=d.event("gate.opened")),
        ]

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
        if d.cloud is not None and "cameras" in d.devices:
            steps += self._booked_truck()
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
