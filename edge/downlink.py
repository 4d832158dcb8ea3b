"""Cloud-to-hub messages: validated, deduplicated, applied once, answered (R-M3).

Every message that reaches ``Downlink.handle`` is checked in this order -
signature (when the hub has command keys, edge/signing.py), size, UTF-8 JSON
object, ``v``, its kind's JSON Schema (edge/schemas), known command, already
handled, expired - and only then given to the handler registered for its
kind, exactly once. Refusals change nothing and are answered
on hub/{id}/reply with a stable machine ``code`` and a message saying what was
wrong and what to do. Handlers apply a batch whole or not at all and may raise
``Rejected`` to refuse it.

Built in here: tariffs (R-P8) and maintenance windows (R-C7), kept as document
sets, with the pure look-ups the hub core calls each tick.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from tinydb import Query

from edge.clock import Clock, parse_rfc3339, rfc3339
from edge.pricing import CURRENCIES
from edge.schemas import SCHEMA_DIR, validator
from edge.signing import SIGNATURE_PROPERTY, verify
from edge.store import Store

log = logging.getLogger("hubedge.downlink")

MAX_PAYLOAD_BYTES = 256 * 1024
SYNC_KINDS = ("tokens", "bookings", "tariffs", "maintenance")
COMMANDS = ("unlock_connector", "set_availability", "open_gate", "stop_session", "resync")
KEEP_HANDLED = timedelta(days=14)  # longer than any cloud retry; older ids are forgotten
KEEP_ENDED_WINDOWS = timedelta(days=30)

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


class Downlink:
    def __init__(self, hub_id: str, store: Store, *, clock: Clock | None = None, reply: Callable[[dict], Any],
                 on_event: Callable[[str, dict], Any] | None = None, max_bytes: int = MAX_PAYLOAD_BYTES,
                 keys: Iterable[bytes] = (), currency: str | None = None):
        self.hub_id = hub_id
        # The site's currency: a tariff in another one would be stored and
        # never apply, so it is refused (None: any currency edge.pricing knows).
        self.currency = currency
        # The cloud's command keys (edge/signing.py); none: unsigned messages
        # are accepted, as before signing existed.
        self.keys = tuple(keys)
        self.store = store
        self.clock = clock or store.clock
        self.reply = reply
        self.on_event = on_event  # e.g. outbox.put: sync.applied / sync.rejected events
        self.max_bytes = max_bytes
        self._handlers: dict[str, Handler] = {}
        self._pruned_at: datetime | None = None
        store.db.executescript(SCHEMA)
        self.register("tariffs", lambda m: apply_tariffs(self.store, m, currency=self.currency))
        self.register("maintenance", lambda m: apply_maintenance(self.store, m, self.clock.now()))

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
        no reply is due: another hub's topic, an accepted auth response)."""
        kind = kind_of_topic(self.hub_id, topic)
        if kind is None:
            log.warning("downlink.ignored reason=not_our_topic topic=%s", topic)
            return None
        if self.keys and not verify(self.keys, topic, payload, sig):
            message, answer = None, self._unsigned(kind, payload, sig)
        else:
            message, answer = self._check(kind, payload)
        if answer is None:
            answer = await self._apply(kind, message)
        if kind == "auth_response" and answer["ok"]:
            return None  # the authorisation logic consumes it; the cloud expects no reply
        self._send(answer)
        return answer

    # -------------------------------------------------------------- checks
    def _unsigned(self, kind: str, payload: bytes, sig: str | None) -> dict:
        """The refusal of a message without a valid signature. Its content is
        not trusted and not applied; its id is only echoed, so that the cloud
        can tell which of its messages a wrong key spoiled."""
        if sig is None:
            text = (f"message has no signature (MQTT user property {SIGNATURE_PROPERTY}) and this hub obeys only "
                    f"signed messages: sign topic, newline and payload with the hub's command key; nothing was applied")
        else:
            text = ("the message's signature does not match this topic and payload under any of this hub's command "
                    "keys: check that the cloud signs with the key installed on this hub (command_key_file); "
                    "nothing was applied")
        return self._refusal(_claimed_id(payload, self.max_bytes), kind, "bad_signature", text)

    def _check(self, kind: str, payload: bytes) -> tuple[dict | None, dict | None]:
        """(message, None) when the message may be applied, else (msg, reply)."""
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
            # Each command's args have a schema of their own (edge/schemas/cmd/).
            schema, within = f"cmd/{kind[4:]}", ["args"]
            errors = sorted(validator(schema).iter_errors(message["args"]), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in within + list(first.absolute_path)) or "(top level)"
            return message, self._refusal(message_id, kind, "schema",
                                          f"{where}: {first.message} - fix the message to match "
                                          f"edge/schemas/{schema}.json; nothing was applied",
                                          {"errors": [{"path": "/".join(str(p) for p in within + list(e.absolute_path)),
                                                       "error": e.message} for e in errors[:10]]})
        handled = self.store.db.execute("SELECT handled_at, reply FROM downlink_handled WHERE kind = ? AND id = ?",
                                        (kind, message_id)).fetchone()
        if handled is not None:
            original = json.loads(handled[1])
            when = rfc3339(datetime.fromtimestamp(handled[0], tz=timezone.utc))
            return message, {"v": 1, "id": message_id, "ok": original.get("ok", False), "code": "duplicate",
                             "message": f"message {message_id} was already handled at {when} and is not applied "
                                        f"again; its original answer is in data.original",
                             "data": {"original": original}}
        if kind.startswith("cmd:"):
            expires = parse_rfc3339(message["expires"])
            if expires <= self.clock.now():
                return message, self._refusal(message_id, kind, "expired",
                                              f"command expired at {message['expires']} and was not executed: "
                                              f"send it again with a later expires if it is still wanted")
        if kind not in self._handlers:
            return message, self._refusal(message_id, kind, "unknown_kind",
                                          f"this hub has no handler for {kind} messages yet: nothing was applied")
        return message, None

    def _refusal(self, message_id: str | None, kind: str, code: str, text: str, data: dict | None = None) -> dict:
        log.warning("downlink.refused kind=%s id=%s code=%s", kind, message_id, code)
        self._event(kind, "sync.rejected", {"kind": kind, "message_id": message_id, "code": code, "reason": text})
        return {"v": 1, "id": message_id, "ok": False, "code": code, "message": text, "data": data or {}}

    # --------------------------------------------------------------- apply
    async def _apply(self, kind: str, message: dict) -> dict:
        handler = self._handlers[kind]
        try:
            result = handler(message)
            if inspect.isawaitable(result):
                result = await result
        except Rejected as e:
            # Not remembered either: nothing was applied, so a corrected
            # resend under the same id is judged afresh.
            return self._refusal(message["id"], kind, e.code or "rejected", e.message, e.data)
        except Exception as e:
            # Not remembered: the handler applied nothing (its contract), so
            # the cloud may send the same id again once the fault is fixed.
            log.exception("downlink.handler_failed kind=%s id=%s", kind, message["id"])
            return {"v": 1, "id": message["id"], "ok": False, "code": "error",
                    "message": f"the hub failed to apply this {kind} message ({type(e).__name__}); nothing was "
                               f"applied: retry later, and if it persists check the hub's log",
                    "data": {}}
        data = dict(result) if isinstance(result, Mapping) else {}
        answer = {"v": 1, "id": message["id"], "ok": True, "code": "ok", "message": f"{kind} applied", "data": data}
        self._remember(message["id"], kind, answer)
        if kind in SYNC_KINDS:
            event = {"kind": kind, "message_id": message["id"]}
            if isinstance(message.get("version"), int):
                event["version"] = message["version"]
            if isinstance(data.get("counts"), Mapping):
                event["counts"] = dict(data["counts"])
            self._event(kind, "sync.applied", event)
        log.info("downlink.applied kind=%s id=%s", kind, message["id"])
        return answer

    def _remember(self, message_id: str, kind: str, answer: dict) -> None:
        now = self.clock.now()
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO downlink_handled(kind, id, handled_at, reply) VALUES (?, ?, ?, ?)",
                       (kind, message_id, now.timestamp(), json.dumps(answer)))
            if self._pruned_at is None or now - self._pruned_at > timedelta(hours=1):
                db.execute("DELETE FROM downlink_handled WHERE handled_at < ?", ((now - KEEP_HANDLED).timestamp(),))
                self._pruned_at = now

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


