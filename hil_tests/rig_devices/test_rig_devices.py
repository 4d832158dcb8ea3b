"""What a rig can check on real devices without anyone at the site: each
device class answers over its real transport. With no rig file these run
against the simulators (started here); with a rig file naming a real device
of a class, the same test talks to that device instead (R-H2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.register_map import load_register_map

pytestmark = pytest.mark.hil
ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "config" / "register-maps" / "hubcharge-mcs1200.toml"


@pytest.mark.charger
async def test_charger_answers_a_poll_of_every_connector(rig):
    """R-C6's healthy side: every connector of the charger reads with a status."""
    from drivers.charger_modbus import ChargerDriver

    sim = None
    if rig.is_real("charger"):
        d = rig.device("charger")
        host, port = d["address"].rsplit(":", 1)
        rmap = load_register_map(ROOT / d["register_map"] if not Path(d["register_map"]).is_absolute() else d["register_map"])
        unit = int(d.get("unit", 1))
    else:
        from simulators.charger import ChargerSimulator

        rmap = load_register_map(MAP)
        sim = ChargerSimulator(rmap, 2)
        host, port, unit = "127.0.0.1", await sim.start(), 1
    driver = ChargerDriver("RIG", host, int(port), unit, rmap, {"C1": 0, "C2": 1}, timeout=2.0)
    try:
        readings = await driver.poll()
        assert set(readings) == {"C1", "C2"}
        for r in readings.values():
            assert getattr(r.status, "value", r.status) in (
                "unplugged", "plugged", "charging", "suspended_ev", "suspended_evse", "finished", "fault")
            assert r.energy_wh >= 0
        assert driver.health.state == "ok"
    finally:
        await driver.close()
        if sim is not None:
            await sim.stop()


@pytest.mark.terminal
async def test_terminal_registers_and_answers_a_status_enquiry(rig):
    """R-P1's prerequisite: the terminal takes the hub as its cash register."""
    from drivers.zvt import ZvtClient

    sim = None
    if rig.is_real("terminal"):
        d = rig.device("terminal")
        url, password = d["port"], str(d.get("password", "000000"))
    else:
        from simulators.zvt_terminal import ZvtTerminalSimulator

        sim = ZvtTerminalSimulator()
        await sim.start(tcp_port=0, pty=False)
        url, password = sim.tcp_url, "000000"
    client = ZvtClient.from_url(url, password=password)
    try:
        await client.connect()
        reg = await client.register()
        assert reg.ok, reg.reason
        status = await client.status_enquiry()
        assert status is not None
    finally:
        await client.close()
        if sim is not None:
            await sim.stop()


@pytest.mark.gate
async def test_barrier_io_module_reads_its_inputs(rig):
    """R-G5's eyes: presence loop and boom position read from the I/O module
    (nothing is commanded)."""
    from drivers.barrier import BarrierDriver

    sim = None
    if rig.is_real("barrier"):
        d = rig.device("barrier")
        host, port = d["address"].rsplit(":", 1)
        unit = int(d.get("unit", 1))
    else:
        from simulators.barrier import BarrierSimulator

        sim = BarrierSimulator()
        host, port, unit = "127.0.0.1", await sim.start(), 1
    driver = BarrierDriver("G-RIG", host, int(port), unit, None, lambda ev: None)
    try:
        inputs = await driver.read()
        assert isinstance(inputs.presence, bool)
        assert inputs.position in ("open", "closed", "moving", "unknown", "between")
    finally:
        await driver.close()
        if sim is not None:
            await sim.stop()


@pytest.mark.reader
async def test_reader_opens_and_polls_without_a_card(rig):
    """R-A4's device: the reader opens and polls, with no card in the field."""
    from drivers.nfc_reader import CardReader

    sim = None
    if rig.is_real("reader"):
        path = rig.device("reader")["path"]
    else:
        from simulators.card import CardSimulator

        sim = CardSimulator(0)
        path = f"udp:127.0.0.1:{sim.port}"
    taps = []
    reader = CardReader("R-RIG", path, asyncio.get_running_loop(), taps.append)
    reader.start()
    try:
        for _ in range(50):
            if reader.health.state == "ok":
                break
            await asyncio.sleep(0.1)
        assert reader.health.state == "ok", reader.health.last_error
        assert not [t for t in taps if type(t).__name__ == "CardTap"]
    finally:
        await asyncio.to_thread(reader.stop)
        if sim is not None:
            sim.close()
