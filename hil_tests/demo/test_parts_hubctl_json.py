"""The parts' hubctl commands against the whole simulated hub: --json output
matches each documented schema, errors are one line with the right exit
code, and gate actions are audited (issue 7)."""

import asyncio
import json

import pytest

from hil_tests.demo.site import hubctl, started_site, valid as check

pytestmark = pytest.mark.hil


async def test_parts_commands_json_and_errors(tmp_path):
    async with started_site(tmp_path) as hub:
        cases = [
            (("tokens", "lookup", "04A1B2C3"), "tokens_lookup", 4),
            (("tokens", "version"), "tokens_version", 0),
            (("payments",), "payments", 0),
            (("bookings",), "bookings", 0),
            (("bookings", "--upcoming"), "bookings", 0),
            (("gate", "open", "G-OUT"), "gate", 0),
            (("gate", "hold-open", "G-IN", "--reason", "delivery of spare parts"), "gate", 0),
            (("gate", "release", "G-IN"), "gate", 0),
            (("payment", "retry", "nope"), "error", 4),
            (("gate", "open", "G-NOPE"), "error", 4),
        ]
        for args, schema, code in cases:
            proc = await hubctl(hub, "--json", *args)
            assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
            check(schema, proc.stdout)
        human = await hubctl(hub, "gate", "open", "G-NOPE")
        assert human.returncode == 4 and len(human.stderr.strip().splitlines()) == 1
        no_reason = await hubctl(hub, "gate", "hold-open", "G-IN")
        assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
        await asyncio.sleep(1.0)
        audits = [e["data"] for e in hub.cloud.events("audit.action")]
        assert {a["action"] for a in audits} >= {"gate.open", "gate.hold_open", "gate.release"}, audits
        status = json.loads((await hubctl(hub, "--json", "status")).stdout)
        check("status", json.dumps(status))
        assert {"readers", "terminals", "gates"} <= status.keys()
