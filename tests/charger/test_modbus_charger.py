"""The Modbus charger behind the charger interface (issue 16): the hub builds
it through PROTOCOLS like any other, it takes power limits (R-E2) and says
``not_supported`` for a fail-safe limit its register map lacks (R-E4), its
polling reports through the hub's sink, and `hubctl chargers` lists it."""

from __future__ import annotations

import argparse

import pytest

from drivers.charger_modbus import ChargerUnavailable, ConnectorReading
from drivers.register_map import HardwareStatus
from edge.core.charger import PROTOCOLS, CommandFailed, PowerLimits, Reading
from edge.core.config import parse_config
from edge.core.hub import Hub
from edge.hubctl import Style
from edge.parts.chargers.hubctl import _render
from edge.parts.chargers.modbus import ModbusCharger
from tests.foundation.hub_rig import MAPS, hub_config
from units import FakeClock


@pytest.fixture
def hub(tmp_path):
    h = Hub(parse_config(hub_config(tmp_path), tmp_path / "hub.toml"), clock=FakeClock())
    yield h
    h.store.close()


def test_the_hub_builds_a_modbus_charger_through_protocols(hub):
    charger = hub.chargers["CH1"]
    assert "modbus" in PROTOCOLS and isinstance(charger, ModbusCharger)
    assert isinstance(charger, PowerLimits)
    assert hub.devices["CH1"] is charger.health
    assert charger.task_name == "charger CH1 polling" and charger.ready_after_first_report


async def test_r_e4_a_map_without_a_fail_safe_register_says_not_supported(tmp_path):
    cfg = hub_config(tmp_path)
    cfg["chargers"][0]["register_map"] = str(MAPS / "voltflow-ccs400.toml")
    hub = Hub(parse_config(cfg, tmp_path / "hub.toml"), clock=FakeClock())
    try:
        with pytest.raises(CommandFailed) as err:
            await hub.chargers["CH1"].set_fail_safe_limit(10_000)
        assert err.value.outcome == "not_supported" and "fail_safe_limit" in str(err.value)
    finally:
        hub.store.close()


class Sink:
    def __init__(self, fail: bool = False):
        self.polled: list[dict] = []
        self.unanswered: list[str] = []
        self.fail = fail

    def charger_polled(self, charger_id, readings):
        self.polled.append(readings)
        if self.fail:
            raise OSError("disk I/O error")

    def charger_unanswered(self, charger_id, reason):
        self.unanswered.append(reason)


async def test_a_round_reports_readings_in_the_interface_words_or_that_the_charger_is_silent(hub):
    charger = hub.chargers["CH1"]
    answers = [ConnectorReading("C1", HardwareStatus("charging"), 3, 1500, 7000, soc=40, voltage_v=800.0),
               ChargerUnavailable("CH1", "no answer")]

    async def poll():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {"C1": answer}

    charger.driver.poll = poll
    sink = Sink()
    await charger.poll_once(sink)
    await charger.poll_once(sink)
    reading = sink.polled[0]["C1"]
    assert isinstance(reading, Reading)
    assert (reading.status, reading.energy_wh, reading.power_w, reading.soc, reading.raw_status) == ("charging", 1500, 7000, 40, 3)
    assert reading.extra == {"voltage_v": 800.0}
    assert sink.unanswered == ["charger CH1: no answer"]


async def test_r_c6_a_reading_the_hub_cannot_apply_fails_the_round(hub):
    charger = hub.chargers["CH1"]

    async def poll():
        return {"C1": ConnectorReading("C1", HardwareStatus("plugged"), 1, 0, 0)}

    charger.driver.poll = poll
    with pytest.raises(OSError):
        await charger.poll_once(Sink(fail=True))  # outside a supervised loop the failure is the caller's


async def test_hubctl_chargers_lists_the_modbus_charger(hub):
    part = next(p for p in hub.capabilities if p.name == "chargers")
    rows = await part.control_handlers()["chargers"]({}, None, None)
    assert rows == [{"charger": "CH1", "protocol": "modbus", "address": "127.0.0.1:9/1", "connected": False,
                     "state": "unknown", "vendor": None, "model": None, "serial": None, "firmware": None,
                     "last_frame": None, "connectors": {"C1": {"index": 1}, "C2": {"index": 2}}}]
    text = _render(rows, Style(False), argparse.Namespace(charger=None))
    assert "CH1" in text and "modbus" in text and "C1, C2" in text
