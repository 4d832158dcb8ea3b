"""The site power part of `hubedge demo`: the demo hub's connectors (the
Modbus chargers' six and the OCPP station's two) sit behind a 1 MW grid
connection, read by a simulated grid meter (SunSpec, Modbus TCP) that sees
what the simulated trucks draw plus the site's other load. The live view shows each connector's share; the
summary says how close the site came to its limit."""

from __future__ import annotations

from edge.demo import ROOT, DemoHub, DemoPart

GRID_LIMIT_KW = 1000
MARGIN_KW = 50
FALLBACK_KW = 500


class PowerDemo(DemoPart):
    def __init__(self, demo: DemoHub):
        super().__init__(demo)
        self.meter = None

    def drawn_w(self) -> float:
        ocpp = self.demo.devices.get("ocpp_stations", {}).values()  # the demo's OCPP station draws too
        return (sum(sim.drawn_w() for sim in self.demo.chargers.values())
                + sum(c.power_w for station in ocpp for c in station.connectors))

    async def start(self) -> str:
        from drivers.meter_map import load_meter_map
        from simulators.grid_meter import BaseLoad, GridMeterSimulator

        meter_map = ROOT / "config" / "meter-maps" / "sunspec-meter.toml"
        self.meter = GridMeterSimulator(load_meter_map(meter_map), draw_w=self.drawn_w, time_scale=self.demo.speed,
                                        base_load=BaseLoad(peak_kw=150, noise_kw=3, machines=2, machine_kw=30, seed=7))
        port = await self.meter.start()
        self.demo.devices["grid_meter"] = self.meter
        return f"""
[power]
grid_limit_kw = {GRID_LIMIT_KW}
margin_kw = {MARGIN_KW}
fallback_kw = {FALLBACK_KW}
min_kw = 20
# A second of the hub is minutes of the demo day: the buffer lets a truck
# take its whole share at the next step rather than growing into it.
buffer_kw = 400
interval_s = 0.25
meter = {{ address = "127.0.0.1:{port}", register_map = "{meter_map}", max_kw = 10000 }}
""" + (OCPP_STATION_RATED if "edge.parts.chargers.ocpp.demo" in self.demo.part_modules else "")

    async def stop(self) -> None:
        if self.meter is not None:
            await self.meter.stop()

    def summary(self, status: dict, sessions: list[dict]) -> list[str]:
        site = status.get("power")
        if not site:
            return ["site power: no share was decided (the meter was never read)"]
        return [f"site power: {len(site['allocations'])} connectors shared a {GRID_LIMIT_KW} kW "
                f"grid connection; the site's draw peaked at {self.meter.peak_w / 1000:.0f} kW (the hub keeps it under "
                f"{GRID_LIMIT_KW - MARGIN_KW} kW)"]


# The demo's OCPP station (the chargers part's scene) says nothing of its
# rated power over OCPP 1.6: the site's configuration gives it.
OCPP_STATION_RATED = """
[power.chargers.CS-OCPP1]
rated_kw = 350
"""


def demo_part(demo: DemoHub) -> DemoPart:
    return PowerDemo(demo)