# ------------------------------------------------------------------ tariffs
def _decimal(value: str, field: str, tariff_id: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise Rejected("rejected", f"tariff {tariff_id}: {field} {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise Rejected("rejected", f"tariff {tariff_id}: {field} must be a finite decimal")
    return number


def apply_tariffs(store: Store, message: dict, *, currency: str | None = None) -> dict:
    """Upsert the message's tariffs (by id) into store.documents("tariffs"),
    all or none: one bad tariff refuses the whole batch. A tariff in a currency
    the hub cannot price, or other than the site's ``currency``, is refused:
    stored, it would never be in force while the cloud believed it was."""
    seen: set[str] = set()
    clean = []
    for tariff in message["tariffs"]:
        tid = tariff["id"]
        if tid in seen:
            raise Rejected("rejected", f"tariff {tid} appears twice in the batch: send each tariff once; nothing applied")
        seen.add(tid)
        if tariff["currency"] not in CURRENCIES:
            raise Rejected("rejected", f"tariff {tid}: currency {tariff['currency']} is not one this hub can price "
                                       f"(known: {', '.join(sorted(CURRENCIES))}); nothing applied")
        if currency is not None and tariff["currency"] != currency:
            raise Rejected("rejected", f"tariff {tid}: currency {tariff['currency']} is not this site's currency "
                                       f"{currency}: send the tariff in {currency}; nothing applied")
        price = _decimal(tariff["price_per_kwh"], "price_per_kwh", tid)
        vat = _decimal(tariff["vat_rate"], "vat_rate", tid)
        if price > 100:
            raise Rejected("rejected", f"tariff {tid}: price_per_kwh {tariff['price_per_kwh']} per kWh is implausible "
                                       f"(over 100): check the unit (currency units per kWh); nothing applied")
        if not vat < 1:
            raise Rejected("rejected", f"tariff {tid}: vat_rate {tariff['vat_rate']} must be a fraction below 1 "
                                       f"(send 0.19 for 19 %); nothing applied")
        clean.append({"id": tid, "currency": tariff["currency"], "price_per_kwh": tariff["price_per_kwh"],
                      "vat_rate": tariff["vat_rate"],
                      "effective_from": rfc3339(parse_rfc3339(tariff["effective_from"]))})
    T = Query()
    with store.documents_batch("tariffs") as db:
        for tariff in clean:
            db.upsert(tariff, T.id == tariff["id"])
    return {"counts": {"upserted": len(clean)}}


def tariff_in_force(tariffs: Iterable[Mapping], now: datetime, currency: str | None = None) -> Mapping | None:
    """The tariff with the latest effective_from not after ``now`` (R-P8);
    equal start times: the highest id wins, as in edge.pricing.tariff_in_force,
    so the answer never depends on the order the tariffs were stored in."""
    best, best_key = None, None
    for tariff in tariffs:
        if currency is not None and tariff["currency"] != currency:
            continue
        since = parse_rfc3339(tariff["effective_from"])
        key = (since, tariff["id"])
        if since <= now and (best_key is None or key > best_key):
            best, best_key = tariff, key
    return best


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
