"""Every core hubctl command's --json output matches its documented schema
(edge/cloud/schemas/hubctl, docs/hubctl.md), against a running daemon (issue 7)."""

import json
from pathlib import Path

import jsonschema
import pytest

pytestmark = pytest.mark.hil
SCHEMAS = Path(__file__).resolve().parents[2] / "edge" / "cloud" / "schemas" / "hubctl"
ROOT = Path(__file__).resolve().parents[2]


def check(name: str, out: str):
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    data = json.loads(out)
    jsonschema.Draft202012Validator(schema).validate(data)
    return data


async def test_json_outputs_match_their_schemas(daemon, sims):
    sims["CH1"].plug(0, soc=95, battery_kwh=200)
    c = await daemon.wait_connector("C1", "Charging")
    for args, name in [
        (("status",), "status"),
        (("devices",), "devices"),
        (("sessions",), "sessions"),
        (("sessions", "--status", "active", "--since", "1h"), "sessions"),
        (("outbox",), "outbox"),
        (("connector", "unavailable", "C2", "--reason", "json test"), "connector"),
        (("connector", "available", "C2"), "connector"),
        (("session", "stop", c["session"], "--reason", "json test"), "session_stop"),
        (("resync", "--timeout", "1"), "resync"),
        (("config", "validate", str(ROOT / "config" / "hub-small.toml")), "config_validate"),
        (("config", "validate", str(daemon.log)), "config_validate"),
        (("connector", "unlock", "C9"), "error"),
    ]:
        proc = await daemon.hubctl("--json", *args)
        data = check(name, proc.stdout)
        if name == "sessions":
            assert all("token" not in s for s in data)
    sessions = json.loads((await daemon.hubctl("--json", "sessions", "--status", "active")).stdout)
    assert all(s["status"] == "active" for s in sessions)


async def test_sessions_export_to_csv_pages_through_everything(daemon, sims, tmp_path):
    import csv

    sims["CH1"].plug(1, soc=99, battery_kwh=100)
    await daemon.wait_connector("C2", "Charging")
    out = tmp_path / "sessions.csv"
    proc = await daemon.hubctl("sessions", "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["connector"] == "C2" and "token" not in rows[0]
    assert "1 sessions written" in proc.stdout
    bad = await daemon.hubctl("sessions", "--csv", "/proc/forbidden/x.csv")
    assert bad.returncode == 2 and "cannot write" in bad.stderr
