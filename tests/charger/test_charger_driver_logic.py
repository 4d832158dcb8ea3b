"""The driver's pure parts: reconnect pacing, the failed-poll count that turns
into a fault (R-C6), and decoding a connector without crashing on garbage."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from drivers.charger_modbus import ContactWatch, ReconnectBackoff, reading_from_registers
from drivers.device import DeviceFault, DeviceHealth, DeviceRecovered
from drivers.register_map import HardwareStatus, encode, load_register_map

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter():
    backoff = ReconnectBackoff(initial=0.5, maximum=4.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.failed(now=100.0) for _ in range(8)]
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for got, want in zip(delays, nominal):
        assert want * 0.8 <= got <= min(want * 1.2, 4.0)
    assert len(set(delays)) > 1  # jitter spreads chargers apart
    assert not backoff.ready(100.0) and backoff.ready(104.0)
    backoff.succeeded()
    assert backoff.ready(100.0) and backoff.failed(100.0) <= 0.6


def test_contact_lost_after_n_failed_polls_then_recovers_by_itself():
    """R-C6: Faulted after a set number of failed polls; recovers when contact returns."""
    health = DeviceHealth("C1", "charger")
    watch = ContactWatch(health, fault_after=3)
    assert watch.poll_succeeded(T0) is None and health.state == "ok"
    assert watch.poll_failed("no answer", T0) is None
    assert watch.poll_failed("no answer", T0) is None
    assert health.state == "ok"
    fault = watch.poll_failed("no answer", T0 + timedelta(seconds=3))
    assert isinstance(fault, DeviceFault) and fault.reason == "no answer" and fault.device_class == "charger"
    assert health.state == "fault" and health.since == T0 + timedelta(seconds=3)
    assert watch.poll_failed("still no answer", T0) is None  # one fault event, not one per poll
    recovered = watch.poll_succeeded(T0 + timedelta(seconds=9))
    assert isinstance(recovered, DeviceRecovered) and health.state == "ok"
    assert watch.poll_succeeded(T0) is None


def test_a_good_poll_resets_the_count():
    watch = ContactWatch(DeviceHealth("C1", "charger"), fault_after=2)
    watch.poll_failed("x", T0)
    watch.poll_succeeded(T0)
    assert watch.poll_failed("x", T0) is None


def test_fault_after_must_be_positive():
    with pytest.raises(ValueError):
        ContactWatch(DeviceHealth("C1", "charger"), fault_after=0)


def _image(m, index, **values):
    image = {}
    for name, spec in m.registers.items():
        if name == "ocmf":
            continue
        value = values.get(name, 0)
        words = [value] if name in ("status", "lock") else encode(spec, value)
        start = m.address(spec, index)
        image.update({(spec.kind, start + k): w for k, w in enumerate(words)})
    return image


@pytest.fixture
def volt(map_paths):
    return load_register_map(map_paths["voltflow-ccs400"])


def test_reading_decodes_a_charging_connector(volt):
    image = _image(volt, 1, status=3, energy=1234567, power=350000, soc=55, voltage=800, current=437.5, lock=1, power_limit=400000)
    r = reading_from_registers(volt, "B", 1, image)
    assert r.status is HardwareStatus.CHARGING and r.raw_status == 3
    assert r.energy_wh == 1234567 and r.power_w == 350000 and r.soc == 55
    assert r.locked is True and r.power_limit_w == 400000 and r.problem is None


def test_unknown_status_code_reads_as_fault_without_crashing(volt):
    r = reading_from_registers(volt, "A", 0, _image(volt, 0, status=0xBEEF, energy=5000))
    assert r.status is HardwareStatus.FAULT and r.raw_status == 0xBEEF
    assert "unknown status code 48879" in r.problem
    assert r.energy_wh == 5000


def test_energy_that_is_not_a_number_keeps_the_last_good_value(volt):
    good = reading_from_registers(volt, "A", 0, _image(volt, 0, status=3, energy=7000))
    image = _image(volt, 0, status=3)
    spec = volt.registers["energy"]
    addr = volt.address(spec, 0)
    image[("holding", addr)], image[("holding", addr + 1)] = 0x0000, 0x7FC0  # NaN, low word first
    r = reading_from_registers(volt, "A", 0, image, previous=good)
    assert r.status is HardwareStatus.FAULT and r.energy_wh == 7000 and "energy" in r.problem
