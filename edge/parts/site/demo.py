"""The site-access part of the demo day: an entry and an exit gate, and
bookings from the simulated cloud for the bays.

Two cameras post reads the way real ones do (Hikvision multipart XML at the
entry, Axis JSON at the exit) to the daemon's listeners; two barrier I/O
modules answer Modbus TCP. Booking slots are real times on the daemon's
clock, so the booking timings in the configuration are scaled by the demo's
speed (an hour of the demo day is an hour of lead time, whatever the speed);
slots last at least six real minutes, as the hub refuses shorter ones.

The card and payment parts use C1-C4 until 4.3 h and the base day C5-C6
until 3.8 h, so the gate-only scenes come early (they touch no connector)
and the bookings come once the bays are quiet:
  0.15 an ad-hoc truck: admitted, bays are free (R-G3)
  1.3  a car: refused (R-G1)   1.4  a blurry read: to the operator (R-G4)
  2.1  a vehicle on the exit loop, no read: the exit opens (R-G6)
  2.2  the ad-hoc truck leaves through the exit
  4.4  the bookings scene, once every bay is empty (but for the OCPP
       station's long bay B7, where booked truck DM-7 stays the night),
       each line told once what it tells of has happened: five bookings
       (DM-1..DM-5) hold every other bay; DM-1 arrives early, in at once (R-G2); a truck without a booking
       plugs into DM-2's bay, so DM-2 is moved when it comes (R-B4); an
       ad-hoc truck is refused (R-G3); DM-1 and DM-2 leave through the exit;
       DM-3, DM-4, DM-5 never come: no-shows free their bays (R-B3)
"""

from __future__ import annotations

import re

from edge.demo import DemoHub, DemoPart, Step, first_answer

HOUR = 3600.0
SECRET = "demo-camera-secret"
PLATES = {"DM-1": "NL-BT-101-K", "DM-2": "D-EV 2024", "DM-3": "B-HX 777", "DM-4": "PL-WX 40412",
          "DM-5": "F-GH-512-JK"}
# id, connector type, side, slot start in demo hours after they are sent
BOOKINGS = (("DM-1", "MCS", "left", 0.45), ("DM-2", "MCS", "right", 0.6), ("DM-3", "MCS", "left", 0.1),
            ("DM-4", "CCS", "left", 0.15), ("DM-5", "CCS", "right", 0.15))
SCENE_AT_H = 4.4
_EVENT = re.compile(r" event type=((?:gate|booking)\.\w+) seq=\d+(?: .*?reason=(\w+))?")


