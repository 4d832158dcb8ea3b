"""Adapters without sockets (see ocpp_units.py)."""

import pytest
from ocpp_units import make


@pytest.fixture
def a16():
    return make("ocpp1.6")


@pytest.fixture
def a201():
    return make("ocpp2.0.1")
