"""Named leniencies: how a known deviation of a real station is tolerated.

Each charger's config lists the ones it needs (default none). A leniency
repairs exactly one kind of fault; every repair is logged once per
connection with what was repaired (never silent), and a frame a leniency
cannot repair is refused as the specification says. docs/ocpp.md lists them
with the stations known to need them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from drivers.ocpp.rpc import Repair, rfc3339

LENIENCIES: dict[str, str] = {
    "assume_subprotocol": "a station that offers no websocket subprotocol is taken to speak its configured version",
    "hex_basic_password": "1.6: a Basic password sent as hex digits is also checked in its decoded form",
    "ignore_empty_frames": "empty text frames are dropped instead of answered as malformed",
    "null_payload_as_empty": "2.0.1: a null payload is taken as {} (1.6 allows null anyway)",
    "accept_overlong_strings": "a string longer than the schema allows is cut to the allowed length",
    "unknown_enum_as_other": "a value outside an enumeration becomes Other/OtherError where the field has one; "
                             "a sampled value with an unknown measurand, unit, phase, location or context is dropped",
    "numeric_sampled_values": "1.6: a sampled value sent as a JSON number is taken as its text",
    "lenient_timestamps": "a timestamp without a UTC offset is taken as UTC; one that cannot be read is replaced "
                          "by the time the frame was received",
    "stack_level_zero": "charging profiles are sent with stackLevel 0 (stations that accept no other)",
    "profile_kind_relative": "charging profiles are Relative, without a startSchedule (stations whose clock drifts)",
    "limits_in_amps": "charging limits are sent in A, from the charger's voltage_v and phases, never in W",
}

# Leniencies that repair a payload's schema errors, and how.
_SCHEMA = ("accept_overlong_strings", "unknown_enum_as_other", "numeric_sampled_values", "lenient_timestamps")


def check_names(names) -> frozenset[str]:
    unknown = sorted(set(names) - set(LENIENCIES))
    if unknown:
        raise ValueError(f"unknown leniency {', '.join(unknown)}; known: {', '.join(LENIENCIES)}")
    return frozenset(names)


def _parent(payload: Any, path) -> tuple[Any, Any] | None:
    path = list(path)
    if not path:
        return None
    node = payload
    for p in path[:-1]:
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            return None
    return node, path[-1]


def _overlong(payload, error) -> str | None:
    if error.validator != "maxLength" or not isinstance(error.instance, str):
        return None
    found = _parent(payload, error.absolute_path)
    if found is None:
        return None
    parent, key = found
    limit = error.validator_value
    parent[key] = error.instance[:limit]
    return f"{'.'.join(map(str, error.absolute_path))} cut from {len(error.instance)} to {limit} characters"


def _sample_container(payload, path) -> tuple[list, int] | None:
    """The sampledValue list and index holding ``path``, if it is inside one."""
    path = list(path)
    for i in range(len(path) - 1, 0, -1):
        if path[i - 1] == "sampledValue" and isinstance(path[i], int):
            found = _parent(payload, path[: i + 1])
            if found and isinstance(found[0], list):
                return found[0], path[i]
    return None


def _enum_other(payload, error) -> str | None:
    if error.validator != "enum":
        return None
    where = ".".join(map(str, error.absolute_path))
    for other in ("OtherError", "Other"):
        if other in error.validator_value:
            found = _parent(payload, error.absolute_path)
            if found is None:
                return None
            found[0][found[1]] = other
            return f"{where} {str(error.instance)[:40]!r} taken as {other}"
    sample = _sample_container(payload, error.absolute_path)
    if sample is not None:
        samples, index = sample
        if len(samples) > 1:
            del samples[index]
            return f"{where} {str(error.instance)[:40]!r} unknown: that sampled value dropped"
    return None


def _numeric_sample(payload, error) -> str | None:
    if error.validator != "type" or not error.absolute_path or error.absolute_path[-1] != "value":
        return None
    if type(error.instance) not in (int, float) or _sample_container(payload, error.absolute_path) is None:
        return None
    found = _parent(payload, error.absolute_path)
    found[0][found[1]] = str(error.instance)
    return f"{'.'.join(map(str, error.absolute_path))} number {error.instance!r} taken as text"


def _timestamps(now: Callable[[], datetime]) -> Repair:
    def repair(payload, error) -> str | None:
        if error.validator != "format" or error.validator_value != "date-time" or not isinstance(error.instance, str):
            return None
        found = _parent(payload, error.absolute_path)
        if found is None:
            return None
        where = ".".join(map(str, error.absolute_path))
        text = error.instance
        try:
            naive = datetime.fromisoformat(text)
        except ValueError:
            naive = None
        if naive is not None and naive.tzinfo is None:
            found[0][found[1]] = naive.isoformat() + "Z"
            return f"{where} {text[:40]!r} has no UTC offset: taken as UTC"
        found[0][found[1]] = rfc3339(now())
        return f"{where} {text[:40]!r} is not a date-time: replaced by the time received"
    return repair


def repairs_for(names: frozenset[str], now: Callable[[], datetime]) -> dict[str, Repair]:
    """The schema repairs a station's leniencies allow, in a fixed order."""
    table: dict[str, Repair] = {
        "accept_overlong_strings": _overlong,
        "unknown_enum_as_other": _enum_other,
        "numeric_sampled_values": _numeric_sample,
        "lenient_timestamps": _timestamps(now),
    }
    return {name: table[name] for name in _SCHEMA if name in names}
