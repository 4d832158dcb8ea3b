"""The card part of `hubedge demo`: RFID readers R1 and R2 at connectors C1
and C2 (nfcpy's UDP frontend, played by card simulators), the token list and
roaming answers from the simulated cloud, and a day of card taps:

- a blocked own card is refused (R-A1);
- an own card tapped before plugging, the truck plugs and charges (R-C3);
  another fleet's card cannot stop it, the same card later does (R-C4);
- a roaming card is accepted online by the cloud (R-A2);
- the cloud goes silent and an unknown roaming card is refused by the
  offline policy (R-A2).
"""

from __future__ import annotations

import asyncio
import socket

from edge.demo import BLOCKED, OWN, OWN_OTHER, ROAMING, STRANGER, DemoHub, DemoPart, Step


TOKENS = [
    {"uid": OWN, "status": "Active", "type": "own", "group": "demo-haulage", "reference": "truck 12"},
    {"uid": OWN_OTHER, "status": "Active", "type": "own", "group": "other-fleet", "reference": "truck 40"},
    {"uid": BLOCKED, "status": "Blocked", "type": "own", "group": "demo-haulage", "reference": "truck 7"},
]

HOUR = 3600.0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CardsDemo(DemoPart):
    def __init__(self, demo: DemoHub):
        super().__init__(demo)
        self.readers: dict = {}
        self.notes: list[str] = []

    async def start(self) -> str:
        from simulators.card import CardSimulator

        self.readers = {"R1": CardSimulator(_free_udp_port()), "R2": CardSimulator(_free_udp_port())}
        self.demo.devices["readers"] = self.readers
        return f"""
[auth]
connection_timeout_s = 60
debounce_s = 1.5
cloud_timeout_s = 3
unknown_offline = "refuse"

[[readers]]
id = "R1"
path = "udp:127.0.0.1:{self.readers['R1'].port}"
connector = "C1"

[[readers]]
id = "R2"
path = "udp:127.0.0.1:{self.readers['R2'].port}"
connector = "C2"
"""

    async def stop(self) -> None:
        for sim in self.readers.values():
            await asyncio.to_thread(sim.close)

    # -- the script --------------------------------------------------------------------
    def _tap(self, reader: str, uid: str):
        async def run():
            # The card stays in the field half a second: off the demo's loop.
            await asyncio.to_thread(self.readers[reader].tap, uid, 0.5)
        return run

    def _plug(self, cid: str, soc: float, limit_soc: float = 100.0):
        def run():
            sim, i = self.demo.connector_sim(cid)
            # A big pack at a modest rate, up to the limit its driver set: the
            # card (not a full battery) ends the session.
            sim.plug(i, soc=soc, battery_kwh=1000, max_power_w=300_000, limit_soc=limit_soc)
        return run

    async def _load_tokens(self) -> None:
        cloud = self.demo.cloud
        # The hub subscribes on its first connection: wait for it, or the
        # list would go to nobody.
        for _ in range(100):
            try:
                if (await self.demo.ask("status"))["cloud"].get("connected"):
                    break
            except Exception:
                pass
            await asyncio.sleep(0.1)
        cloud.answer_auth(ROAMING, "Accepted", group="roam-partner", reference="roaming truck")
        message_id = cloud.send("tokens", {"version": 1, "kind": "full", "upsert": TOKENS, "remove": []})
        reply = await asyncio.to_thread(cloud.reply_to, message_id, 10.0)
        if not reply or not reply.get("ok"):
            raise RuntimeError(f"the token list was not applied ({(reply or {}).get('message', 'no reply')})")

    def steps(self) -> list[Step]:
        # C1 and C2 are free of the other parts' trucks from 2.3 h on.
        d = self.demo
        cloud = d.cloud

        def charging(cid: str):
            return d.connector_is(cid, "Charging", session=True)

        def ended(cid: str):
            return d.connector_is(cid, "Finishing", "Available", session=False)

        steps = [
            Step(0.40 * HOUR, "a blocked own card *BAD0 is tapped at reader R1: refused (R-A1)", self._tap("R1", BLOCKED),
                 until=d.event("auth.rejected", connector="C1")),
            Step(2.35 * HOUR, "a driver taps own card *B2C3 at R1 before plugging in: C1 is authorised (R-C3)",
                 self._tap("R1", OWN), until=d.event("auth.accepted", connector="C1")),
            Step(2.38 * HOUR, "the truck plugs in at C1: charging starts on the earlier tap (its driver set a limit of 20 %)",
                 self._plug("C1", 10, 20), until=charging("C1")),
            Step(2.72 * HOUR, "C1's truck reaches its charge limit: its session waits",
                 until=d.connector_is("C1", "SuspendedEV"), natural=True),
            Step(2.78 * HOUR, "another fleet's card *E5F6 is tapped at R1: it may not stop C1's session (R-C4)",
                 self._tap("R1", OWN_OTHER), until=d.event("auth.rejected", connector="C1")),
            Step(2.90 * HOUR, "own card *B2C3 is tapped again at R1: its session stops (R-C4)", self._tap("R1", OWN),
                 until=ended("C1")),
            d.leaves("C1", 3.00 * HOUR, "C1's truck leaves"),
        ]
        if cloud is None:
            self.notes.append("no broker, so no cloud: the token list and roaming checks were skipped and "
                              "every card counts as unknown (refused offline); install mosquitto to see them")
            return steps
        steps += [
            Step(0.10 * HOUR, "the cloud sends the token list: own cards (one blocked) and fleet groups", self._load_tokens),
            Step(2.45 * HOUR, "a truck plugs in at C2 (its driver set a limit of 40 %)", self._plug("C2", 30, 40),
                 until=d.connector_is("C2", "Preparing")),
            Step(2.48 * HOUR, "roaming card *FFEE is tapped at R2: the cloud accepts it, charging starts (R-A2)",
                 self._tap("R2", ROAMING), until=charging("C2")),
            Step(2.85 * HOUR, "C2's truck reaches its charge limit: its session waits",
                 until=d.connector_is("C2", "SuspendedEV"), natural=True),
            Step(3.05 * HOUR, "roaming card *FFEE is tapped at R2 again: its session stops", self._tap("R2", ROAMING),
                 until=ended("C2")),
            d.leaves("C2", 3.15 * HOUR, "C2's truck leaves"),
            Step(3.20 * HOUR, "the cloud stops answering roaming checks", lambda: cloud.silent(True)),
            Step(3.22 * HOUR, "a truck plugs in at C1", self._plug("C1", 30), until=d.connector_is("C1", "Preparing")),
            Step(3.25 * HOUR, "unknown roaming card *AD01 at R1: no answer in time, refused by the offline policy (R-A2)",
                 self._tap("R1", STRANGER), until=d.event("auth.rejected", connector="C1")),
            Step(4.20 * HOUR, "the cloud answers roaming checks again", lambda: cloud.silent(False)),
            d.leaves("C1", 4.30 * HOUR, "C1's truck leaves uncharged"),
        ]
        return steps

    def summary(self, status: dict, sessions: list[dict]) -> list[str]:
        taps = status.get("card_taps") or {}
        by_code = taps.get("by_code") or {}
        refused = ", ".join(f"{code.replace('_', ' ')} {n}" for code, n in sorted(by_code.get("rejected", {}).items())) or "none"
        accepted = ", ".join(f"{code.replace('_', ' ')} {n}" for code, n in sorted(by_code.get("accepted", {}).items())) or "none"
        card_sessions = [s for s in sessions if s.get("method") in ("own_card", "emsp_card")]
        readers = ", ".join(f"{r['reader']} {r['state']}" for r in status.get("readers", [])) or "none"
        lines = [
            f"card taps: {taps.get('accepted', 0)} accepted ({accepted}); {taps.get('rejected', 0)} refused ({refused})",
            f"card sessions: {len(card_sessions)} (own {sum(1 for s in card_sessions if s['method'] == 'own_card')}, "
            f"roaming {sum(1 for s in card_sessions if s['method'] == 'emsp_card')}), none paid at the hub (R-P9); "
            f"readers: {readers}",
        ]
        lines += [f"cards: {n}" for n in self.notes]
        return lines


def demo_part(demo: DemoHub) -> DemoPart:
    return CardsDemo(demo)
