"""Fuzzing the configuration loader (R-T3 "validate a config"): the small
site's file mutated as a document and as bytes. load_config gives a config
with finite numbers and no unknown key, or ConfigError listing every problem
with its key path; never another exception."""

import pytest
from fuzz_settings import CI
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import ConfigRig, _base_config, gen_config, to_toml
from edge.core.config import ConfigError, load_config


@pytest.fixture(scope="module")
def rig():
    r = ConfigRig()
    yield r
    r.close()


@CI(150)
@given(rnd=st.randoms(use_true_random=False))
def test_r_t3_mutated_config_files_load_or_list_their_problems(rig, rnd):
    rig.check(gen_config(rnd))


@CI(100)
@given(raw=st.binary(max_size=300))
def test_r_t3_arbitrary_bytes_as_config_file(rig, raw):
    rig.check(("text", raw))


# ---- what the fuzzer found, fixed in edge/core/config.py


def _write(rig, doc_or_text) -> str:
    text = doc_or_text if isinstance(doc_or_text, str) else to_toml(doc_or_text)
    rig.path.write_text(text, encoding="utf-8")
    return str(rig.path)


def test_r_t3_deeply_nested_toml_is_a_config_error(rig):
    """tomllib raised RecursionError through load_config."""
    with pytest.raises(ConfigError) as err:
        load_config(_write(rig, "a = " + "[" * 3000))
    assert "nested too deeply" in err.value.problems[0]


def test_r_t3_overlong_register_map_path_is_a_problem_not_a_crash(rig):
    """Path.is_file() raised OSError (file name too long) through load_config."""
    doc, _ = _base_config()
    doc["chargers"][0]["register_map"] = "m" * 5000
    with pytest.raises(ConfigError) as err:
        load_config(_write(rig, doc))
    assert any(p.startswith("chargers[0].register_map: file") for p in err.value.problems)


@pytest.mark.parametrize("section,key", [("storage", "outbox_quota_mb"), ("bookings", "no_show_after_min"),
                                         ("auth", "connection_timeout_s"), ("hub", "preauth_amount")])
def test_r_t3_infinite_numbers_are_refused(rig, section, key):
    """TOML's inf passed gt=0 and then broke the daemon at start (int(inf))."""
    doc, _ = _base_config()
    doc.setdefault(section, {})[key] = float("inf")
    with pytest.raises(ConfigError) as err:
        load_config(_write(rig, doc))
    assert any(p.startswith(f"{section}.{key}:") for p in err.value.problems)


def test_r_t3_top_level_source_key_is_unknown(rig):
    """A 'source' key was silently overwritten by the loader's own field."""
    doc, _ = _base_config()
    doc["source"] = "/etc/hubedge/other.toml"
    with pytest.raises(ConfigError) as err:
        load_config(_write(rig, doc))
    assert err.value.problems == ["source: unknown key (check its spelling against config/README.md)"]
