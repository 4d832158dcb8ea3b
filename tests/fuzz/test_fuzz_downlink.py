"""Fuzzing the cloud-to-hub messages (R-M3): every kind of downlink payload,
well-formed and mutated, into a real hub core with a real store in a
temporary directory. A refused message changes nothing (documents, handled
ids, token list, bookings, connectors) and is answered with its id."""

import json

import pytest
from fuzz_settings import CI
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import DOWNLINK_KINDS, DownlinkRig, downlink_message, gen_downlink, topic_of


@pytest.fixture(scope="module")
def rig():
    r = DownlinkRig()
    yield r
    r.close()


@CI(300)
@given(rnd=st.randoms(use_true_random=False))
def test_r_m3_mutated_downlink_messages_change_nothing_when_refused(rig, rnd):
    """tokens, bookings, tariffs, maintenance, auth responses and every
    command, mutated as JSON (types, missing and extra keys, odd times and
    numbers) and as bytes: refusals change nothing and carry the id."""
    rig.check(gen_downlink(rnd))


@CI(100)
@given(kind=st.sampled_from(DOWNLINK_KINDS), payload=st.binary(max_size=200))
def test_r_m3_arbitrary_bytes_on_every_downlink_topic(rig, kind, payload):
    rig.check((topic_of("FUZZ-HUB", kind), payload))


@CI(100)
@given(kind=st.sampled_from(["tariffs", "maintenance", "tokens", "bookings", "cmd:resync"]),
       doc=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4), max_leaves=20))
def test_r_m3_arbitrary_json_documents(rig, kind, doc):
    rig.check((topic_of("FUZZ-HUB", kind), json.dumps(doc).encode()))


# ---- what the fuzzer found, fixed in edge/cloud/downlink.py and edge/cloud/schemas/__init__.py


def test_r_m3_deeply_nested_payload_is_refused_not_raised(rig):
    """json.loads raised RecursionError out of Downlink.handle (found by the
    fuzzer): now an invalid_json refusal."""
    answer = rig.check(("hub/FUZZ-HUB/sync/tariffs", b"[" * 100_000))
    assert answer == "refused"
    assert rig.replies[0]["code"] == "invalid_json"


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_r_m3_time_off_the_calendar_is_a_schema_refusal(rig, when):
    """A valid-looking RFC 3339 time whose UTC form leaves year 1..9999 made
    the date-time format check raise OverflowError out of handle() (found by
    the fuzzer): now refused by the schema with the field named."""
    import random
    msg = downlink_message(random.Random(1), "tariffs")
    msg["tariffs"] = [{"id": "TF9", "currency": "EUR", "price_per_kwh": "0.4", "vat_rate": "0.21",
                       "effective_from": when}]
    msg["id"] = f"far-{when[:4]}"
    assert rig.check(("hub/FUZZ-HUB/sync/tariffs", json.dumps(msg).encode())) == "refused"
    reply = rig.replies[0]
    assert reply["code"] == "schema" and reply["id"] == msg["id"]
    assert "effective_from" in reply["message"]
