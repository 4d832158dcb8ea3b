"""OCPP 1.6J: station messages into the hub's vocabulary, commands into calls.

The connectorId is the evse (connector 1); connectorId 0 is the station.
Transaction ids are integers the hub assigns (``StartAnswer.transaction_id``).
"""

from __future__ import annotations

from datetime import datetime

from ocpp.v16 import call

from drivers.ocpp import meter
from drivers.ocpp.adapter import Adapter, HubBug
from drivers.ocpp.events import (
    AuthoriseRequest,
    ConnectorStatus,
    IdTokenDecision,
    MeterValues,
    PowerLimit,
    StationBooted,
    TransactionEnded,
    TransactionStarted,
)
from drivers.ocpp.rpc import rfc3339

STATUSES_16 = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
PURPOSE = {"station_max": "ChargePointMaxProfile", "tx_default": "TxDefaultProfile", "tx": "TxProfile"}
TRIGGERS = ("StatusNotification", "MeterValues", "BootNotification", "Heartbeat")
CONFIG_KEYS = {"heartbeat": "HeartbeatInterval", "meter": "MeterValueSampleInterval"}
TX_ID_MAX = 2**31 - 1  # many stations keep the transaction id in 32 bits


def id_tag_info(decision: IdTokenDecision) -> dict:
    info: dict = {"status": decision.status if decision.status in STATUSES_16 else "Invalid"}
    if decision.expires_at is not None:
        info["expiryDate"] = rfc3339(decision.expires_at)
    if decision.group:
        info["parentIdTag"] = decision.group[:20]
    return info


def _connector(connector_id: int) -> tuple[int, int]:
    return connector_id, (1 if connector_id > 0 else 0)


