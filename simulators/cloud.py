"""The cloud's side of the MQTT contract, simulated (docs/cloud-contract.md).

Used by the demo and the tests: it records what the hub sends, publishes
sync messages and commands, answers roaming authorisation requests from
a table it is given, and answers a resync request (the hub's
sync.resync_requested event) by resending what it has synced. Given the hub's command key, it signs everything it
publishes, as the real cloud does (edge/cloud/signing.py). A real cloud is another
team's system; this one only plays its part on a local broker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from units import rfc3339

# How the cloud signs a command (docs/cloud-contract.md): the MQTT v5 user
# property below, "hmac-sha256=" and the hex HMAC-SHA256, under the hub's
# command key, of the topic, a newline and the payload bytes.
SIGNATURE_PROPERTY = "hubedge-sig"


def sign(key: bytes, topic: str, payload: bytes) -> str:
    mac = hmac.new(key, topic.encode("utf-8") + b"\n" + payload, hashlib.sha256)
    return "hmac-sha256=" + mac.hexdigest()


class CloudSimulator:
    def __init__(self, broker_url: str, hub_id: str, *, client_id: str | None = None, command_key: bytes | None = None):
        parts = urlsplit(broker_url)
        if parts.scheme != "mqtt":
            raise ValueError(f"the simulated cloud speaks plain mqtt:// on loopback, not {broker_url!r}")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.hub_id = hub_id
        self.root = f"hub/{hub_id}"
        self.command_key = command_key
        self.messages: list[tuple[str, dict | None, bool]] = []  # (topic, payload, retained)
        self.auth_answers: dict[str, dict] = {}
        self._silent = False
        # The cloud's view of what it has synced, resent in full when the hub
        # asks for a resync (hubctl resync).
        self.answer_resync = True
        self._tokens: dict[str, dict] = {}
        self._token_version = 0
        self._bookings: dict[str, dict] = {}
        self._tariffs: dict[str, dict] = {}
        self._windows: dict[str, dict] = {}
        self._resyncs_answered: set[str] = set()
        self._lock = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"cloud-sim-{hub_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 2.0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._connected = threading.Event()

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 5.0) -> "CloudSimulator":
        # A persistent session, as the real cloud keeps: across a broker
        # restart it still gets what the hub sent meanwhile.
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise RuntimeError(f"the simulated cloud could not reach the broker at {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _userdata, _flags, reason_code, _props):
        if not reason_code.is_failure:
            client.subscribe(f"{self.root}/#", qos=1)
            self._connected.set()

    def _on_message(self, _client, _userdata, msg):
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = None
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            self._lock.notify_all()
        if msg.topic == f"{self.root}/auth/request" and isinstance(payload, dict):
            self._answer(payload)
        elif (msg.topic == f"{self.root}/event/sync" and isinstance(payload, dict)
              and payload.get("type") == "sync.resync_requested" and self.answer_resync
              and payload.get("id") not in self._resyncs_answered):  # a resent event is answered once
            self._resyncs_answered.add(payload.get("id"))
            data = payload.get("data") or {}
            # A technician's resync waits for every kind: sent in full. The
            # hub's own requests (start, reconnect) say what it holds.
            self.resend_all(None if data.get("reason") == "technician" else data.get("held"))

    # -------------------------------------------------------- cloud -> hub
    def publish(self, topic: str, body: bytes) -> None:
        """Publish to the hub at QoS 1, signed when a command key was given."""
        props = None
        if self.command_key is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = (SIGNATURE_PROPERTY, sign(self.command_key, topic, body))
        self.client.publish(topic, body, qos=1, properties=props)

    def send(self, kind: str, payload: dict) -> str:
        """Publish sync/{kind} (tokens, bookings, tariffs, maintenance) or,
        with kind "cmd:NAME", a command. Returns the message id."""
        body = {"v": 1, "id": str(uuid.uuid4()), **payload}
        if kind.startswith("cmd:"):
            now = datetime.now(timezone.utc)
            body.setdefault("ts", rfc3339(now))
            body.setdefault("expires", rfc3339(now + timedelta(minutes=5)))
            body.setdefault("args", {})
            topic = f"{self.root}/cmd/{kind[4:]}"
        else:
            topic = f"{self.root}/sync/{kind}"
            self._remember(kind, body)
        self.publish(topic, json.dumps(body).encode())
        return body["id"]

    def _remember(self, kind: str, body: dict) -> None:
        """Keep the cloud's side of a sync. A malformed message (the tests
        send those on purpose) changes nothing here either."""
        try:
            if kind == "tokens" and "part" not in body:
                if body["kind"] == "full":
                    self._tokens = {}
                for t in body["upsert"]:
                    self._tokens[t["uid"]] = t
                for uid in body["remove"]:
                    self._tokens.pop(uid if isinstance(uid, str) else uid["uid"], None)
                self._token_version = max(self._token_version, int(body["version"]))
            elif kind == "bookings":
                for b in body.get("upsert", []):
                    self._bookings[b["id"]] = b
                for c in body.get("cancel", []):
                    self._bookings.pop(c if isinstance(c, str) else c["id"], None)
            elif kind == "tariffs":
                for t in body["tariffs"]:
                    self._tariffs[t["id"]] = t
            elif kind == "maintenance":
                for w in body["windows"]:
                    self._windows[w["id"]] = w
                for c in body.get("cancel", []):
                    self._windows.pop(c, None)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass

    def resend_all(self, held: dict | None = None) -> dict[str, str]:
        """Answer a resync: every sync kind sent again in full (an empty one
        for a kind never sent), as the real cloud does. The token list, the
        one kind that can be large, is left out when ``held`` (what the hub
        says it holds) shows the hub has this very version already, or when
        this cloud never sent one (without ``held``, a technician's resync,
        it is always sent). Returns kind -> id."""
        now = datetime.now(timezone.utc)
        future = [b for b in self._bookings.values() if str(b.get("slot_end", "")) > rfc3339(now)]
        sent: dict[str, str] = {}
        hub_version = ((held or {}).get("tokens") or {}).get("version")
        if held is None or (self._token_version and hub_version != self._token_version):
            sent["tokens"] = self.send("tokens", {"version": max(1, self._token_version), "kind": "full",
                                                  "upsert": list(self._tokens.values()), "remove": []})
        sent["bookings"] = self.send("bookings", {"upsert": future, "cancel": []})
        sent["tariffs"] = self.send("tariffs", {"tariffs": list(self._tariffs.values())})
        sent["maintenance"] = self.send("maintenance", {"windows": list(self._windows.values())})
        return sent

    def answer_auth(self, uid: str, status: str, *, group: str | None = None, reference: str | None = None,
                    expires_s: int = 3600) -> None:
        """How the cloud answers an auth/request for this uid (roaming check, R-A2)."""
        self.auth_answers[uid.upper()] = {"status": status, "group": group, "reference": reference, "expires_s": expires_s}

    def silent(self, on: bool = True) -> None:
        """Stop (or resume) answering auth requests, as an overloaded cloud would."""
        self._silent = on

    def _answer(self, request: dict) -> None:
        if self._silent:
            return
        answer = self.auth_answers.get(str(request.get("uid", "")).upper())
        if answer is None:
            return
        body = {
            "v": 1,
            "id": request.get("id"),
            "status": answer["status"],
            "expires": rfc3339(datetime.now(timezone.utc) + timedelta(seconds=answer["expires_s"])),
            "group": answer["group"],
            "reference": answer["reference"],
        }
        self.publish(f"{self.root}/auth/response", json.dumps(body).encode())

    # -------------------------------------------------------- hub -> cloud
    def events(self, type_prefix: str = "") -> list[dict]:
        with self._lock:
            return [p for t, p, _ in self.messages
                    if t.startswith(f"{self.root}/event/") and isinstance(p, dict) and str(p.get("type", "")).startswith(type_prefix)]

    def replies(self) -> list[dict]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == f"{self.root}/reply" and isinstance(p, dict)]

    def reply_to(self, message_id: str, timeout: float = 10.0) -> dict | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for t, p, _ in self.messages:
                    if t == f"{self.root}/reply" and isinstance(p, dict) and p.get("id") == message_id:
                        return p
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(min(remaining, 0.2))
