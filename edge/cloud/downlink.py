"""Cloud-to-hub messages: validated, deduplicated, applied once, answered (R-M3).

Every message that reaches ``Downlink.handle`` is checked in this order -
signature (edge/cloud/signing.py; without command keys only ``allow_unsigned``
lets an unsigned message through), size, UTF-8 JSON object, ``v``, its
kind's JSON Schema (edge/cloud/schemas), known command, already handled, its
times (a command's lifetime, expiry and clock skew; a sync older than the
newest applied of its kind) - and only then given to the handler registered
for its kind, exactly once. Refusals change nothing and are answered on
hub/{id}/reply with a stable machine ``code`` and a message saying what was
wrong and what to do. Handlers apply a batch whole or not at all and may
raise ``Rejected`` to refuse it.

Every answer to a message that names its id - applied or refused - is
remembered (14 days), so a replay of the same id is answered ``duplicate``
and never applied; only a bad signature (whose content, id included, is not
trusted) and the hub's own failure (``error``: nothing applied, the cloud may
send the same id again) are not. ``handle`` returns once the answer and
whatever the message changed are durable: the uplink acknowledges the MQTT
message only then, so a crash before that point has the broker deliver it
again (edge/cloud/uplink.py).

Built in here: maintenance windows (R-C7), kept as a document set, with the
pure look-up the hub core calls each tick. The other kinds are the parts'
(tariffs: payments; tokens: cards; bookings: site access), registered with
``register`` when the hub wires the cloud link.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from tinydb import Query

from units import Clock, parse_rfc3339, rfc3339
from edge.cloud.schemas import SCHEMA_DIR, validator
from edge.cloud.signing import SIGNATURE_PROPERTY, verify
from edge.core.store import Store

log = logging.getLogger("hubedge.downlink")

MAX_PAYLOAD_BYTES = 256 * 1024
SYNC_KINDS = ("tokens", "bookings", "tariffs", "maintenance")
# Sync kinds whose messages may carry a version or ts of their own; tokens
# are versioned by the token list itself (edge/parts/cards/tokens.py).
ORDERED_KINDS = ("bookings", "tariffs", "maintenance")
COMMANDS = ("unlock_connector", "set_availability", "open_gate", "stop_session", "resync", "set_power_limit")
KEEP_HANDLED = timedelta(days=14)  # longer than any cloud retry; older ids are forgotten
KEEP_ENDED_WINDOWS = timedelta(days=30)
COMMAND_MAX_AGE = timedelta(hours=1)
CLOCK_SKEW = timedelta(minutes=5)
# Answers not remembered: a bad signature (the id is not trusted, and a
# forger must not use up the cloud's ids) and the hub's own failure.
NOT_REMEMBERED = ("bad_signature", "error")
RESYNC_AFTER_RECONNECT_S = 300.0  # a flapping link asks at most this often

Handler = Callable[[dict], "dict | None | Awaitable[dict | None]"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS downlink_handled (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    handled_at REAL NOT NULL,
    reply      TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS downlink_handled_age ON downlink_handled(handled_at);
-- The newest message applied of each ordered sync kind (its version and/or
-- ts), and under kind 'cmd' the latest command ts accepted: what a replay
-- is judged against after its id has been forgotten.
CREATE TABLE IF NOT EXISTS downlink_newest (
    kind    TEXT PRIMARY KEY,
    version INTEGER,
    ts      REAL,
    id      TEXT NOT NULL
);
"""


class Rejected(Exception):
    """Raised by a handler to refuse a message whole; nothing was applied."""

    def __init__(self, code: str, message: str, data: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}


def kind_of_topic(hub_id: str, topic: str) -> str | None:
    """'hub/H/sync/tariffs' -> 'tariffs', 'hub/H/cmd/open_gate' -> 'cmd:open_gate',
    'hub/H/auth/response' -> 'auth_response'; None for anything else."""
    root = f"hub/{hub_id}/"
    if not topic.startswith(root):
        return None
    rest = topic[len(root):]
    if rest == "auth/response":
        return "auth_response"
    area, _, name = rest.partition("/")
    if not name or "/" in name:
        return None
    if area == "sync":
        return name
    if area == "cmd":
        return f"cmd:{name}"
    return None


