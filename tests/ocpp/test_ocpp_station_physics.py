"""The OCPP station simulator without a central system: its trucks follow a
power limit with a ramp and taper as the battery fills (the Modbus charger
simulator's physics), and it queues transaction messages while offline."""

import pytest

from simulators.charger import Truck, taper
from simulators.ocpp_station import LocalTx, OcppStation, utcnow


def station(**kw):
    return OcppStation("CS-1", kw.pop("version", "ocpp1.6"), "ws://127.0.0.1:1/ocpp", **kw)


def charging(sim, soc=20.0):
    sim.connectors[0].truck = Truck(soc, 600_000.0, 1_000_000.0)
    sim.connectors[0].tx = LocalTx("CARD", sim.connectors[0].energy_wh, utcnow(), "T1")


def test_power_ramps_to_the_limit_and_back_down():
    sim = station(ramp_w_per_s=50_000, rated_power_w=350_000)
    charging(sim)
    sim.advance(2)
    assert sim.connectors[0].power_w == pytest.approx(100_000)
    sim.advance(10)
    assert sim.connectors[0].power_w == pytest.approx(350_000)
    sim.connectors[0].limit_w = 150_000
    sim.advance(1)
    assert sim.connectors[0].power_w == pytest.approx(300_000)
    sim.advance(10)
    assert sim.connectors[0].power_w == pytest.approx(150_000)


def test_energy_and_state_of_charge_follow_the_taper():
    sim = station(rated_power_w=350_000, ramp_w_per_s=10**9)
    charging(sim, soc=90.0)
    start = sim.connectors[0].energy_wh
    sim.advance(5)
    assert sim.connectors[0].power_w == pytest.approx(350_000 * taper(90.0), rel=0.05)
    assert sim.connectors[0].energy_wh > start and sim.connectors[0].truck.soc > 90.0
    sim.advance(3600 * 5)
    assert sim.connectors[0].truck.soc == pytest.approx(100.0) and sim.status_of(0) == "SuspendedEV"


def test_status_names():
    sim = station(connectors=2)
    assert sim.status_of(0) == "Available"
    sim.connectors[1].reserved = 5
    assert sim.status_of(1) == "Reserved"
    charging(sim)
    assert sim.status_of(0) == "Charging"
    sim.connectors[0].limit_w = 0
    assert sim.status_of(0) == "SuspendedEVSE"
    sim.connectors[0].faulted = True
    assert sim.status_of(0) == "Faulted"


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_transaction_messages_queue_while_offline(version):
    sim = station(version=version, local_list={"CARD": "Accepted"})
    sim.plug(0)
    assert await sim.tap("CARD") == "Accepted"
    await sim.stop(0, "Local")
    assert [a for a, _ in sim.queue] == (["StartTransaction", "StopTransaction"] if version == "ocpp1.6" else
                                         ["TransactionEvent", "TransactionEvent"])
    payloads = [build(True) for _, build in sim.queue]
    if version == "ocpp2.0.1":
        assert [p["seqNo"] for p in payloads] == [0, 1] and all(p["offline"] for p in payloads)
    else:
        assert payloads[1]["transactionId"] == 0  # the start was never answered: the id is unknown
    assert await sim.tap("UNKNOWN") == "Invalid"
    await sim.close()
