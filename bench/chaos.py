"""`python -m bench chaos [--quick]`: the whole simulated hub abused, then checked.

Trucks charge on C1-C4 with own cards, roaming cards and bank cards at the
arch terminals, booked trucks come through the gates to the CCS bays, every
truck enters and leaves by plate; meanwhile the daemon is SIGKILLed at random
points and restarted, the broker is restarted, chargers go silent or report
garbage, terminals stop answering, NAK or corrupt frames, cameras post
garbage. Afterwards the invariants of R-C9, R-P4, R-M2 and R-G6 are checked
against what the simulators saw and what the cloud received, and the
daemon's log and the cloud's messages are scanned for card numbers, plates
and secrets (R-P6, R-G8, R-M5). docs/chaos.md says how to read the output.

The checks at the top of this module are pure (records in, verdicts out) so
that tests/chaos can prove each one catches what it is meant to catch.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from bench.common import Result

COMMAND = "python -m bench chaos"
HUB_ID = "DEMO-01"
SPEED = 600.0  # simulated seconds per real second, as a fast demo day
ACTIVE = ("Charging", "SuspendedEV", "SuspendedEVSE")
STREAMS = ("session", "payment", "gate", "booking", "connector", "auth", "device", "audit", "sync")
SHOWN = 8  # violations printed per check
EXIT_PATIENCE_S = 25.0  # a vehicle on the exit loop waits this long before it counts as trapped
# What the hub publishes (scanned for leaks); sync and cmd topics are the cloud's own words.
UPLINK_TOPICS = ("event/", "status", "state/", "reply", "auth/request", "telemetry/")


# ====================================================================== records
@dataclass
class Visit:
    """One truck at one connector, as the driver lived it."""

    truck: str
    connector: str
    method: str  # own_card | emsp_card | bank_card | free_vend
    plugged_at: datetime
    left_at: datetime | None = None
    token: str | None = None  # the card uid for own and roaming cards
    session_seen: str | None = None  # the session the hub showed on the connector


@dataclass
class ExitPassage:
    """A vehicle on the exit's presence loop: did the barrier open for it?"""

    truck: str
    gate: str
    opened: bool
    waited_s: float
    at: datetime | None = None  # when the vehicle came onto the loop (UTC), to find it in the log


@dataclass
class Check:
    name: str
    checked: int  # how many records the check looked at
    what: str  # what they are, in words
    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def _when(v: Any) -> datetime:
    if isinstance(v, datetime):
        return v
    return datetime.fromisoformat(str(v).replace("Z", "+00:00"))


def _dec(v: Any) -> Decimal | None:
    return None if v is None or v == "" else Decimal(str(v))


# ============================================================ pure invariants
def check_sessions(visits: list[Visit], sessions: list[Mapping], started_events: list[Mapping] = (),
                   *, slack_s: float = 0.5) -> Check:
    """R-C9: each truck's plug-and-authorise produced at most one session,
    none is recorded twice, none is left open after its truck left, and a
    session the driver saw is in the ledger.

    ``sessions`` are ledger rows (id, connector, method, status, started_at,
    token); ``started_events`` the session.started envelopes the cloud got."""
    chk = Check("sessions recorded exactly once", len(visits), "truck visits")
    ids = Counter(str(s["id"]) for s in sessions)
    for sid, n in ids.items():
        if n > 1:
            chk.violations.append(f"session {sid} is recorded {n} times in the ledger")
    per_session: dict[str, set] = defaultdict(set)
    for e in started_events:
        sid = (e.get("data") or {}).get("session")
        per_session[str(sid)].add(e.get("id"))
    for sid, eids in per_session.items():
        if len(eids) > 1:
            chk.violations.append(f"session {sid} was announced started {len(eids)} times (distinct event ids)")
    by_connector: dict[str, list[Mapping]] = defaultdict(list)
    for s in sessions:
        by_connector[str(s["connector"])].append(s)
    claimed: set[str] = set()
    slack = timedelta(seconds=slack_s)
    for v in visits:
        left = v.left_at or datetime.max.replace(tzinfo=timezone.utc)
        # A session can only start while the truck is plugged in: from the
        # plug (less the clocks' slack) to the unplug.
        mine = [s for s in by_connector.get(v.connector, [])
                if v.plugged_at - slack <= _when(s["started_at"]) <= left]
        claimed.update(str(s["id"]) for s in mine)
        live = [s for s in mine if s["status"] != "failed"]
        if len(live) > 1:
            chk.violations.append(f"truck {v.truck} at {v.connector} has {len(live)} sessions: "
                                  + ", ".join(str(s["id"])[:8] for s in live))
        for s in live:
            if s["status"] in ("starting", "active") and v.left_at is not None:
                chk.violations.append(f"session {str(s['id'])[:8]} on {v.connector} is still {s['status']} "
                                      f"although truck {v.truck} left")
            if s.get("method") and s["method"] != v.method:
                chk.violations.append(f"session {str(s['id'])[:8]} of truck {v.truck} is {s['method']}, "
                                      f"the driver used {v.method}")
            elif v.token and s.get("token") and str(s["token"]).upper() != v.token.upper():
                chk.violations.append(f"session {str(s['id'])[:8]} of truck {v.truck} runs on another card")
        if v.session_seen and v.session_seen not in ids:
            chk.violations.append(f"truck {v.truck} charged in session {v.session_seen[:8]}, which the ledger lost")
        chk.counts["with_session"] = chk.counts.get("with_session", 0) + (1 if live else 0)
    for s in sessions:
        if str(s["id"]) not in claimed and s["status"] != "failed":
            chk.violations.append(f"session {str(s['id'])[:8]} on {s['connector']} ({s['status']}) belongs to no truck")
    chk.counts["sessions"] = len(sessions)
    chk.counts["failed_starts"] = sum(1 for s in sessions if s["status"] == "failed")
    return chk