def _seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())


class Downlink:
    def __init__(self, hub_id: str, store: Store, *, clock: Clock | None = None, reply: Callable[[dict], Any],
                 on_event: Callable[[str, dict], Any] | None = None, max_bytes: int = MAX_PAYLOAD_BYTES,
                 keys: Iterable[bytes] = (), allow_unsigned: bool = False,
                 command_max_age: timedelta = COMMAND_MAX_AGE, clock_skew: timedelta = CLOCK_SKEW):
        self.hub_id = hub_id
        self.set_keys(keys, allow_unsigned)
        self.store = store
        self.clock = clock or store.clock
        self.reply = reply
        self.on_event = on_event  # e.g. outbox.put: sync.applied / sync.rejected events
        self.max_bytes = max_bytes
        self.command_max_age = command_max_age
        self.clock_skew = clock_skew
        self._handlers: dict[str, Handler] = {}
        self._pruned_at: datetime | None = None
        # (kind, id) of messages being applied: a copy the broker delivers
        # again meanwhile (after a reconnect) waits for the first, then is a
        # duplicate.
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self._resync_asked_at: float | None = None
        store.db.executescript(SCHEMA)
        self.register("maintenance", lambda m: apply_maintenance(self.store, m, self.clock.now()))

    def set_keys(self, keys: Iterable[bytes], allow_unsigned: bool = False) -> None:
        """The cloud's command keys (edge/cloud/signing.py). Without any, only
        ``allow_unsigned`` lets messages through; with keys, only signed ones
        pass. Changed on a reload (SIGHUP) without a restart."""
        self.keys = tuple(keys)
        self.allow_unsigned = allow_unsigned and not self.keys

    def register(self, kind: str, handler: Handler) -> None:
        """kind: tokens, bookings, tariffs, maintenance, auth_response or cmd:<name>."""
        if kind.startswith("cmd:"):
            if kind[4:] not in COMMANDS:
                raise ValueError(f"unknown command {kind[4:]!r}: docs/cloud-contract.md names {', '.join(COMMANDS)}")
        elif kind not in SYNC_KINDS + ("auth_response",):
            raise ValueError(f"unknown downlink kind {kind!r}: use one of {', '.join(SYNC_KINDS)}, "
                             f"auth_response or cmd:<name>")
        self._handlers[kind] = handler

    async def handle(self, topic: str, payload: bytes, sig: str | None = None) -> dict | None:
        """Check, apply and answer one message; ``sig`` is the value of its
        hubedge-sig user property, if any. Returns the reply sent (None when
        no reply is due: another hub's topic, an accepted auth response),
        once the answer and what the message changed are durable."""
        kind = kind_of_topic(self.hub_id, topic)
        if kind is None:
            log.warning("downlink.ignored reason=not_our_topic topic=%s", topic)
            return None
        if verify(self.keys, topic, payload, sig) if self.keys else self.allow_unsigned:
            message, answer = self._check(kind, payload)
            if answer is None:
                answer = await self._once(kind, message)
            elif _trusted_id(message) is not None:
                # Refused as malformed: remembered like any answer, unless the
                # id was handled before (then that first answer stands).
                answer = self._duplicate(kind, message) or answer
                self._remember(message["id"], kind, answer)
        else:
            answer = self._unsigned(kind, payload, sig)
        if kind == "auth_response" and answer["ok"]:
            await self.store.durable()
            return None  # the authorisation logic consumes it; the cloud expects no reply
        self._send(answer)
        await self.store.durable()
        return answer

    async def _once(self, kind: str, message: dict) -> dict:
        """Judge and apply a well-formed message unless its id was handled;
        one copy of an id at a time."""
        key = (kind, message["id"])
        while key in self._inflight:
            await asyncio.shield(self._inflight[key])
        done = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            answer = self._duplicate(kind, message)
            if answer is not None:
                return answer
            try:
                answer = self._judge(kind, message)
            except ValueError as e:  # a time the schema let through but the calendar has not
                answer = self._refusal(message["id"], kind, "schema", f"{e}: send times as RFC 3339 with a zone; "
                                                                      f"nothing was applied")
            if answer is not None:
                self._remember(message["id"], kind, answer)
                return answer
            return await self._apply(kind, message)
        finally:
            del self._inflight[key]
            done.set_result(None)

    # ------------------------------------------------------------- resync
    def ask_resync(self, reason: str, *, requested_by: str = "hub", held: Mapping[str, Mapping] | None = None) -> bool:
        """Ask the cloud to send every synced kind again (a sync.resync_requested
        event), saying why and what the hub holds, so the cloud may send only
        what is newer. ``reason``: start, session_lost, reconnect, technician.
        A plain reconnect asks at most every few minutes. True when asked."""
        now = time.monotonic()
        if (reason == "reconnect" and self._resync_asked_at is not None
                and now - self._resync_asked_at < RESYNC_AFTER_RECONNECT_S):
            return False
        self._resync_asked_at = now
        holding: dict[str, dict] = {}
        for kind, version, ts in self.store.db.execute("SELECT kind, version, ts FROM downlink_newest"):
            if kind in ORDERED_KINDS:
                holding[kind] = {k: v for k, v in (("version", version), ("ts", ts and rfc3339(
                    datetime.fromtimestamp(ts, tz=timezone.utc)))) if v is not None}
        holding.update({k: dict(v) for k, v in (held or {}).items()})
        data = {"kinds": list(SYNC_KINDS), "requested_by": requested_by, "reason": reason, "held": holding}
        log.info("downlink.resync_requested reason=%s", reason)
        if self.on_event is not None:
            try:
                self.on_event("sync.resync_requested", data)
            except Exception:
                log.exception("downlink.event_failed type=sync.resync_requested")
                return False
        return True

    # -------------------------------------------------------------- checks
    def _unsigned(self, kind: str, payload: bytes, sig: str | None) -> dict:
        """The refusal of a message without a valid signature. Its content is
        not trusted and not applied; its id is only echoed, so that the cloud
        can tell which of its messages a wrong key spoiled."""
        if not self.keys:
            text = ("this hub has no command key and obeys no unsigned message: install the cloud's key for this "
                    "hub and name it in [cloud] command_key_file (docs/deploy.md); nothing was applied")
        elif sig is None:
            text = (f"message has no signature (MQTT user property {SIGNATURE_PROPERTY}) and this hub obeys only "
                    f"signed messages: sign topic, newline and payload with the hub's command key; nothing was applied")
        else:
            text = ("the message's signature does not match this topic and payload under any of this hub's command "
                    "keys: check that the cloud signs with the key installed on this hub (command_key_file); "
                    "nothing was applied")
        return self._refusal(_claimed_id(payload, self.max_bytes), kind, "bad_signature", text)

    def _check(self, kind: str, payload: bytes) -> tuple[dict | None, dict | None]:
        """(message, None) when the message is well formed, else (msg, reply)."""
        if len(payload) > self.max_bytes:
            return None, self._refusal(None, kind, "too_large",
                                       f"message of {len(payload)} bytes exceeds the hub's limit of {self.max_bytes} "
                                       f"bytes: split it into smaller batches")
        try:
            message = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nesting too deep
            return None, self._refusal(None, kind, "invalid_json",
                                       f"payload is not UTF-8 JSON ({type(e).__name__}): send a JSON object")
        if not isinstance(message, dict):
            return None, self._refusal(None, kind, "invalid_json", "payload is JSON but not an object: send {\"v\": 1, ...}")
        message_id = message.get("id") if isinstance(message.get("id"), str) else None
        if message.get("v") != 1:
            return message, self._refusal(message_id, kind, "wrong_version",
                                          f"message version {message.get('v')!r} is not supported: this hub speaks v 1")
        if kind.startswith("cmd:"):
            if kind not in self._handlers:
                return message, self._refusal(message_id, kind, "unknown_command",
                                              f"command {kind[4:]!r} is unknown to this hub: it accepts "
                                              f"{', '.join(sorted(k[4:] for k in self._handlers if k.startswith('cmd:')))}")
            schema = "cmd"
        elif kind in SYNC_KINDS or kind == "auth_response":
            schema = kind
        else:
            return message, self._refusal(message_id, kind, "unknown_kind",
                                          f"sync kind {kind!r} is unknown: send tokens, bookings, tariffs or maintenance")
        errors = sorted(validator(schema).iter_errors(message), key=lambda e: list(e.absolute_path))
        within: list = []
        if not errors and kind.startswith("cmd:") and (SCHEMA_DIR / "cmd" / f"{kind[4:]}.json").exists():
            # Each command's args have a schema of their own (edge/cloud/schemas/cmd/).
            schema, within = f"cmd/{kind[4:]}", ["args"]
            errors = sorted(validator(schema).iter_errors(message["args"]), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in within + list(first.absolute_path)) or "(top level)"
            return message, self._refusal(message_id, kind, "schema",
                                          f"{where}: {first.message} - fix the message to match "
                                          f"edge/cloud/schemas/{schema}.json and send it under a new id; nothing was "
                                          f"applied",
                                          {"errors": [{"path": "/".join(str(p) for p in within + list(e.absolute_path)),
                                                       "error": e.message} for e in errors[:10]]})
        if kind not in self._handlers:
            return message, self._refusal(message_id, kind, "unknown_kind",
                                          f"this hub has no handler for {kind} messages yet: nothing was applied")
        return message, None

    def _duplicate(self, kind: str, message: dict) -> dict | None:
        message_id = message["id"]
        handled = self.store.db.execute("SELECT handled_at, reply FROM downlink_handled WHERE kind = ? AND id = ?",
                                        (kind, message_id)).fetchone()
        if handled is None:
            return None
        original = json.loads(handled[1])
        when = rfc3339(datetime.fromtimestamp(handled[0], tz=timezone.utc))
        return {"v": 1, "id": message_id, "ok": original.get("ok", False), "code": "duplicate",
                "message": f"message {message_id} was already handled at {when} and is not applied "
                           f"again; its original answer is in data.original",
                "data": {"original": original}}

    def _newest(self, kind: str) -> tuple[int | None, float | None]:
        row = self.store.db.execute("SELECT version, ts FROM downlink_newest WHERE kind = ?", (kind,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def _judge(self, kind: str, message: dict) -> dict | None:
        """The time and order checks: None when the message may be applied."""
        message_id = message["id"]
        now, synced = self.clock.now(), self.clock.synced
        if kind.startswith("cmd:"):
            ts, expires = parse_rfc3339(message["ts"]), parse_rfc3339(message["expires"])
            if expires - ts > self.command_max_age:
                return self._refusal(message_id, kind, "too_long_lived",
                                     f"command is valid for {_seconds(expires - ts)} s (ts to expires), more than this "
                                     f"hub allows ({_seconds(self.command_max_age)} s, [cloud] command_max_age_s): "
                                     f"not executed; send it with expires at most that long after ts")
            if synced and ts - now > self.clock_skew:
                return self._refusal(message_id, kind, "clock_skew",
                                     f"command made at {message['ts']}, {_seconds(ts - now)} s ahead of the hub's "
                                     f"synchronised clock (more than {_seconds(self.clock_skew)} s): not executed; "
                                     f"check the cloud's clock")
            # The hub's clock, even before NTP has set it, is at least the
            # time it last saved; a later command the cloud sent shows the
            # cloud's time passed further still.
            _, newest = self._newest("cmd")
            latest = max(now, datetime.fromtimestamp(newest, tz=timezone.utc)) if newest else now
            if expires <= latest:
                basis = "the hub's clock" if latest == now else "a later command the cloud sent"
                return self._refusal(message_id, kind, "expired",
                                     f"command expired at {message['expires']} (by {basis}) and was not executed: "
                                     f"send it again with a later expires if it is still wanted")
            if expires < ts:
                return self._refusal(message_id, kind, "rejected",
                                     f"command expires at {message['expires']}, before it was made ({message['ts']}): "
                                     f"not executed; send it with expires after ts")
            return None
        if kind not in ORDERED_KINDS:
            return None
        version = message.get("version")
        ts = parse_rfc3339(message["ts"]) if isinstance(message.get("ts"), str) else None
        if ts is not None and synced and ts - now > self.clock_skew:
            return self._refusal(message_id, kind, "clock_skew",
                                 f"{kind} message made at {message['ts']}, {_seconds(ts - now)} s ahead of the hub's "
                                 f"synchronised clock (more than {_seconds(self.clock_skew)} s): nothing applied; "
                                 f"check the cloud's clock")
        held_version, held_ts = self._newest(kind)
        if version is not None and held_version is not None and version < held_version:
            return self._refusal(message_id, kind, "stale",
                                 f"{kind} version {version} is older than version {held_version} already applied "
                                 f"(a replayed or overtaken message): nothing applied; send the current {kind} with "
                                 f"a version not below {held_version}")
        if ts is not None and held_ts is not None and ts.timestamp() < held_ts:
            held = rfc3339(datetime.fromtimestamp(held_ts, tz=timezone.utc))
            return self._refusal(message_id, kind, "stale",
                                 f"{kind} message made at {message['ts']} is older than the one applied, made at "
                                 f"{held} (a replayed or overtaken message): nothing applied; send the current "
                                 f"{kind} again")
        return None

    def _refusal(self, message_id: str | None, kind: str, code: str, text: str, data: dict | None = None) -> dict:
        log.warning("downlink.refused kind=%s id=%s code=%s", kind, message_id, code)
        self._event(kind, "sync.rejected", {"kind": kind, "message_id": message_id, "code": code, "reason": text})
        return {"v": 1, "id": message_id, "ok": False, "code": code, "message": text, "data": data or {}}

    # --------------------------------------------------------------- apply
    async def _apply(self, kind: str, message: dict) -> dict:
        handler = self._handlers[kind]
        command = kind.startswith("cmd:")
        if command:
            # Written before the command runs: a crash while it runs must not
            # have the broker's redelivery run it a second time.
            self._remember(message["id"], kind, {
                "v": 1, "id": message["id"], "ok": False, "code": "interrupted",
                "message": "the hub stopped while carrying out this command and does not run it again: check its "
                           "effect on the hub (hubctl status) and send a new command if it is still wanted",
                "data": {}}, newest=("cmd", None, parse_rfc3339(message["ts"])))
            await self.store.durable()
        try:
            result = handler(message)
            if inspect.isawaitable(result):
                result = await result
            # What it changed (a document set, rows) is on disk before the
            # message counts as handled: the two are separate files.
            await self.store.durable()
        except Rejected as e:
            answer = self._refusal(message["id"], kind, e.code or "rejected", e.message, e.data)
            self._remember(message["id"], kind, answer)
            return answer
        except Exception as e:
            # Not remembered: the handler applied nothing (its contract), so
            # the cloud may send the same id again once the fault is fixed.
            log.exception("downlink.handler_failed kind=%s id=%s", kind, message["id"])
            if command:
                self._forget(message["id"], kind)
            return {"v": 1, "id": message["id"], "ok": False, "code": "error",
                    "message": f"the hub failed to apply this {kind} message ({type(e).__name__}); nothing was "
                               f"applied: retry later, and if it persists check the hub's log",
                    "data": {}}
        data = dict(result) if isinstance(result, Mapping) else {}
        answer = {"v": 1, "id": message["id"], "ok": True, "code": "ok", "message": f"{kind} applied", "data": data}
        newest = None
        if kind in ORDERED_KINDS and (isinstance(message.get("version"), int) or isinstance(message.get("ts"), str)):
            ts = parse_rfc3339(message["ts"]) if isinstance(message.get("ts"), str) else None
            newest = (kind, message.get("version") if isinstance(message.get("version"), int) else None, ts)
        self._remember(message["id"], kind, answer, newest=newest)
        if kind in SYNC_KINDS:
            event = {"kind": kind, "message_id": message["id"]}
            if isinstance(message.get("version"), int):
                event["version"] = message["version"]
            if isinstance(data.get("counts"), Mapping):
                event["counts"] = dict(data["counts"])
            self._event(kind, "sync.applied", event)
        log.info("downlink.applied kind=%s id=%s", kind, message["id"])
        return answer

    def _remember(self, message_id: str, kind: str, answer: dict,
                  newest: tuple[str, int | None, datetime | None] | None = None) -> None:
        if answer.get("code") in NOT_REMEMBERED + ("duplicate",):
            return
        now = self.clock.now()
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO downlink_handled(kind, id, handled_at, reply) VALUES (?, ?, ?, ?)",
                       (kind, message_id, now.timestamp(), json.dumps(answer)))
            if newest is not None:
                # Only ever forward: MAX keeps the newest of what was held and what came.
                which, version, ts = newest
                db.execute("INSERT INTO downlink_newest(kind, version, ts, id) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT(kind) DO UPDATE SET version = MAX(COALESCE(version, excluded.version), "
                           "COALESCE(excluded.version, version)), ts = MAX(COALESCE(ts, excluded.ts), "
                           "COALESCE(excluded.ts, ts)), id = excluded.id",
                           (which, version, ts.timestamp() if ts else None, message_id))
            if self._pruned_at is None or now - self._pruned_at > timedelta(hours=1):
                db.execute("DELETE FROM downlink_handled WHERE handled_at < ?", ((now - KEEP_HANDLED).timestamp(),))
                self._pruned_at = now

    def _forget(self, message_id: str, kind: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM downlink_handled WHERE kind = ? AND id = ?", (kind, message_id))

    def _event(self, kind: str, type_: str, data: dict) -> None:
        if self.on_event is None or not (kind in SYNC_KINDS):
            return
        try:
            self.on_event(type_, data)
        except Exception:
            log.exception("downlink.event_failed type=%s", type_)

    def _send(self, answer: dict) -> None:
        try:
            self.reply(answer)
        except Exception:
            log.exception("downlink.reply_failed id=%s code=%s", answer.get("id"), answer.get("code"))


def _trusted_id(message: dict | None) -> str | None:
    """The id of a signed (or knowingly unsigned) message that was refused
    before its schema held, when it is one the schema would accept."""
    found = message.get("id") if isinstance(message, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= 128 else None


def _claimed_id(payload: bytes, max_bytes: int) -> str | None:
    """The ``id`` an untrusted message claims, for the refusal only."""
    if len(payload) > max_bytes:
        return None
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    found = message.get("id") if isinstance(message, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= 128 else None


# ------------------------------------------------------- maintenance windows
def apply_maintenance(store: Store, message: dict, now: datetime) -> dict:
    """Upsert windows by id, remove those listed in ``cancel``, forget windows
    that ended long ago; all or none."""
    clean = []
    for window in message["windows"]:
        start, end = parse_rfc3339(window["start"]), parse_rfc3339(window["end"])
        if end <= start:
            raise Rejected("rejected", f"maintenance window {window['id']}: end {window['end']} is not after start "
                                       f"{window['start']}; nothing applied")
        clean.append({"id": window["id"], "connectors": list(window["connectors"]), "start": rfc3339(start),
                      "end": rfc3339(end), "reason": window["reason"]})
    cancel = set(message.get("cancel", []))
    W = Query()
    with store.documents_batch("maintenance") as db:
        for window in clean:
            db.upsert(window, W.id == window["id"])
        removed = db.remove(W.id.one_of(list(cancel))) if cancel else []
        horizon = now - KEEP_ENDED_WINDOWS
        db.remove(W.end.test(lambda end: parse_rfc3339(end) < horizon))
    return {"counts": {"upserted": len(clean), "cancelled": len(removed)}}


def maintenance_windows(store: Store) -> list[dict]:
    return [dict(w) for w in store.documents("maintenance").all()]


def maintenance_in_force(windows: Iterable[Mapping], connector_id: str, now: datetime) -> Mapping | None:
    """The maintenance window making ``connector_id`` Unavailable at ``now``
    (R-C7), or None. A window listing "*" covers every connector; when several
    apply, the one ending last wins, so the connector returns when all are over."""
    found, found_end = None, None
    for window in windows:
        if connector_id not in window["connectors"] and "*" not in window["connectors"]:
            continue
        start, end = parse_rfc3339(window["start"]), parse_rfc3339(window["end"])
        if start <= now < end and (found_end is None or end > found_end):
            found, found_end = window, end
    return found
