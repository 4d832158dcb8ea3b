"""OCPP 1.6J and 2.0.1 chargers behind the hub's charger interface (issue 17).

Importing the package registers ``ocpp1.6`` and ``ocpp2.0.1`` in
``edge.core.charger.PROTOCOLS``; see README.md."""

from edge.parts.chargers.ocpp import part  # noqa: F401  (registers the protocols)
