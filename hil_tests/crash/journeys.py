"""The four journeys whose commits are crashed, each one restartable.

A journey is a driver (or a booked truck) who looks at the site and does the
next thing that makes sense: plug in when nothing is plugged, pay or tap
when the connector waits, stop once it has charged long enough, unplug when
the connector lets go, drive out. ``advance`` does one such step and returns
True once the journey is over; it never remembers more than a real driver
would, so after a SIGKILL and a restart it simply carries on from whatever
the hub and the devices show. A step the daemon did not answer is tried
again at the next call.

- ``bank_card``: a truck at C3 pays by bank card at arch terminal T1
  (pre-authorisation, charging, stop at the arch, settlement);
- ``own_card``: a fleet's own charge card at C1's reader R1 (token list);
- ``roaming``: a roaming (eMSP) card at C2's reader R2, checked with the
  cloud over MQTT;
- ``booked_truck``: a booking from the cloud; the truck's plate opens the
  entry barrier, it charges at the bay the hub assigned (free vend, CCS),
  stops when full, unplugs and leaves through the exit by plate and loop.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

from bench.chaos import ExitPassage, Visit
from units import rfc3339
from hil_tests.crash.site import CrashSite

ACTIVE = ("Charging", "SuspendedEV", "SuspendedEVSE")
CHARGE_S = 1.5  # how long a truck charges before its driver stops it
TAP_EVERY_S = 2.5  # past the readers' debounce (1.5 s): a repeated tap counts again
STOP_EVERY_S = 5.0  # a driver whose stop did not take asks again after this long
UNLOCK_PATIENCE_S = 12.0  # a driver calls the technician after this long at a locked connector
EXIT_PATIENCE_S = 25.0  # long enough for a daemon restart and a barrier reconnect (R-G6)
OWN = "04C1A5E0"
ROAMING = "04E1B0A7"
PLATE = "NL-KP-{:03d}-G"  # letters no camera confuses with digits


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Journey:
    name = ""
    connector = ""

    def __init__(self, site: CrashSite):
        self.site = site
        self.visits: list[Visit] = []
        self.passages: list[ExitPassage] = []
        self.notes: list[str] = []
        # The connector still locked long after the charge: what the technician was told (R-C5).
        self.locked_in: list[str] = []
        self._where = "not started"
        self.seen: list[str] = []  # what the driver saw, each change once, for a journey that does not finish
        self.changed_at = time.monotonic()  # when the driver last saw something change
        self.charged_at: float | None = None  # first seen charging
        self.stop_asked_at = 0.0
        self.left = False
        self._locked_since: float | None = None
        self._last_tap = 0.0

    @property
    def where(self) -> str:
        return self._where

    @where.setter
    def where(self, what: str) -> None:
        if what != self._where:
            self._where = what
            self.seen.append(what)
            self.changed_at = time.monotonic()

    # ------------------------------------------------------------ set-up
    async def prepare(self) -> None:
        """What the site needs before the journey (not counted)."""

    # ------------------------------------------------------------ helpers
    @property
    def visit(self) -> Visit | None:
        return self.visits[-1] if self.visits else None

    def sim(self):
        return self.site.hub.connector_sim(self.connector)

    def plug(self, method: str, token: str | None = None) -> None:
        sim, i = self.sim()
        sim.plug(i, soc=30, battery_kwh=800, max_power_w=300_000)
        self.visits.append(Visit(f"{self.name}-{len(self.visits) + 1}", self.connector, method, _now(), token=token))

    async def charge_or_stop(self, c: dict, stop) -> None:
        """Charging: note the session; stop it once it has charged long enough."""
        self.visit.session_seen = c["session"]
        if c["status"] not in ACTIVE:
            return
        if self.charged_at is None:
            self.charged_at = time.monotonic()
        now = time.monotonic()
        if now - self.charged_at >= CHARGE_S and now - self.stop_asked_at >= STOP_EVERY_S:
            self.stop_asked_at = now
            await stop()

    async def unplug_when_unlocked(self, c: dict) -> bool:
        """The truck has finished: out with the cable once the hub unlocks
        it; a driver left at a locked connector calls the technician (R-C5)."""
        sim, i = self.sim()
        if sim.connectors[i].locked:
            self._locked_since = self._locked_since or time.monotonic()
            if time.monotonic() - self._locked_since > UNLOCK_PATIENCE_S:
                resp = await self.site.call("connector", {"action": "unlock", "id": self.connector,
                                                          "reason": "crash run: the driver cannot unplug"})
                answer = (resp or {}).get("message") or ((resp or {}).get("data") or {}).get("message")
                self.locked_in.append(f"{self.connector} {c['status']}, technician's unlock: {answer}")
                self._locked_since = time.monotonic()
            return False
        sim.unplug(i)
        self.visit.left_at = _now()
        self.left = True
        return True

    async def tap(self, reader: str, uid: str) -> None:
        if time.monotonic() - self._last_tap < TAP_EVERY_S:
            return
        self._last_tap = time.monotonic()
        await asyncio.to_thread(self.site.hub.devices["readers"][reader].tap, uid, 0.6)

    def truck_finished(self) -> bool:
        """The charger ended the charge (a stop, or the battery full)."""
        sim, i = self.sim()
        return sim.connectors[i].finished

    async def advance(self) -> bool:
        raise NotImplementedError


class CardAtConnector(Journey):
    """A card at the connector's own reader: tap to start, tap to stop."""

    reader = ""
    uid = ""
    method = ""

    async def advance(self) -> bool:
        c = await self.site.connector(self.connector)
        if c is None:
            self.where = "daemon away"
            return False
        self.where = f"{self.connector} {c['status']} session {c.get('session')}"
        if self.left:
            return c["status"] == "Available" and not c.get("session")
        sim, i = self.sim()
        if sim.connectors[i].truck is None:
            self.plug(self.method, self.uid)
            return False
        if c.get("session") and not self.truck_finished():
            await self.charge_or_stop(c, lambda: self.tap(self.reader, self.uid))
            return False
        if self.truck_finished() or c["status"] == "Finishing":
            await self.unplug_when_unlocked(c)
            return False
        if c["status"] == "Preparing" and not c.get("session") and self.charged_at is None:
            await self.tap(self.reader, self.uid)
        return False


