"""OCPP-J 1.6 and 2.0.1: the hub as the central system (CSMS) of its stations.

``OcppListener`` accepts the configured stations; each ``Station`` turns their
messages into the events of ``drivers.ocpp.events`` for a ``StationHandler``
(the hub) and the hub's commands into calls. Nothing here knows the hub.
"""

from drivers.ocpp.events import CallOutcome, IdTokenDecision, PowerLimit, StartAnswer
from drivers.ocpp.handler import StationHandler
from drivers.ocpp.listener import ListenerSettings, OcppListener, password_check
from drivers.ocpp.station import Station, StationConfig

__all__ = ["CallOutcome", "IdTokenDecision", "ListenerSettings", "OcppListener", "PowerLimit", "StartAnswer",
           "Station", "StationConfig", "StationHandler", "password_check"]
