"""Grid meter maps and register decoding, without sockets: the shipped maps
load, SunSpec scale factors and "not implemented" patterns decode as the
SunSpec encoding says, the vendor map's low-word-first integers decode, the
model chain is walked by each model's length, and a map with a mistake is
refused with every problem named."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from drivers.grid_meter import check_plausible
from drivers.meter_map import (
    MeterValueError,
    decode_readings,
    encode_reading,
    load_meter_map,
    parse_meter_map,
    sunspec_next,
)
from drivers.register_map import RegisterMapError

MAPS = Path(__file__).resolve().parents[2] / "config" / "meter-maps"
SUNSPEC = load_meter_map(MAPS / "sunspec-meter.toml")
EM24 = load_meter_map(MAPS / "carlo-gavazzi-em24-e1.toml")
START = 40070  # base 40000, marker, common model of 66 registers


def sunspec_image(values: dict[str, int], sfs: dict[int, int]) -> dict[int, int]:
    image = {START + i: 0 for i in range(2, 56)}
    for name, raw in values.items():
        reg = SUNSPEC.registers[name]
        words = [raw & 0xFFFF] if reg.width == 1 else [(raw >> 16) & 0xFFFF, raw & 0xFFFF]
        for i, w in enumerate(words):
            image[START + reg.offset + i] = w
    for offset, sf in sfs.items():
        image[START + offset] = sf & 0xFFFF
    return image


def test_shipped_maps_load_and_read_in_one_request():
    main, optional = SUNSPEC.read_plan(START)
    assert (main.kind, main.address, main.count) == ("holding", START + 3, 52) and optional == []
    assert SUNSPEC.sunspec.bases == (40000, 50000, 0) and 203 in SUNSPEC.sunspec.models
    main, optional = EM24.read_plan(0)
    assert (main.kind, main.address, main.count) == ("input", 0, 0x36)
    assert [(n, s.address, s.count) for n, s in optional] == [("energy_export", 0x4E, 2)]


def test_sunspec_values_with_scale_factors():
    image = sunspec_image(
        {"power": 24_567, "power_l1": 8_200, "power_l2": 8_190, "power_l3": 8_177, "current_l1": 3561,
         "voltage_l1": 23_012, "frequency": 5_001, "energy_import": 1_234_567, "energy_export": 0},
        {22: 2, 6: 0, 15: -2, 17: -2, 54: 3},
    )
    v = decode_readings(SUNSPEC, image, START)
    assert v["power"] == pytest.approx(2_456_700) and v["power_l1"] == pytest.approx(820_000)
    assert v["current_l1"] == 3561 and v["voltage_l1"] == pytest.approx(230.12) and v["frequency"] == pytest.approx(50.01)
    assert v["energy_import"] == pytest.approx(1_234_567_000)
    assert v["energy_export"] is None  # acc32 0: "not accumulated", never 0 Wh
    assert v["current_l2"] == 0  # present and zero is zero


def test_sunspec_negative_power_and_not_implemented_patterns():
    image = sunspec_image({"power": -1500, "power_l1": 0x8000, "voltage_l2": 0x8000}, {22: 1, 15: 0x8000})
    v = decode_readings(SUNSPEC, image, START)
    assert v["power"] == pytest.approx(-15_000)  # feeding in
    assert v["power_l1"] is None
    assert v["voltage_l1"] is None and v["voltage_l2"] is None  # their scale factor is not implemented


def test_sunspec_scale_factor_out_of_range_is_no_reading():
    with pytest.raises(MeterValueError, match="scale factor 12 is outside"):
        decode_readings(SUNSPEC, sunspec_image({"power": 100}, {22: 12}), START)


def test_em24_low_word_first_signed_integers():
    image = {a: 0 for a in range(0, 0x36)}
    for name, raw in {"power": 18_000_000, "power_l1": 6_000_123, "power_l2": -42, "energy_import": 987_654}.items():
        reg = EM24.registers[name]
        image[reg.offset], image[reg.offset + 1] = raw & 0xFFFF, (raw >> 16) & 0xFFFF  # low word first
    v = decode_readings(EM24, image, 0)
    assert v["power"] == pytest.approx(1_800_000) and v["power_l1"] == pytest.approx(600_012.3)
    assert v["power_l2"] == pytest.approx(-4.2) and v["energy_import"] == pytest.approx(98_765_400)
    assert "energy_export" not in v  # not read: the meter refused it


@pytest.mark.parametrize("meter_map", [SUNSPEC, EM24], ids=["sunspec", "em24"])
@pytest.mark.parametrize("value", [0.0, 1.0, -12_345.6, 2_345_678.0])
def test_encode_then_decode_round_trips_power(meter_map, value):
    reg = meter_map.registers["power"]
    exponent = 2 if reg.scale_factor is not None else 0
    words = encode_reading(reg, value, exponent)
    image = {meter_map.registers["power"].offset + i: w for i, w in enumerate(words)}
    if reg.scale_factor is not None:
        image[reg.scale_factor] = exponent
    resolution = 100 if reg.scale_factor is not None else 0.1
    assert decode_readings(meter_map, image, 0, ["power"])["power"] == pytest.approx(value, abs=resolution / 2 + 1e-6)


def test_sunspec_chain_is_walked_by_each_models_length():
    chain = SUNSPEC.sunspec
    assert sunspec_next(40002, 1, 66, chain) == ("next", 40070)
    assert sunspec_next(40002, 1, 65, chain) == ("next", 40069)  # older common model tables
    assert sunspec_next(40069, 203, 105, chain) == ("found", 40069)
    assert sunspec_next(40069, 101, 50, chain) == ("next", 40121)  # an inverter model: skipped
    assert sunspec_next(40069, 203, 20, chain) == ("next", 40091)  # too short to be the meter model
    assert sunspec_next(40200, 0xFFFF, 0, chain) == ("end", 0)


def test_plausibility_refuses_phases_that_do_not_add_up_and_power_beyond_range():
    assert check_plausible({"power": 900_000, "power_l1": 300_000, "power_l2": 300_000, "power_l3": 300_500}, None) is None
    assert "disagree" in check_plausible({"power": 900_000, "power_l1": 30, "power_l2": 300_000, "power_l3": 3}, None)
    assert "beyond the meter's range" in check_plausible({"power": 9e9}, 1e7)
    assert "not available" in check_plausible({"power": None}, None)
    assert "no grid's" in check_plausible({"power": 1000, "frequency": 3276.7}, None)
    assert check_plausible({"power": 0, "frequency": 0}, None) is None  # a meter on its own supply in a blackout


@pytest.fixture
def em24_dict():
    with (MAPS / "carlo-gavazzi-em24-e1.toml").open("rb") as f:
        return copy.deepcopy(tomllib.load(f))


def test_a_map_with_mistakes_is_refused_with_every_problem_named(em24_dict):
    em24_dict["sunspec"] = {"models": [203], "length": 105}
    em24_dict["registers"]["power"]["typo"] = 1
    em24_dict["registers"]["energy_import"]["offset"] = 200
    em24_dict["registers"]["power_l1"]["type"] = "int64"
    del em24_dict["registers"]["power"]["type"]
    with pytest.raises(RegisterMapError) as err:
        parse_meter_map(em24_dict, "em24.toml")
    text = str(err.value)
    for expected in ("base: give either base", "registers.power.typo: unknown key", "registers.power.type",
                     "registers.power_l1.type", "fit one request"):
        assert expected in text


def test_power_is_required_and_cannot_be_optional(em24_dict):
    em24_dict["registers"]["power"]["optional"] = True
    with pytest.raises(RegisterMapError, match="cannot be optional"):
        parse_meter_map(em24_dict)
    del em24_dict["registers"]["power"]
    with pytest.raises(RegisterMapError, match="registers.power: missing"):
        parse_meter_map(em24_dict)


def test_a_missing_map_file_says_which_setting_to_check(tmp_path):
    with pytest.raises(RegisterMapError, match="register_map"):
        load_meter_map(tmp_path / "nope.toml")