class OwnCard(CardAtConnector):
    name, connector, reader, uid, method = "own_card", "C1", "R1", OWN, "own_card"

    async def prepare(self) -> None:
        await sync(self.site, "tokens", {"version": 1, "kind": "full", "remove": [], "upsert": [
            {"uid": OWN, "status": "Active", "type": "own", "group": "crash-fleet", "reference": "truck 1"}]})


class RoamingCard(CardAtConnector):
    name, connector, reader, uid, method = "roaming", "C2", "R2", ROAMING, "emsp_card"

    async def prepare(self) -> None:
        self.site.hub.cloud.answer_auth(ROAMING, "Accepted", group="roam-partner", reference="partner truck")


class BankCard(Journey):
    """A bank card at arch terminal T1 for C3: pay, charge, stop at the arch."""

    name, connector = "bank_card", "C3"

    async def advance(self) -> bool:
        st = await self.site.status()
        if st is None:
            self.where = "daemon away"
            return False
        c = next(x for x in st["connectors"] if x["connector"] == self.connector)
        open_holds = sum(t.get("open_holds", 0) for t in st.get("terminals", []))
        pending = {s: n for s, n in (st.get("payments") or {}).items()
                   if s not in ("declined", "settled", "released", "lapsed") and n}
        self.where = f"{self.connector} {c['status']} session {c.get('session')}; holds open {open_holds}, payments {pending}"
        if self.left:
            return c["status"] == "Available" and not open_holds and not pending
        sim, i = self.sim()
        if sim.connectors[i].truck is None:
            self.plug("bank_card")
            return False
        args = {"terminal": "T1", "connector": self.connector}
        if c.get("session") and not self.truck_finished():
            await self.charge_or_stop(c, lambda: self.site.call("arch_stop", args, timeout=45))
            return False
        if self.truck_finished() or c["status"] == "Finishing":
            await self.unplug_when_unlocked(c)
            return False
        if c["status"] == "Preparing" and not c.get("session") and self.charged_at is None:
            resp = await self.site.call("arch_select", args, timeout=45)
            data = (resp or {}).get("data") or {}
            if not data.get("started"):
                await asyncio.sleep(1.0)  # the terminal or the hub is busy (a restart): the driver tries again
        return False


