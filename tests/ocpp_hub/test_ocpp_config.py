"""[ocpp] and OCPP [[chargers]] in the configuration (R-O1): every bad input
refused at load with its key path and what to do."""

import os

import pytest

from edge.core.config import ConfigError, parse_config
from ocpp_hub_rig import ocpp_config


def problems(tmp_path, edit) -> list[str]:
    data = ocpp_config(tmp_path)
    edit(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "hub.toml")
    return info.value.problems


def charger(data) -> dict:
    return data["chargers"][0]


def test_good_ocpp_config_loads(tmp_path):
    cfg = parse_config(ocpp_config(tmp_path), tmp_path / "hub.toml")
    ch = cfg.chargers[0]
    assert (ch.protocol, ch.profile, [c.evse for c in ch.connectors]) == ("ocpp1.6", 1, [1, 2])
    assert cfg.ocpp.max_frame_bytes == 65536 and cfg.ocpp.offline_after_s == 90


@pytest.mark.parametrize("edit, expected", [
    (lambda d: charger(d).update(protocol="ocpp2.1"), "chargers[0].protocol"),
    (lambda d: charger(d).pop("password_file"), "chargers[0].password_file: required for security_profile 1"),
    (lambda d: charger(d).update(security_profile=3), "chargers[0].security_profile"),
    (lambda d: charger(d).update(security_profile=2), "chargers[0].security_profile: 2 needs TLS"),
    (lambda d: charger(d).update(security_profile=0), "security_profile 0 takes no password"),
    (lambda d: charger(d).update(leniencies=["be_nice"]), "chargers[0].leniencies: unknown leniency be_nice"),
    (lambda d: charger(d).update(leniencies=["limits_in_amps"]), "chargers[0].voltage_v: the leniency limits_in_amps"),
    (lambda d: charger(d).update(address="127.0.0.1:502"), "chargers[0].address: not for an OCPP charger"),
    (lambda d: charger(d).update(connectors=[{"id": "C7"}]), "chargers[0].connectors[0].evse: required"),
    (lambda d: charger(d).update(connectors=[{"id": "C7", "evse": 1, "index": 1}]), "connectors[0].index: only for Modbus"),
    (lambda d: charger(d).update(connectors=[{"id": "C7", "evse": 1}, {"id": "C8", "evse": 1}]), "used twice"),
    (lambda d: charger(d).update(connectors=[{"id": "C7", "evse": 1, "connector": 2}]), "OCPP 1.6 has one connector"),
    (lambda d: charger(d).update(id="S" * 50), "chargers[0].id: an OCPP station identity has at most 48"),
    (lambda d: charger(d).update(voltage_v=0), "chargers[0].voltage_v"),
    (lambda d: d["ocpp"].update(listen="localhost"), "ocpp.listen: expected host:port"),
    (lambda d: d["ocpp"].update(max_frame_bytes=100), "ocpp.max_frame_bytes"),
    (lambda d: d["ocpp"].update(offline_after_s=20), "ocpp.offline_after_s: 20 s is not longer than heartbeat"),
    (lambda d: d["ocpp"].update(tls_cert="hub.pem"), "ocpp.tls_cert: TLS needs both"),
    (lambda d: d["ocpp"].update(tls_cert="nope.pem", tls_key="nope.key"), "ocpp.tls_cert: file 'nope.pem' not found"),
    (lambda d: d["ocpp"].update(heartbeat="30"), "ocpp.heartbeat: unknown key"),
])
def test_r_o1_bad_ocpp_config_refused_with_its_key(tmp_path, edit, expected):
    found = problems(tmp_path, edit)
    assert any(expected in p for p in found), found


def test_r_o1_password_file_checked_like_the_command_key(tmp_path):
    key = tmp_path / "cs1.key"
    data = ocpp_config(tmp_path)
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "hub.toml")
    [p] = info.value.problems
    assert p.startswith("chargers[0].password_file:") and "chmod 600" in p and "s3cret" not in p
    os.chmod(key, 0o600)
    key.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_config(data, tmp_path / "hub.toml")
    key.unlink()
    with pytest.raises(ConfigError, match="cannot read it"):
        parse_config(data, tmp_path / "hub.toml")


def test_modbus_chargers_still_need_address_map_and_index(tmp_path):
    data = ocpp_config(tmp_path)
    data["chargers"].append({"id": "M1", "connectors": [{"id": "M1C1", "evse": 1}]})
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "hub.toml")
    found = "\n".join(info.value.problems)
    assert "chargers[1].address: required" in found and "chargers[1].register_map: required" in found
    assert "chargers[1].connectors[0].index: required" in found and "evse: only for OCPP" in found
