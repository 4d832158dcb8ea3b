"""OCPP 1.6J and 2.0.1 chargers behind the hub's charger interface (issue 17).

Importing ``edge.parts.chargers.ocpp.part`` registers ``ocpp1.6`` and
``ocpp2.0.1`` in ``edge.core.charger.PROTOCOLS``; see README.md. The
package itself imports nothing, so `hubctl chargers` starts fast."""
