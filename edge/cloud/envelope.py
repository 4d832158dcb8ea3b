"""The MQTT envelope every hub event travels in (docs/cloud-contract.md, "Envelope fields").

An event's type names its stream: the part before the first dot
("session.started" -> session). The bare type "alarm" is a device alarm and
travels as ``device.alarm`` on the device stream.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from units import rfc3339

STREAMS = ("session", "payment", "gate", "booking", "connector", "auth", "device", "audit", "sync", "power")
# Meter samples share the outbox but not the event topics: they go to
# hub/{id}/telemetry/meter and are the only stream the quota may shed (R-M6).
TELEMETRY_STREAM = "telemetry"
# Answers to cloud commands and syncs (hub/{id}/reply) are queued durably too,
# so a reply outlives a dropped link; they carry no envelope and no seq.
REPLY_STREAM = "reply"
OUTBOX_STREAMS = STREAMS + (TELEMETRY_STREAM, REPLY_STREAM)
DROPPABLE_STREAMS = frozenset({TELEMETRY_STREAM})
ENVELOPE_VERSION = 1


def event_type_and_stream(type_: str, stream: str | None = None) -> tuple[str, str]:
    """Normalise an event type and find its stream.

    Raises ValueError for a type whose prefix is not a known stream, or when an
    explicit stream disagrees with the type's prefix, so a typo in the hub's
    code fails in tests instead of inventing a topic the cloud never reads.
    """
    if type_ == "alarm":
        type_ = "device.alarm"
    prefix = type_.split(".", 1)[0]
    if stream is None:
        stream = prefix
    if stream not in OUTBOX_STREAMS:
        raise ValueError(
            f"event type {type_!r} maps to unknown stream {stream!r}: "
            f"use a type starting with one of {', '.join(STREAMS)}"
        )
    if stream in STREAMS and prefix != stream:
        raise ValueError(f"event type {type_!r} does not belong to stream {stream!r}: drop the stream argument")
    return type_, stream


def topic_for(hub_id: str, stream: str) -> str:
    if stream == TELEMETRY_STREAM:
        return f"hub/{hub_id}/telemetry/meter"
    if stream == REPLY_STREAM:
        return f"hub/{hub_id}/reply"
    return f"hub/{hub_id}/event/{stream}"


@dataclass
class Envelope:
    id: str
    hub: str
    stream: str
    seq: int
    ts: str
    type: str
    offline: bool
    data: dict[str, Any] = field(default_factory=dict)
    v: int = ENVELOPE_VERSION

    @classmethod
    def new(cls, hub: str, stream: str, seq: int, ts: datetime, type_: str, offline: bool, data: dict) -> "Envelope":
        return cls(id=str(uuid.uuid4()), hub=hub, stream=stream, seq=seq, ts=rfc3339(ts), type=type_,
                   offline=bool(offline), data=data)

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "id": self.id, "hub": self.hub, "stream": self.stream, "seq": self.seq,
                "ts": self.ts, "type": self.type, "offline": self.offline, "data": self.data}

    def to_json(self) -> str:
        # Compact and key-ordered as the contract lists them: the bytes stored
        # in the outbox are the bytes resent, so a resend is identical.
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Envelope":
        return cls(id=d["id"], hub=d["hub"], stream=d["stream"], seq=d["seq"], ts=d["ts"], type=d["type"],
                   offline=d["offline"], data=d.get("data", {}), v=d.get("v", ENVELOPE_VERSION))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Envelope":
        return cls.from_dict(json.loads(text))


def validate_event(envelope: dict[str, Any]) -> None:
    """Check an envelope (as a dict) against the envelope schema and its
    type's data schema under edge/cloud/schemas/events/ (which must exist).

    Raises jsonschema.ValidationError naming the field at fault."""
    from edge.cloud.schemas import validator, event_data_validator

    validator("envelope").validate(envelope)
    data_validator = event_data_validator(envelope["type"])
    if data_validator is None:
        # Every event type the hub sends is part of the contract: one
        # without a schema is a hole in it.
        from jsonschema import ValidationError

        raise ValidationError(f"event type {envelope['type']!r} has no schema: add edge/cloud/schemas/events/{envelope['type']}.json")
    data_validator.validate(envelope["data"])
