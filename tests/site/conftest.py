"""The `rig` fixture: a hub core with the site part, never started (no sockets)."""

import pytest
from site_builders import NOW, SiteRig, config

from edge.clock import FakeClock
from edge.config import parse_config


@pytest.fixture
def rig(tmp_path):
    from edge.hub import Hub

    clock = FakeClock(NOW)
    hub = Hub(parse_config(config(tmp_path), tmp_path / "hub.toml"), clock=clock)
    yield SiteRig(hub, clock)
    hub.store.close()
