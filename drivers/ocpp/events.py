"""The version-neutral vocabulary between the OCPP layer and the hub.

A station speaks OCPP 1.6J or 2.0.1; the hub hears only these dataclasses.
Connectors are named ``(evse, connector)``: in 1.6 the connectorId is the
evse and the connector is 1 (0/0 is the station itself); in 2.0.1 both come
from the message. Connector states use the OCPP 1.6 names of R-C1 for both
versions (2.0.1 states are built from StatusNotification and the
TransactionEvent charging state, see ``v201.ConnectorView``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Version = Literal["ocpp1.6", "ocpp2.0.1"]
VERSIONS: tuple[str, ...] = ("ocpp1.6", "ocpp2.0.1")

# R-C1: the connector states, OCPP 1.6 names.
CONNECTOR_STATES = ("Available", "Reserved", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE",
                    "Finishing", "Unavailable", "Faulted")


# ------------------------------------------------------------------ station to hub
@dataclass(frozen=True)
class StationConnected:
    station: str
    version: str
    remote: str  # address:port of the station
    at: datetime


@dataclass(frozen=True)
class StationDisconnected:
    station: str
    reason: str  # for a person: why the connection ended
    at: datetime


@dataclass(frozen=True)
class HandshakeRefused:
    """A websocket handshake refused before it reached the hub (R-O1)."""

    station: str  # the identity in the URL, percent-decoded (may be anything a scanner sent)
    remote: str
    status: int  # HTTP status answered (401), or 101 when the handshake completed and was closed
    reason: str  # unknown station | wrong password | no credentials | subprotocol mismatch | ...
    at: datetime


@dataclass(frozen=True)
class StationBooted:
    station: str
    vendor: str
    model: str
    serial: str | None
    firmware: str | None
    reason: str | None  # 2.0.1 boot reason (PowerUp, RemoteReset ...); None in 1.6
    at: datetime
    meter_type: str | None = None
    meter_serial: str | None = None


@dataclass(frozen=True)
class Heartbeat:
    station: str
    at: datetime


@dataclass(frozen=True)
class ConnectorStatus:
    station: str
    evse: int
    connector: int
    status: str  # one of CONNECTOR_STATES
    error_code: str | None  # 1.6 errorCode other than NoError; None when fine
    info: str | None
    at: datetime  # the station's timestamp (received time when it gave none)
    source: str  # the message that caused it: StatusNotification or TransactionEvent
    station_status: str  # what the station said (2.0.1: Occupied ...)


@dataclass(frozen=True)
class AuthoriseRequest:
    station: str
    id_token: str
    token_type: str  # 1.6: "IdTag" (1.6 does not say); 2.0.1: the idToken type (ISO14443, Central ...)
    at: datetime


@dataclass(frozen=True)
class IdTokenDecision:
    """The hub's answer for a card (1.6 idTagInfo, 2.0.1 idTokenInfo).

    ``status``: Accepted | Blocked | Expired | Invalid | ConcurrentTx, or the
    2.0.1-only Unknown | NoCredit | NotAllowedTypeEVSE | NotAtThisLocation |
    NotAtThisTime (sent as Invalid to a 1.6 station)."""

    status: str
    expires_at: datetime | None = None
    group: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"


@dataclass(frozen=True)
class SignedMeterValue:
    """A signed reading kept verbatim (R-O4, R-S3): ``data`` is exactly what
    the station sent (1.6: the SampledValue ``value`` string, OCMF text or the
    OCA JSON form; 2.0.1: signedMeterData)."""

    data: str
    encoding: str | None  # OCMF, EDL ... when known
    signing_method: str | None
    public_key: str | None
    context: str | None
    measurand: str | None


@dataclass(frozen=True)
class SampledValue:
    measurand: str
    value: float
    unit: str  # after scaling: Wh, W, Percent, A, V ... as the station named it
    phase: str | None = None
    context: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class MeterReading:
    """One timestamped meter value: the figures the hub uses, plus every
    numeric sample and signed value as sent."""

    at: datetime
    context: str | None
    energy_wh: float | None  # Energy.Active.Import.Register, in Wh
    power_w: float | None  # Power.Active.Import (phases summed when only per phase), in W
    soc_percent: float | None
    samples: tuple[SampledValue, ...] = ()
    signed: tuple[SignedMeterValue, ...] = ()


@dataclass(frozen=True)
class MeterValues:
    station: str
    evse: int  # 0: the station's main meter
    connector: int | None  # 2.0.1 MeterValues name only the evse
    transaction_id: str | None  # 1.6 int id as text, 2.0.1 the station's id; None outside a transaction
    readings: tuple[MeterReading, ...]


@dataclass(frozen=True)
class TransactionStarted:
    """A transaction began (1.6 StartTransaction, 2.0.1 TransactionEvent Started)."""

    station: str
    evse: int
    connector: int | None  # 2.0.1: None when the station did not name it
    transaction_id: str | None  # 2.0.1: the station's id; 1.6: None (the hub assigns it)
    id_token: str | None
    token_type: str | None
    meter_start_wh: float | None
    at: datetime
    offline: bool  # 2.0.1 offline flag; 1.6: the timestamp was more than a minute old when received
    seq_no: int | None
    reservation_id: int | None = None
    remote_start_id: int | None = None
    trigger: str | None = None
    readings: tuple[MeterReading, ...] = ()
    missing_seq_nos: tuple[int, ...] = ()

    @property
    def key(self) -> tuple:
        """Content key for recording once (R-O3): a replayed start has the same key."""
        if self.transaction_id is not None:
            return ("tx", self.station, self.transaction_id, self.seq_no)
        return ("start", self.station, self.evse, self.id_token, self.at.isoformat(), self.meter_start_wh)


@dataclass(frozen=True)
class TransactionUpdated:
    station: str
    transaction_id: str
    evse: int | None
    connector: int | None
    at: datetime
    offline: bool
    seq_no: int | None
    charging_state: str | None  # 2.0.1 chargingState when it changed
    trigger: str | None
    id_token: str | None = None
    token_type: str | None = None
    remote_start_id: int | None = None
    readings: tuple[MeterReading, ...] = ()
    missing_seq_nos: tuple[int, ...] = ()

    @property
    def key(self) -> tuple:
        return ("tx", self.station, self.transaction_id, self.seq_no)


@dataclass(frozen=True)
class TransactionEnded:
    station: str
    transaction_id: str  # 1.6: the id the hub gave (or whatever the station sends: unknown ids too)
    evse: int | None
    connector: int | None
    meter_stop_wh: float | None
    at: datetime
    reason: str  # 1.6 reason (absent = Local), 2.0.1 stoppedReason
    offline: bool
    seq_no: int | None
    id_token: str | None = None
    readings: tuple[MeterReading, ...] = ()
    missing_seq_nos: tuple[int, ...] = ()

    @property
    def key(self) -> tuple:
        if self.seq_no is not None:
            return ("tx", self.station, self.transaction_id, self.seq_no)
        return ("stop", self.station, self.transaction_id, self.at.isoformat(), self.meter_stop_wh)


@dataclass(frozen=True)
class StartAnswer:
    """The hub's answer to a started transaction. 1.6 needs ``transaction_id``
    (an integer unique and stable across hub restarts, 1..2^31-1, R-O3)."""

    decision: IdTokenDecision
    transaction_id: int | None = None


@dataclass(frozen=True)
class Notification:
    """A message the hub does not act on, typed so it can be logged and,
    where a technician cares (``technician``), evented."""

    station: str
    kind: str  # firmware | diagnostics | security | event | report | log | reservation | data_transfer
    action: str  # the OCPP action it came from
    summary: str  # one line for a person
    technician: bool
    at: datetime
    data: dict = field(default_factory=dict)  # the payload as received


# ------------------------------------------------------------------ hub to station
@dataclass(frozen=True)
class PowerLimit:
    """A charging limit for SetChargingProfile / a remote start's TxProfile.

    ``purpose``: station_max (1.6 ChargePointMaxProfile, 2.0.1
    ChargingStationMaxProfile, evse 0), tx_default (TxDefaultProfile) or tx
    (TxProfile, for the running ``transaction_id``)."""

    watts: float
    purpose: Literal["station_max", "tx_default", "tx"] = "tx_default"
    evse: int = 0
    transaction_id: str | None = None
    profile_id: int | None = None  # default: one id per purpose and evse, so each update replaces the last
    stack_level: int = 1


OUTCOMES = ("Accepted", "Rejected", "NotSupported", "Timeout", "Error")


@dataclass(frozen=True)
class CallOutcome:
    """What became of a call to a station.

    ``kind``: Accepted | Rejected | NotSupported | Timeout | Error;
    ``status`` the station's own word (Unlocked, Scheduled, Occupied ...);
    ``message`` one line for a person saying what happened."""

    kind: str
    action: str
    message: str
    status: str | None = None
    result: object | None = None  # the library's typed call_result, when answered
    superseded: bool = False  # this call was replaced in the queue by a newer one of the same kind

    @property
    def ok(self) -> bool:
        return self.kind == "Accepted"
