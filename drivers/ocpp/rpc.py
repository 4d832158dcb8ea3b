"""OCPP-J frames: reading them, checking payloads against the official
schemas, and the CALLERROR each version's specification names (R-O6, R-O7).

Pure: no sockets, no asyncio. The schemas are the ones the ``ocpp`` library
bundles; the checks are ours because the library (2.1.0) answers some faults
with another version's or another fault's code (NotImplemented and
NotSupported swapped, 2.0.1 spellings on 1.6, enum faults as FormatViolation,
frame faults not answered at all). The table ``CODES`` is the one place the
mapping lives; docs/ocpp.md prints it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import best_match
from ocpp.messages import get_validator
from ocpp.v16.enums import Action as Action16
from ocpp.v201.enums import Action as Action201

MAX_ID = 36  # OCPP-J: the message id is at most 36 characters
MAX_DESCRIPTION = 255  # 2.0.1 Part 4 §4.2.3: ErrorDescription string[255]

# What went wrong, in our words -> the code each specification names for it.
# 1.6: OCPP-J 1.6 Table 7 (OccurenceConstraintViolation spelt as 1.6 spells it);
# 2.0.1: OCPP-J 2.0.1 Part 4 Table 8.
_CODES_16 = {
    "not_json": "FormationViolation",
    "not_json_no_id": "FormationViolation",
    "not_rpc": "FormationViolation",
    "payload_shape": "FormationViolation",
    "extra_property": "FormationViolation",
    "missing_property": "OccurenceConstraintViolation",
    "items": "OccurenceConstraintViolation",
    "type": "TypeConstraintViolation",
    "too_long": "TypeConstraintViolation",
    "enum": "PropertyConstraintViolation",
    "value": "PropertyConstraintViolation",
    "unknown_action": "NotImplemented",
    "unsupported_action": "NotSupported",
    "internal": "InternalError",
}
CODES: dict[str, dict[str, str]] = {
    "ocpp1.6": _CODES_16,
    "ocpp2.0.1": {**_CODES_16, "not_json": "FormatViolation", "not_json_no_id": "RpcFrameworkError",
                  "not_rpc": "RpcFrameworkError",
                  "payload_shape": "FormatViolation", "extra_property": "FormatViolation",
                  "missing_property": "OccurrenceConstraintViolation", "items": "OccurrenceConstraintViolation",
                  "message_type": "MessageTypeNotSupported"},
}

# The jsonschema keyword that failed -> our fault name.
SCHEMA_FAULTS = {
    "type": "type",
    "required": "missing_property",
    "additionalProperties": "extra_property",
    "enum": "enum",
    "maxLength": "too_long",
    "minItems": "items",
    "maxItems": "items",
}

# Actions a station sends that the hub handles (everything else the version
# knows is answered NotSupported; what it does not know, NotImplemented).
TRANSACTION_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues", "TransactionEvent"})
HANDLED = {
    "ocpp1.6": frozenset({"Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
                          "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
                          "StatusNotification", "StopTransaction", "SecurityEventNotification",
                          "LogStatusNotification", "SignedFirmwareStatusNotification"}),
    "ocpp2.0.1": frozenset({"Authorize", "BootNotification", "DataTransfer", "FirmwareStatusNotification",
                            "Heartbeat", "LogStatusNotification", "MeterValues", "NotifyEvent", "NotifyReport",
                            "ReservationStatusUpdate", "SecurityEventNotification", "StatusNotification",
                            "TransactionEvent", "NotifyChargingLimit", "ClearedChargingLimit",
                            "NotifyMonitoringReport", "PublishFirmwareStatusNotification"}),
}
KNOWN = {"ocpp1.6": frozenset(a.value for a in Action16), "ocpp2.0.1": frozenset(a.value for a in Action201)}
LIBRARY_VERSION = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}

_ID_AT_START = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"')
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


# ------------------------------------------------------------------ time
def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime; ValueError otherwise."""
    if not isinstance(text, str) or not _RFC3339.match(text):
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    head, rest, frac = text[:19], text[19:], ""
    if rest.startswith("."):
        digits = re.match(r"\.(\d+)", rest).group(1)
        frac = "." + digits[:6].ljust(6, "0")
        rest = rest[1 + len(digits):]
    zone = "+00:00" if rest in ("Z", "z") else rest
    try:
        return datetime.fromisoformat(head.replace("t", "T") + frac + zone).astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first UTC instant Python has
        raise ValueError(f"{text!r} is outside the range of dates") from None


