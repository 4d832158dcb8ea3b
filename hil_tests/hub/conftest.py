"""A real daemon (`hubedge run` as a child process) against charger
simulators over Modbus TCP on loopback (R-H1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivers.register_map import load_register_map
from hil_tests.daemon import RunningDaemon
from simulators.charger import ChargerSimulator

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"


class DaemonUnderTest(RunningDaemon):
    def __init__(self, tmp: Path, sims: dict[str, ChargerSimulator], *, free_vend=True, extra: str = ""):
        super().__init__(tmp)
        self.sims = sims
        fv = "true" if free_vend else "false"
        self.config.write_text(f"""
[hub]
id = "HIL-01"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{self.socket}"
[charging]
poll_interval_s = 0.2
fault_after_polls = 3
modbus_timeout_s = 0.3
unlock_retries = 2
unlock_retry_s = 0.2
start_timeout_s = 20
[[chargers]]
id = "CH1"
address = "127.0.0.1:{sims['CH1'].port}"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1, free_vend = {fv} }}, {{ id = "C2", index = 2, free_vend = {fv} }} ]
[[chargers]]
id = "CH2"
address = "127.0.0.1:{sims['CH2'].port}"
register_map = "{MAPS / 'voltflow-ccs400.toml'}"
connectors = [ {{ id = "C3", index = 1, free_vend = {fv} }} ]
[[bays]]
id = "B1"
connector = "C1"
connector_type = "MCS"
side = "left"
{extra}
""")

    def events(self) -> list[dict]:
        import sqlite3

        db = sqlite3.connect(self.tmp / "state" / "hub.sqlite3")
        try:
            return [json.loads(r[0]) for r in db.execute("SELECT body FROM outbox ORDER BY pos")]
        finally:
            db.close()

    def sessions(self) -> list[dict]:
        import sqlite3

        db = sqlite3.connect(self.tmp / "state" / "hub.sqlite3")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY started_at")]
        finally:
            db.close()


@pytest.fixture
async def sims():
    ch1 = ChargerSimulator(load_register_map(MAPS / "hubcharge-mcs1200.toml"), 2, time_scale=20)
    ch2 = ChargerSimulator(load_register_map(MAPS / "voltflow-ccs400.toml"), 1, time_scale=20)
    await ch1.start()
    await ch2.start()
    yield {"CH1": ch1, "CH2": ch2}
    await ch1.stop()
    await ch2.stop()


@pytest.fixture
async def daemon(tmp_path, sims):
    d = DaemonUnderTest(tmp_path, sims)
    d.start()
    await d.wait_ready()
    yield d
    if d.proc.poll() is None:
        d.terminate()
