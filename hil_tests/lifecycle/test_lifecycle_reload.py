"""`systemctl reload hubedge` is SIGHUP to the daemon (R-D1). Without a
handler it ended the daemon, and Restart=on-failure did not bring back a
clean signal exit: one reload took the hub down for good. Now the daemon
stays up, takes over what it can (a rotated command key, the log level, the
technicians' group) and says what needs a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from hil_tests.bare_hub import COMMAND_KEY, BareHub, until

pytestmark = pytest.mark.hil

NEW_KEY = bytes(range(100, 132))




async def test_lifecycle_sighup_keeps_the_daemon_running_R_D1(tmp_path):
    hub = BareHub(tmp_path)
    hub.start()
    try:
        await hub.wait_ready()
        for _ in range(3):  # a reload, and then another: each one handled
            hub.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
        assert hub.proc.poll() is None, f"the daemon died of SIGHUP (status {hub.proc.returncode}): {hub.log_tail()}"
        assert (await hub.status())["ready"]
        await until(lambda: hub.log_text().count("daemon.reloaded") == 3, what="three reloads logged")
        assert "needs_restart=none" in hub.log_text()
    finally:
        assert hub.terminate() == 0


async def test_lifecycle_reload_takes_over_a_rotated_command_key_and_names_what_needs_a_restart_R_D1(
        tmp_path, broker, cloud_client):
    hub = BareHub(tmp_path, hub_id="HUP-01", broker_url=broker.url)
    cloud = cloud_client(broker.url, topics=("hub/HUP-01/reply",))
    topic = "hub/HUP-01/cmd/resync"

    async def command(msg_id: str, key: bytes) -> dict:
        now = time.time()
        body = {"v": 1, "id": msg_id, "ts": _rfc(now), "expires": _rfc(now + 60), "args": {}}
        await asyncio.to_thread(cloud.publish, topic, json.dumps(body), key=key)
        await until(lambda: any(json.loads(p)["id"] == msg_id for _, p, _ in cloud.received()), what=f"reply {msg_id}")
        return next(json.loads(p) for _, p, _ in cloud.received() if json.loads(p)["id"] == msg_id)

    hub.start()
    try:
        await hub.wait_ready()
        await asyncio.sleep(0.5)
        assert (await command("c1", NEW_KEY))["code"] == "bad_signature"
        # The cloud rotates the key: the new one is written beside the old,
        # and the poll interval changed too (that one needs a restart).
        hub.key_file.write_text(f"{NEW_KEY.hex()}\n{COMMAND_KEY.hex()}\n")
        hub.config.write_text(hub.config.read_text() + "[charging]\npoll_interval_s = 2.0\n")
        hub.proc.send_signal(signal.SIGHUP)
        await until(lambda: "daemon.reloaded" in hub.log_text(), what="the reload")
        assert "applied=logging,command_keys=2,control_group=hubtech" in hub.log_text(), hub.log_tail()
        assert "daemon.reload_needs_restart changed=charging" in hub.log_text()
        assert (await command("c2", NEW_KEY))["code"] == "ok"
        # A spoilt file is refused whole: the daemon runs on as it was.
        os.chmod(hub.key_file, 0o644)
        hub.proc.send_signal(signal.SIGHUP)
        await until(lambda: "daemon.reload_refused" in hub.log_text(), what="the refused reload")
        assert "chmod 600" in hub.log_text()
        assert (await command("c3", NEW_KEY))["code"] == "ok"
        assert hub.proc.poll() is None
    finally:
        hub.terminate()


def _rfc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
