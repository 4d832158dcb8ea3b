"""The [power] section: every bad value is refused at load with its key and
what to write instead (R-E1, R-E4)."""

from __future__ import annotations

import pytest

from edge.core.config import ConfigError, parse_config
from edge.parts.power.settings import rated_kw
from tests.power.part_rig import METER_MAP, config

METER = f'meter = {{ address = "127.0.0.1:1502", register_map = "{METER_MAP}" }}'


def power(body: str, meter: str = METER) -> str:
    return f"[power]\n{body}\n{meter}\n"


GOOD = "grid_limit_kw = 1000\nmargin_kw = 50\nfallback_kw = 400"


def load(tmp_path, section: str):
    return parse_config(config(tmp_path, section), tmp_path / "hub.toml")


def test_a_good_section_loads_with_its_defaults(tmp_path):
    cfg = load(tmp_path, power(GOOD))
    p = cfg.power
    assert (p.grid_limit_kw, p.margin_kw, p.fallback_kw, p.stale_after_s, p.meter.unit) == (1000, 50, 400, 3.0, 1)
    assert p.fail_safe_per_connector_kw(3) == pytest.approx(400 / 3)
    assert rated_kw(cfg, "CH1") == 1200 and rated_kw(cfg, "CH2") == 400  # from the register maps


def test_no_section_means_no_limits(tmp_path):
    assert load(tmp_path, "").power is None


BAD = [
    ("grid_limit_kw = 0\nfallback_kw = 0", "power.grid_limit_kw", "greater than 0"),
    ("grid_limit_kw = -5\nfallback_kw = 0", "power.grid_limit_kw", "greater than 0"),
    ("grid_limit_kw = nan\nfallback_kw = 0", "power.grid_limit_kw", "finite"),
    ('grid_limit_kw = "lots"\nfallback_kw = 0', "power.grid_limit_kw", "valid number"),
    ("grid_limit_kw = 1000\nmargin_kw = -1\nfallback_kw = 400", "power.margin_kw", "greater than or equal to 0"),
    ("grid_limit_kw = 1000\nmargin_kw = 1000\nfallback_kw = 0", "power", "leaves nothing of grid_limit_kw"),
    ("grid_limit_kw = 1000\nmargin_kw = 50\nfallback_kw = 960", "power", "fallback_kw 960 is above"),
    ("grid_limit_kw = 1000", "power.fallback_kw", "required key is missing"),
    (GOOD + "\nstale_after_s = 0", "power.stale_after_s", "greater than 0"),
    (GOOD + "\nstale_after_s = 120", "power.stale_after_s", "less than or equal to 60"),
    (GOOD + "\nconfirm_within_s = 0", "power.confirm_within_s", "greater than 0"),
    (GOOD + "\nfrozen_after_s = -1", "power.frozen_after_s", "greater than 0"),
    (GOOD + "\ninterval_s = 0.01", "power.interval_s", "greater than or equal to 0.1"),
    (GOOD + "\nmin_kw = -1", "power.min_kw", "greater than or equal to 0"),
    (GOOD + "\nbuffer_kw = -1", "power.buffer_kw", "greater than or equal to 0"),
    (GOOD + "\nunbooked_stay_min = 0", "power.unbooked_stay_min", "greater than 0"),
    (GOOD + "\nbooked_first = 3", "power.booked_first", "valid boolean"),
    (GOOD + "\ngrid_limt_kw = 5", "power.grid_limt_kw", "unknown key"),
    (GOOD + "\nfail_safe_kw = 200", "power.fail_safe_kw", "above fallback_kw 400"),
    (GOOD + "\nmin_kw = 500", "power.chargers.CH2.min_kw", "above the charger's rated 400 kW"),
    (GOOD + "\n[power.chargers.CH9]\nrated_kw = 100", "power.chargers.CH9", "no charger 'CH9'"),
    (GOOD + "\n[power.chargers.CH1]\nrated_kw = 0", "power.chargers.CH1.rated_kw", "greater than 0"),
    (GOOD + '\n[power.chargers.CH1]\nlimit_unit = "A"', "power.chargers.CH1.limit_unit", "unknown key"),
]


@pytest.mark.parametrize("body, key, words", BAD, ids=[f"{b[1]}:{b[2][:24]}" for b in BAD])
def test_a_bad_value_is_refused_with_its_key(tmp_path, body, key, words):
    # The section's own TOML keys must come before any sub-table.
    head, _, tables = body.partition("\n[")
    section = power(head) + (("[" + tables) if tables else "")
    with pytest.raises(ConfigError) as err:
        load(tmp_path, section)
    problems = err.value.problems
    assert any(p.startswith(key + ":") and words in p for p in problems), problems


@pytest.mark.parametrize("meter, key, words", [
    ('meter = { address = "meter:99999", register_map = "x.toml" }', "power.meter", "out of range"),
    ('meter = { address = "no-port", register_map = "x.toml" }', "power.meter.address", "host:port"),
    (f'meter = {{ address = "127.0.0.1:502", unit = 300, register_map = "{METER_MAP}" }}', "power.meter.unit", "less than or equal to 247"),
    ('meter = { address = "127.0.0.1:502", register_map = "nowhere.toml" }', "power.meter.register_map", "not found"),
    (f'meter = {{ address = "127.0.0.1:502", register_map = "{METER_MAP}", max_kw = 0 }}', "power.meter.max_kw", "greater than 0"),
    ("", "power.meter", "required key is missing"),
])
def test_a_bad_meter_is_refused_with_its_key(tmp_path, meter, key, words):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, power(GOOD, meter))
    assert any(p.startswith(key + ":") and words in p for p in err.value.problems), err.value.problems


def test_a_meter_map_with_problems_is_refused_with_them(tmp_path):
    bad = tmp_path / "bad-meter.toml"
    bad.write_text('model = "x"\nkind = "coils"\nbase = 0\n')
    with pytest.raises(ConfigError) as err:
        load(tmp_path, power(GOOD, f'meter = {{ address = "127.0.0.1:502", register_map = "{bad}" }}'))
    assert any(p.startswith("power.meter.register_map (") for p in err.value.problems), err.value.problems
