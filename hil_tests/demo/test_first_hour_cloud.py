"""The cloud engineer's first hour (issue 19): every command, sent as the
cloud would and as it should not, is answered with a reply that validates
against edge/cloud/schemas/reply.json, never tells the cloud to use hubctl, and
refuses missing arguments by their schema; meter samples are published on
hub/{id}/telemetry/meter while a truck charges."""

import asyncio
import json
import time
from pathlib import Path

import jsonschema
import pytest

from edge.cloud.downlink import COMMANDS
from edge.cloud.schemas import validator
from hil_tests.demo.site import started_site

pytestmark = pytest.mark.hil
REPLY = validator("reply")


async def reply(cloud, kind, payload):
    message_id = cloud.send(kind, payload)
    answer = await asyncio.to_thread(cloud.reply_to, message_id, 10.0)
    assert answer is not None, (kind, payload)
    REPLY.validate(answer)
    assert "hubctl" not in answer["message"], answer
    return answer


async def test_every_command_answers_in_the_clouds_terms(tmp_path):
    async with started_site(tmp_path) as hub:
        cloud = hub.cloud
        for _ in range(100):
            if (await hub.ask("status"))["cloud"].get("connected"):
                break
            await asyncio.sleep(0.1)
        # A truck charging on C5 (free vend): its session is running.
        hub.chargers["CH2"].plug(0, soc=20, battery_kwh=2000, max_power_w=100_000)
        for _ in range(100):
            status = await hub.ask("status")
            sid = next((c["session"] for c in status["connectors"] if c["connector"] == "C5" and c.get("session")), None)
            if sid:
                break
            await asyncio.sleep(0.2)
        assert sid

        codes = {}
        # Without their arguments: a schema answer naming the argument, never "no connector 'None'".
        for name in COMMANDS:
            answer = await reply(cloud, f"cmd:{name}", {"args": {}})
            codes[name] = answer["code"]
            assert "None" not in answer["message"], answer
        assert codes["unlock_connector"] == codes["set_availability"] == codes["stop_session"] == "schema"
        assert "args" in (await reply(cloud, "cmd:unlock_connector", {"args": {}}))["message"]
        assert codes["resync"] == "ok"

        # Refusals in the cloud's words.
        missing = await reply(cloud, "cmd:unlock_connector", {"args": {"connector": "C99"}})
        assert missing["code"] == "not_found" and "C99" in missing["message"]
        busy = await reply(cloud, "cmd:unlock_connector", {"args": {"connector": "C5"}})
        assert busy["code"] == "refused" and "stop_session" in busy["message"] and busy["data"]["session"] == sid
        assert (await reply(cloud, "cmd:set_availability", {"args": {"connector": "C99", "available": False}}))["code"] == "not_found"
        assert (await reply(cloud, "cmd:set_availability", {"args": {"connector": "C6", "available": "no"}}))["code"] == "schema"
        assert (await reply(cloud, "cmd:stop_session", {"args": {"session": "nope"}}))["code"] == "not_found"
        assert (await reply(cloud, "cmd:no_such_command", {"args": {}}))["code"] == "unknown_command"
        assert (await reply(cloud, "cmd:set_availability", {"args": {"connector": "C6", "available": False, "reason": "x"}}))["ok"]
        stopped = await reply(cloud, "cmd:stop_session", {"args": {"session": sid}})
        assert stopped["ok"], stopped
        again = await reply(cloud, "cmd:stop_session", {"args": {"session": sid}})
        assert again["code"] in ("ok", "refused"), again

        # Meter samples while it charged, on the telemetry topic, valid against telemetry.json.
        deadline = time.monotonic() + 10
        samples = []
        while time.monotonic() < deadline and not samples:
            with cloud._lock:
                samples = [p for t, p, _ in cloud.messages if t == "hub/DEMO-01/telemetry/meter"]
            await asyncio.sleep(0.2)
        assert samples, "no meter samples published"
        telemetry = validator("telemetry")
        for s in samples:
            telemetry.validate(s)
        first = samples[0]["data"]["samples"]
        assert [x["connector"] for x in first] == ["C5"] and first[0]["session"] == sid
        assert first[0]["power_w"] > 0 and isinstance(first[0]["energy_wh"], int)


def test_reply_schema_lists_every_code_documented():
    """The codes of reply.json are the ones docs/cloud-contract.md explains."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cloud-contract.md").read_text()
    for code in validator("reply").schema["properties"]["code"]["enum"]:
        assert f"`{code}`" in doc, code
    jsonschema.Draft202012Validator.check_schema(validator("reply").schema)
    json.dumps(validator("reply").schema)
