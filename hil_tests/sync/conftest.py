"""Fixtures for the cloud-sync HIL tests: a private mosquitto per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # so that hil_tests.broker imports as a namespace package
    sys.path.insert(0, str(_ROOT))

from hil_tests.broker import Broker, PKI, cloud_clients, make_pki  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    """A running mosquitto on a free port of 127.0.0.1 (plain listener)."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    """A test CA, a server certificate for 127.0.0.1 and client certificates on demand."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def cloud_client():
    """Factory: cloud_client(url, **kw) -> started CloudClient, stopped at teardown."""
    with cloud_clients() as make:
        yield make