def expected_settlement(energy_wh: int, tariff: Mapping, hold: Decimal) -> Decimal:
    """R-P3, stated independently of edge.parts.payments.pricing: net = energy x price
    rounded half up to the cent, VAT on the rounded net likewise, gross =
    net + VAT, never above the hold."""
    cent = Decimal("0.01")
    net = (Decimal(energy_wh) * Decimal(str(tariff["price_per_kwh"])) / 1000).quantize(cent, ROUND_HALF_UP)
    vat = (net * Decimal(str(tariff["vat_rate"]))).quantize(cent, ROUND_HALF_UP)
    return min(net + vat, hold)


def check_holds(holds: list[Mapping], terminal_txs: list[Mapping], sessions: list[Mapping],
                payment_events: list[Mapping] = ()) -> Check:
    """R-P3/R-P4: every hold settled or released exactly once, with the exact
    amount, and none open at the end, at the terminals or in the ledger.

    ``holds`` are payment ledger rows; ``terminal_txs`` what each terminal
    simulator did (terminal, receipt_no, amount, state, booked);
    ``payment_events`` the payment.* envelopes the cloud got."""
    chk = Check("holds settled or released once, exact amount", len(holds), "payment holds")
    final = {"declined", "settled", "released", "lapsed"}
    tx_of = {(str(t["terminal"]), t["receipt_no"]): t for t in terminal_txs if t.get("receipt_no") is not None}
    sess = {str(s["id"]): s for s in sessions}
    for t in terminal_txs:
        if t["state"] == "open":
            chk.violations.append(f"terminal {t['terminal']} still holds receipt {t['receipt_no']} ({t['amount']})")
    settled_by_receipt: Counter = Counter()
    for h in holds:
        state = h["state"]
        chk.counts[state] = chk.counts.get(state, 0) + 1
        pid = str(h["id"])[:8]
        if state not in final:
            chk.violations.append(f"hold {pid} on {h['terminal']} is still {state}")
            continue
        if state == "lapsed":
            chk.violations.append(f"hold {pid}: the terminal dropped it before the booking (lapsed): money not collected")
            continue
        key = (str(h["terminal"]), h.get("receipt_no"))
        tx = tx_of.get(key) if h.get("receipt_no") is not None else None
        if state == "settled":
            settled_by_receipt[key] += 1
            amount = _dec(h.get("settle_amount"))
            if tx is None:
                chk.violations.append(f"hold {pid} is settled but terminal {key[0]} has no receipt {key[1]}")
            elif tx["state"] != "booked" or _dec(tx.get("booked")) != amount:
                chk.violations.append(f"hold {pid}: ledger settled {amount}, terminal shows {tx['state']} {tx.get('booked')}")
            s = sess.get(str(h.get("session_id")))
            tariff = h.get("tariff")
            if isinstance(tariff, str):
                tariff = json.loads(tariff)
            if s is None:
                chk.violations.append(f"hold {pid} is settled for session {h.get('session_id')}, which is not in the ledger")
            elif tariff and amount is not None:
                want = expected_settlement(int(s.get("energy_wh") or 0), tariff, _dec(h["hold"]))
                if amount != want:
                    chk.violations.append(f"hold {pid}: settled {amount}, the session's {s.get('energy_wh')} Wh cost {want}")
                gross = _dec(s.get("cost_gross"))
                if gross is not None and gross != amount:
                    chk.violations.append(f"hold {pid}: settled {amount}, session {str(s['id'])[:8]} says it cost {gross}")
        elif state == "released" and tx is not None and tx["state"] not in ("reversed",):
            chk.violations.append(f"hold {pid} is released but terminal {key[0]} shows receipt {key[1]} {tx['state']}")
    for key, n in settled_by_receipt.items():
        if n > 1:
            chk.violations.append(f"receipt {key[1]} at terminal {key[0]} was settled {n} times in the ledger")
    booked_known = {k for k in settled_by_receipt}
    for key, t in tx_of.items():
        if t["state"] == "booked" and key not in booked_known:
            chk.violations.append(f"terminal {key[0]} booked receipt {key[1]} ({t.get('booked')}) that no settled hold names")
    closing: dict[str, set] = defaultdict(set)
    for e in payment_events:
        if e.get("type") in ("payment.settled", "payment.released"):
            closing[str((e.get("data") or {}).get("payment"))].add(e.get("id"))
    for pid, eids in closing.items():
        if len(eids) > 1:
            chk.violations.append(f"payment {pid[:8]} was settled or released {len(eids)} times (distinct event ids)")
    chk.counts["terminal_transactions"] = len(terminal_txs)
    return chk