class BookedTruck(Journey):
    """A booked truck through the gates to its bay and out again."""

    name = "booked_truck"

    def __init__(self, site: CrashSite):
        super().__init__(site)
        self.booking = f"BK-{site.run.hub_id}"
        self.plate = PLATE.format(site.run.number % 1000)
        self.entered = False
        self.sent_at = 0.0
        self.read_at = 0.0
        self.out = False

    async def booking_row(self) -> dict | None:
        resp = await self.site.call("bookings")
        if not resp or not resp.get("ok"):
            return None
        return next((b for b in resp["data"] if b["booking"] == self.booking), {})

    async def advance(self) -> bool:
        b = await self.booking_row()
        if b is None:
            self.where = "daemon away"
            return False
        where = f"booking {b.get('state')} at {b.get('connector')}; entered {self.entered}, plugged {bool(self.visits)}, " \
                f"left the bay {self.left}, out {self.out}"
        if self.entered and not self.left and not self.out:
            at = await self.at_bay(b)
            self.where = f"{where}; {at}" if at else where
            return False
        self.where = where
        if not b:
            if time.monotonic() - self.sent_at > 5.0:
                self.sent_at = time.monotonic()
                start = _now() + timedelta(seconds=20)
                self.site.hub.cloud.send("bookings", {"upsert": [{
                    "id": self.booking, "slot_start": rfc3339(start), "slot_end": rfc3339(start + timedelta(minutes=7)),
                    "connector_type": "CCS", "side": "left", "plates": [self.plate], "customer": "crash-fleet"}],
                    "cancel": []})
            return False
        if self.out:
            # Out of the site: how the hub closed the booking is for the checks to judge.
            c = await self.site.connector(self.connector)
            return c is not None and c["status"] == "Available"
        if not self.entered:
            if b.get("connector"):  # no bay yet: the truck is not there yet either
                await self.enter()
            return False
        await self.leave()
        return False

    async def enter(self) -> None:
        """The camera reads the plate as the truck comes up to the barrier;
        the truck drives through once it is open, or comes up again."""
        bar = self.site.hub.devices["barriers"]["G-IN"]
        if time.monotonic() - self.read_at > 4.0:
            self.read_at = time.monotonic()
            try:
                await self.site.hub.devices["cameras"]["G-IN"].send_plate(self.plate, 0.95, "truck", "approach")
            except (OSError, asyncio.TimeoutError):
                pass  # the daemon is away: the camera posts again at the next pass
            for _ in range(30):
                if bar.position == "open":
                    break
                await asyncio.sleep(0.1)
        if bar.position == "open":
            bar.vehicle_arrives()
            await asyncio.sleep(0.3)
            bar.vehicle_leaves()
            self.entered = True

    async def at_bay(self, b: dict) -> str | None:
        """At the bay the hub assigned: plug in, charge until full, unplug."""
        self.connector = self.connector or b.get("connector") or ""
        if not self.connector:
            return None
        c = await self.site.connector(self.connector)
        if c is None:
            return None
        sim, i = self.sim()
        sc = sim.connectors[i]
        at = f"{self.connector} {c['status']} session {c.get('session')}; truck plugged {sc.truck is not None}, " \
             f"charging {sc.active}, full {sc.finished}, locked {sc.locked}"
        if sc.truck is None:
            self.plug("free_vend")
            return at
        if c.get("session") and not self.truck_finished():
            async def full() -> None:
                sim.full(i)  # the battery is full: the truck ends the session
            await self.charge_or_stop(c, full)
            return at
        if self.truck_finished() or c["status"] == "Finishing":
            await self.unplug_when_unlocked(c)
        return at

    async def leave(self) -> None:
        bar = self.site.hub.devices["barriers"]["G-OUT"]
        bar.vehicle_arrives()
        t0, at = time.monotonic(), _now()
        try:
            await self.site.hub.devices["cameras"]["G-OUT"].send_plate(self.plate, 0.93, "truck", "leave")
        except (OSError, asyncio.TimeoutError):
            pass  # the daemon is away: the presence loop alone must open it (R-G6)
        while bar.position != "open" and time.monotonic() - t0 < EXIT_PATIENCE_S:
            await asyncio.sleep(0.05)
        self.passages.append(ExitPassage(self.name, "G-OUT", bar.position == "open", time.monotonic() - t0, at))
        await asyncio.sleep(0.1)
        bar.vehicle_leaves()
        self.out = True


JOURNEYS = {j.name: j for j in (BankCard, OwnCard, RoamingCard, BookedTruck)}


async def sync(site: CrashSite, kind: str, payload: dict, tries: int = 6) -> None:
    for _ in range(tries):
        mid = site.hub.cloud.send(kind, payload)
        reply = await asyncio.to_thread(site.hub.cloud.reply_to, mid, 10.0)
        if reply is not None and reply.get("ok"):
            return
    raise RuntimeError(f"the {kind} sync was not applied by the daemon (see {site.hub.log_path})")
