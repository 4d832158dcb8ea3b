"""Every MQTT message kind has a JSON Schema that is itself valid Draft 2020-12
(docs/cloud-contract.md), and validate_event checks envelopes with their data."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator, ValidationError

from edge.cloud.envelope import validate_event
from edge.cloud.schemas import EVENT_SCHEMA_DIR, SCHEMA_DIR, event_types, schema_names, validator

MESSAGE_KINDS = {"envelope", "status", "reply", "auth_request", "connector_state", "power_state", "telemetry", "tokens",
                 "bookings", "tariffs", "maintenance", "auth_response", "cmd"}
EVENTS = {"connector.status", "session.started", "session.stopped", "device.fault", "device.recovered",
          "device.alarm", "sync.applied", "sync.rejected", "audit.action", "power.limited", "power.fallback",
          "power.restored"}


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.json")) + sorted(EVENT_SCHEMA_DIR.glob("*.json")),
                         ids=lambda p: p.name)
def test_store_schema_is_valid_draft_2020_12(path):
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_store_schema_every_kind_present():
    assert MESSAGE_KINDS <= set(schema_names())
    assert EVENTS <= set(event_types())


def envelope(type_, data, **kw):
    d = {"v": 1, "id": "0b6a7f0e-51a2-4c0f-9d3e-8c1f2a3b4c5d", "hub": "H", "stream": type_.split(".")[0], "seq": 1,
         "ts": "2026-01-01T00:00:00.000Z", "type": type_, "offline": False, "data": data}
    d.update(kw)
    return d


def test_store_validate_event_accepts_good_and_names_the_fault():
    validate_event(envelope("session.started", {
        "session": "s1", "connector": "c1", "bay": "b1", "method": "bank_card", "token": "****1234",
        "meter_start_wh": 0, "started_at": "2026-01-01T00:00:00.000Z"}))
    with pytest.raises(ValidationError, match="has no schema"):
        validate_event(envelope("session.teleported", {}))  # every event type needs its schema
    with pytest.raises(ValidationError, match="meter_stop_wh"):
        validate_event(envelope("session.stopped", {"session": "s", "connector": "c", "bay": "b", "reason": "x",
                                                    "energy_wh": 1, "stopped_at": "2026-01-01T00:00:00Z"}))
    with pytest.raises(ValidationError):
        validate_event(envelope("device.alarm", {"alarm": "a", "message": "m"}, ts="yesterday"))
    with pytest.raises(ValidationError):
        validate_event(envelope("device.alarm", {"alarm": "a", "message": "m"}, seq=0))
    with pytest.raises(ValidationError):
        validate_event(envelope("device.alarm", {"alarm": "a", "message": "m"}, extra=1))


def test_store_schema_inbound_tolerates_unknown_keys():
    """Forward compatibility (edge/cloud/schemas/README.md): the cloud may add keys."""
    msg = {"v": 1, "id": "m", "tariffs": [{"id": "t", "currency": "EUR", "price_per_kwh": "0.399",
                                            "vat_rate": "0.19", "effective_from": "2026-01-01T00:00:00Z",
                                            "future_field": 1}], "also_new": True}
    assert not list(validator("tariffs").iter_errors(msg))
    msg["v"] = 2
    assert list(validator("tariffs").iter_errors(msg))