def check_events(events: list[Mapping], last_seq: Mapping[str, int],
                 validate: Callable[[Mapping], None] | None = None) -> Check:
    """R-M2: every event the hub put in its outbox (seq 1..last per stream)
    reached the cloud, each (stream, seq) with one id, no gaps, first
    arrivals in order, every envelope with an id (and valid, when a
    validator is given). ``events`` in arrival order, duplicates included."""
    chk = Check("events received, gapless, in order", sum(last_seq.get(s, 0) for s in STREAMS), "events put")
    ids_at: dict[tuple[str, int], set] = defaultdict(set)
    place_of: dict[str, set] = defaultdict(set)
    first_order: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    invalid = 0
    for e in events:
        stream, seq, eid = e.get("stream"), e.get("seq"), e.get("id")
        if not eid or not isinstance(eid, str):
            chk.violations.append(f"event {e.get('type')} seq {seq} on stream {stream} has no id")
            continue
        if validate is not None:
            try:
                validate(e)
            except Exception as exc:  # the schema's complaint, kept short
                invalid += 1
                if invalid <= SHOWN:
                    chk.violations.append(f"event {e.get('type')} seq {seq} fails its schema: {str(exc).splitlines()[0][:120]}")
        if not isinstance(seq, int) or stream not in STREAMS:
            continue
        ids_at[(stream, seq)].add(eid)
        place_of[eid].add((stream, seq))
        if (stream, seq) not in seen:
            seen.add((stream, seq))
            first_order[stream].append(seq)
    for (stream, seq), eids in ids_at.items():
        if len(eids) > 1:
            chk.violations.append(f"stream {stream} seq {seq} arrived with {len(eids)} different ids")
    for eid, places in place_of.items():
        if len(places) > 1:
            chk.violations.append(f"event id {eid} arrived at {len(places)} positions")
    for stream in STREAMS:
        got = {seq for (s, seq) in seen if s == stream}
        top = max(last_seq.get(stream, 0), max(got, default=0))
        missing = [n for n in range(1, top + 1) if n not in got]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            chk.violations.append(f"stream {stream}: {len(missing)} of {top} events never reached the cloud (seq {shown})")
        order = first_order.get(stream, [])
        late = sum(1 for a, b in zip(order, order[1:]) if b < a)
        if late:
            chk.violations.append(f"stream {stream}: {late} events arrived after a later one")
        chk.counts[stream] = top
    chk.counts["received"] = len(events)
    chk.counts["duplicates"] = len(events) - len(seen)
    return chk


def check_exits(passages: list[ExitPassage]) -> Check:
    """R-G6: the exit barrier opened for every vehicle on its presence loop."""
    chk = Check("no vehicle left at a closed exit", len(passages), "exit passages")
    for p in passages:
        if not p.opened:
            when = f" from {p.at.isoformat(timespec='seconds')}" if p.at else ""
            chk.violations.append(f"truck {p.truck} waited {p.waited_s:.0f} s at {p.gate}{when}: the barrier never opened")
    chk.counts["opened"] = sum(1 for p in passages if p.opened)
    return chk


def check_health(status: Mapping | None, *, daemon_running: bool, unexpected_exits: int) -> Check:
    """The daemon at the end: answering, ready, no device in fault once
    every fault was cleared, and it never died by itself."""
    chk = Check("daemon healthy at the end", 1, "final status")
    if unexpected_exits:
        chk.violations.append(f"the daemon exited {unexpected_exits} times without being killed")
    if not daemon_running:
        chk.violations.append("the daemon is not running at the end")
    if status is None:
        chk.violations.append("the daemon did not answer `status` at the end")
        return chk
    if not status.get("ready"):
        chk.violations.append("the daemon answers but is not ready")
    for d in status.get("devices") or []:
        if d.get("state") == "fault":
            chk.violations.append(f"device {d.get('device') or d.get('id')} is still in fault: {d.get('last_error') or d.get('reason')}")
    depth = (status.get("outbox") or {}).get("depth")
    if depth:
        chk.violations.append(f"{depth} events still wait in the outbox")
    chk.counts["devices"] = len(status.get("devices") or [])
    return chk


def plate_forms(plate: str) -> set[str]:
    """Every spelling of a plate a leak could take: as read, compact,
    without the country sign, with the camera confusions folded, in any case."""
    from edge.parts.site.plates import compact_plate, confusion_form, normalise_plate

    forms = {plate, plate.replace("-", " "), compact_plate(plate), normalise_plate(plate)}
    forms.add(confusion_form(normalise_plate(plate)))
    forms |= {f.lower() for f in list(forms)}
    return {f for f in forms if len(f) >= 5}


def scan_for_leaks(texts: Mapping[str, str], forbidden: Mapping[str, Iterable[str]]) -> Check:
    """R-P6/R-G8/R-M5: none of the forbidden strings (card numbers, plates,
    secrets; grouped by kind) appears in any text (the log, the cloud's
    messages). Reports the kind and where, never the value itself."""
    total = sum(len(t) for t in texts.values())
    chk = Check("no card number, plate or secret in logs and events", total, "characters scanned")
    for kind, values in forbidden.items():
        values = [v for v in set(values) if v]
        hits = 0
        for where, text in texts.items():
            for v in values:
                n = text.count(v)
                if n:
                    hits += n
                    if len(chk.violations) < 50:
                        chk.violations.append(f"{kind} found {n} times in {where} (value {_hint(v)})")
        chk.counts[kind] = len(values)
        chk.counts[f"{kind}_hits"] = hits
    return chk


def _hint(value: str) -> str:
    # Enough to find the value in the run's own records, not enough to be one.
    return f"{value[:2]}…{value[-2:]} ({len(value)} chars)"


# =================================================================== the run
@dataclass
class Plan:
    sessions: int
    kills: int
    broker_restarts: int
    faults: int


PLANS = {True: Plan(sessions=40, kills=6, broker_restarts=3, faults=12),
         False: Plan(sessions=1000, kills=110, broker_restarts=55, faults=250)}

OWN_GROUP = "chaos-fleet"
_PLATE_LETTERS = "GHJKLMNPRTVWX"  # no hex letters and none a camera confuses with digits


def _plate(rng: random.Random) -> str:
    L = lambda: rng.choice(_PLATE_LETTERS)  # noqa: E731
    return f"NL-{L()}{L()}-{rng.randint(100, 999)}-{L()}"


