"""Card reader driver vs card simulator on nfcpy's UDP frontend (R-H1, R-A4)."""

import asyncio
import socket
import time

import pytest

from drivers.device import DeviceFault, DeviceRecovered
from drivers.nfc_reader import CardReader, CardTap
from simulators.card import CardSimulator

pytestmark = pytest.mark.hil


@pytest.mark.parametrize("uid", ["04A1B2C3", "04112233445566", "0411223344556677AABB"])
async def test_tap_arrives_as_one_card_tap_with_its_uid(make_rig, uid):
    rig = await make_rig()
    started = time.monotonic()
    await asyncio.to_thread(rig.sim.tap, uid, 0.5)
    event = await rig.next_event()
    assert isinstance(event, CardTap)
    assert (event.reader_id, event.uid_hex, event.uid_len) == ("reader-1", uid, len(uid) // 2)
    assert event.ts.tzinfo is not None
    assert time.monotonic() - started < 2.0
    await rig.settle(0.5)
    assert rig.events.empty(), "one tap, one event"


async def test_r_a4_held_card_counts_once_and_retap_counts_again(make_rig):
    rig = await make_rig(debounce_s=0.8)
    rig.sim.hold("04A1B2C3")
    assert (await rig.next_event()).uid_hex == "04A1B2C3"
    await rig.settle(2.5)  # held three times longer than the window
    assert rig.events.empty()
    rig.sim.remove()
    await rig.settle(1.0)
    await asyncio.to_thread(rig.sim.tap, "04A1B2C3", 0.4)
    assert (await rig.next_event()).uid_hex == "04A1B2C3"


async def test_two_cards_in_a_row(make_rig):
    rig = await make_rig()
    await asyncio.to_thread(rig.sim.tap_in_row, ["04A1B2C3", "04D4E5F6"], 0.4, 0.2)
    got = [(await rig.next_event()).uid_hex, (await rig.next_event()).uid_hex]
    assert got == ["04A1B2C3", "04D4E5F6"]


async def test_nfcpy_own_listener_is_read_too(make_rig):
    """The simulator's nfcpy engine answers through nfcpy's LocalTarget listen()."""
    rig = await make_rig(engine="nfcpy")
    await asyncio.to_thread(rig.sim.tap, "04112233445566", 1.6)
    event = await rig.next_event(timeout=4.0)
    assert event.uid_hex == "04112233445566" and event.uid_len == 7
    await rig.settle(1.0)
    assert rig.events.empty()


async def test_simulator_killed_then_restarted_fault_then_recovered(make_rig):
    rig = await make_rig(retry_s=0.2, max_retry_s=0.5)
    port = rig.sim.port
    rig.sim.close()  # the reader's peer vanishes
    fault = await rig.next_event(timeout=6.0)
    assert isinstance(fault, DeviceFault) and fault.device_id == "reader-1" and fault.device_class == "reader"
    assert "retries" in fault.reason and "check" in fault.reason
    assert rig.reader.health.state == "fault"
    rig.sim = CardSimulator(port)  # the same reader comes back
    recovered = await rig.next_event(timeout=6.0)
    assert isinstance(recovered, DeviceRecovered) and rig.reader.health.state == "ok"
    await asyncio.to_thread(rig.sim.tap, "04A1B2C3", 0.5)
    assert (await rig.next_event()).uid_hex == "04A1B2C3"


async def test_stop_answering_fault_injection(make_rig):
    rig = await make_rig(retry_s=0.2, max_retry_s=0.5)
    rig.sim.stop_answering()
    assert isinstance(await rig.next_event(timeout=6.0), DeviceFault)
    rig.sim.resume()
    assert isinstance(await rig.next_event(timeout=6.0), DeviceRecovered)


async def test_reader_that_cannot_be_opened_is_its_own_fault(make_rig):
    """A reader missing at start-up is that reader's DeviceFault; the thread still stops promptly."""
    events: asyncio.Queue = asyncio.Queue()
    reader = CardReader("reader-9", "usb:ffff:fffe", asyncio.get_running_loop(), events.put_nowait, retry_s=0.2)
    reader.start()
    try:
        fault = await asyncio.wait_for(events.get(), 5.0)
        assert isinstance(fault, DeviceFault) and "could not be opened" in fault.reason
    finally:
        started = time.monotonic()
        assert reader.stop(3.0) and time.monotonic() - started < 3.0


def named_udp_port() -> int | None:
    """A port above 1023 that has a name in this machine's services database
    and is free for UDP on 127.0.0.1, or None."""
    for port in range(1024, 65536):
        try:
            socket.getservbyport(port, "tcp")
        except OSError:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return None


async def test_reader_on_a_port_with_a_service_name_opens_and_reads():
    """Found in CI: a simulator's random port was 60177 ("tfido" in
    /etc/services); nfcpy turned it into that name and int() failed, so the
    reader was in fault from its start and never read a card."""
    port = named_udp_port()
    if port is None:
        pytest.skip("no named port above 1023 in this machine's services database is free")
    assert socket.getnameinfo(("127.0.0.1", port), socket.NI_NUMERICHOST)[1] != str(port)
    events: asyncio.Queue = asyncio.Queue()
    sim = CardSimulator(port)
    reader = CardReader("reader-7", f"udp:127.0.0.1:{port}", asyncio.get_running_loop(), events.put_nowait,
                        debounce_s=1.0)
    reader.start()
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(sim.tap, "04A1B2C3", 0.5)
        event = await asyncio.wait_for(events.get(), 5.0)
        assert isinstance(event, CardTap) and event.uid_hex == "04A1B2C3", event
        assert reader.health.state == "ok", reader.health.last_error
    finally:
        assert reader.stop(3.0)
        sim.close()
