"""Site power over OCPP through the real daemon (R-E1, R-E2, R-E4, R-O*):
station simulators of both versions on real websockets, the grid meter
simulator on Modbus TCP reading what their trucks draw plus the site's
other load. Each connector's share goes to its station as a charging
profile; the fail-safe profiles are set when the station connects."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from drivers.meter_map import load_meter_map
from hil_tests.ocpp.test_ocpp_daemon_hil import OWN, OcppDaemon
from hil_tests.power.conftest import ROOT
from simulators.grid_meter import BaseLoad, GridMeterSimulator

pytestmark = [pytest.mark.hil, pytest.mark.sim_only(reason="plugs trucks in and drives the meter simulator",
                                                    devices=["charger", "meter"])]

LIMIT, MARGIN, FALLBACK = 600.0, 20.0, 300.0


class PowerOcppDaemon(OcppDaemon):
    """The OCPP daemon (CS1: OCPP 1.6 with C1 and C2, CS2: OCPP 2.0.1 with C3)
    behind a 600 kW connection; each connector is rated 400 kW."""

    def __init__(self, tmp, meter_port: int):
        super().__init__(tmp)
        meter_map = ROOT / "config" / "meter-maps" / "sunspec-meter.toml"
        self.config.write_text(self.config.read_text() + f"""
[power]
grid_limit_kw = {LIMIT}
margin_kw = {MARGIN}
fallback_kw = {FALLBACK}
min_kw = 20
stale_after_s = 2
meter = {{ address = "127.0.0.1:{meter_port}", register_map = "{meter_map}", max_kw = 10000 }}
[power.chargers.CS1]
rated_kw = 400
[power.chargers.CS2]
rated_kw = 400
""")


@pytest.fixture
async def site(tmp_path):
    stations: list = []
    meter = GridMeterSimulator(load_meter_map(ROOT / "config" / "meter-maps" / "sunspec-meter.toml"),
                               draw_w=lambda: sum(c.power_w for st in stations for c in st.connectors),
                               base_load=BaseLoad(peak_kw=60, noise_kw=0.0, machines=0, seed=2))
    port = await meter.start()
    d = PowerOcppDaemon(tmp_path, port)
    d.start()
    await d.wait_ready()
    cs1 = d.station("CS1", rated_power_w=400_000)
    cs2 = d.station("CS2", "ocpp2.0.1", rated_power_w=400_000)
    stations += [cs1, cs2]
    try:
        await cs1.connect()
        await cs2.connect()
        yield d, cs1, cs2, meter
    finally:
        for st in stations:
            await st.close()
        d.terminate()
        await meter.stop()


def profiles(station, purpose: str) -> list[dict]:
    out = []
    for action, payload in station.received:
        if action == "SetChargingProfile":
            profile = payload.get("csChargingProfiles") or payload.get("chargingProfile")
            if profile["chargingProfilePurpose"] == purpose:
                out.append(payload)
    return out


async def start_truck(station, i: int) -> None:
    assert await station.tap(OWN, i) == "Accepted"
    station.plug(i, soc=20, battery_kwh=800, max_power_w=400_000)


async def test_r_e1_r_e4_ocpp_stations_share_the_connection_through_charging_profiles(site):
    d, cs1, cs2, meter = site
    # R-E4: fail-safe profiles at connection: a TxDefaultProfile and a station maximum.
    for st, default, station_max in ((cs1, "TxDefaultProfile", "ChargePointMaxProfile"),
                                     (cs2, "TxDefaultProfile", "ChargingStationMaxProfile")):
        deadline = time.monotonic() + 10
        while not (profiles(st, default) and profiles(st, station_max)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert profiles(st, default) and profiles(st, station_max), [a for a, _ in st.received]
    await start_truck(cs1, 0)
    await start_truck(cs1, 1)
    await start_truck(cs2, 0)
    for cid in ("C1", "C2", "C3"):
        await d.wait_connector(cid, "Charging", timeout=20)
    seen = []
    end = time.monotonic() + 12
    while time.monotonic() < end:
        seen.append(meter.site_w() / 1000)
        await asyncio.sleep(0.05)
    late = seen[len(seen) // 3:]  # once the first shares are out
    assert max(late) <= LIMIT - MARGIN + 15, f"R-E1: the site peaked at {max(late):.0f} kW"
    assert max(late) > LIMIT - MARGIN - 120, "the trucks were given what there is"
    # Each share is a TxProfile on the running transaction (R-E2: OCPP SetChargingProfile).
    assert profiles(cs1, "TxProfile") and profiles(cs2, "TxProfile")
    limits = [c.limit_w for st in (cs1, cs2) for c in st.connectors]
    assert all(w is not None for w in limits) and sum(limits) / 1000 <= LIMIT - MARGIN + 1
    p = json.loads((await d.hubctl("--json", "power")).stdout)
    assert p["mode"] == "normal" and all(c["limit_kw"] is not None for c in p["connectors"] if c["charging"])
    assert sum(p["allocations"].values()) <= p["available_kw"] + 0.5


async def test_r_e4_an_ocpp_station_that_rejects_its_profile_is_counted_at_rated(site):
    d, cs1, cs2, _meter = site
    cs2.unsupported.add("SetChargingProfile")  # answers NotSupported from now on
    await start_truck(cs1, 0)
    await start_truck(cs2, 0)
    await d.wait_connector("C3", "Charging", timeout=20)
    deadline = time.monotonic() + 15
    while True:
        p = json.loads((await d.hubctl("--json", "power")).stdout)
        c3 = next(c for c in p["connectors"] if c["connector"] == "C3")
        if c3["counted_kw"] == 400:
            break
        assert time.monotonic() < deadline, p
        await asyncio.sleep(0.2)
    c1 = next(c for c in p["connectors"] if c["connector"] == "C1")
    assert c1["share_kw"] <= p["available_kw"] - 400 + 0.5, "C1 gets only what is left beside C3 at rated"
    assert "counted at rated power" in (await d.hubctl("power")).stdout
