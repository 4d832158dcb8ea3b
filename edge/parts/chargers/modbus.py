"""Chargers read over Modbus TCP with a register map, behind the hub's
charger interface (``protocol = "modbus"``, the default).

The driver (drivers/charger_modbus.py) speaks the registers; this charger
polls it every [charging] poll_interval_s and reports to the hub: the
readings of a round that answered, or that the charger did not answer. A
round whose readings the hub could not apply (a disk error, say) is counted
as a failed round of the supervised loop and the next round reads and
applies them again; the watchdog counts the loop as stuck once no round has
succeeded for ten rounds and three timeouts (R-C6, R-D1).
"""

from __future__ import annotations

from drivers.charger_modbus import ChargerDriver
from drivers.register_map import load_register_map
from edge.core import supervision
from edge.core.charger import Charger, CommandFailed, Reading, register


class ModbusCharger(Charger):
    """One charger behind one Modbus TCP address and unit (PowerLimits too:
    every register map has a power limit; a fail-safe limit where it has one)."""

    protocol = "modbus"
    ready_after_first_report = True

    def __init__(self, hub, cfg):
        super().__init__(cfg.id, [c.id for c in cfg.connectors])
        charging = hub.cfg.charging
        host, port = cfg.address.rsplit(":", 1)
        self.address = f"{cfg.address}/{cfg.unit}"
        self.indexes = {c.id: c.index for c in cfg.connectors}
        self.poll_interval_s = charging.poll_interval_s
        # How long polling may go without a good round before the watchdog
        # counts it as stuck: ten rounds and three timeouts.
        self.stall_after_s = max(5.0, 10 * charging.poll_interval_s + 3 * charging.modbus_timeout_s)
        self.driver = ChargerDriver(
            cfg.id,
            host,
            int(port),
            cfg.unit,
            load_register_map(hub.cfg.resolve(cfg.register_map)),
            {c.id: c.index - 1 for c in cfg.connectors},  # config counts from 1, the driver from 0
            timeout=charging.modbus_timeout_s,
            fault_after=charging.fault_after_polls,
        )

    @property
    def task_name(self) -> str:
        return f"charger {self.id} polling"

    @property
    def health(self):
        return self.driver.health

    async def run(self, sink) -> None:
        await supervision.rounds(lambda: self.poll_once(sink), every=self.poll_interval_s)

    async def poll_once(self, sink) -> None:
        """One round: read every connector and hand the readings to the hub
        (which raises if it could not apply them: the round failed)."""
        try:
            readings = await self.driver.poll()
        except Exception as exc:  # ChargerUnavailable, or a driver bug: the charger is not answering
            sink.charger_unanswered(self.id, str(exc) or type(exc).__name__)
        else:
            sink.charger_polled(self.id, {cid: reading_of(r) for cid, r in readings.items()})

    # ------------------------------------------------------------- commands
    async def start(self, connector_id: str, *, token: str | None = None, session_id: str | None = None) -> None:
        await self.driver.start(connector_id)

    async def stop(self, connector_id: str, *, session_id: str | None = None) -> None:
        await self.driver.stop(connector_id)

    async def unlock(self, connector_id: str) -> bool:
        return await self.driver.unlock(connector_id)

    async def set_available(self, connector_id: str, available: bool) -> None:
        """A register map has no availability: the hub keeps the connector
        out of service itself (it starts nothing there)."""

    async def set_power_limit(self, connector_id: str, watts: int) -> None:
        await self.driver.set_power_limit(connector_id, watts)

    async def set_fail_safe_limit(self, watts_per_connector: int) -> None:
        try:
            await self.driver.set_fail_safe_limit(watts_per_connector)
        except Exception as exc:
            if getattr(exc, "outcome", None) == "not_supported":
                raise CommandFailed(self.id, "set_fail_safe_limit", "not_supported", str(exc)) from None
            raise

    async def close(self) -> None:
        await self.driver.close()

    def view(self) -> dict:
        health = self.driver.health
        return {"charger": self.id, "protocol": self.protocol, "address": self.address,
                "connected": health.state == "ok", "state": health.state, "vendor": None,
                "model": None, "serial": None, "firmware": None, "last_frame": None,
                "connectors": {cid: {"index": index} for cid, index in self.indexes.items()}}


def reading_of(r) -> Reading:
    """The driver's reading in the interface's words."""
    return Reading(r.connector_id, getattr(r.status, "value", r.status), energy_wh=r.energy_wh, power_w=r.power_w,
                   soc=r.soc, raw_status=r.raw_status, power_limit_w=r.power_limit_w,
                   signed_meter_value=r.signed_meter_value, problem=r.problem,
                   extra={k: v for k, v in (("voltage_v", r.voltage_v), ("current_a", r.current_a),
                                            ("locked", r.locked)) if v is not None})


register("modbus", ModbusCharger)
