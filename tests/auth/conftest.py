"""Fixtures for the card authorisation tests: a token store in memory and a
decision object driven with explicit times."""

from itertools import count

import pytest

from edge.parts.cards.auth import AuthPolicy, Authorisation
from edge.parts.cards.tokens import TokenStore

@pytest.fixture
def store(tmp_path):
    s = TokenStore(str(tmp_path / "tokens.sqlite"))
    s.apply({
        "version": 1, "kind": "full",
        "upsert": [
            {"uid": "04A1B2C3", "status": "Active", "type": "own", "group": "fleet-north", "reference": "truck NB-1"},
            {"uid": "04D4E5F6", "status": "Active", "type": "own", "group": "fleet-north", "reference": "truck NB-2"},
            {"uid": "04000001", "status": "Active", "type": "own", "group": "fleet-south"},
            {"uid": "0BADBAD0", "status": "Blocked", "type": "own"},
            {"uid": "0E0E0E0E", "status": "Expired", "type": "own"},
            {"uid": "0A0A0A0A", "status": "Active", "type": "own", "expires": "2026-03-01T00:00:00Z"},
            {"uid": "04EEEE01", "status": "Active", "type": "emsp", "group": "roam-x"},
            {"uid": "0FFFFFFF", "status": "Active", "type": "own"},
        ],
    })
    yield s
    s.close()


def _make_auth(store, **policy) -> Authorisation:
    ids = count(1)
    return Authorisation(store, AuthPolicy(**policy), new_request_id=lambda: f"req-{next(ids)}")


@pytest.fixture
def make_auth():
    """Build an Authorisation with a given policy; request ids are req-1, req-2 ..."""
    return _make_auth


@pytest.fixture
def auth(store):
    return _make_auth(store)
