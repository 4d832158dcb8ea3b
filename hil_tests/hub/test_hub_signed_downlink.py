"""Signed cloud-to-hub messages through a real mosquitto: a daemon with
`[cloud] command_key_file` applies the token list the cloud signed, and
refuses the same list unsigned or badly signed with a `bad_signature` reply,
its token list unchanged (R-M3, R-A3; docs/threat-model.md)."""

import asyncio
import json
import os
import time
import uuid

import pytest

from edge.cloud.signing import sign
from hil_tests.broker import Broker, CloudClient
from hil_tests.hub.conftest import DaemonUnderTest

pytestmark = pytest.mark.hil

HUB = "HIL-01"
TOPIC = f"hub/{HUB}/sync/tokens"
NEW_KEY = bytes.fromhex("5f" * 32)
OLD_KEY = bytes.fromhex("a0" * 32)  # still listed: the cloud has not switched yet
STRANGER = bytes.fromhex("11" * 32)


def _tokens(version: int, status: str) -> bytes:
    return json.dumps({"v": 1, "id": str(uuid.uuid4()), "version": version, "kind": "full",
                       "upsert": [{"uid": "04A1B2C3", "status": status, "type": "own", "reference": "truck 12"}],
                       "remove": []}).encode()


async def _reply(cloud: CloudClient, payload: bytes, nth: int = 1, timeout: float = 10.0) -> dict:
    """The hub's nth answer to this message (a message sent again is answered again)."""
    msg_id = json.loads(payload)["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = [d for d in (json.loads(p) for _t, p, _r in cloud.received(f"hub/{HUB}/reply")) if d.get("id") == msg_id]
        if len(answers) >= nth:
            return answers[nth - 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no answer {nth} to {msg_id}")


async def test_signed_token_list_applies_unsigned_and_badly_signed_are_refused(tmp_path, sims):
    key_file = tmp_path / "command.key"
    key_file.write_text(f"# {HUB}: new key first, old key until the cloud has switched\n"
                        f"{NEW_KEY.hex()}\n{OLD_KEY.hex()}\n")
    os.chmod(key_file, 0o600)
    broker = Broker(tmp_path / "broker").start()
    cloud = CloudClient(broker.url, client_id="cloud-signed-test", topics=(f"hub/{HUB}/#",)).start()
    d = DaemonUnderTest(tmp_path, sims)
    d.config.write_text(f'[cloud]\nbroker = "{broker.url}"\ncommand_key_file = "{key_file}"\n' + d.config.read_text())
    d.needs_cloud = True  # ready means connected to the broker too
    d.start()
    sigs: list[str] = []
    try:
        await d.wait_ready()

        async def held() -> tuple[int, str | None]:
            version = json.loads((await d.hubctl("--json", "tokens", "version")).stdout)["list"]["version"]
            found = await d.hubctl("--json", "tokens", "lookup", "04A1B2C3")
            return version, json.loads(found.stdout).get("status") if found.returncode == 0 else None

        # Unsigned, then signed with a key the hub does not hold: refused, nothing held.
        unsigned = _tokens(1, "Active")
        await asyncio.to_thread(cloud.publish, TOPIC, unsigned)
        r = await _reply(cloud, unsigned)
        assert r["code"] == "bad_signature" and not r["ok"] and "no signature" in r["message"], r
        stranger = _tokens(1, "Active")
        sigs.append(sign(STRANGER, TOPIC, stranger))
        await asyncio.to_thread(cloud.publish, TOPIC, stranger, sig=sigs[-1])
        r = await _reply(cloud, stranger)
        assert r["code"] == "bad_signature" and "does not match" in r["message"], r
        assert await held() == (0, None)

        # Signed with the key the cloud uses today (the second line): applied.
        good = _tokens(1, "Active")
        sigs.append(sign(OLD_KEY, TOPIC, good))
        await asyncio.to_thread(cloud.publish, TOPIC, good, key=OLD_KEY)
        r = await _reply(cloud, good)
        assert r["ok"] and r["code"] == "ok", r
        assert await held() == (1, "Active")

        # A forged list that blocks the card: signed for another hub, or with
        # the payload changed after signing, or unsigned - the card stays Active.
        block = _tokens(2, "Blocked")
        forged = (sign(NEW_KEY, "hub/HIL-02/sync/tokens", block), sign(NEW_KEY, TOPIC, _tokens(2, "Blocked")), None)
        for n, sig in enumerate(forged, start=1):
            if sig:
                sigs.append(sig)
            await asyncio.to_thread(cloud.publish, TOPIC, block, sig=sig)
            r = await _reply(cloud, block, nth=n)
            assert r["code"] == "bad_signature", r
        assert await held() == (1, "Active")

        # The cloud switched to the new key: the same message, signed, applies.
        await asyncio.to_thread(cloud.publish, TOPIC, block, key=NEW_KEY)
        r = await _reply(cloud, block, nth=len(forged) + 1)
        assert r["ok"] and r["data"]["version"] == 2, r
        assert await held() == (2, "Blocked")

        # The cloud hears of every refusal as a sync.rejected event too.
        def rejected() -> list[dict]:
            events = (json.loads(p) for _t, p, _r in cloud.received(f"hub/{HUB}/event/sync"))
            return [e["data"] for e in events if e.get("type") == "sync.rejected"]

        assert await asyncio.to_thread(cloud.wait_for, lambda: len(rejected()) >= 5, 10), rejected()
        assert len(rejected()) == 5 and {e["code"] for e in rejected()} == {"bad_signature"}, rejected()
    finally:
        if d.proc.poll() is None:
            d.terminate()
        cloud.stop()
        broker.kill()
    log = d.log_text()
    assert "code=bad_signature" in log and "cloud.commands_unverified" not in log
    for secret in [k.hex() for k in (NEW_KEY, OLD_KEY, STRANGER)] + [s.split("=", 1)[1] for s in sigs]:
        assert secret not in log


async def test_a_key_file_open_to_others_stops_the_start_with_the_fix(tmp_path, sims):
    key_file = tmp_path / "command.key"
    key_file.write_text(NEW_KEY.hex() + "\n")
    os.chmod(key_file, 0o644)
    d = DaemonUnderTest(tmp_path, sims)
    d.config.write_text(f'[cloud]\nbroker = "mqtt://127.0.0.1:1"\ncommand_key_file = "{key_file}"\n'
                        + d.config.read_text())
    d.start()
    assert await asyncio.to_thread(d.proc.wait, 30) != 0
    log = d.log_text()
    assert "cloud.command_key_file" in log and f"chmod 600 {key_file}" in log and NEW_KEY.hex() not in log


async def test_without_a_key_file_the_hub_warns_once_that_it_refuses_every_command(tmp_path, sims):
    d = DaemonUnderTest(tmp_path, sims)
    d.config.write_text('[cloud]\nbroker = "mqtt://127.0.0.1:1"\n' + d.config.read_text())
    d.start()
    try:
        await d.wait_ready()
    finally:
        d.terminate()
    log = d.log_text()
    assert log.count("cloud.commands_refused") == 1 and "command_key_file" in log