def _luhn_pan(rng: random.Random) -> str:
    body = "4" + "".join(str(rng.randint(0, 9)) for _ in range(14))
    digits = [int(d) for d in body][::-1]
    total = sum((d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d for i, d in enumerate(digits))
    return body + str((10 - total % 10) % 10)


class Recorder:
    """The cloud's archive: a persistent MQTT session on hub/{id}/event/#, so
    nothing published while it is away (broker restarts) is lost for it."""

    def __init__(self, broker_url: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        hostport = broker_url.split("://", 1)[1]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.events: list[dict] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chaos-cloud-archive", protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._up = threading.Event()

    def start(self) -> "Recorder":
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 24 * 3600
        self.client.connect_async(self.host, self.port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._up.wait(10):
            raise RuntimeError("the chaos run's cloud archive could not reach the broker")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _u, _f, reason_code, _p):
        if not reason_code.is_failure:
            client.subscribe(f"hub/{HUB_ID}/#", qos=1)
            self._up.set()

    def _on_message(self, _c, _u, msg):
        with self._lock:
            if msg.topic.startswith(tuple(f"hub/{HUB_ID}/{t}" for t in UPLINK_TOPICS)):
                self.raw.append(msg.payload)
            if msg.topic.startswith(f"hub/{HUB_ID}/event/"):
                try:
                    self.events.append(json.loads(msg.payload))
                except ValueError:
                    self.events.append({"_unreadable": True})

    def snapshot(self) -> tuple[list[dict], list[bytes]]:
        with self._lock:
            return list(self.events), list(self.raw)


class ChaosRun:
    def __init__(self, quick: bool, seed: int | None = None):
        self.quick = quick
        self.plan = PLANS[quick]
        self.seed = seed if seed is not None else int(os.environ.get("HUBEDGE_CHAOS_SEED", "0") or 0) or random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.state_dir = Path(tempfile.mkdtemp(prefix="hubedge-chaos-"))
        self.hub = None
        self.t2 = None
        self.recorder: Recorder | None = None
        self.visits: list[Visit] = []
        self.passages: list[ExitPassage] = []
        self.plates: set[str] = set()
        self.pans: set[str] = set()
        self.sessions_done = 0
        self.trucks = 0
        self.done = False
        self.kills = 0
        self.broker_restarts = 0
        self.faults: Counter = Counter()
        self.unexpected_exits = 0
        self.notes: Counter = Counter()
        self.entries: Counter = Counter()
        self.bookings_sent = 0
        self._restarting = asyncio.Event()
        self._arch_locks: dict[str, asyncio.Lock] = {}
        self._gate_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ control
    async def call(self, cmd: str, args: dict | None = None, *, within: float = 60.0) -> dict:
        """One control request, retried while the daemon is away (killed,
        restarting). Returns the response object (ok, code, message, data)."""
        from edge.core.control import request

        deadline = time.monotonic() + within
        while True:
            try:
                return await request(self.hub.socket, cmd, args or {}, timeout=30)
            except (OSError, ConnectionError, asyncio.TimeoutError, ValueError):
                if time.monotonic() > deadline:
                    return {"ok": False, "code": "unreachable", "message": f"daemon unreachable for {within:.0f} s"}
                await asyncio.sleep(0.25)

    async def connector(self, cid: str) -> dict:
        resp = await self.call("status")
        if not resp.get("ok"):
            return {}
        return next((c for c in resp["data"]["connectors"] if c["connector"] == cid), {})

    async def wait_connector(self, cid: str, ok: Callable[[dict], bool], within: float) -> dict | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            c = await self.connector(cid)
            if c and ok(c):
                return c
            await asyncio.sleep(0.3)
        return None

    # ------------------------------------------------------------ the site
    async def start(self) -> None:
        from edge.demo import DemoHub
        from simulators.zvt_terminal import ZvtTerminalSimulator

        # A second arch terminal on a serial pty, for the faults only a
        # serial line has (NAK, bad CRC); it serves C4, T1 (TCP) serves C3.
        # (T2 is the demo's own second terminal, at the OCPP charger.)
        self.t2 = ZvtTerminalSimulator(terminal_id="29001002")
        await self.t2.start(tcp_port=None, pty=True)
        extra = f"""
[[terminals]]
id = "T9"
port = "{self.t2.pty_path}"
connectors = ["C4"]
password = "000000"
"""
        self.hub = DemoHub(state_dir=self.state_dir, socket=self.state_dir / "control.sock", speed=SPEED)
        notes = await self.hub.start(hub_config_extra=extra)
        if self.hub.private_broker is None or self.hub.cloud is None:
            raise RuntimeError("the chaos run needs mosquitto (apt-get install mosquitto): " + "; ".join(notes))
        self.recorder = Recorder(self.hub.broker).start()
        await self.hub.wait_ready(60)
        # Own cards on the token list; roaming cards are answered per truck.
        for _ in range(100):
            resp = await self.call("status")
            if resp.get("ok") and resp["data"]["cloud"].get("connected"):
                break
            await asyncio.sleep(0.1)
        await self._sync("tokens", {"version": 1, "kind": "full", "remove": [], "upsert": [
            {"uid": self._own_uid(n), "status": "Active", "type": "own", "group": OWN_GROUP, "reference": f"truck {n}"}
            for n in range(64)]})

    async def _sync(self, kind: str, payload: dict, tries: int = 6) -> bool:
        for _ in range(tries):
            mid = self.hub.cloud.send(kind, payload)
            reply = await asyncio.to_thread(self.hub.cloud.reply_to, mid, 10.0)
            if reply is not None:
                return bool(reply.get("ok"))
        self.notes[f"{kind} sync unanswered"] += 1
        return False

    @staticmethod
    def _own_uid(n: int) -> str:
        return f"04C4{n:04X}"

    # ------------------------------------------------------------ gates
    async def enter(self, truck: str, plate: str) -> None:
        cam = self.hub.devices["cameras"]["G-IN"]
        bar = self.hub.devices["barriers"]["G-IN"]
        async with self._gate_locks.setdefault("G-IN", asyncio.Lock()):
            for _ in range(20):
                try:
                    reply = await cam.send_plate(plate, 0.95, "truck", "approach")
                    if reply.status == 200:
                        break
                except (OSError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.5)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and bar.position != "open":
                await asyncio.sleep(0.05)
            if bar.position == "open":
                self.entries["admitted"] += 1
                bar.vehicle_arrives()
                await asyncio.sleep(0.2)
                bar.vehicle_leaves()
            else:
                self.entries["not opened"] += 1  # refused (R-G3) or to the operator: it comes in anyway

    async def leave(self, truck: str, plate: str) -> None:
        cam = self.hub.devices["cameras"]["G-OUT"]
        bar = self.hub.devices["barriers"]["G-OUT"]
        async with self._gate_locks.setdefault("G-OUT", asyncio.Lock()):
            deadline = time.monotonic() + 10
            while bar.position != "closed" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            bar.vehicle_arrives()
            t0, at = time.monotonic(), datetime.now(timezone.utc)
            try:
                await cam.send_plate(plate, 0.93, "truck", "leave")
            except (OSError, asyncio.TimeoutError):
                pass  # the daemon is away: the presence loop alone must open it (R-G6)
            # Long enough for a daemon restart and a barrier reconnect.
            while bar.position != "open" and time.monotonic() - t0 < EXIT_PATIENCE_S:
                await asyncio.sleep(0.05)
            self.passages.append(ExitPassage(truck, "G-OUT", bar.position == "open", time.monotonic() - t0, at))
            await asyncio.sleep(0.1)
            bar.vehicle_leaves()

    # ------------------------------------------------------------ trucks
    async def truck_loop(self, cid: str) -> None:
        kinds = {"C1": ("own_card",), "C2": ("emsp_card", "own_card"), "C3": ("bank_card",), "C4": ("bank_card",)}[cid]
        while not self.done and self.trucks < 3 * self.plan.sessions:
            self.trucks += 1
            n = self.trucks
            method = self.rng.choice(kinds)
            try:
                charged = await self.truck(f"{cid}-{n}", cid, method)
            except Exception as exc:  # a broken step is a finding, not the end of the run
                self.notes[f"truck step failed: {type(exc).__name__}: {str(exc)[:80]}"] += 1
                charged = False
            if charged:
                self.sessions_done += 1
                if self.sessions_done >= self.plan.sessions:
                    self.done = True

    async def truck(self, truck: str, cid: str, method: str) -> bool:
        rng = self.rng
        plate = _plate(rng)
        self.plates.add(plate)
        await self.enter(truck, plate)
        # The previous truck's unplug must have been seen before this one plugs.
        await self.wait_connector(cid, lambda c: c["status"] in ("Available", "Reserved"), 60)
        sim, i = self.hub.connector_sim(cid)
        sim.plug(i, soc=rng.uniform(5, 60), battery_kwh=rng.choice((600, 800, 1000)), max_power_w=300_000)
        visit = Visit(truck, cid, method, datetime.now(timezone.utc))
        self.visits.append(visit)
        if method == "own_card":
            visit.token = self._own_uid(rng.randrange(64))
        elif method == "emsp_card":
            visit.token = f"04E{rng.randrange(1 << 20):05X}"
            self.hub.cloud.answer_auth(visit.token, "Accepted", group="roam-partner", reference="roaming truck")
        pan = _luhn_pan(rng) if method == "bank_card" else None
        if pan:
            self.pans.add(pan)
        sid = await self.authorise(visit, pan)
        if sid:
            visit.session_seen = sid
            long_one = method == "bank_card" and rng.random() < 0.1  # runs into its cost cap (R-P2)
            await asyncio.sleep(15.0 if long_one else rng.uniform(0.5, 3.0))
            await self.stop(visit, pan, sid, by_cap=long_one)
        await self.unplug(visit)
        visit.left_at = datetime.now(timezone.utc)
        await self.leave(truck, plate)
        return sid is not None

    def _terminal_for(self, cid: str) -> tuple[str, Any]:
        return ("T1", self.hub.devices["terminals"]["T1"]) if cid == "C3" else ("T9", self.t2)

    async def _tap(self, cid: str, uid: str) -> None:
        reader = self.hub.devices["readers"]["R1" if cid == "C1" else "R2"]
        await asyncio.to_thread(reader.tap, uid, 0.5)

    async def authorise(self, v: Visit, pan: str | None) -> str | None:
        deadline = time.monotonic() + (90 if pan else 60)
        while time.monotonic() < deadline:
            c = await self.wait_connector(v.connector, lambda c: c.get("session") or c["status"] == "Preparing", 30)
            if c is None:
                continue
            if c.get("session"):
                return c["session"]
            if pan:
                name, term = self._terminal_for(v.connector)
                async with self._arch_locks.setdefault(name, asyncio.Lock()):
                    term.pan = pan
                    resp = await self.call("arch_select", {"terminal": name, "connector": v.connector})
                data = resp.get("data") or {}
                if data.get("started") and data.get("session"):
                    return data["session"]
            else:
                await self._tap(v.connector, v.token)
            c = await self.wait_connector(v.connector, lambda c: bool(c.get("session")), 6)
            if c is not None:
                return c["session"]
            await asyncio.sleep(1.6)  # past the reader's debounce before the next tap (R-A4)
        self.notes["trucks that left without charging"] += 1
        return None

    async def stop(self, v: Visit, pan: str | None, sid: str, *, by_cap: bool) -> None:
        sim, i = self.hub.connector_sim(v.connector)
        how = "cap" if by_cap else self.rng.choices(("card", "full"), (0.7, 0.3))[0]
        if how == "card" and not (pan or v.token):
            how = "full"  # free vend: only the truck ends it
        deadline = time.monotonic() + 120
        full_sent = False
        tries = 0
        while time.monotonic() < deadline:
            c = await self.connector(v.connector)
            if c and c.get("session") != sid:
                return
            elapsed = 120 - (deadline - time.monotonic())
            if how == "full" or (how != "card" and elapsed > 30) or tries >= 4:
                if not full_sent:
                    try:
                        sim.full(i)
                    except Exception:
                        pass
                    full_sent = True
            elif how == "card" and c and c["status"] in ACTIVE:
                tries += 1
                if pan:
                    name, term = self._terminal_for(v.connector)
                    async with self._arch_locks.setdefault(name, asyncio.Lock()):
                        term.pan = pan
                        await self.call("arch_stop", {"terminal": name, "connector": v.connector})
                else:
                    await self._tap(v.connector, v.token)
                await self.wait_connector(v.connector, lambda c: c.get("session") != sid, 6)
                continue
            await asyncio.sleep(0.5)
        self.notes["sessions that would not stop in 120 s"] += 1

    async def unplug(self, v: Visit) -> None:
        sim, i = self.hub.connector_sim(v.connector)
        t0 = time.monotonic()
        asked = False
        while time.monotonic() - t0 < 120:
            try:
                sim.unplug(i)
                return
            except Exception:
                pass
            if time.monotonic() - t0 > 30 and not asked:
                # Locked for 30 s after the end: the driver calls, a technician unlocks (R-C5).
                asked = True
                self.notes["technician unlocks needed"] += 1
                await self.call("connector", {"action": "unlock", "id": v.connector, "reason": "chaos: driver cannot unplug"})
            await asyncio.sleep(0.3)
        self.notes["trucks that could not unplug in 120 s"] += 1

    # ------------------------------------------------------------ bookings
    async def booking_loop(self, side: str) -> None:
        """Booked trucks for the CCS bays (free vend): a slot a few seconds
        ahead, arrival by plate within the early grace (R-G2), the assigned
        bay's connector, a short charge, out through the exit."""
        k = 0
        while not self.done:
            k += 1
            bid = f"CHAOS-{side[0].upper()}{k}"
            plate = _plate(self.rng)
            self.plates.add(plate)
            now = datetime.now(timezone.utc)
            start = now + timedelta(seconds=8)
            end = start + timedelta(minutes=6, seconds=20)
            ok = await self._sync("bookings", {"upsert": [{
                "id": bid, "slot_start": start.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "slot_end": end.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "connector_type": "CCS", "side": side, "plates": [plate], "customer": "chaos-fleet"}], "cancel": []})
            self.bookings_sent += 1
            if ok:
                await asyncio.sleep(max(0.0, (start - datetime.now(timezone.utc)).total_seconds() - 1.0))
                try:
                    await self.booked_truck(bid, plate)
                except Exception as exc:  # a broken step is a finding, not the end of the run
                    self.notes[f"booked truck step failed: {type(exc).__name__}: {str(exc)[:80]}"] += 1
            while not self.done and datetime.now(timezone.utc) < end + timedelta(seconds=2):
                await asyncio.sleep(0.5)

    async def booked_truck(self, bid: str, plate: str) -> None:
        await self.enter(bid, plate)
        cid = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and cid is None:
            resp = await self.call("bookings", {})
            cid = next((b.get("connector") for b in resp.get("data") or [] if b["booking"] == bid), None)
            if cid is None:
                await asyncio.sleep(0.5)
        if cid is None:
            self.notes["booked trucks without a bay"] += 1
            return
        await self.wait_connector(cid, lambda c: c["status"] in ("Available", "Reserved"), 60)
        sim, i = self.hub.connector_sim(cid)
        sim.plug(i, soc=40, battery_kwh=500, max_power_w=300_000)
        visit = Visit(bid, cid, "free_vend", datetime.now(timezone.utc))
        self.visits.append(visit)
        c = await self.wait_connector(cid, lambda c: bool(c.get("session")), 30)
        if c is not None:
            visit.session_seen = c["session"]
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            await self.stop(visit, None, c["session"], by_cap=False)
        await self.unplug(visit)
        visit.left_at = datetime.now(timezone.utc)
        await self.leave(bid, plate)

    # ------------------------------------------------------------ chaos
    def _progress(self) -> float:
        return self.sessions_done / self.plan.sessions

    async def _at(self, fraction: float) -> None:
        while not self.done and self._progress() < fraction:
            await asyncio.sleep(0.2)
        await asyncio.sleep(self.rng.uniform(0.0, 2.5))  # a random instant, not a session boundary

    def _schedule(self, count: int) -> list[float]:
        return sorted(self.rng.uniform(0.02, 0.97) for _ in range(count))

    async def kill_loop(self) -> None:
        """SIGKILLs and broker restarts, one at a time, spread over the run."""
        plan = [(f, "kill") for f in self._schedule(self.plan.kills)]
        plan += [(f, "broker") for f in self._schedule(self.plan.broker_restarts)]
        for fraction, what in sorted(plan):
            await self._at(fraction)
            if what == "kill":
                await self.kill_daemon()
            else:
                await self.restart_broker()

    async def kill_daemon(self) -> None:
        hub = self.hub
        if hub.daemon.poll() is not None:
            self.unexpected_exits += 1
        else:
            hub.kill_daemon()
        self.kills += 1
        await asyncio.sleep(self.rng.uniform(0.0, 1.5))
        hub.start_daemon()
        try:
            await hub.wait_ready(60)
        except RuntimeError as exc:
            self.notes[f"restart failed: {str(exc)[:80]}"] += 1
            if hub.daemon.poll() is not None:
                self.unexpected_exits += 1
                hub.start_daemon()

    async def restart_broker(self) -> None:
        broker = self.hub.private_broker
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        await asyncio.to_thread(broker.start)
        self.broker_restarts += 1

    async def fault_loop(self) -> None:
        for fraction in self._schedule(self.plan.faults):
            await self._at(fraction)
            await self.inject_fault()

    async def inject_fault(self) -> None:
        rng = self.rng
        devices = self.hub.devices
        t1 = devices["terminals"]["T1"]
        kind = rng.choice(("charger_silent", "charger_garbage", "terminal_silent", "terminal_drops_line",
                           "terminal_nak", "terminal_bad_crc", "terminal_declines", "camera_garbage",
                           "barrier_silent", "cloud_silent"))
        self.faults[kind] += 1
        if kind == "charger_silent":
            ch = self.hub.chargers[rng.choice(("CH1", "CH2"))]
            await ch.silence("no_answer")
            await asyncio.sleep(rng.uniform(2.0, 6.0))
            await ch.speak()
        elif kind == "charger_garbage":
            cid = rng.choice(("C1", "C2", "C3", "C4", "C5", "C6"))
            sim, i = self.hub.connector_sim(cid)
            sim.garbage_status(i, rng.choice((0xBEEF, 0x7FFF, 0x0042)))
            await asyncio.sleep(rng.uniform(1.5, 4.0))
            sim.garbage_status(i, None)
        elif kind == "terminal_silent":
            t1.never_answer = True
            await asyncio.sleep(rng.uniform(2.0, 6.0))
            t1.never_answer = False
        elif kind == "terminal_drops_line":
            t1.disconnect_in_transaction = True
        elif kind == "terminal_nak":
            self.t2.nak_frames = rng.randint(1, 3)
        elif kind == "terminal_bad_crc":
            self.t2.corrupt_frames = rng.randint(1, 3)
        elif kind == "terminal_declines":
            rng.choice((t1, self.t2)).decline_next(rng.choice(("funds", "expired", "pin", "declined")))
        elif kind == "camera_garbage":
            for cam in devices["cameras"].values():
                for _ in range(3):
                    try:
                        await cam.send_garbage(rng.randint(1, 4096))
                    except (OSError, asyncio.TimeoutError):
                        pass
        elif kind == "barrier_silent":
            bar = devices["barriers"][rng.choice(("G-IN", "G-OUT"))]
            bar.silence(True)
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            bar.silence(False)
        elif kind == "cloud_silent":
            self.hub.cloud.silent(True)
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            self.hub.cloud.silent(False)

    async def clear_faults(self) -> None:
        for ch in self.hub.chargers.values():
            await ch.speak()
            for i in range(len(ch.connectors)):
                ch.garbage_status(i, None)
        for t in (self.hub.devices["terminals"]["T1"], self.t2):
            t.never_answer = False
            t.disconnect_in_transaction = False
            t.nak_frames = t.corrupt_frames = 0
            t._decline_once.clear()
        for bar in self.hub.devices["barriers"].values():
            bar.silence(False)
        self.hub.cloud.silent(False)

    # ------------------------------------------------------------ the end
    async def settle(self, within: float = 180.0) -> dict | None:
        """Wait until the hub is quiet: ready, outbox drained, no hold open,
        no device in fault. Returns the last status (None if unanswered)."""
        deadline = time.monotonic() + within
        status = None
        while time.monotonic() < deadline:
            resp = await self.call("status", within=10)
            status = resp.get("data") if resp.get("ok") else None
            if status:
                open_holds = sum(t.get("open_holds", 0) for t in status.get("terminals", []))
                pending = sum(n for s, n in (status.get("payments") or {}).items()
                              if s not in ("declined", "settled", "released", "lapsed"))
                faults = [d for d in status.get("devices", []) if d.get("state") == "fault"]
                if status.get("ready") and not status["outbox"].get("depth") and not open_holds and not pending and not faults:
                    return status
            await asyncio.sleep(1.0)
        return status

    def read_ledgers(self) -> tuple[list[dict], list[dict], dict[str, int]]:
        db_path = self.state_dir / "state" / "hub.sqlite3"
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            sessions = [dict(r) for r in db.execute("SELECT * FROM sessions")]
            holds = [dict(r) for r in db.execute("SELECT * FROM payment_holds")]
            last_seq = {r["stream"]: r["seq"] for r in db.execute("SELECT stream, seq FROM outbox_seq")}
        finally:
            db.close()
        return sessions, holds, last_seq

    def secrets(self) -> list[str]:
        from edge.parts.site.demo import SECRET
        from edge.cloud.signing import load_keys

        out = [SECRET]
        key = self.state_dir / "state" / "plate.key"
        if key.exists():
            out.append(key.read_text().strip())
        # The cloud's command key, in both spellings a careless log could use.
        if self.hub is not None and self.hub.command_key_file is not None and self.hub.command_key_file.exists():
            for k in load_keys(self.hub.command_key_file):
                out += [k.hex(), k.hex().upper()]
        return out

    async def run(self) -> list[Check]:
        t0 = time.monotonic()
        await self.start()
        workers = [asyncio.create_task(self.truck_loop(cid)) for cid in ("C1", "C2", "C3", "C4")]
        workers += [asyncio.create_task(self.booking_loop(side)) for side in ("left", "right")]
        chaos = [asyncio.create_task(self.kill_loop()), asyncio.create_task(self.fault_loop())]
        await asyncio.gather(*workers)
        self.done = True
        await asyncio.gather(*chaos)
        self.traffic_s = time.monotonic() - t0
        await self.clear_faults()
        if self.hub.daemon.poll() is not None:
            self.unexpected_exits += 1
            self.hub.start_daemon()
        if not self.hub.private_broker.running:
            await asyncio.to_thread(self.hub.private_broker.start)
        status = await self.settle()
        sessions, holds, last_seq = self.read_ledgers()
        # The archive gets what the outbox has sent; give QoS 1 a moment.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            events, _ = self.recorder.snapshot()
            got = Counter(e.get("stream") for e in {(e.get("stream"), e.get("seq")): e for e in events}.values())
            if all(got.get(s, 0) >= n for s, n in last_seq.items() if s in STREAMS):
                break
            await asyncio.sleep(0.5)
        running = self.hub.daemon.poll() is None
        self.hub.stop_daemon()
        await asyncio.sleep(0.5)
        events, raw = self.recorder.snapshot()
        from edge.cloud.envelope import validate_event

        txs = [{"terminal": name, "receipt_no": t.receipt_no, "amount": t.amount, "state": t.state, "booked": t.booked}
               for name, term in (("T1", self.hub.devices["terminals"]["T1"]), ("T9", self.t2)) for t in term.transactions]
        checks = [
            check_sessions(self.visits, sessions, [e for e in events if e.get("type") == "session.started"]),
            check_holds(holds, txs, sessions, [e for e in events if str(e.get("type", "")).startswith("payment.")]),
            check_events(events, last_seq, validate_event),
            check_exits(self.passages),
            check_health(status, daemon_running=running, unexpected_exits=self.unexpected_exits),
        ]
        log_text = self.hub.log_path.read_text(errors="replace") if self.hub.log_path.exists() else ""
        cloud_text = "\n".join(p.decode(errors="replace") for p in raw)
        forbidden = {
            "card number": [f for pan in self.pans | {self.t2.pan, self.hub.devices["terminals"]["T1"].pan}
                            for f in (pan, " ".join(pan[i:i + 4] for i in range(0, 16, 4)))],
            "plate": [f for p in self.plates for f in plate_forms(p)],
            "secret": self.secrets(),
        }
        checks.append(scan_for_leaks({"the daemon's log": log_text, "the cloud's messages": cloud_text}, forbidden))
        self.stats = {"sessions": self.sessions_done, "visits": len(self.visits), "ledger_sessions": len(sessions),
                      "holds": len(holds), "events": len(events), "log_lines": log_text.count("\n")}
        return checks

    async def close(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()
        if self.hub is not None:
            await self.hub.stop()
        if self.t2 is not None:
            await self.t2.stop()


def _results(run: ChaosRun, checks: list[Check], wall_s: float) -> list[Result]:
    cmd = COMMAND + (" --quick" if run.quick else "")
    out = [Result(f"chaos: {c.name}", float(len(c.violations)), "violations", f"{c.checked} {c.what} checked",
                  float(c.checked), goal=0, command=cmd) for c in checks]
    p = run.plan
    out += [
        Result("chaos: daemon SIGKILLs", float(run.kills), "kills", f"planned ({p.kills})", float(p.kills),
               goal=p.kills, lower_is_better=False, command=cmd),
        Result("chaos: broker restarts", float(run.broker_restarts), "restarts", f"planned ({p.broker_restarts})",
               float(p.broker_restarts), goal=p.broker_restarts, lower_is_better=False, command=cmd),
        Result("chaos: device faults injected", float(sum(run.faults.values())), "faults", f"planned ({p.faults})",
               float(p.faults), command=cmd),
        Result("chaos: sessions charged", float(run.sessions_done), "sessions", f"planned ({p.sessions})",
               float(p.sessions), goal=p.sessions, lower_is_better=False, command=cmd),
        Result("chaos: wall time", wall_s, "s", "traffic phase", getattr(run, "traffic_s", wall_s), command=cmd),
    ]
    return out


def _report(run: ChaosRun, checks: list[Check]) -> None:
    """What a person needs to act on, on stderr (stdout carries the figures)."""
    w = sys.stderr.write
    w(f"\nchaos run seed {run.seed} (HUBEDGE_CHAOS_SEED={run.seed} replays the same choices); state in {run.state_dir}\n")
    w("  " + ", ".join(f"{k} {v}" for k, v in getattr(run, "stats", {}).items()) + "\n")
    w(f"  faults: {dict(run.faults)}; gate entries: {dict(run.entries)}; bookings sent: {run.bookings_sent}\n")
    for note, n in run.notes.most_common():
        w(f"  note: {note} x{n}\n")
    for c in checks:
        counts = ", ".join(f"{k} {v}" for k, v in c.counts.items())
        w(f"  [{'pass' if c.ok else 'FAIL'}] {c.name}: {c.checked} {c.what}; {counts}\n")
        for v in c.violations[:SHOWN]:
            w(f"      - {v}\n")
        if len(c.violations) > SHOWN:
            w(f"      ... and {len(c.violations) - SHOWN} more\n")


def run(quick: bool) -> list[Result]:
    from edge.core.journal import setup_logging

    setup_logging("warning")
    chaos = ChaosRun(quick)
    t0 = time.monotonic()

    async def go() -> list[Check]:
        # SIGTERM (a CI timeout, `kill`) stops the run like Ctrl-C does: the
        # daemon, broker and simulators are stopped, not left behind.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        try:
            return await chaos.run()
        finally:
            await chaos.close()

    try:
        checks = asyncio.run(go())
    except (asyncio.CancelledError, KeyboardInterrupt):
        sys.stderr.write(f"\nchaos run stopped before its checks; its daemon, broker and simulators are stopped. "
                         f"State kept in {chaos.state_dir} for a look; run it again to check the invariants.\n")
        raise SystemExit(130) from None
    _report(chaos, checks)
    if all(c.ok for c in checks) and not os.environ.get("HUBEDGE_CHAOS_KEEP"):
        shutil.rmtree(chaos.state_dir, ignore_errors=True)
    return _results(chaos, checks, time.monotonic() - t0)


if __name__ == "__main__":
    # `python -m bench.chaos [--quick]`: the same run, exit status 1 when an invariant fails.
    results = run("--quick" in sys.argv[1:])
    for r in results:
        print(f"{r.name}: {r.value:g} {r.unit} | {r.baseline}: {r.baseline_value:g} | {'ok' if r.ok else 'FAILED' if r.ok is False else '-'}")
    sys.exit(0 if all(r.ok is not False for r in results) else 1)
