"""hubctl as a technician meets it at 3 a.m., against the whole simulated
hub (issue 19): ids as tables show them, connector ids in any case, errors
that say what to do, advice that runs as printed, the audit log (R-T1), a
resync the cloud answers, and the reason of a fault in the table."""

import asyncio
import json
import re
import shlex

import pytest

from hil_tests.demo.site import hubctl, started_site, valid

pytestmark = pytest.mark.hil
ADVICE = re.compile(r"`(hubctl [^`]+)`")


async def wait_for(check, timeout=15.0):
    for _ in range(int(timeout / 0.2)):
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def session_on(hub, connector):
    async def check():
        status = await hub.ask("status")
        return next((c["session"] for c in status["connectors"] if c["connector"] == connector and c.get("session")), None)
    return await wait_for(check)


async def test_a_technicians_night_with_hubctl(tmp_path):
    advice: list[str] = []  # every `hubctl ...` the hub suggested on the way

    def keep(*texts):
        for text in texts:
            advice.extend(ADVICE.findall(text))

    async with started_site(tmp_path) as hub:
        ch2 = hub.chargers["CH2"]
        ch2.plug(0, soc=20, battery_kwh=2000, max_power_w=100_000)  # C5 is free vend: a session starts
        sid = await session_on(hub, "C5")

        # --json before or after the command.
        after = await hubctl(hub, "status", "--json")
        assert after.returncode == 0, after.stderr
        valid("status", after.stdout)

        # Connector ids in any case; the refused unlock's advice names the session as tables show it.
        unlock = await hubctl(hub, "connector", "unlock", "c5")
        assert unlock.returncode == 3 and sid[:8] in unlock.stderr, unlock.stderr
        assert "--reason" in unlock.stderr
        keep(unlock.stderr)

        # The session id as shown (8 characters) everywhere.
        shown = await hubctl(hub, "--json", "sessions", "--session", sid[:8])
        assert shown.returncode == 0 and [s["id"] for s in valid("sessions", shown.stdout)] == [sid]
        by_connector = await hubctl(hub, "--json", "sessions", "--connector", "c5")
        assert [s["id"] for s in json.loads(by_connector.stdout)] == [sid]

        # An unknown connector is not found, not "(none)".
        c99 = await hubctl(hub, "sessions", "--connector", "C99")
        assert c99.returncode == 4 and "no connector C99" in c99.stderr, (c99.returncode, c99.stderr)
        c99_json = await hubctl(hub, "--json", "sessions", "--connector", "C99")
        assert c99_json.returncode == 4 and valid("error", c99_json.stdout)["code"] == "not_found"
        keep(c99.stderr)
        nope = await hubctl(hub, "session", "stop", "ffffffff", "--reason", "test")
        assert nope.returncode == 4, nope.stderr
        keep(nope.stderr)

        # Why a connector is Faulted shows in the table, beside its session.
        await ch2.silence("no_answer")

        async def faulted():
            table = await hubctl(hub, "status")
            return table.stdout if "why: charger CH2 not answering" in table.stdout else None
        table = await wait_for(faulted)
        assert re.search(r"C5 .*Faulted .*why: charger CH2 not answering.*session " + sid[:8], table), table
        await ch2.speak()

        # hubctl devices: which connectors each charger serves.
        devices = await hubctl(hub, "devices")
        assert re.search(r"CH1\s+charger\s+C1, C2, C3, C4\s", devices.stdout), devices.stdout
        valid("devices", (await hubctl(hub, "--json", "devices")).stdout)

        # The outbox quota in the unit it is configured in.
        outbox = await hubctl(hub, "outbox")
        assert "of 64 MiB" in outbox.stdout, outbox.stdout

        # Gates: software never closes a barrier (R-G5).
        close = await hubctl(hub, "gate", "close", "G-IN")
        assert close.returncode == 3 and "never closes a barrier" in close.stderr and "R-G5" in close.stderr
        keep(close.stderr)
        hold = await hubctl(hub, "gate", "hold-open", "G-IN", "--reason", "convoy")
        assert hold.returncode == 0
        keep(hold.stdout)

        # Token list not there yet: the advice is a resync, which the simulated cloud answers.
        version = await hubctl(hub, "tokens", "version")
        keep(version.stdout)
        resync = await hubctl(hub, "resync", "--timeout", "30")
        assert resync.returncode == 0 and "resync complete" in resync.stdout, resync.stdout + resync.stderr

        # Every command the hub suggested runs as printed (never a usage error).
        await asyncio.sleep(1.0)
        for event in hub.cloud.events():
            keep(json.dumps(event["data"]))
        assert any(a.startswith("hubctl session stop") for a in advice), advice
        for command in dict.fromkeys(advice):
            words = shlex.split(command)
            run = await hubctl(hub, *words[1:])
            assert run.returncode != 2 and "usage" not in run.stderr.lower(), (command, run.returncode, run.stderr)

        # The audit log: who did what, why, and what came of it (R-T1).
        me = (await hub.ask("audit", {"limit": 1}))[0]["user"]
        audit = await hubctl(hub, "--json", "audit", "--user", me, "--since", "1h")
        entries = valid("audit", audit.stdout)
        actions = {a["action"] for a in entries}
        assert {"session.stop", "gate.hold_open", "hub.resync"} <= actions, actions
        stop = next(a for a in entries if a["action"] == "session.stop")
        assert stop["target"] == sid and stop["reason"] == "truck cannot unplug" and stop["user"] == me
        human = await hubctl(hub, "audit", "--user", me)
        assert "session.stop" in human.stdout and "truck cannot unplug" in human.stdout
        nobody = await hubctl(hub, "--json", "audit", "--user", "nobody-here")
        assert json.loads(nobody.stdout) == []
