"""Encoding values into Modbus registers and back: word orders, float32, scale."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.register_map import (
    RegisterSpec,
    decode,
    decode_string,
    encode,
    encode_string,
    raw_to_registers,
    registers_to_raw,
)


def spec(type_, order="big", scale="1"):
    return RegisterSpec("x", 0, type_, "input", order, Decimal(scale))


@pytest.mark.parametrize(
    "type_, value, big, little",
    [
        ("uint32", 0x12345678, [0x1234, 0x5678], [0x5678, 0x1234]),
        ("int32", -2, [0xFFFF, 0xFFFE], [0xFFFE, 0xFFFF]),
        ("float32", 1.0, [0x3F80, 0x0000], [0x0000, 0x3F80]),
        ("uint16", 513, [513], [513]),
        ("int16", -1, [0xFFFF], [0xFFFF]),
    ],
)
def test_word_orders(type_, value, big, little):
    assert raw_to_registers(value, type_, "big") == big
    assert raw_to_registers(value, type_, "little") == little
    assert registers_to_raw(big, type_, "big") == value
    assert registers_to_raw(little, type_, "little") == value


def test_scale_turns_raw_into_physical_units():
    volts = spec("uint16", scale="0.1")
    assert encode(volts, 800.5) == [8005]
    assert decode(volts, [8005]) == pytest.approx(800.5)
    kwh = spec("float32", "little", "1000")  # energy sent as kWh
    assert decode(kwh, encode(kwh, 123456)) == pytest.approx(123456, abs=0.1)
    steps = spec("uint32", scale="10")  # power limit in 10 W steps
    assert encode(steps, 150000) == [0, 15000]
    assert decode(steps, [0, 15000]) == 150000


def test_values_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        raw_to_registers(70000, "uint16")
    with pytest.raises(ValueError, match="does not fit"):
        encode(spec("uint32"), -1)


def test_float32_not_a_number_decodes_to_nan():
    assert math.isnan(decode(spec("float32"), [0x7FC0, 0x0000]))
    assert math.isnan(decode(spec("float32"), [0x7F80, 0x0000]))  # infinity is no meter value either


def test_strings_pack_two_characters_per_register():
    regs = encode_string("OCMF|{}", 5)
    assert len(regs) == 5 and regs[0] == (ord("O") << 8) | ord("C")
    assert decode_string(regs) == "OCMF|{}"
    assert decode_string(encode_string("x" * 20, 3)) == "xxxxxx"  # truncated to fit


@given(st.integers(0, 2**32 - 1), st.sampled_from(["big", "little"]))
def test_uint32_round_trips(value, order):
    assert registers_to_raw(raw_to_registers(value, "uint32", order), "uint32", order) == value


@given(st.integers(-(2**31), 2**31 - 1), st.sampled_from(["big", "little"]))
def test_int32_round_trips(value, order):
    assert registers_to_raw(raw_to_registers(value, "int32", order), "int32", order) == value
