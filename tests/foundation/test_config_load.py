"""Configuration: examples validate; broken files are refused with every
problem and its key path (Foundation item 2)."""

from pathlib import Path

import pytest

from edge.core.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"


@pytest.mark.parametrize("name", ["hub-small.toml", "hub-large.toml"])
def test_every_example_validates(name):
    cfg = load_config(CONFIG / name)
    assert cfg.hub.id
    assert all(cfg.bay_for_connector(cid) for cid in cfg.connector_ids())


def test_the_large_example_has_40_connectors_mcs_and_ccs_on_both_sides():
    cfg = load_config(CONFIG / "hub-large.toml")
    assert len(cfg.connector_ids()) == 40
    kinds = {(b.connector_type, b.side) for b in cfg.bays}
    assert kinds == {("MCS", "left"), ("MCS", "right"), ("CCS", "left"), ("CCS", "right")}


def test_the_small_example_has_four_bays():
    assert len(load_config(CONFIG / "hub-small.toml").bays) == 4


def base(tmp_path) -> dict:
    return {
        "hub": {"id": "H1", "country": "NL", "vat_rate": "0.21"},
        "chargers": [
            {"id": "CH1", "address": "127.0.0.1:502", "register_map": str(CONFIG / "register-maps" / "hubcharge-mcs1200.toml"),
             "connectors": [{"id": "C1", "index": 1}]},
        ],
        "bays": [{"id": "B1", "connector": "C1", "connector_type": "MCS", "side": "left"}],
    }


def problems(data, tmp_path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, tmp_path / "hub.toml")
    return exc.value.problems


def test_a_minimal_hub_loads_with_defaults(tmp_path):
    cfg = parse_config(base(tmp_path), tmp_path / "hub.toml")
    assert str(cfg.hub.preauth_amount) == "199.00"
    assert str(cfg.hub.price_per_kwh) == "0.399"
    assert cfg.chargers[0].connectors[0].free_vend is False  # off by default


def test_unknown_keys_are_errors_with_their_path(tmp_path):
    data = base(tmp_path)
    data["hub"]["vat"] = "0.21"
    data["bays"][0]["lenght_m"] = 20
    found = problems(data, tmp_path)
    assert any(p.startswith("hub.vat: unknown key") for p in found)
    assert any(p.startswith("bays[0].lenght_m: unknown key") for p in found)


def test_every_problem_is_listed_at_once(tmp_path):
    data = base(tmp_path)
    del data["hub"]["country"]
    data["hub"]["timezone"] = "Mars/Olympus"
    data["chargers"][0]["address"] = "not an address"
    data["bays"][0]["connector_type"] = "CHAdeMO"
    data["cloud"] = {"broker": "http://x"}
    found = problems(data, tmp_path)
    paths = {p.split(":")[0] for p in found}
    assert {"hub.country", "hub.timezone", "chargers[0].address", "bays[0].connector_type", "cloud.broker"} <= paths
    assert any("host:port" in p for p in found)
    assert any("Europe/Amsterdam" in p for p in found)


def test_cross_references_are_checked(tmp_path):
    data = base(tmp_path)
    data["bays"].append({"id": "B1", "connector": "C9", "connector_type": "CCS", "side": "right"})
    data["terminals"] = [{"id": "T1", "port": "/dev/ttyUSB0", "connectors": ["C7"]}]
    data["readers"] = [{"id": "R1", "path": "/dev/nfc", "connector": "C1"}]
    data["chargers"][0]["register_map"] = "missing.toml"
    found = problems(data, tmp_path)
    assert any(p.startswith("bays[1].id: duplicate bay id") for p in found)
    assert any(p.startswith("bays[1].connector: no connector 'C9'") for p in found)
    assert any(p.startswith("terminals[0].connectors[0]: no connector 'C7'") for p in found)
    assert any(p.startswith("readers[0].path:") and "nfcpy path" in p for p in found)
    assert any(p.startswith("chargers[0].register_map: file") for p in found)


def test_mqtts_needs_the_tls_files(tmp_path):
    data = base(tmp_path)
    data["cloud"] = {"broker": "mqtts://broker:8883"}
    found = problems(data, tmp_path)
    assert {"cloud.ca_file", "cloud.cert_file", "cloud.key_file"} <= {p.split(":")[0] for p in found}


def test_bad_toml_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[hub\nid = 1")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert "not valid TOML" in exc.value.problems[0]
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "absent.toml")
    assert "cannot read the file" in exc.value.problems[0]
    assert "hubctl config validate" in str(exc.value)


def test_connector_index_beyond_the_model_is_refused(tmp_path):
    data = base(tmp_path)
    data["chargers"][0]["connectors"] = [{"id": "C1", "index": 9}]
    found = problems(data, tmp_path)
    assert any("beyond the 4 connectors" in p for p in found)
