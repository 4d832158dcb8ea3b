"""Register map files: good ones load, bad ones are refused with every problem
listed by key path (config/README.md: a bad file fails with every problem)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from drivers.register_map import (
    HardwareStatus,
    LockState,
    ReadSpan,
    RegisterMapError,
    load_register_map,
    parse_register_map,
)


def test_shipped_maps_load_with_different_layouts(map_paths):
    assert {"hubcharge-mcs1200", "voltflow-ccs400"} <= set(map_paths)
    hub = load_register_map(map_paths["hubcharge-mcs1200"])
    volt = load_register_map(map_paths["voltflow-ccs400"])
    assert hub.model == "HubCharge MCS1200" and volt.model == "VoltFlow CCS400"
    assert hub.registers["energy"].type == "uint32" and hub.registers["energy"].word_order == "big"
    assert volt.registers["energy"].type == "float32" and volt.registers["energy"].word_order == "little"
    assert volt.registers["energy"].scale == Decimal(1000)
    assert hub.registers["voltage"].scale == Decimal("0.1")  # exact, not a binary float
    assert "ocmf" in hub.registers and "ocmf" not in volt.registers


def test_connector_blocks_use_base_plus_stride(map_paths):
    hub = load_register_map(map_paths["hubcharge-mcs1200"])
    status = hub.registers["status"]
    assert [hub.address(status, i) for i in range(4)] == [1000, 1256, 1512, 1768]
    assert hub.address(hub.commands["start"], 2) == 1000 + 2 * 256 + 240
    with pytest.raises(ValueError, match="outside 0..3"):
        hub.address(status, 4)


def test_status_codes_normalise_to_hardware_statuses(map_paths):
    """The small status set the connector state machine maps to R-C1 states."""
    hub = load_register_map(map_paths["hubcharge-mcs1200"])
    volt = load_register_map(map_paths["voltflow-ccs400"])
    assert hub.status_of(2) is HardwareStatus.CHARGING
    assert hub.status_of(6) is HardwareStatus.PLUGGED
    assert volt.status_of(3) is HardwareStatus.CHARGING
    assert volt.status_of(11) is HardwareStatus.FAULT
    assert hub.status_of(999) is None
    assert hub.status_code(HardwareStatus.PLUGGED) == 1  # first listed code wins
    assert volt.lock_code(LockState.LOCKED) == 1


def test_bad_map_lists_every_problem_with_key_paths(good_map_dict):
    data = good_map_dict
    data["model"] = ""
    data["word_order"] = "middle"
    data["connectors"]["stride"] = 0
    data["registers"]["energy"]["type"] = "uint64"
    data["registers"]["power"]["kind"] = "coil"
    data["registers"]["soc"]["scale"] = -1
    data["registers"]["status"]["codes"] = {"0": "unplugged", "x": "plugged", "2": "exploded"}
    del data["registers"]["lock"]
    data["registers"]["temperature"] = {"offset": 11, "type": "uint16", "kind": "input"}
    data["commands"]["start"]["value"] = "go"
    data["commands"]["unlock"]["kind"] = "input"
    del data["commands"]["stop"]
    data["colour"] = "blue"

    with pytest.raises(RegisterMapError) as err:
        parse_register_map(data, source="broken.toml")
    paths = [p.split(":")[0] for p in err.value.problems]
    for expected in [
        "model",
        "word_order",
        "connectors.stride",
        "registers.energy.type",
        "registers.power.kind",
        "registers.soc.scale",
        "registers.status.codes.x",
        "registers.status.codes.2",
        "registers.status.codes",  # plugged/charging/fault missing
        "registers.lock",
        "registers.temperature",
        "commands.start.value",
        "commands.unlock.kind",
        "commands.stop",
        "colour",
    ]:
        assert expected in paths, f"{expected} not reported in {err.value.problems}"
    assert "broken.toml" in str(err.value) and "fix them" in str(err.value)


def test_overlapping_and_out_of_block_registers_are_refused(good_map_dict):
    data = good_map_dict
    data["registers"]["power"]["offset"] = 5  # energy is 4..5
    data["registers"]["ocmf"]["offset"] = 100  # 100 + 200 > stride 256
    data["commands"]["power_limit"]["offset"] = 255  # uint32 needs 2 registers
    with pytest.raises(RegisterMapError) as err:
        parse_register_map(data)
    text = "\n".join(err.value.problems)
    assert "registers.power.offset: overlaps registers.energy" in text
    assert "registers.ocmf.offset: register ends at 300" in text
    assert "commands.power_limit.offset: register ends at 257" in text


def test_unlock_needs_both_lock_states(good_map_dict):
    """R-C5: an unlock is confirmed from the lock state, so the map must say both."""
    good_map_dict["registers"]["lock"]["codes"] = {"1": "locked"}
    with pytest.raises(RegisterMapError) as err:
        parse_register_map(good_map_dict)
    assert any(p.startswith("registers.lock.codes") and "unlocked" in p for p in err.value.problems)


def test_missing_and_malformed_files_are_reported(tmp_path):
    with pytest.raises(RegisterMapError, match="file not found"):
        load_register_map(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(RegisterMapError, match="not valid TOML"):
        load_register_map(bad)


def test_read_plan_merges_near_registers_and_splits_long_strings(map_paths):
    hub = load_register_map(map_paths["hubcharge-mcs1200"])
    plan = hub.read_plan(1)
    assert ReadSpan("input", 1256, 10) in plan  # status..current in one request
    ocmf = [s for s in plan if s.kind == "input" and s.address >= 1256 + 32]
    assert [s.count for s in ocmf] == [125, 75]  # 200 registers over the 125 limit
    assert all(s.count <= 125 for s in plan)
    volt = load_register_map(map_paths["voltflow-ccs400"])
    assert volt.read_plan(0) == [ReadSpan("holding", 100, 22)]
