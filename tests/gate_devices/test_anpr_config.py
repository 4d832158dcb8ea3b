"""A gate's camera settings: the body limit (`max_body_bytes`) a real camera's pictures need."""

from __future__ import annotations

import pytest

from drivers.anpr import DEFAULT_MAX_BODY
from edge.core.config import ConfigError, parse_config


def config(camera_extra: str = "") -> dict:
    import tomllib

    return tomllib.loads(f"""
[hub]
id = "CAM-CFG"
country = "NL"
vat_rate = "0.21"
[[gates]]
id = "G-IN"
role = "entry"
barrier = {{ address = "127.0.0.1:502" }}
camera = {{ listen = "127.0.0.1:8081", vendor = "hikvision", secret = "s"{camera_extra} }}
""")


def test_default_body_limit_takes_a_read_with_a_4k_scene_picture():
    camera = parse_config(config()).gates[0].camera
    assert camera.max_body_bytes == DEFAULT_MAX_BODY >= 4 * 1024 * 1024


def test_body_limit_is_set_per_gate():
    assert parse_config(config(", max_body_bytes = 16_777_216")).gates[0].camera.max_body_bytes == 16 * 1024 * 1024


@pytest.mark.parametrize("value", ["1000", "100_000_000", "\"8M\""])
def test_body_limit_out_of_range_is_refused_with_its_key(value):
    with pytest.raises(ConfigError) as refused:
        parse_config(config(f", max_body_bytes = {value}"))
    assert any(p.startswith("gates[0].camera.max_body_bytes") for p in refused.value.problems), refused.value.problems
