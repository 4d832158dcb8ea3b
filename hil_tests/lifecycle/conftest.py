"""Fixtures for the daemon's life as a process: signals, state files, the
demo's children. A private mosquitto per test where a cloud link is needed."""

from __future__ import annotations

import pytest

from hil_tests.broker import Broker, cloud_clients
from simulators.broker import mosquitto_available


@pytest.fixture
def broker(tmp_path):
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed: `apt-get install mosquitto` (./dev test does it as root)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def cloud_client():
    with cloud_clients() as make:
        yield make
