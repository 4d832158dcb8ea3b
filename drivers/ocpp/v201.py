"""OCPP 2.0.1: station messages into the hub's vocabulary, commands into calls.

2.0.1 reports a connector as Available / Occupied / Reserved / Unavailable /
Faulted and tells the charging state in TransactionEvent; ``ConnectorView``
builds the R-C1 state (1.6 names) from both. The station names its
transactions; ``SeqTracker`` notices seqNo gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ocpp.v201 import call

from drivers.ocpp import meter
from drivers.ocpp.adapter import Adapter
from drivers.ocpp.events import (
    AuthoriseRequest,
    ConnectorStatus,
    IdTokenDecision,
    MeterValues,
    PowerLimit,
    StationBooted,
    TransactionEnded,
    TransactionStarted,
    TransactionUpdated,
)
from drivers.ocpp.rpc import rfc3339

PURPOSE = {"station_max": "ChargingStationMaxProfile", "tx_default": "TxDefaultProfile", "tx": "TxProfile"}
TRIGGERS = ("StatusNotification", "MeterValues", "BootNotification", "Heartbeat", "TransactionEvent")
CONFIG_VARIABLES = {"heartbeat": ("OCPPCommCtrlr", "HeartbeatInterval"),
                    "meter": ("SampledDataCtrlr", "TxUpdatedInterval")}
CHARGING_STATE = {"Charging": "Charging", "SuspendedEV": "SuspendedEV", "SuspendedEVSE": "SuspendedEVSE",
                  "EVConnected": "Preparing", "Idle": "Preparing"}
TECHNICIAN_EVENT_VARIABLES = frozenset({"Problem", "Fallback", "Tripped", "Overload", "Fault"})


def id_token_info(decision: IdTokenDecision) -> dict:
    info: dict = {"status": decision.status}
    if decision.expires_at is not None:
        info["cacheExpiryDateTime"] = rfc3339(decision.expires_at)
    if decision.group:
        info["groupIdToken"] = {"idToken": decision.group[:36], "type": "Central"}
    return info


@dataclass
class _Plug:
    station_status: str = "Available"
    transaction: str | None = None  # running (not offline) transaction on this connector
    charging_state: str | None = None
    ended: bool = False  # a transaction ended since the cable came in


class ConnectorView:
    """R-C1 states for 2.0.1 connectors from StatusNotification and live
    TransactionEvents (offline ones never move the state)."""

    def __init__(self):
        self._plugs: dict[tuple[int, int], _Plug] = {}
        self._tx_at: dict[str, tuple[int, int]] = {}

    def where(self, transaction_id: str) -> tuple[int, int] | None:
        return self._tx_at.get(transaction_id)

    def state(self, key: tuple[int, int]) -> str:
        plug = self._plugs.get(key, _Plug())
        s = plug.station_status
        if s != "Occupied":
            return s  # Available, Reserved, Unavailable, Faulted: same names
        if plug.transaction is not None:
            return CHARGING_STATE.get(plug.charging_state or "", "Preparing")
        return "Finishing" if plug.ended else "Preparing"

    def status(self, key: tuple[int, int], station_status: str) -> str:
        plug = self._plugs.setdefault(key, _Plug())
        if station_status != "Occupied":
            plug.ended = False  # the cable is out (or the connector is out of use)
        plug.station_status = station_status
        return self.state(key)

    def transaction(self, key: tuple[int, int], transaction_id: str, event: str, charging_state: str | None) -> str:
        plug = self._plugs.setdefault(key, _Plug())
        self._tx_at[transaction_id] = key
        if event == "Ended":
            if plug.transaction in (None, transaction_id):
                plug.transaction, plug.charging_state, plug.ended = None, None, True
            self._tx_at.pop(transaction_id, None)
        else:
            plug.transaction = transaction_id
            if charging_state:
                plug.charging_state = charging_state
        return self.state(key)


class SeqTracker:
    """The seqNos seen per transaction (since this listener started): a jump
    names the missing numbers. The hub's records are the lasting truth."""

    MAX_TRANSACTIONS = 1000

    def __init__(self):
        self._seen: dict[str, int] = {}  # transaction -> highest seqNo seen

    def see(self, transaction_id: str, seq_no: int) -> tuple[int, ...]:
        top = self._seen.get(transaction_id, -1)
        if seq_no > top:
            if len(self._seen) >= self.MAX_TRANSACTIONS and transaction_id not in self._seen:
                self._seen.pop(next(iter(self._seen)))
            self._seen[transaction_id] = seq_no
            return tuple(range(top + 1, min(seq_no, top + 1 + 100)))
        return ()

    def forget(self, transaction_id: str) -> None:
        self._seen.pop(transaction_id, None)


