"""Signed cloud-to-hub messages (unit): the command key file, and a downlink
with keys that obeys only what the cloud signed (R-M3, R-M5; docs/threat-model.md).
Refusals change nothing and are answered with code bad_signature."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from units import FakeClock, rfc3339
from edge.core.config import ConfigError, parse_config
from edge.cloud.downlink import Downlink
from edge.parts.payments.tariffs import apply_tariffs
from edge.cloud.schemas import event_data_validator, validator
from edge.cloud.signing import KeyFileError, load_keys, sign, verify
from edge.core.store import Store

HUB = "H1"
K1 = bytes(range(32))
K2 = bytes(range(100, 132))
OTHER = bytes(32)
TARIFFS = f"hub/{HUB}/sync/tariffs"


def key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def body(d) -> bytes:
    return json.dumps(d).encode()


def tariffs_msg(msg_id: str = "m1", price: str = "0.399") -> bytes:
    return body({"v": 1, "id": msg_id, "tariffs": [{"id": "t1", "currency": "EUR", "price_per_kwh": price,
                                                      "vat_rate": "0.19", "effective_from": "2026-01-01T00:00:00Z"}]})


class Rig:
    """A downlink on a real store, recording replies, events and commands run."""

    def __init__(self, directory: Path, keys=(K1,)):
        self.clock = FakeClock()
        self.store = Store(directory, clock=self.clock)
        self.replies: list[dict] = []
        self.events: list[tuple[str, dict]] = []
        self.commands: list[dict] = []
        self.tokens: list[dict] = []
        self.downlink = Downlink(HUB, self.store, clock=self.clock, reply=self.replies.append,
                                 on_event=lambda t, d: self.events.append((t, d)), keys=keys)
        self.downlink.register("cmd:resync", lambda m: self.commands.append(m) or {})
        self.downlink.register("tokens", lambda m: self.tokens.append(m) or {})
        self.downlink.register("tariffs", lambda m: apply_tariffs(self.store, m))  # as the payments part does

    def tariffs(self) -> list[dict]:
        return [dict(t) for t in self.store.documents("tariffs").all()]

    def handled(self) -> int:
        return self.store.db.execute("SELECT count(*) FROM downlink_handled").fetchone()[0]

    def command(self, msg_id: str = "c1") -> bytes:
        now = self.clock.now()
        return body({"v": 1, "id": msg_id, "ts": rfc3339(now), "expires": rfc3339(now + timedelta(minutes=5)),
                     "args": {}})


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.store.close()


# ------------------------------------------------------------- the key file
def test_key_file_one_key(tmp_path):
    path = key_file(tmp_path / "command.key", K1.hex() + "\n")
    assert load_keys(path) == (K1,)


def test_key_file_rotation_comments_and_blank_lines_keep_file_order(tmp_path):
    text = (f"# hub H1, installed 2026-01-10\n\n{K2.hex()}   # new key, signs from 2026-02-01\n"
            f"  {K1.hex().upper()}\n# {OTHER.hex()} retired\n{K2.hex()}\n")
    assert load_keys(key_file(tmp_path / "k", text)) == (K2, K1)


@pytest.mark.parametrize("line, found", [
    ("z" * 64, "not all hex digits"),
    (K1.hex()[:63], "found 63 characters"),
    (K1.hex() + "00", "found 66 characters"),
    (K1.hex()[:32] + " " + K1.hex()[32:], "found 65 characters"),
    ("hmac-sha256=" + K1.hex(), "found 76 characters"),
])
def test_key_file_malformed_line_is_refused_by_number_without_its_content(tmp_path, line, found):
    path = key_file(tmp_path / "k", f"{K2.hex()}\n# comment\n{line}\n")
    with pytest.raises(KeyFileError) as exc:
        load_keys(path)
    text = str(exc.value)
    assert "line 3" in text and found in text and "secrets.token_hex(32)" in text
    assert K2.hex() not in text.lower() and K1.hex()[:32] not in text.lower()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_key_file_open_to_others_is_refused_with_the_fix(tmp_path, mode):
    path = key_file(tmp_path / "k", K1.hex() + "\n", mode)
    with pytest.raises(KeyFileError) as exc:
        load_keys(path)
    assert f"chmod 600 {path}" in str(exc.value) and f"{mode:04o}" in str(exc.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_key_file_without_a_key_is_refused_with_how_to_make_one(tmp_path, text):
    with pytest.raises(KeyFileError, match="holds no key.*secrets.token_hex"):
        load_keys(key_file(tmp_path / "k", text))


def test_key_file_missing_directory_or_binary_is_refused(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read it"):
        load_keys(tmp_path / "absent.key")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_keys(tmp_path)
    (tmp_path / "bin").write_bytes(b"\xff" * 64)
    os.chmod(tmp_path / "bin", 0o600)
    with pytest.raises(KeyFileError, match="not plain text"):
        load_keys(tmp_path / "bin")
    with pytest.raises(KeyFileError, match="cannot read it"):
        load_keys("bad\0name")


def test_config_check_refuses_a_bad_key_file_and_accepts_a_good_one(tmp_path):
    doc = {"hub": {"id": HUB, "country": "NL", "vat_rate": "0.21"},
           "cloud": {"broker": "mqtt://127.0.0.1:1883", "command_key_file": "command.key"}}
    source = tmp_path / "hub.toml"
    key_file(tmp_path / "command.key", K1.hex() + "\n", 0o644)
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, source)
    assert any(p.startswith("cloud.command_key_file:") and "chmod 600" in p for p in exc.value.problems)
    os.chmod(tmp_path / "command.key", 0o600)
    assert parse_config(doc, source).cloud.command_key_file == "command.key"
    assert parse_config({"hub": doc["hub"]}, source).cloud.command_key_file is None


# ----------------------------------------------------------- sign and verify
def test_sign_is_hmac_sha256_over_topic_newline_payload():
    import hashlib
    import hmac

    expected = hmac.new(K1, TARIFFS.encode() + b"\n" + b'{"v":1}', hashlib.sha256).hexdigest()
    assert sign(K1, TARIFFS, b'{"v":1}') == f"hmac-sha256={expected}"
    assert verify((K1,), TARIFFS, b'{"v":1}', f"hmac-sha256={expected}")
    for bad in (None, "", expected, f"hmac-sha256={expected.upper()}", f"sha256={expected}",
                f"hmac-sha256={expected} ", f"hmac-sha256={expected[:-1]}"):
        assert not verify((K1,), TARIFFS, b'{"v":1}', bad), bad
    assert not verify((), TARIFFS, b'{"v":1}', f"hmac-sha256={expected}")


# ------------------------------------------------------------- the downlink
async def test_signed_message_applies(rig):
    payload = tariffs_msg()
    reply = await rig.downlink.handle(TARIFFS, payload, sign(K1, TARIFFS, payload))
    assert reply["ok"] and reply["code"] == "ok"
    assert [t["id"] for t in rig.tariffs()] == ["t1"]
    assert [t for t, _ in rig.events] == ["sync.applied"]


@pytest.mark.parametrize("how", ["missing", "other key", "other topic", "other hub", "payload changed", "garbage"])
async def test_unsigned_or_wrongly_signed_sync_is_refused_and_changes_nothing(rig, how):
    payload = tariffs_msg("m-bad")
    sig = {
        "missing": None,
        "other key": sign(OTHER, TARIFFS, payload),
        "other topic": sign(K1, f"hub/{HUB}/sync/maintenance", payload),
        "other hub": sign(K1, "hub/H2/sync/tariffs", payload),
        "payload changed": sign(K1, TARIFFS, tariffs_msg("m-bad", price="0.398")),
        "garbage": "hmac-sha256=not-hex",
    }[how]
    reply = await rig.downlink.handle(TARIFFS, payload, sig)
    assert reply is rig.replies[-1]
    assert reply["code"] == "bad_signature" and reply["ok"] is False and reply["id"] == "m-bad"
    validator("reply").validate(reply)
    assert ("no signature" in reply["message"]) == (how == "missing")
    assert "nothing was applied" in reply["message"]
    assert rig.tariffs() == [] and rig.handled() == 0
    assert rig.events == [("sync.rejected", {"kind": "tariffs", "message_id": "m-bad", "code": "bad_signature",
                                              "reason": reply["message"]})]
    event_data_validator("sync.rejected").validate(rig.events[0][1])
    # Not remembered as handled: the cloud's correctly signed resend applies.
    ok = await rig.downlink.handle(TARIFFS, payload, sign(K1, TARIFFS, payload))
    assert ok["code"] == "ok" and rig.tariffs()[0]["price_per_kwh"] == "0.399"


async def test_unsigned_token_list_command_and_auth_response_are_refused(rig):
    tokens = body({"v": 1, "id": "tk", "version": 1, "kind": "full", "upsert": [], "remove": []})
    topic = f"hub/{HUB}/sync/tokens"
    assert (await rig.downlink.handle(topic, tokens, sign(OTHER, topic, tokens)))["code"] == "bad_signature"
    assert rig.tokens == []
    cmd_topic = f"hub/{HUB}/cmd/resync"
    reply = await rig.downlink.handle(cmd_topic, rig.command(), None)
    assert reply["code"] == "bad_signature" and reply["id"] == "c1" and rig.commands == []
    # Commands have no sync.rejected event; the refused token list has one.
    assert [d["kind"] for t, d in rig.events] == ["tokens"]
    auth = body({"v": 1, "id": "a1", "status": "Accepted", "expires": "2026-01-01T00:00:00Z",
                 "group": None, "reference": None})
    got = []
    rig.downlink.register("auth_response", got.append)
    reply = await rig.downlink.handle(f"hub/{HUB}/auth/response", auth, None)
    assert reply["code"] == "bad_signature" and got == []  # a forged Accepted never reaches the card logic
    signed = await rig.downlink.handle(cmd_topic, rig.command(), sign(K1, cmd_topic, rig.command()))
    assert signed["code"] == "ok" and len(rig.commands) == 1


async def test_a_refusal_carries_no_id_it_cannot_read(rig):
    reply = await rig.downlink.handle(TARIFFS, b"{not json", None)
    assert reply["code"] == "bad_signature" and reply["id"] is None
    reply = await rig.downlink.handle(TARIFFS, body({"v": 1, "id": "x" * 129}), None)
    assert reply["code"] == "bad_signature" and reply["id"] is None


async def test_rotation_any_listed_key_verifies(tmp_path):
    rig = Rig(tmp_path, keys=load_keys(key_file(tmp_path / "k", f"{K2.hex()}\n{K1.hex()}\n")))
    try:
        for n, key in enumerate((K1, K2)):
            payload = tariffs_msg(f"m{n}")
            assert (await rig.downlink.handle(TARIFFS, payload, sign(key, TARIFFS, payload)))["code"] == "ok"
        payload = tariffs_msg("m9")
        assert (await rig.downlink.handle(TARIFFS, payload, sign(OTHER, TARIFFS, payload)))["code"] == "bad_signature"
    finally:
        rig.store.close()


async def test_without_keys_unsigned_messages_are_refused_unless_allowed(tmp_path):
    """No command key: nothing unsigned is obeyed (it used to be, with a
    warning); only [cloud] allow_unsigned = true lets it through."""
    rig = Rig(tmp_path, keys=())
    try:
        reply = await rig.downlink.handle(TARIFFS, tariffs_msg("m1"))
        assert reply["code"] == "bad_signature" and "command_key_file" in reply["message"]
        assert rig.tariffs() == [] and rig.handled() == 0
        rig.downlink.set_keys((), allow_unsigned=True)
        assert (await rig.downlink.handle(TARIFFS, tariffs_msg("m1")))["code"] == "ok"
        assert (await rig.downlink.handle(TARIFFS, tariffs_msg("m2"), "hmac-sha256=00"))["code"] == "ok"
        # With keys, allow_unsigned has no say: only signed messages pass.
        rig.downlink.set_keys((K1,), allow_unsigned=True)
        assert (await rig.downlink.handle(TARIFFS, tariffs_msg("m3")))["code"] == "bad_signature"
    finally:
        rig.store.close()


async def test_neither_key_nor_signature_is_logged(rig, caplog):
    caplog.set_level(logging.DEBUG)
    payload = tariffs_msg("m-log")
    wrong = sign(OTHER, TARIFFS, payload)
    await rig.downlink.handle(TARIFFS, payload, wrong)
    await rig.downlink.handle(TARIFFS, payload, sign(K1, TARIFFS, payload))
    text = caplog.text + json.dumps(rig.replies) + json.dumps(rig.events)
    assert "code=bad_signature" in caplog.text
    for secret in (K1.hex(), OTHER.hex(), wrong, wrong.split("=")[1], sign(K1, TARIFFS, payload).split("=")[1]):
        assert secret not in text


# --------------------------------------------------------------- property
KINDS = ["sync/tariffs", "sync/tokens", "sync/bookings", "sync/maintenance", "sync/weather", "auth/response",
         "cmd/resync", "cmd/stop_session", "cmd/reboot"]


@st.composite
def wrong_signatures(draw, topic: str, payload: bytes):
    """Anything but the signature of exactly (topic, payload) under K1."""
    choice = draw(st.sampled_from(["none", "text", "hex", "other key", "other topic", "other payload"]))
    if choice == "none":
        return None
    if choice == "text":
        return draw(st.text(max_size=80))
    if choice == "hex":
        return "hmac-sha256=" + draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    if choice == "other key":
        return sign(draw(st.binary(min_size=32, max_size=32).filter(lambda k: k != K1)), topic, payload)
    if choice == "other topic":
        return sign(K1, draw(st.sampled_from([f"hub/{HUB}/{k}" for k in KINDS] + ["hub/H2/sync/tariffs"])
                             .filter(lambda t: t != topic)), payload)
    return sign(K1, topic, draw(st.binary(max_size=300).filter(lambda p: p != payload)))


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data(), kind=st.sampled_from(KINDS),
       payload=st.one_of(st.binary(max_size=300), st.just(tariffs_msg("p1")),
                         st.just(body({"v": 1, "id": "tk", "version": 1, "kind": "full", "upsert": [], "remove": []}))))
def test_property_any_message_with_a_wrong_signature_is_refused(property_rig, data, kind, payload):
    rig = property_rig
    topic = f"hub/{HUB}/{kind}"
    sig = data.draw(wrong_signatures(topic, payload))
    replies = len(rig.replies)
    reply = asyncio.run(rig.downlink.handle(topic, payload, sig))
    assert reply is not None and reply["code"] == "bad_signature" and reply["ok"] is False
    assert rig.replies[replies:] == [reply]
    # Nothing ever applied, remembered or run across all the examples.
    assert rig.tariffs() == [] and rig.handled() == 0 and rig.tokens == [] and rig.commands == []


@pytest.fixture(scope="module")
def property_rig():
    with tempfile.TemporaryDirectory() as d:
        r = Rig(Path(d))
        yield r
        r.store.close()


def test_the_worked_example_of_the_schema_readme_holds():
    """edge/cloud/schemas/README.md shows one signature; it must stay the one our code makes."""
    readme = (Path(__file__).resolve().parents[2] / "edge" / "cloud" / "schemas" / "README.md").read_text()
    topic = "hub/NL-VENLO-01/cmd/resync"
    payload = b'{"v":1,"id":"c-1","ts":"2026-03-01T12:00:00Z","expires":"2026-03-01T12:05:00Z","args":{}}'
    sig = sign(bytes(range(32)), topic, payload)
    assert f"`{sig}`" in readme and f"`{payload.decode()}`" in readme and f"`{topic}`" in readme
    assert f"({len(topic) + 1 + len(payload)} bytes)" in readme