def rfc3339(dt: datetime) -> str:
    """UTC, milliseconds, 'Z': what OCPP stations parse most reliably."""
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type check reports it
    try:
        parse_time(value)
    except ValueError:
        return False
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time")(_is_rfc3339)


# ------------------------------------------------------------------ frames
@dataclass(frozen=True)
class Call:
    message_id: str
    action: str
    payload: Any


@dataclass(frozen=True)
class Result:
    message_id: str
    payload: Any


@dataclass(frozen=True)
class Error:
    message_id: str
    code: str
    description: str
    details: Any


@dataclass(frozen=True)
class Refusal:
    """A CALLERROR to send: the station's frame broke a rule."""

    message_id: str
    code: str
    description: str
    fault: str  # our name for the fault (CODES key)
    details: dict = field(default_factory=dict)

    def frame(self) -> str:
        return json.dumps([4, self.message_id, self.code, self.description[:MAX_DESCRIPTION], self.details],
                          separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Ignored:
    """A frame the specification says to drop without an answer."""

    reason: str


Frame = Call | Result | Error | Refusal | Ignored


def refusal(version: str, fault: str, message_id: str, description: str, details: dict | None = None) -> Refusal:
    return Refusal(message_id, CODES[version][fault], _trim(description), fault, details or {})


def _trim(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 3] + "..."


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def read_frame(raw: str, version: str, *, ignore_empty: bool = False) -> Frame:
    """One websocket text frame as a CALL/CALLRESULT/CALLERROR, or what to
    answer (Refusal) or drop (Ignored). Never raises for any input."""
    if ignore_empty and not raw.strip():
        return Ignored("empty frame (leniency ignore_empty_frames)")
    try:
        msg = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        found = _ID_AT_START.match(raw)
        if found:  # syntactically broken, but the station can match the answer to its CALL
            return refusal(version, "not_json", found.group(1),
                           "The frame is not valid JSON: an OCPP-J message is a JSON array")
        return refusal(version, "not_json_no_id", "-1", "The frame is not valid JSON and its MessageId cannot be "
                       "read: an OCPP-J message is a JSON array [MessageTypeId, MessageId, ...]")
    if not isinstance(msg, list) or not msg:
        return refusal(version, "not_rpc", "-1", "The frame is not an OCPP-J message: expected a JSON array "
                       "[MessageTypeId, MessageId, ...]")
    type_id = msg[0]
    readable_id = msg[1] if len(msg) > 1 and isinstance(msg[1], str) and 0 < len(msg[1]) <= MAX_ID else None
    if type(type_id) is not int or type_id not in (2, 3, 4):
        if version == "ocpp2.0.1":
            return refusal(version, "message_type", readable_id or "-1",
                           f"MessageTypeId {_short(type_id)} is not supported (2: CALL, 3: CALLRESULT, 4: CALLERROR)")
        return Ignored(f"MessageTypeId {_short(type_id)} is not one OCPP-J 1.6 knows; ignored as §4.1.3 says")
    if type_id == 2:
        if readable_id is None:
            why = ("MessageId is missing" if len(msg) < 2 else
                   f"MessageId must be a string of 1..{MAX_ID} characters, got {_short(msg[1])}")
            return refusal(version, "not_rpc", "-1", why)
        if len(msg) != 4:
            return refusal(version, "not_rpc", readable_id,
                           f"A CALL has 4 elements [2, MessageId, Action, Payload], this one has {len(msg)}")
        if not isinstance(msg[2], str) or not msg[2]:
            return refusal(version, "not_rpc", readable_id, f"Action must be a string, got {_short(msg[2])}")
        return Call(readable_id, msg[2], msg[3])
    if readable_id is None:
        return Ignored("an answer without a readable MessageId")
    if type_id == 3:
        if len(msg) != 3:
            return Ignored(f"a CALLRESULT with {len(msg)} elements instead of 3")
        return Result(readable_id, msg[2])
    if len(msg) != 5 or not isinstance(msg[2], str):
        return Ignored(f"a CALLERROR with {len(msg)} elements instead of 5")
    return Error(readable_id, msg[2], msg[3] if isinstance(msg[3], str) else "", msg[4])


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------ payloads
_validators: dict[tuple[str, str, int], Draft4Validator] = {}


def validator(version: str, action: str, message_type: int = 2) -> Draft4Validator:
    """The official schema of ``action`` (2: request, 3: response) with
    date-time formats checked (the library does not check them)."""
    key = (version, action, message_type)
    found = _validators.get(key)
    if found is None:
        schema = get_validator(message_type, action, LIBRARY_VERSION[version]).schema
        try:
            schema = _inline_definitions(schema)
        except RecursionError:
            pass  # a self-referencing schema keeps its $refs
        found = _validators[key] = Draft4Validator(schema, format_checker=_FORMATS)
    return found


def _inline_definitions(schema: dict) -> dict:
    """The schema with every ``#/definitions/X`` reference replaced by X: the
    same checks, without a reference lookup at every node (2.0.1 schemas are
    all references; inlined they validate about twice as fast)."""
    definitions = schema.get("definitions", {})

    def walk(node, depth: int):
        if depth > 60:
            raise RecursionError("schema references nest too deep")
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/definitions/"):
                target = definitions[ref[len("#/definitions/"):]]
                return walk({**target, **{k: v for k, v in node.items() if k != "$ref"}}, depth + 1)
            return {k: walk(v, depth + 1) for k, v in node.items() if k != "definitions"}
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        return node
    return walk(schema, 0)


def path_of(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "payload"


def schema_fault(error) -> str:
    return SCHEMA_FAULTS.get(error.validator, "value")


Repair = Callable[[Any, Any], "str | None"]  # (payload, schema error) -> what was repaired, or None


@dataclass
class Checked:
    payload: dict
    repairs: list[tuple[str, str]]  # (leniency, what was repaired)


def check_call(version: str, call: Call, repairs: dict[str, Repair] | None = None,
               null_as_empty: bool = False) -> Checked | Refusal:
    """A CALL's action and payload against the version's official schema
    (R-O7). ``repairs``: the station's named leniencies, tried on each schema
    error before it becomes a Refusal."""
    action = call.action
    if action not in KNOWN[version]:
        return refusal(version, "unknown_action", call.message_id,
                       f"Requested Action {_short(action)} is not known by receiver (OCPP {version[4:]})")
    if action not in HANDLED[version]:
        return refusal(version, "unsupported_action", call.message_id,
                       f"Requested Action {action} is recognized but not supported by this central system")
    payload = call.payload
    done: list[tuple[str, str]] = []
    if payload is None and version == "ocpp1.6":
        payload = {}  # OCPP-J 1.6 §4.2.1 allows null for an empty payload
    elif payload is None and null_as_empty:
        payload = {}
        done.append(("null_payload_as_empty", f"{action}: null payload taken as {{}}"))
    if not isinstance(payload, dict):
        return refusal(version, "payload_shape", call.message_id,
                       f"The payload of {action} must be a JSON object, got {_short(payload)}")
    schema = validator(version, action)
    for _round in range(4):
        errors = list(schema.iter_errors(payload))
        if not errors:
            return Checked(payload, done)
        if not repairs:
            break
        fixed = False
        for error in sorted(errors, key=lambda e: len(e.absolute_path), reverse=True):
            for name, repair in repairs.items():
                what = repair(payload, error)
                if what:
                    done.append((name, f"{action}: {what}"))
                    fixed = True
                    break
            if fixed:
                break  # paths may have moved: validate again
        if not fixed:
            break
    error = best_match(errors)
    fault = schema_fault(error)
    message = error.message if len(error.message) <= 120 else error.message[:117] + "..."
    return refusal(version, fault, call.message_id, f"{action} {path_of(error)}: {message}",
                   {"path": path_of(error), "keyword": str(error.validator)})


def check_answer(version: str, action: str, payload: dict) -> str | None:
    """Our own answer against the response schema: a failure is our bug
    (answered InternalError, never blamed on the station)."""
    errors = list(validator(version, action, 3).iter_errors(payload))
    if not errors:
        return None
    error = best_match(errors)
    return f"{action} answer {path_of(error)}: {error.message[:120]}"


def result_frame(message_id: str, payload: dict) -> str:
    return json.dumps([3, message_id, payload], separators=(",", ":"), ensure_ascii=False)
