"""The cloud's side of every scenario: a subscriber on the real broker that
holds the hub to the MQTT contract (docs/cloud-contract.md; R-M2, R-M4).

It connects with a persistent session (clean start off, a session expiry),
so what the hub publishes while this subscriber's connection is down - the
broker stopped and started again - is kept by the broker and delivered when
it is back, as the real cloud's ingest would see it.

What it checks, on everything it received:

- every event validates against the envelope and its type's schema
  (``validate_event``); retained status, connector states, roaming
  requests and replies against theirs;
- an event id names one message: a resend repeats the same id with the same
  bytes, and a stream's seq is never reused under another id;
- per stream, seqs arrive gapless from 1 and in order (a resend of an older
  one may come again, never a new one out of turn);
- ``offline`` is true exactly on events queued while the link was down. The
  test tells the checker when it takes the link away (``link_lost``: broker
  stopped, power cut); the link is back at the hub's next retained
  ``online: true`` status, whose ``ts`` the hub stamps just before it starts
  sending. Events stamped well inside such a window must say offline, events
  well outside every window must not; within ``MARGIN_S`` of an edge either
  is right (the hub notices a lost link a moment after it is lost);
- after a power cut the broker publishes the hub's last will
  (``online: false``) before the hub says it is online again;
- ``final_check``: a fresh subscriber finds the status retained and online,
  and every connector's state retained; every seq the hub has ever given
  (its own counter, read from its database) has reached the cloud.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from units import parse_rfc3339
from edge.cloud.envelope import validate_event

MARGIN_S = 2.0
NEVER = datetime(9999, 1, 1, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class Received:
    mono: float
    utc: datetime
    topic: str
    body: bytes
    retained: bool

    def json(self) -> dict | None:
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass
class LinkWindow:
    """A stretch during which the hub had no link to the cloud."""

    why: str
    start: datetime
    start_mono: float
    end: datetime | None = None  # ts of the hub's next online status
    power_cut: bool = False


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _describe_event(e: dict) -> str:
    d = e.get("data") or {}
    bits = []
    for key in ("connector", "status", "session", "booking", "bay", "gate", "role", "reason", "code", "token",
                "method", "source", "energy_wh", "hold", "amount", "cost", "card", "terminal_receipt", "receipt_url",
                "device", "action", "target", "kind", "version", "stopping"):
        if key not in d or d[key] in (None, "", [], {}):
            continue
        v = d[key]
        if key in ("session",) and isinstance(v, str):
            v = v[:8]
        elif isinstance(v, dict) and "amount" in v:
            v = f"{v['amount']} {v.get('currency', '')}".strip()
        elif isinstance(v, dict) and "gross" in v:
            v = f"{v['gross']} {v.get('currency', '')}".strip()
        if key == "reason" and isinstance(v, str) and len(v) > 70:
            v = v[:67] + "..."
        bits.append(f"{key}={v}")
    return " ".join(bits)


class CloudContract:
    def __init__(self, broker_url: str, hub_id: str, *, timeline=None, client_id: str | None = None):
        parts = urlsplit(broker_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.hub_id = hub_id
        self.root = f"hub/{hub_id}"
        self.timeline = timeline
        self.received: list[Received] = []
        self.windows: list[LinkWindow] = []
        self._cond = threading.Condition(threading.RLock())  # re-entrant: predicates read the records
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"cloud-checker-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 5.0) -> "CloudContract":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.host, self.port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"the cloud checker could not reach the broker at {self.host}:{self.port}")
        # The subscription must be in place before the hub says anything.
        time.sleep(0.2)
        # Until its first online status the hub is offline by definition.
        self.windows.append(LinkWindow("hub starting", EPOCH, time.monotonic()))
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _u, _f, reason_code, _p):
        if not reason_code.is_failure:
            client.subscribe(f"{self.root}/#", qos=1)
            self._connected.set()

    def _on_message(self, _c, _u, msg):
        rec = Received(time.monotonic(), datetime.now(timezone.utc), msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._cond:
            self.received.append(rec)
            self._close_window(rec)
            self._cond.notify_all()
        if self.timeline is not None:
            line = self._line(rec)
            if line:
                self.timeline.add("cloud", line, mono=rec.mono)

    # ------------------------------------------------------------ link windows
    def link_lost(self, why: str, *, power_cut: bool = False) -> None:
        """The test is about to take the link away (before it does so)."""
        with self._cond:
            self.windows.append(LinkWindow(why, datetime.now(timezone.utc), time.monotonic(), power_cut=power_cut))

    def _close_window(self, rec: Received) -> None:
        if rec.topic != f"{self.root}/status":
            return
        body = rec.json() or {}
        if body.get("online") is not True:
            return
        try:
            ts = parse_rfc3339(body["ts"])
        except (KeyError, ValueError, TypeError):
            return
        for w in self.windows:
            if w.end is None and ts >= w.start:
                w.end = ts

    @property
    def link_is_back(self) -> bool:
        with self._cond:
            return all(w.end is not None for w in self.windows)

    # ------------------------------------------------------------ reading
    def events(self, type_prefix: str = "") -> list[dict]:
        """Events in arrival order, each id once (the first copy)."""
        seen: set[str] = set()
        out = []
        with self._cond:
            records = list(self.received)
        for rec in records:
            if not rec.topic.startswith(f"{self.root}/event/"):
                continue
            e = rec.json()
            if not e or e.get("id") in seen:
                continue
            seen.add(e.get("id"))
            if str(e.get("type", "")).startswith(type_prefix):
                out.append(e)
        return out

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
        return True

    def _matching(self, type_: str, match: dict) -> list[dict]:
        return [e for e in self.events(type_) if e["type"] == type_
                and all((e.get("data") or {}).get(k) == v for k, v in match.items())]

    def wait_event(self, type_: str, timeout: float = 15.0, **match) -> dict:
        """The first event of ``type_`` whose data has the given values."""
        found: list[dict] = []

        def there() -> bool:
            found[:] = self._matching(type_, match)  # the lock is re-entrant
            return bool(found)

        if not self.wait_for(there, timeout):
            recent = [(e["type"], _describe_event(e)) for e in self.events()][-15:]
            raise AssertionError(f"the cloud saw no {type_} with {match} within {timeout:.0f} s; "
                                 f"the last events it saw: {recent}")
        return found[0]

    def count(self, type_: str, **match) -> int:
        return len(self._matching(type_, match))

    def statuses(self) -> list[tuple[float, dict]]:
        with self._cond:
            return [(r.mono, r.json() or {}) for r in self.received if r.topic == f"{self.root}/status"]

    # ------------------------------------------------------------ timeline
    def _line(self, rec: Received) -> str | None:
        root = self.root + "/"
        sub = rec.topic[len(root):] if rec.topic.startswith(root) else rec.topic
        body = rec.json() or {}
        if sub.startswith("event/"):
            flag = " (offline)" if body.get("offline") else ""
            return f"{body.get('type')} #{body.get('seq')}{flag}: {_describe_event(body)}"
        if sub == "status":
            return ("hub says it is online" if body.get("online") else "hub is offline (its last will, or it said goodbye)") + \
                (" [retained copy]" if rec.retained else "")
        if sub.startswith("state/connector/"):
            return None  # the connector.status event says the same, once
        if sub == "auth/request":
            return f"hub asks the cloud about card {body.get('uid', '?')[-4:].rjust(5, '*')} at {body.get('connector')}"
        if sub == "auth/response":
            return f"cloud answers the card check: {body.get('status')}"
        if sub.startswith("sync/"):
            extra = f" {body.get('kind')} v{body.get('version')}" if sub == "sync/tokens" else ""
            return f"cloud sends {sub}{extra}"
        if sub.startswith("cmd/"):
            return f"cloud sends command {sub[4:]}"
        if sub == "reply":
            if body.get("ok"):
                return "hub replies to the cloud: done"
            return f"hub replies to the cloud: refused ({body.get('code')}: {body.get('message')})"
        if sub.startswith("telemetry/"):
            return None
        return f"{sub}"

    # ------------------------------------------------------------ the checks
    def verdict(self) -> Verdict:
        from edge.cloud.schemas import validator

        v = Verdict()
        with self._cond:
            records = list(self.received)
            windows = list(self.windows)
        by_id: dict[str, bytes] = {}
        seq_owner: dict[tuple[str, int], str] = {}
        next_seq: dict[str, int] = {}
        resends = 0
        offline_checked = 0
        for rec in records:
            sub = rec.topic[len(self.root) + 1:]
            body = rec.json()
            if sub.startswith("event/"):
                if body is None:
                    v.problems.append(f"an event on {rec.topic} is not a JSON object")
                    continue
                try:
                    validate_event(body)
                except Exception as exc:
                    v.problems.append(f"event {body.get('type')} #{body.get('seq')} breaks its schema: {str(exc).splitlines()[0]}")
                    continue
                stream, eid, seq = body["stream"], body["id"], body["seq"]
                if sub != f"event/{stream}":
                    v.problems.append(f"event {body['type']} of stream {stream} came on {rec.topic}")
                if body["hub"] != self.hub_id:
                    v.problems.append(f"event {eid} names hub {body['hub']!r}, not {self.hub_id!r}")
                if eid in by_id:
                    resends += 1
                    if by_id[eid] != rec.body:
                        v.problems.append(f"id {eid} came twice with different content (a resend must be identical)")
                    continue
                by_id[eid] = rec.body
                owner = seq_owner.setdefault((stream, seq), eid)
                if owner != eid:
                    v.problems.append(f"{stream} seq {seq} was given to two events ({owner[:8]} and {eid[:8]})")
                    continue
                expected = next_seq.get(stream, 1)
                if seq != expected:
                    v.problems.append(f"{stream} stream: seq {seq} arrived when {expected} was due (gap or out of order)")
                next_seq[stream] = max(expected, seq + 1)
                problem = self._offline_problem(body, windows)
                if problem:
                    v.problems.append(problem)
                offline_checked += 1
            elif sub == "status":
                self._validate(v, validator("status"), body, rec.topic)
            elif sub.startswith("state/connector/"):
                self._validate(v, validator("connector_state"), body, rec.topic)
            elif sub == "auth/request":
                self._validate(v, validator("auth_request"), body, rec.topic)
            elif sub == "reply":
                self._validate(v, validator("reply"), body, rec.topic)
        for w in windows:
            if w.power_cut:
                wills = [s for m, s in self.statuses() if m > w.start_mono and s.get("online") is False]
                if not wills:
                    v.problems.append(f"after the {w.why} the broker never published the hub's last will (online: false)")
            if w.end is None:
                v.problems.append(f"the hub never said it was online again after: {w.why}")
        streams = ", ".join(f"{s} {n - 1}" for s, n in sorted(next_seq.items()))
        v.facts.append(f"{len(by_id)} events received, each valid against its schema; per stream: {streams or 'none'}")
        v.facts.append(f"{resends} resends (same id, same bytes); seqs gapless from 1 and in order")
        v.facts.append(f"offline flag checked on {offline_checked} events against {len(windows)} link windows: "
                       + "; ".join(self._window_text(w) for w in windows))
        return v

    def _window_text(self, w: LinkWindow) -> str:
        if self.timeline is None:
            return w.why
        start = "start" if w.start == EPOCH else f"{self.timeline.since_start(utc=w.start):+.1f}s"
        end = f"{self.timeline.since_start(utc=w.end):+.1f}s" if w.end else "never"
        return f"{w.why} ({start} to {end})"

    @staticmethod
    def _validate(v: Verdict, val, body, topic: str) -> None:
        if body is None:
            v.problems.append(f"{topic}: not a JSON object")
            return
        errors = sorted(val.iter_errors(body), key=str)
        if errors:
            v.problems.append(f"{topic} breaks its schema: {errors[0].message}")

    @staticmethod
    def _offline_problem(e: dict, windows: list[LinkWindow]) -> str | None:
        ts = parse_rfc3339(e["ts"])
        margin = timedelta(seconds=MARGIN_S)
        inside = any(w.start + margin < ts < (w.end or NEVER) for w in windows)
        near = any(w.start - margin <= ts <= (w.end or NEVER) + margin for w in windows)
        if inside and not e["offline"]:
            return f"{e['type']} #{e['seq']} ({e['stream']}) was queued while the link was down but says offline: false"
        if not near and e["offline"]:
            return f"{e['type']} #{e['seq']} ({e['stream']}) was queued with the link up but says offline: true"
        return None

    # ------------------------------------------------------------ the end
    def final_check(self, db_path: Path, timeout: float = 20.0) -> Verdict:
        """Once the hub's outbox has drained: every seq it ever gave reached
        the cloud, and the retained topics hold what a new subscriber needs."""
        v = self.verdict()
        given = _seqs_given(db_path)

        def complete() -> bool:
            have: dict[str, int] = {}
            for e in self.events():
                have[e["stream"]] = max(have.get(e["stream"], 0), e["seq"])
            return all(have.get(s, 0) >= n for s, n in given.items())

        if not self.wait_for(complete, timeout):
            have = {}
            for e in self.events():
                have[e["stream"]] = max(have.get(e["stream"], 0), e["seq"])
            v.problems.append(f"not every event reached the cloud: the hub gave {given}, the cloud has up to {have}")
        else:
            v.facts.append(f"every event the hub recorded reached the cloud ({sum(given.values())} in {len(given)} streams)")
            v = self._merge(v, self.verdict())
        retained = _retained(self.host, self.port, self.root)
        status = retained.get(f"{self.root}/status")
        if status is None or status.get("online") is not True:
            v.problems.append(f"the retained status is {status!r}, not online: a new cloud subscriber would think the hub is down")
        else:
            v.facts.append("retained status: online")
        states = sorted(t.rsplit("/", 1)[1] for t in retained if t.startswith(f"{self.root}/state/connector/"))
        v.facts.append(f"retained connector states for {', '.join(states) or 'none'}")
        return v

    @staticmethod
    def _merge(first: Verdict, second: Verdict) -> Verdict:
        # The second look (after the drain) supersedes the first one's figures.
        extra = [f for f in first.facts if f.startswith("every event")]
        return Verdict(second.problems, second.facts + extra)


def _seqs_given(db_path: Path) -> dict[str, int]:
    """The hub's own counter: the last seq given per stream."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT stream, seq FROM outbox_seq").fetchall()
    finally:
        db.close()
    from edge.cloud.envelope import STREAMS

    return {s: n for s, n in rows if s in STREAMS and n}


def _retained(host: str, port: int, root: str, wait_s: float = 1.0) -> dict[str, dict]:
    """What a subscriber arriving now gets at once: the retained messages."""
    got: dict[str, dict] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cloud-late-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)

    def on_connect(c, _u, _f, rc, _p):
        if not rc.is_failure:
            c.subscribe([(f"{root}/status", 1), (f"{root}/state/connector/+", 1)])
            done.set()

    def on_message(_c, _u, msg):
        if msg.retain:
            try:
                got[msg.topic] = json.loads(msg.payload)
            except ValueError:
                got[msg.topic] = {}

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        done.wait(5)
        time.sleep(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return dict(got)