class SiteDemo(DemoPart):
    def __init__(self, demo: DemoHub):
        super().__init__(demo)
        self.cameras: dict = {}
        self.barriers: dict = {}
        self.no_cloud_reason: str | None = None
        self.taken: str | None = None  # the connector the unbooked truck plugged into

    async def start(self) -> str:
        from simulators.barrier import BarrierSimulator
        from simulators.broker import free_port
        from simulators.camera import CameraSimulator

        listen = {"G-IN": free_port(), "G-OUT": free_port()}
        for gid in listen:
            sim = BarrierSimulator(travel_s=0.3, dwell_s=1.0)
            await sim.start()
            self.barriers[gid] = sim
        self.cameras = {
            "G-IN": CameraSimulator(f"http://127.0.0.1:{listen['G-IN']}/anpr", "hikvision", SECRET),
            "G-OUT": CameraSimulator(f"http://127.0.0.1:{listen['G-OUT']}/anpr", "axis", SECRET),
        }
        self.demo.devices["cameras"] = self.cameras
        self.demo.devices["barriers"] = self.barriers
        if getattr(self.demo, "cloud", None) is None:
            self.no_cloud_reason = "no simulated cloud in this demo run (mosquitto missing), so no bookings could arrive"

        def minutes(demo_minutes: float) -> str:
            return f"{demo_minutes / self.demo.speed:.4f}"

        return f"""
# Site access (edge/parts/site/demo.py): booking timings in real minutes, scaled
# by the demo speed so that they keep their meaning on the demo day.
[bookings]
assign_lead_min = {minutes(60)}
early_grace_min = {minutes(30)}
no_show_after_min = {minutes(30)}
hold_horizon_min = {minutes(90)}
overstay_after_min = {minutes(30)}

[gate]
confidence_threshold = 0.85

[[gates]]
id = "G-IN"
role = "entry"
barrier = {{ address = "127.0.0.1:{self.barriers['G-IN'].port}" }}
camera = {{ listen = "127.0.0.1:{listen['G-IN']}", vendor = "hikvision", secret = "{SECRET}" }}

[[gates]]
id = "G-OUT"
role = "exit"
barrier = {{ address = "127.0.0.1:{self.barriers['G-OUT'].port}" }}
camera = {{ listen = "127.0.0.1:{listen['G-OUT']}", vendor = "axis", secret = "{SECRET}" }}
"""

    # ------------------------------------------------------------ the script
    def _send_bookings(self) -> None:
        items = []
        for bid, ctype, side, after_h in BOOKINGS:
            start, end = self.demo.slot(after_h, 2.0)
            items.append({"id": bid, "slot_start": start, "slot_end": end, "connector_type": ctype, "side": side,
                          "plates": [PLATES[bid]], "customer": "demo-fleet"})
        self.demo.cloud.send("bookings", {"upsert": items, "cancel": []})

    async def _bay_of(self, booking_id: str) -> str | None:
        rows = await self.demo.ask("bookings", {})
        return next((b.get("connector") for b in rows if b["booking"] == booking_id), None)

    async def _scene(self) -> None:
        """The bookings scene. Its timings are the hub's booking rules on the
        daemon's clock, so the demo day's clock keeps running through it and
        each line is told once the event behind it has come."""
        d = self.demo
        wait = d.sim_sleep
        seen = d.event
        if not await first_answer(self._all_free, max(15.0, 0.6 * HOUR / d.speed)):
            d.tell("(a bay is still busy: the bookings scene starts all the same)")
        self._send_bookings()
        await self.demo.expect(seen("booking.assigned", 5), "the cloud sends bookings DM-1..DM-5: every bay is held (R-B2, R-B3)")
        await wait(0.1 * HOUR)
        await self._read("G-IN", PLATES["DM-1"])
        await self.demo.expect(seen("booking.arrived", 1), "DM-1's truck arrives early, within its grace: in at once (R-G2)")
        self.taken = await first_answer(lambda: self._bay_of("DM-2"), 15.0)
        if self.taken:
            sim, i = d.connector_sim(self.taken)
            sim.plug(i, soc=45, battery_kwh=500)
            await self.demo.expect(lambda: self._plugged(self.taken),  # DM-2 must find its bay taken
                               f"a truck without a booking plugs in at {self.taken}, DM-2's bay")
            await wait(0.05 * HOUR)
        await self._read("G-IN", PLATES["DM-2"], 0.97)
        await self.demo.expect(seen("booking.reassigned", 1), "DM-2's truck arrives: its bay is taken, so it gets another (R-B4)")
        await wait(0.1 * HOUR)
        await self._read("G-IN", "NL-98-ZZY")
        await self.demo.expect(seen("gate.refused", 1), "another ad-hoc truck: refused, every bay is held or taken (R-G3)")
        await wait(0.1 * HOUR)
        if self.taken:
            sim, i = d.connector_sim(self.taken)
            sim.unplug(i)
            await self.demo.expect(d.connector_is(self.taken, "Available", "Reserved"), "the unbooked truck leaves")
        await wait(0.05 * HOUR)
        await self._read("G-OUT", PLATES["DM-1"], 0.91, direction="leave")
        await wait(0.05 * HOUR)
        await self._read("G-OUT", PLATES["DM-2"], 0.93, direction="leave")
        await self.demo.expect(seen("booking.fulfilled", 2), "DM-1's and DM-2's trucks leave through the exit: bookings fulfilled")
        await self.demo.expect(seen("booking.no_show", 3), "DM-3, DM-4 and DM-5 never come: no-shows free their bays (R-B3)",
                           within_s=1.5 * HOUR)

    async def _all_free(self) -> bool:
        """Every connector is free, but for the bays of booked trucks that
        are in (an overnight stay goes on through the scene)."""
        status = await self.demo.ask("status")
        staying = {b.get("connector") for b in await self.demo.ask("bookings", {})
                   if b.get("state") in ("arrived", "charging")}
        return all(c["status"] == "Available" or c["connector"] in staying for c in status["connectors"])

    async def _plugged(self, connector: str) -> bool:
        """The daemon has seen a vehicle at the connector (its next poll)."""
        status = await self.demo.ask("status")
        return any(c["connector"] == connector and c["status"] not in ("Available", "Reserved")
                   for c in status["connectors"])

    async def _read(self, gate: str, plate: str, confidence: float = 0.94, vehicle_class: str = "truck",
                    direction: str = "approach") -> None:
        reply = await self.cameras[gate].send_plate(plate, confidence, vehicle_class, direction)
        if reply.status != 200:
            raise RuntimeError(f"the {gate} listener answered {reply.status}")

    async def _exit_loop_only(self) -> None:
        """A vehicle waits on the exit loop, as a real one does, until the
        barrier opens (however long the hub takes to see it), then drives off."""
        sim = self.barriers["G-OUT"]
        sim.vehicle_arrives()
        await first_answer(self.demo.event("gate.opened"), 20.0)
        await self.demo.sim_sleep(0.05 * HOUR)
        sim.vehicle_leaves()

    def steps(self) -> list[Step]:
        h = HOUR
        seen = self.demo.event
        steps = [
            Step(0.15 * h, "an ad-hoc truck at the entry: admitted, bays are free (R-G3)",
                 lambda: self._read("G-IN", "NL-99-ZZX"), until=seen("gate.opened")),
            Step(1.3 * h, "a car at the entry: refused, the hub is for trucks (R-G1)",
                 lambda: self._read("G-IN", "NL-12-CAR", 0.98, vehicle_class="car"), until=seen("gate.refused")),
            Step(1.4 * h, "a blurry plate at the entry: the operator checks it (R-G4)",
                 lambda: self._read("G-IN", "NL-77-BLR", 0.42), until=seen("gate.manual_review")),
            Step(2.1 * h, "a vehicle on the exit loop, no plate read: the exit opens anyway (R-G6)",
                 self._exit_loop_only, until=seen("gate.opened")),
            Step(2.2 * h, "the ad-hoc truck leaves through the exit",
                 lambda: self._read("G-OUT", "NL-99-ZZX", 0.9, direction="leave"), until=seen("gate.opened")),
        ]
        if self.no_cloud_reason:
            return steps
        # The scene tells its own lines as they happen.
        steps.append(Step(SCENE_AT_H * h, "the bookings scene is over", self._scene, hold=False))
        return steps

    async def stop(self) -> None:
        for sim in self.barriers.values():
            await sim.stop()

    # ------------------------------------------------------------ summary
    def summary(self, status: dict, sessions: list[dict]) -> list[str]:
        gates: dict[str, dict[str, int]] = {}
        bookings: dict[str, int] = {}
        try:
            text = self.demo.log_path.read_text(errors="replace") if self.demo.log_path else ""
        except OSError:
            text = ""
        for m in _EVENT.finditer(text):
            type_, reason = m.group(1), m.group(2)
            if type_.startswith("gate."):
                per = gates.setdefault(type_.split(".", 1)[1].replace("_", " "), {})
                per[reason or "?"] = per.get(reason or "?", 0) + 1
            else:
                kind = type_.split(".", 1)[1].replace("_", "-")
                bookings[kind] = bookings.get(kind, 0) + 1
        decided = sum(n for per in gates.values() for n in per.values())
        by_reason = "; ".join(f"{what}: " + ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in sorted(per.items()))
                              for what, per in sorted(gates.items()))
        closes = sum(len(sim.close_commands) for sim in self.barriers.values())
        lines = [f"gate decisions: {decided} ({by_reason or 'none'}); close commands sent by software: {closes}"]
        if self.no_cloud_reason:
            lines.append(f"bookings: skipped — {self.no_cloud_reason}")
        else:
            lines.append("bookings: " + ", ".join(f"{bookings.get(k, 0)} {k}" for k in
                                                   ("assigned", "reassigned", "no-show", "arrived", "fulfilled")))
        return lines


def demo_part(demo: DemoHub) -> DemoPart:
    return SiteDemo(demo)
