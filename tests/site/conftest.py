"""The `rig` fixture: a hub core with the site part, never started (no sockets)."""

import pytest
from site_builders import NOW, SiteRig, config

from units import FakeClock
from edge.core.config import parse_config


@pytest.fixture
def rig(tmp_path):
    from edge.core.hub import Hub

    clock = FakeClock(NOW)
    hub = Hub(parse_config(config(tmp_path), tmp_path / "hub.toml"), clock=clock)
    yield SiteRig(hub, clock)
    hub.store.close()
