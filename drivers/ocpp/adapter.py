"""What both version adapters share: the answer to each station message
comes from a method named after its action, commands become one library
call dataclass each, and a station's answer becomes a ``CallOutcome``.

``v16.Adapter16`` and ``v201.Adapter201`` sit side by side; each knows its
version's messages and nothing of sockets.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Callable

from drivers.ocpp.events import CallOutcome, Heartbeat, Notification, PowerLimit
from drivers.ocpp.handler import StationHandler
from drivers.ocpp.rpc import parse_time, rfc3339

log = logging.getLogger("hubedge.ocpp")

# A 1.6 transaction message this much older than its arrival was queued by
# the station while offline (1.6 has no offline flag; §3.7 says to infer it).
OFFLINE_AGE = timedelta(seconds=60)
# Absolute profiles start a minute in the past: a station whose clock runs
# behind would otherwise leave a gap with no limit before the profile starts.
PROFILE_START_BACK = timedelta(minutes=1)
PROFILE_IDS = {"station_max": 1, "tx_default": 100, "tx": 200}  # + evse: one id per purpose and evse


class HubBug(RuntimeError):
    """The hub's handler answered something the layer cannot send."""


class Adapter:
    version = ""

    def __init__(self, station: str, handler: StationHandler, *, clock: Callable[[], datetime],
                 heartbeat_interval_s: int, leniencies: frozenset[str] = frozenset(),
                 voltage_v: float | None = None, phases: int | None = None):
        self.station = station
        self.handler = handler
        self.clock = clock
        self.heartbeat_interval_s = heartbeat_interval_s
        self.leniencies = leniencies
        self.voltage_v = voltage_v
        self.phases = phases
        self.problems: list[str] = []  # readings skipped etc., drained by the connection into its log
        self.applied: list[tuple[str, str]] = []  # leniencies applied to commands, drained into the log the same way

    async def answer(self, action: str, payload: dict) -> dict:
        """The answer payload to a checked CALL. Raises what the hub's handler raised."""
        method = getattr(self, "on_" + action)
        return await method(payload)

    # ---- station messages both versions answer alike
    async def on_Heartbeat(self, p: dict) -> dict:
        await self.handler.heartbeat(Heartbeat(self.station, self.clock()))
        return {"currentTime": self._now()}

    async def on_DataTransfer(self, p: dict) -> dict:
        await self._notify("data_transfer", "DataTransfer", f"DataTransfer from vendor {p['vendorId'][:50]!r} "
                           f"(message {p.get('messageId', '-')!r}) answered UnknownVendorId", False, p)
        return {"status": "UnknownVendorId"}

    async def on_LogStatusNotification(self, p: dict) -> dict:
        await self._notify("log", "LogStatusNotification", f"log upload {p['status']}",
                           p["status"] in ("BadMessage", "PermissionDenied", "UploadFailure", "NotSupportedOperation"), p)
        return {}

    async def on_SecurityEventNotification(self, p: dict) -> dict:
        await self._notify("security", "SecurityEventNotification",
                           f"security event {p['type']} at {p['timestamp']}"
                           + (f": {p['techInfo']}" if p.get("techInfo") else ""), True, p)
        return {}

    # ---- shared pieces
    def _time(self, value: str | None) -> datetime:
        return parse_time(value) if value else self.clock()

    def _offline_by_age(self, at: datetime) -> bool:
        return self.clock() - at > OFFLINE_AGE

    async def _notify(self, kind: str, action: str, summary: str, technician: bool, payload: dict) -> None:
        await self.handler.notification(Notification(self.station, kind, action, summary[:200], technician,
                                                     self.clock(), payload))

    def _now(self) -> str:
        return rfc3339(self.clock())

    def _rate(self, watts: float) -> tuple[str, float, int | None]:
        """(unit, limit, numberPhases) for a limit in W: W unless the station
        takes only amps (leniency limits_in_amps), then A from voltage and phases."""
        if watts < 0:
            raise ValueError(f"a power limit cannot be negative ({watts} W)")
        if "limits_in_amps" not in self.leniencies:
            return "W", round(float(watts), 1), None
        if not self.voltage_v or not self.phases:
            raise ValueError(f"{self.station} takes limits in A: its config needs voltage_v and phases")
        amps = round(float(watts) / (self.voltage_v * self.phases), 1)
        self.applied.append(("limits_in_amps", f"{watts:g} W sent as {amps:g} A at {self.voltage_v:g} V x "
                                               f"{self.phases} phases"))
        return "A", amps, self.phases

    def _schedule_fields(self) -> tuple[str, str | None]:
        if "profile_kind_relative" in self.leniencies:
            self.applied.append(("profile_kind_relative", "charging profile sent Relative, without startSchedule"))
            return "Relative", None
        return "Absolute", rfc3339(self.clock() - PROFILE_START_BACK)

    def _stack_level(self, limit: PowerLimit) -> int:
        if "stack_level_zero" in self.leniencies:
            self.applied.append(("stack_level_zero", f"stackLevel {limit.stack_level} sent as 0"))
            return 0
        return limit.stack_level

    @staticmethod
    def _profile_id(limit: PowerLimit) -> int:
        return limit.profile_id if limit.profile_id is not None else PROFILE_IDS[limit.purpose] + limit.evse

    def _schedule(self, limit: PowerLimit) -> tuple[str, dict]:
        """(chargingProfileKind, chargingSchedule) of one period holding ``limit`` from now on."""
        unit, value, phases = self._rate(limit.watts)
        kind, start = self._schedule_fields()
        period = {"start_period": 0, "limit": value}
        if phases:
            period["number_phases"] = phases
        schedule = {"charging_rate_unit": unit, "charging_schedule_period": [period]}
        if start:
            schedule["start_schedule"] = start
        return kind, schedule

    @staticmethod
    def _check_limit(limit: PowerLimit) -> None:
        if limit.purpose == "station_max" and limit.evse != 0:
            raise ValueError("a station-wide limit (ChargePointMaxProfile / ChargingStationMaxProfile) applies to "
                             "evse 0 only")
        if limit.purpose == "tx" and (limit.evse == 0 or limit.transaction_id is None):
            raise ValueError("a TxProfile needs an evse and its running transaction id")

    def _answer_status(self, action: str, result) -> tuple[str | None, str | None]:
        """(status, reason code) of a station's answer."""
        info = getattr(result, "status_info", None)
        return getattr(result, "status", None), info.get("reason_code") if isinstance(info, dict) else None

    def outcome(self, action: str, result) -> CallOutcome:
        status, reason = self._answer_status(action, result)
        outcome = status_outcome(action, self.station, status, accepted=ACCEPTED_AS.get(action, ("Accepted",)),
                                 not_supported=("NotSupported", "NotImplemented", *NOT_SUPPORTED_AS.get(action, ())),
                                 explain=EXPLAIN, result=result)
        if reason and outcome.kind != "Accepted":
            outcome = CallOutcome(outcome.kind, action, f"{outcome.message} ({reason})", status, result)
        return outcome


