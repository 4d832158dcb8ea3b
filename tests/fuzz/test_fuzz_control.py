"""Fuzzing the control-socket protocol (R-T1): random lines into
ControlServer.dispatch. It never raises, always answers {v, ok, ...}, and
runs a handler only for a well-formed version-1 request naming it."""

import pytest
from fuzz_settings import CI
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import ControlRig, gen_control


@pytest.fixture(scope="module")
def rig():
    r = ControlRig()
    yield r
    r.close()


@CI(400)
@given(line=st.binary(max_size=200))
def test_r_t1_arbitrary_lines_are_refused_without_effect(rig, line):
    rig.check(line)


@CI(400)
@given(rnd=st.randoms(use_true_random=False))
def test_r_t1_mutated_requests(rig, rnd):
    rig.check(gen_control(rnd))


# ---- what the fuzzer found, fixed in edge/core/control.py


def test_r_t1_deeply_nested_request_is_bad_request(rig):
    """json.loads raised RecursionError out of dispatch(), which promises never to raise."""
    assert rig.check(b"[" * 50_000 + b"\n") == "refused"


def test_r_t1_boolean_version_is_not_version_1(rig):
    """{"v": true} passed the version check (True == 1) and ran the handler."""
    assert rig.check(b'{"v": true, "cmd": "status", "args": {}}\n') == "refused"
    assert rig.calls == []
