"""JSON Schemas of every MQTT message kind (Draft 2020-12), loaded by name.

``validator("tariffs")`` checks a sync/tariffs payload; ``event_data_validator
("session.started")`` checks the ``data`` of that event. See README.md here for
the compatibility rules the schemas follow.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

from units import parse_rfc3339

SCHEMA_DIR = Path(__file__).parent
EVENT_SCHEMA_DIR = SCHEMA_DIR / "events"

# jsonschema only checks "date-time" when an optional package is installed;
# the contract depends on it (expiry, effective_from), so we check it ourselves.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
FORMATS = FormatChecker()


# OverflowError: an offset that pushes year 1 or 9999 off the calendar in UTC.
@FORMATS.checks("date-time", raises=(ValueError, OverflowError))
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    parse_rfc3339(value)
    return True


def schema_names() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.json"))


def event_types() -> list[str]:
    return sorted(p.stem for p in EVENT_SCHEMA_DIR.glob("*.json"))


def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    """Validator for a message kind (file edge/cloud/schemas/<name>.json)."""
    return Draft202012Validator(load_schema(name), format_checker=FORMATS)


@lru_cache(maxsize=None)
def event_data_validator(event_type: str) -> Draft202012Validator | None:
    path = EVENT_SCHEMA_DIR / f"{event_type}.json"
    if not path.exists():
        return None
    return Draft202012Validator(json.loads(path.read_text(encoding="utf-8")), format_checker=FORMATS)