# Status words that mean the call did what was asked, per action (default: Accepted).
ACCEPTED_AS = {"UnlockConnector": ("Unlocked",), "ChangeAvailability": ("Accepted", "Scheduled"),
               "ClearChargingProfile": ("Accepted", "Unknown"), "ChangeConfiguration": ("Accepted", "RebootRequired"),
               "SetVariables": ("Accepted", "RebootRequired")}
NOT_SUPPORTED_AS = {"SetVariables": ("UnknownComponent", "UnknownVariable", "NotSupportedAttributeType")}
EXPLAIN = {"UnlockFailed": "the lock did not release; retry, then send a technician",
           "OngoingAuthorizedTransaction": "a transaction still runs on it",
           "UnknownConnector": "the station has no such connector",
           "Scheduled": "applied when the running transaction ends",
           "Unknown": "no such profile was installed",
           "RebootRequired": "takes effect after the station reboots",
           "Occupied": "the connector is in use", "Faulted": "the connector is faulted",
           "Unavailable": "the connector is unavailable"}


def status_outcome(action: str, station: str, status: str | None, *, accepted=("Accepted",),
                   not_supported=("NotSupported", "NotImplemented"), explain: dict | None = None,
                   result: object = None) -> CallOutcome:
    """A station's status word as Accepted / Rejected / NotSupported."""
    if status is None:
        return CallOutcome("Error", action, f"{station} answered {action} without a status", None, result)
    if status in accepted:
        kind = "Accepted"
    elif status in not_supported:
        kind = "NotSupported"
    else:
        kind = "Rejected"
    why = (explain or {}).get(status)
    text = {"Accepted": f"{station} accepted {action}",
            "NotSupported": f"{station} does not support {action}; the hub carries on without it",
            "Rejected": f"{station} refused {action} ({status})"}[kind]
    if why:
        text += f": {why}"
    return CallOutcome(kind, action, text, status, result)


def error_outcome(action: str, station: str, code: str, description: str) -> CallOutcome:
    """A CALLERROR the station answered."""
    if code in ("NotImplemented", "NotSupported"):
        return CallOutcome("NotSupported", action, f"{station} does not support {action} ({code}); the hub carries "
                           "on without it", code)
    return CallOutcome("Error", action, f"{station} answered {action} with {code}: {description[:120]}", code)
