"""The parts of the hub, each a package that plugs into the core.

``PARTS`` names them in start order as ``module`` or ``module:Capability``.
The core names no part: it imports the modules listed here
(``edge.core.registry.load_parts``), and each registers itself on import:
its configuration section (``edge.core.config.register_section``), its
charger protocols (``edge.core.charger.register``); a ``Capability`` class
is built once per hub and hears the hub's events. A part missing from a
release is skipped.
"""

PARTS = (
    "edge.parts.chargers.part:Chargers",
    "edge.parts.cards.part:CardAuthorisation",
    "edge.parts.payments.part:Payments",
    "edge.parts.site.part:SiteAccess",
    "edge.parts.chargers.ocpp.part:OcppPart",
    "edge.parts.power.part:SitePower",
)