class Adapter16(Adapter):
    version = "ocpp1.6"

    # ------------------------------------------------------------ station -> hub
    async def on_BootNotification(self, p: dict) -> dict:
        await self.handler.station_booted(StationBooted(
            self.station, p["chargePointVendor"], p["chargePointModel"],
            p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"), p.get("firmwareVersion"), None,
            self.clock(), p.get("meterType"), p.get("meterSerialNumber")))
        return {"status": "Accepted", "currentTime": self._now(), "interval": self.heartbeat_interval_s}

    async def on_StatusNotification(self, p: dict) -> dict:
        evse, connector = _connector(p["connectorId"])
        error = p["errorCode"]
        await self.handler.connector_status(ConnectorStatus(
            self.station, evse, connector, p["status"], None if error == "NoError" else error,
            p.get("info") or p.get("vendorErrorCode"), self._time(p.get("timestamp")), "StatusNotification",
            p["status"]))
        return {}

    async def on_Authorize(self, p: dict) -> dict:
        decision = await self.handler.authorise(AuthoriseRequest(self.station, p["idTag"], "IdTag", self.clock()))
        return {"idTagInfo": id_tag_info(decision)}

    async def on_StartTransaction(self, p: dict) -> dict:
        evse, connector = _connector(p["connectorId"])
        at = self._time(p["timestamp"])
        answer = await self.handler.transaction_started(TransactionStarted(
            self.station, evse, connector, None, p["idTag"], "IdTag", float(p["meterStart"]), at,
            self._offline_by_age(at), None, p.get("reservationId")))
        tx = answer.transaction_id
        if type(tx) is not int or not 0 < tx <= TX_ID_MAX:
            raise HubBug(f"the hub gave {self.station} transaction id {tx!r}; 1.6 needs an integer 1..{TX_ID_MAX}")
        return {"transactionId": tx, "idTagInfo": id_tag_info(answer.decision)}

    async def on_StopTransaction(self, p: dict) -> dict:
        at = self._time(p["timestamp"])
        decision = await self.handler.transaction_ended(TransactionEnded(
            self.station, str(p["transactionId"]), None, None, float(p["meterStop"]), at, p.get("reason", "Local"),
            self._offline_by_age(at), None, p.get("idTag"),
            meter.readings(p.get("transactionData"), self.version, self.problems)))
        if decision is not None and p.get("idTag"):
            return {"idTagInfo": id_tag_info(decision)}
        return {}

    async def on_MeterValues(self, p: dict) -> dict:
        evse, connector = _connector(p["connectorId"])
        tx = p.get("transactionId")
        await self.handler.meter_values(MeterValues(
            self.station, evse, connector, None if tx is None else str(tx),
            meter.readings(p["meterValue"], self.version, self.problems)))
        return {}

    async def on_DiagnosticsStatusNotification(self, p: dict) -> dict:
        await self._notify("diagnostics", "DiagnosticsStatusNotification", f"diagnostics upload {p['status']}",
                           p["status"] == "UploadFailed", p)
        return {}

    async def on_FirmwareStatusNotification(self, p: dict) -> dict:
        status = p["status"]
        await self._notify("firmware", "FirmwareStatusNotification", f"firmware {status}",
                           status in ("DownloadFailed", "InstallationFailed", "Installed"), p)
        return {}

    async def on_SignedFirmwareStatusNotification(self, p: dict) -> dict:
        status = p["status"]
        await self._notify("firmware", "SignedFirmwareStatusNotification", f"signed firmware {status}",
                           status not in ("Downloading", "Downloaded", "Installing", "Idle", "DownloadScheduled",
                                          "DownloadPaused", "InstallScheduled", "InstallRebooting",
                                          "SignatureVerified"), p)
        return {}

    # ------------------------------------------------------------ hub -> station
    def remote_start(self, evse: int, id_token: str, remote_start_id: int, limit: PowerLimit | None = None):
        profile = None
        if limit is not None:
            profile = self._profile(PowerLimit(limit.watts, "tx", evse, None, limit.profile_id, limit.stack_level))
        return call.RemoteStartTransaction(id_tag=id_token[:20], connector_id=evse, charging_profile=profile)

    def remote_stop(self, transaction_id: str):
        return call.RemoteStopTransaction(transaction_id=int(transaction_id))

    def unlock(self, evse: int, connector: int = 1):
        return call.UnlockConnector(connector_id=evse)

    def set_available(self, evse: int | None, available: bool):
        return call.ChangeAvailability(connector_id=evse or 0, type="Operative" if available else "Inoperative")

    def reserve(self, evse: int, reservation_id: int, id_token: str, until: datetime):
        return call.ReserveNow(connector_id=evse, expiry_date=rfc3339(until), id_tag=id_token[:20],
                               reservation_id=reservation_id)

    def cancel_reservation(self, reservation_id: int):
        return call.CancelReservation(reservation_id=reservation_id)

    def _profile(self, limit: PowerLimit) -> dict:
        kind, schedule = self._schedule(limit)
        profile = {"charging_profile_id": self._profile_id(limit), "stack_level": self._stack_level(limit),
                   "charging_profile_purpose": PURPOSE[limit.purpose], "charging_profile_kind": kind,
                   "charging_schedule": schedule}
        if limit.purpose == "tx" and limit.transaction_id is not None:
            profile["transaction_id"] = int(limit.transaction_id)
        return profile

    def set_limit(self, limit: PowerLimit):
        self._check_limit(limit)
        return call.SetChargingProfile(connector_id=limit.evse, cs_charging_profiles=self._profile(limit))

    def clear_limit(self, purpose: str, evse: int | None = None, profile_id: int | None = None):
        return call.ClearChargingProfile(id=profile_id, connector_id=evse, charging_profile_purpose=PURPOSE[purpose])

    def trigger(self, message: str, evse: int | None = None):
        if message not in TRIGGERS:
            raise ValueError(f"TriggerMessage for {message} is not offered; use one of {', '.join(TRIGGERS)}")
        return call.TriggerMessage(requested_message=message, connector_id=evse)

    def configure(self, what: str, seconds: int):
        return call.ChangeConfiguration(key=CONFIG_KEYS[what], value=str(int(seconds)))