class Adapter201(Adapter):
    version = "ocpp2.0.1"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.view = ConnectorView()
        self.seq = SeqTracker()

    # ------------------------------------------------------------ station -> hub
    async def on_BootNotification(self, p: dict) -> dict:
        cs = p["chargingStation"]
        await self.handler.station_booted(StationBooted(
            self.station, cs["vendorName"], cs["model"], cs.get("serialNumber"), cs.get("firmwareVersion"),
            p["reason"], self.clock()))
        return {"status": "Accepted", "currentTime": self._now(), "interval": self.heartbeat_interval_s}

    async def on_StatusNotification(self, p: dict) -> dict:
        key = (p["evseId"], p["connectorId"])
        state = self.view.status(key, p["connectorStatus"])
        await self.handler.connector_status(ConnectorStatus(
            self.station, key[0], key[1], state, None, None,
            self._time(p["timestamp"]), "StatusNotification", p["connectorStatus"]))
        return {}

    async def on_Authorize(self, p: dict) -> dict:
        token = p["idToken"]
        decision = await self.handler.authorise(AuthoriseRequest(self.station, token["idToken"], token["type"],
                                                                 self.clock()))
        return {"idTokenInfo": id_token_info(decision)}

    async def on_TransactionEvent(self, p: dict) -> dict:
        info = p["transactionInfo"]
        tx = info["transactionId"]
        event = p["eventType"]
        offline = bool(p.get("offline", False))
        seq_no = p["seqNo"]
        evse = p.get("evse") or {}
        key = self.view.where(tx)
        evse_id = evse.get("id", key[0] if key else None)
        connector = evse.get("connectorId", key[1] if key and key[0] == evse_id else None)
        token = p.get("idToken") or {}
        at = self._time(p["timestamp"])
        readings = meter.readings(p.get("meterValue"), self.version, self.problems)
        missing = self.seq.see(tx, seq_no)
        trigger = p["triggerReason"]
        if event == "Started":
            answer = await self.handler.transaction_started(TransactionStarted(
                self.station, evse_id if evse_id is not None else 0, connector, tx, token.get("idToken"),
                token.get("type"), _energy(readings), at, offline, seq_no, p.get("reservationId"),
                info.get("remoteStartId"), trigger, readings, missing))
            decision = answer.decision if token else None
        elif event == "Updated":
            decision = await self.handler.transaction_updated(TransactionUpdated(
                self.station, tx, evse_id, connector, at, offline, seq_no, info.get("chargingState"), trigger,
                token.get("idToken"), token.get("type"), info.get("remoteStartId"), readings, missing))
        else:
            decision = await self.handler.transaction_ended(TransactionEnded(
                self.station, tx, evse_id, connector, _energy(readings), at, info.get("stoppedReason", "Local"),
                offline, seq_no, token.get("idToken"), readings, missing))
            self.seq.forget(tx)
        if not offline and evse_id is not None and connector is not None:
            before = self.view.state((evse_id, connector))
            after = self.view.transaction((evse_id, connector), tx, event, info.get("chargingState"))
            if after != before:
                await self.handler.connector_status(ConnectorStatus(
                    self.station, evse_id, connector, after, None, None, at, "TransactionEvent",
                    self.view._plugs[(evse_id, connector)].station_status))
        return {"idTokenInfo": id_token_info(decision)} if decision is not None and token else {}

    async def on_MeterValues(self, p: dict) -> dict:
        await self.handler.meter_values(MeterValues(
            self.station, p["evseId"], None, None, meter.readings(p["meterValue"], self.version, self.problems)))
        return {}

    async def on_FirmwareStatusNotification(self, p: dict) -> dict:
        status = p["status"]
        await self._notify("firmware", "FirmwareStatusNotification", f"firmware {status}",
                           "Failed" in status or status in ("Installed", "InvalidSignature", "InstallVerificationFailed",
                                                            "InstallRebooting"), p)
        return {}

    async def on_PublishFirmwareStatusNotification(self, p: dict) -> dict:
        await self._notify("firmware", "PublishFirmwareStatusNotification", f"firmware publishing {p['status']}",
                           "Failed" in p["status"], p)
        return {}

    async def on_NotifyEvent(self, p: dict) -> dict:
        data = p["eventData"]
        first = data[0]
        what = f"{first['component']['name']}.{first['variable']['name']} = {str(first['actualValue'])[:60]!r}"
        technician = any(d.get("trigger") == "Alerting" or d.get("techCode")
                         or d["variable"]["name"] in TECHNICIAN_EVENT_VARIABLES for d in data)
        more = f" (+{len(data) - 1} more)" if len(data) > 1 else ""
        await self._notify("event", "NotifyEvent", f"event {what}{more}", technician, p)
        return {}

    async def on_NotifyReport(self, p: dict) -> dict:
        await self._notify("report", "NotifyReport", f"report {p['requestId']} part {p['seqNo']}"
                           + (" (more to come)" if p.get("tbc") else ""), False, p)
        return {}

    async def on_NotifyMonitoringReport(self, p: dict) -> dict:
        await self._notify("report", "NotifyMonitoringReport", f"monitoring report {p['requestId']} part {p['seqNo']}",
                           False, p)
        return {}

    async def on_ReservationStatusUpdate(self, p: dict) -> dict:
        await self._notify("reservation", "ReservationStatusUpdate",
                           f"reservation {p['reservationId']} {p['reservationUpdateStatus']}", False, p)
        return {}

    async def on_NotifyChargingLimit(self, p: dict) -> dict:
        await self._notify("charging_limit", "NotifyChargingLimit", "an external charging limit "
                           f"({p['chargingLimit']['chargingLimitSource']}) is in force", True, p)
        return {}

    async def on_ClearedChargingLimit(self, p: dict) -> dict:
        await self._notify("charging_limit", "ClearedChargingLimit",
                           f"the external charging limit ({p['chargingLimitSource']}) was cleared", True, p)
        return {}

    # ------------------------------------------------------------ hub -> station
    def remote_start(self, evse: int, id_token: str, remote_start_id: int, limit: PowerLimit | None = None):
        profile = None
        if limit is not None:
            profile = self._profile(PowerLimit(limit.watts, "tx", evse, None, limit.profile_id, limit.stack_level))
        return call.RequestStartTransaction(id_token={"id_token": id_token[:36], "type": "Central"},
                                            remote_start_id=remote_start_id, evse_id=evse, charging_profile=profile)

    def remote_stop(self, transaction_id: str):
        return call.RequestStopTransaction(transaction_id=transaction_id)

    def unlock(self, evse: int, connector: int = 1):
        return call.UnlockConnector(evse_id=evse, connector_id=connector)

    def set_available(self, evse: int | None, available: bool, connector: int | None = None):
        target = None
        if evse:
            target = {"id": evse} if connector is None else {"id": evse, "connector_id": connector}
        return call.ChangeAvailability(operational_status="Operative" if available else "Inoperative", evse=target)

    def reserve(self, evse: int, reservation_id: int, id_token: str, until: datetime):
        return call.ReserveNow(id=reservation_id, expiry_date_time=rfc3339(until),
                               id_token={"id_token": id_token[:36], "type": "Central"}, evse_id=evse or None)

    def cancel_reservation(self, reservation_id: int):
        return call.CancelReservation(reservation_id=reservation_id)

    def _profile(self, limit: PowerLimit) -> dict:
        kind, schedule = self._schedule(limit)
        profile_id = self._profile_id(limit)
        profile = {"id": profile_id, "stack_level": self._stack_level(limit),
                   "charging_profile_purpose": PURPOSE[limit.purpose], "charging_profile_kind": kind,
                   "charging_schedule": [{"id": profile_id, **schedule}]}
        if limit.purpose == "tx" and limit.transaction_id is not None:
            profile["transaction_id"] = limit.transaction_id
        return profile

    def set_limit(self, limit: PowerLimit):
        self._check_limit(limit)
        return call.SetChargingProfile(evse_id=limit.evse, charging_profile=self._profile(limit))

    def clear_limit(self, purpose: str, evse: int | None = None, profile_id: int | None = None):
        if profile_id is not None:
            return call.ClearChargingProfile(charging_profile_id=profile_id)
        criteria = {"charging_profile_purpose": PURPOSE[purpose]}
        if evse is not None:
            criteria["evse_id"] = evse
        return call.ClearChargingProfile(charging_profile_criteria=criteria)

    def trigger(self, message: str, evse: int | None = None):
        if message not in TRIGGERS:
            raise ValueError(f"TriggerMessage for {message} is not offered; use one of {', '.join(TRIGGERS)}")
        return call.TriggerMessage(requested_message=message, evse=None if not evse else {"id": evse})

    def configure(self, what: str, seconds: int):
        component, variable = CONFIG_VARIABLES[what]
        return call.SetVariables(set_variable_data=[{"attribute_value": str(int(seconds)),
                                                     "component": {"name": component},
                                                     "variable": {"name": variable}}])

    def _answer_status(self, action: str, result) -> tuple[str | None, str | None]:
        if action == "SetVariables":
            results = getattr(result, "set_variable_result", None) or [{}]
            info = results[0].get("attribute_status_info") or {}
            return results[0].get("attribute_status"), info.get("reason_code")
        return super()._answer_status(action, result)


def _energy(readings) -> float | None:
    for r in reversed(readings):
        if r.energy_wh is not None:
            return r.energy_wh
    return None
