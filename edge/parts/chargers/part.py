"""The chargers part: every charger behind the hub's charger interface.

Each protocol is a module of this package that registers its ``protocol``
names in ``edge.core.charger.PROTOCOLS``: Modbus register maps here
(``modbus.py``), OCPP 1.6J and 2.0.1 in ``ocpp/`` (a part of its own, for
its listener). What is the same for every charger, whatever it speaks,
lives here: `hubctl chargers`.
"""

from __future__ import annotations

from edge.core.hub import Capability
from edge.parts.chargers import modbus  # noqa: F401  (registers "modbus")


class Chargers(Capability):
    name = "chargers"

    def control_handlers(self) -> dict:
        return {"chargers": self._chargers}

    async def _chargers(self, args: dict, caller, progress) -> list:
        """`hubctl chargers`: every charger as it describes itself (OCPP ones
        with what they said at boot, Modbus ones with their address)."""
        return [charger.view() for charger in self.hub.chargers.values()]
