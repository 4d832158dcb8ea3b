"""The hub's configuration: one TOML file loaded into typed, validated objects.

A bad file is refused at load with every problem listed, each with its key
path and what was expected. Unknown keys are errors: a typo in a key must not
silently fall back to a default on a site that runs for years.
"""

from __future__ import annotations

import grp
import ipaddress
import re
import shlex
import tomllib
from datetime import time
from decimal import Decimal
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Callable, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from drivers.anpr.read import DEFAULT_MAX_BODY
from edge.core.registry import load_parts


def _port_in_range(port: int | None, where: str) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {where!r} is out of range: use a port from 1 to 65535")


def _host_port(v: str) -> str:
    _port_in_range(int(v.rsplit(":", 1)[1]), v)
    return v


def _url_port(v: str) -> None:
    """The port of a URL such as mqtt://host:1883 or tcp://host:20007, if any."""
    tail = v.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    m = re.search(r":(\d+)$", tail)
    _port_in_range(int(m.group(1)) if m else None, v)


Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
HostPort = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\[\]-]+:\d{1,5}$"), AfterValidator(_host_port)]


class ConfigError(Exception):
    """The configuration file cannot be used; ``problems`` lists every reason."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"configuration {self.path} has {len(problems)} problem(s):\n{lines}\n"
            f"Fix these keys and run `hubctl config validate {shlex.quote(self.path)}` again."
        )


class Section(BaseModel):
    # TOML has inf and nan: a timeout or quota of inf passes "gt=0" and then
    # breaks the daemon at start-up, so non-finite numbers are refused here.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HubSection(Section):
    id: Id
    name: str = ""
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "EUR"
    timezone: str = "UTC"
    vat_rate: Decimal = Field(ge=0, lt=1, description="e.g. 0.19 for 19 %")
    preauth_amount: Decimal = Field(default=Decimal("199.00"), gt=0)
    # R-P1: the configured amount is excluding VAT by default; the amount asked
    # of the card is then preauth_amount * (1 + vat_rate).
    preauth_amount_includes_vat: bool = False
    receipt_base_url: str = "https://receipts.example.invalid/r/"
    price_per_kwh: Decimal = Field(default=Decimal("0.399"), gt=0, description="default ad-hoc tariff excl. VAT (R-P8)")
    plate_secret_file: str | None = None
    # A battery-backed real-time clock: the hub's clock is trusted from boot.
    # Without one (a Raspberry Pi) it is trusted once NTP has synchronised it.
    rtc: bool = False

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as Europe/Amsterdam")
        return v


class CloudSection(Section):
    broker: str = ""  # empty: no cloud link (everything still works, R-M1)
    client_id: str = ""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=600)
    # The cloud's keys for signed downlink messages (edge/cloud/signing.py); unset:
    # every sync and command is refused, unless allow_unsigned says otherwise.
    command_key_file: str | None = None
    # Obey unsigned syncs and commands: a test bench or a broker no one else
    # can reach, never a site on a shared broker.
    allow_unsigned: bool = False
    # A command is obeyed for at most this long after the cloud made it
    # (expires - ts), and is refused when its ts is this far ahead of the
    # hub's clock (docs/threat-model.md).
    command_max_age_s: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    clock_skew_s: int = Field(default=300, ge=0, le=3600)

    @field_validator("broker")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not (v.startswith("mqtt://") or v.startswith("mqtts://")):
            raise ValueError("broker must start with mqtt:// or mqtts://, e.g. mqtts://broker.example:8883")
        if v:
            _url_port(v)
        return v


class StorageSection(Section):
    state_dir: str = "/var/lib/hubedge"
    outbox_quota_mb: float = Field(default=256, gt=0)
    outbox_near_ratio: float = Field(default=0.8, gt=0, lt=1)
    # An online copy of each database (sqlite's backup API) this often; a
    # database found damaged at start is restored from it. 0: no copies.
    backup_interval_min: float = Field(default=60, ge=0, le=7 * 24 * 60)


class ControlSection(Section):
    socket: str = "/run/hubedge/control.sock"
    group: str = "hubtech"


class ChargingSection(Section):
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    fault_after_polls: int = Field(default=3, ge=1, le=100)
    modbus_timeout_s: float = Field(default=1.0, gt=0, le=30)
    unlock_retries: int = Field(default=3, ge=0, le=20)
    unlock_retry_s: float = Field(default=2.0, ge=0, le=60)
    idle_in_bay_after_s: float = Field(default=900, gt=0)
    start_timeout_s: float = Field(default=30, gt=0, description="start command to energy flowing")
    meter_interval_s: float = Field(default=60, ge=1, le=3600, description="meter samples of charging connectors to the cloud")


class AuthSection(Section):
    connection_timeout_s: float = Field(default=60, gt=0, description="tap before plug: how long it holds (R-C3)")
    debounce_s: float = Field(default=2.0, ge=0, le=30)
    cloud_timeout_s: float = Field(default=3.0, gt=0, le=30)
    unknown_offline: Literal["refuse", "accept"] = "refuse"
    master_cards: list[str] = []
    stop_on_blocked: bool = False


class BookingSection(Section):
    horizon_days: int = Field(default=183, ge=1, le=400)
    assign_lead_min: float = Field(default=60, ge=0)
    early_grace_min: float = Field(default=30, ge=0)
    no_show_after_min: float = Field(default=30, ge=0)
    hold_horizon_min: float = Field(default=90, ge=0)
    overstay_after_min: float = Field(default=30, ge=0)


class GateSettings(Section):
    confidence_threshold: float = Field(default=0.85, ge=0, le=1)
    plate_retention_hours: float = Field(default=24, ge=0)
    no_read_review_s: float = Field(default=5.0, gt=0, le=120, description="entry presence with no plate read: manual review after this")
    pulse_ms: int = Field(default=500, ge=50, le=5000, description="length of the OPEN impulse")
    open_confirm_s: float = Field(default=5.0, gt=0, le=60, description="a barrier told to open that is not open by then is a fault")


class ConnectorRef(Section):
    id: Id
    index: int | None = Field(default=None, ge=1, le=64, description="Modbus: connector number on the charger")
    evse: int | None = Field(default=None, ge=1, le=64, description="OCPP: the evse (1.6: the connectorId)")
    connector: int = Field(default=1, ge=1, le=16, description="OCPP 2.0.1: the connector of the evse")
    free_vend: bool = False  # charge without a card; for the demo and test sites only


CHARGER_PROTOCOLS = ("modbus", "ocpp1.6", "ocpp2.0.1")


class ChargerSection(Section):
    id: Id
    protocol: Literal["modbus", "ocpp1.6", "ocpp2.0.1"] = "modbus"
    connectors: list[ConnectorRef] = Field(min_length=1)
    # Modbus
    address: HostPort | None = None
    unit: int = Field(default=1, ge=0, le=247)
    register_map: str | None = None
    # OCPP: the station identity is ``id`` (also its HTTP Basic user)
    security_profile: int | None = Field(default=None, ge=0, le=2, description="1 (default) or 2; 0 only written")
    password_file: str | None = None
    voltage_v: float | None = Field(default=None, gt=0, le=1500)
    phases: int | None = Field(default=None, ge=1, le=3)
    leniencies: list[str] = []

    @property
    def is_ocpp(self) -> bool:
        return self.protocol.startswith("ocpp")

    @property
    def profile(self) -> int:
        return 1 if self.security_profile is None else self.security_profile


class OcppSection(Section):
    """The hub's OCPP-J endpoint for the stations on its site network (R-O1)."""

    listen: HostPort = "0.0.0.0:9000"
    heartbeat_interval_s: int = Field(default=300, ge=1, le=86_400, description="sent in the BootNotification answer")
    offline_after_s: float = Field(default=600, gt=0, le=86_400, description="silent this long: connectors Unavailable")
    max_frame_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    meter_interval_s: int = Field(default=60, ge=1, le=3600, description="meter sample interval asked of stations")
    tls_cert: str | None = None
    tls_key: str | None = None


class BaySection(Section):
    id: Id
    connector: Id
    connector_type: Literal["CCS", "MCS"]
    side: Literal["left", "right"]
    bookable: bool = True
    length_m: float = Field(default=25.0, gt=0, le=60)


class TerminalSection(Section):
    id: Id
    port: str = Field(min_length=1, description="pyserial URL or device, or tcp://host:port")
    connectors: list[Id] = Field(min_length=1)
    password: str = "000000"
    t3_command_s: float = Field(default=5.0, gt=0, le=60, description="ZVT T3: command to the terminal's 80 00 / 84 xx")
    t4_completion_s: float = Field(default=180.0, gt=0, le=600, description="ZVT T4: 80 00 to completion (the card holder is typing)")
    end_of_day: str = Field(default="03:00", description='daily end-of-day (ZVT 06 50) at this local time of [hub] timezone, or "off"')

    @field_validator("port")
    @classmethod
    def _tcp_port(cls, v: str) -> str:
        if v.startswith("tcp://"):
            _url_port(v)
        return v

    @field_validator("end_of_day", mode="before")
    @classmethod
    def _end_of_day(cls, v: object) -> object:
        if isinstance(v, time) and not (v.second or v.microsecond or v.tzinfo):
            v = v.strftime("%H:%M")  # a TOML local time, end_of_day = 03:00:00
        if isinstance(v, str) and (v == "off" or re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", v)):
            return v
        raise ValueError("expected a local time HH:MM such as 03:00, or off")


class ReaderSection(Section):
    id: Id
    path: str = Field(min_length=1)
    connector: Id

    @field_validator("path")
    @classmethod
    def _udp_port(cls, v: str) -> str:
        m = re.fullmatch(r"udp:.*:(\d+)", v)
        _port_in_range(int(m.group(1)) if m else None, v)
        return v


class BarrierRef(Section):
    address: HostPort
    unit: int = Field(default=1, ge=0, le=247)


class CameraRef(Section):
    listen: HostPort
    vendor: Literal["hikvision", "axis"]
    secret: str | None = None
    allow: list[str] = []
    # The largest body the camera may post: its read with the pictures it
    # attaches (a Hikvision scene picture is a megabyte or more). Pictures are
    # streamed past, so this bounds the time a read may take, not memory.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, ge=64 * 1024, le=64 * 1024 * 1024)

    @field_validator("allow")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not an IP address or network such as 192.0.2.0/24")
        return v


class GateSection(Section):
    id: Id
    role: Literal["entry", "exit"]
    barrier: BarrierRef
    camera: CameraRef | None = None


class LoggingSection(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class HubConfig(Section):
    hub: HubSection
    cloud: CloudSection = CloudSection()
    storage: StorageSection = StorageSection()
    control: ControlSection = ControlSection()
    charging: ChargingSection = ChargingSection()
    auth: AuthSection = AuthSection()
    bookings: BookingSection = BookingSection()
    gate: GateSettings = GateSettings()
    logging: LoggingSection = LoggingSection()
    ocpp: OcppSection = OcppSection()
    chargers: list[ChargerSection] = []
    bays: list[BaySection] = []
    terminals: list[TerminalSection] = []
    readers: list[ReaderSection] = []
    gates: list[GateSection] = []

    # Where the file was read from: relative paths in it are relative to it.
    source: str = Field(default="", exclude=True)
    # The parts' own sections (register_section), by name; absent ones are None.
    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    def __getattr__(self, name: str):
        if name in SECTIONS:  # cfg.power: the part's section as its model parsed it
            return (self.__pydantic_private__ or {}).get("_sections", {}).get(name)
        return super().__getattr__(name)

    def connector_ids(self) -> list[str]:
        return [c.id for ch in self.chargers for c in ch.connectors]

    def bay_for_connector(self, connector_id: str) -> BaySection | None:
        return next((b for b in self.bays if b.connector == connector_id), None)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        if not p.is_absolute() and self.source:
            p = Path(self.source).parent / p
        return p


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict) -> str:
    kind = err.get("type", "")
    msg = err.get("msg", "")
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against config/README.md)"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        if "\\d{1,5}$" in pattern:
            return "expected host:port, e.g. 127.0.0.1:502"
        if "[A-Z]{2}" in pattern:
            return "expected an ISO 3166 country code such as NL"
        if "[A-Z]{3}" in pattern:
            return "expected an ISO 4217 currency code such as EUR"
        return "expected an id of letters, digits, '.', '_' or '-' (at most 64)"
    got = err.get("input")
    if isinstance(got, (str, int, float, bool)) and kind not in ("missing",):
        return f"{msg} (got {got!r})"
    return msg


def _is_file(path: Path) -> bool:
    # A name too long for the file system (or with a NUL) is an absent file,
    # not a crash of the loader.
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _check_modbus_charger(cfg: HubConfig, ci: int, ch: ChargerSection) -> list[str]:
    problems: list[str] = []
    where = f"chargers[{ci}]"
    for key in ("address", "register_map"):
        if getattr(ch, key) is None:
            problems.append(f"{where}.{key}: required key is missing (a Modbus charger needs its address and register map)")
    for key in ("security_profile", "password_file", "voltage_v", "phases"):
        if getattr(ch, key) is not None:
            problems.append(f"{where}.{key}: only for OCPP chargers; set protocol = \"ocpp1.6\" or \"ocpp2.0.1\", "
                            f"or remove the key")
    if ch.leniencies:
        problems.append(f"{where}.leniencies: only for OCPP chargers; remove the key")
    indexes: set[int] = set()
    for ki, c in enumerate(ch.connectors):
        if c.index is None:
            problems.append(f"{where}.connectors[{ki}].index: required key is missing (the connector's number on the "
                            f"Modbus charger, from 1)")
        elif c.index in indexes:
            problems.append(f"{where}.connectors[{ki}].index: index {c.index} used twice on this charger")
        else:
            indexes.add(c.index)
        if c.evse is not None:
            problems.append(f"{where}.connectors[{ki}].evse: only for OCPP chargers; a Modbus connector has an index")
    if ch.register_map is None:
        return problems
    path = cfg.resolve(ch.register_map)
    if not _is_file(path):
        problems.append(f"{where}.register_map: file {ch.register_map!r} not found (relative paths are relative to the config file)")
        return problems
    from drivers.register_map import RegisterMapError, load_register_map

    try:
        rmap = load_register_map(path)
    except RegisterMapError as exc:
        return problems + [f"{where}.register_map ({ch.register_map}): {p}" for p in exc.problems]
    limit = getattr(rmap, "max_connectors", None)
    for ki, c in enumerate(ch.connectors):
        if limit and c.index and c.index > limit:
            problems.append(
                f"{where}.connectors[{ki}].index: {c.index} is beyond the {limit} connectors of model {rmap.model!r}"
            )
    return problems


def _check_ocpp_charger(cfg: HubConfig, ci: int, ch: ChargerSection) -> list[str]:
    """An OCPP station (R-O1): its identity, password, connectors, leniencies."""
    from drivers.ocpp.leniency import check_names
    from edge.cloud.signing import KeyFileError

    problems: list[str] = []
    where = f"chargers[{ci}]"
    for key in ("address", "register_map"):
        if getattr(ch, key) is not None:
            problems.append(f"{where}.{key}: not for an OCPP charger (the station connects to the hub's [ocpp] "
                            f"listen address); remove the key")
    if len(ch.id) > 48:
        problems.append(f"{where}.id: an OCPP station identity has at most 48 characters (it is the Basic-auth user)")
    places: set[tuple[int, int]] = set()
    for ki, c in enumerate(ch.connectors):
        if c.evse is None:
            problems.append(f"{where}.connectors[{ki}].evse: required key is missing (the station's evse number; "
                            f"in 1.6 its connectorId)")
            continue
        if c.index is not None:
            problems.append(f"{where}.connectors[{ki}].index: only for Modbus chargers; an OCPP connector has evse "
                            f"(and connector)")
        if ch.protocol == "ocpp1.6" and c.connector != 1:
            problems.append(f"{where}.connectors[{ki}].connector: OCPP 1.6 has one connector per connectorId; "
                            f"use evse = N and leave connector at 1")
        if (c.evse, c.connector) in places:
            problems.append(f"{where}.connectors[{ki}]: evse {c.evse} connector {c.connector} used twice on this charger")
        places.add((c.evse, c.connector))
    try:
        check_names(ch.leniencies)
    except ValueError as exc:
        problems.append(f"{where}.leniencies: {exc}")
    if ch.profile == 0:
        if ch.password_file:
            problems.append(f"{where}.password_file: security_profile 0 takes no password; remove one of the two")
    elif not ch.password_file:
        problems.append(f"{where}.password_file: required for security_profile {ch.profile} (the station's HTTP Basic "
                        f"password, a file of mode 0600); or write security_profile = 0 for no password")
    else:
        try:
            ocpp_password(cfg.resolve(ch.password_file))
        except KeyFileError as exc:
            problems.append(f"{where}.password_file: {exc}")
    if ch.profile == 2 and not cfg.ocpp.tls_cert:
        problems.append(f"{where}.security_profile: 2 needs TLS: set [ocpp] tls_cert and tls_key")
    if "limits_in_amps" in ch.leniencies and not (ch.voltage_v and ch.phases):
        problems.append(f"{where}.voltage_v: the leniency limits_in_amps needs voltage_v and phases to turn watts "
                        f"into amps")
    return problems


def _check_ocpp_section(cfg: HubConfig) -> list[str]:
    problems: list[str] = []
    o = cfg.ocpp
    if bool(o.tls_cert) != bool(o.tls_key):
        problems.append("ocpp.tls_cert: TLS needs both tls_cert and tls_key (or neither, for ws://)")
    for key in ("tls_cert", "tls_key"):
        v = getattr(o, key)
        if v and not _is_file(cfg.resolve(v)):
            problems.append(f"ocpp.{key}: file {v!r} not found")
    if o.offline_after_s <= o.heartbeat_interval_s:
        problems.append(f"ocpp.offline_after_s: {o.offline_after_s:g} s is not longer than heartbeat_interval_s "
                        f"({o.heartbeat_interval_s} s): every station would look offline between heartbeats; "
                        f"use at least twice the heartbeat interval")
    for gi, g in enumerate(cfg.gates):
        if g.camera and any(c.is_ocpp for c in cfg.chargers) and g.camera.listen == o.listen:
            problems.append(f"ocpp.listen: {o.listen} is also gate {g.id!r}'s camera listen address")
    return problems


def ocpp_password(path: Path) -> bytes:
    """A station's HTTP Basic password from its file (mode 0600, like the
    command key): the file's content without a trailing newline, as bytes.
    A 1.6 binary AuthorizationKey may be written as 40 hex digits."""
    from edge.cloud.signing import KeyFileError, read_private_file

    raw = read_private_file(path, "OCPP password file", "password_file").rstrip(b"\r\n")
    if not raw:
        raise KeyFileError(f"OCPP password file {path} is empty: write the station's password in it (one line)")
    if len(raw) > 64:
        raise KeyFileError(f"OCPP password file {path} holds more than 64 bytes; OCPP passwords have 16 to 40")
    return raw


def _cross_check(cfg: HubConfig) -> list[str]:
    problems: list[str] = []

    def dupes(items, what: str, key: str):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                problems.append(f"{key}[{i}].id: duplicate {what} id {item.id!r}; every {what} needs its own id")
            seen.add(item.id)

    dupes(cfg.chargers, "charger", "chargers")
    dupes(cfg.bays, "bay", "bays")
    dupes(cfg.terminals, "terminal", "terminals")
    dupes(cfg.readers, "reader", "readers")
    dupes(cfg.gates, "gate", "gates")

    connectors: dict[str, str] = {}
    for ci, ch in enumerate(cfg.chargers):
        for ki, c in enumerate(ch.connectors):
            if c.id in connectors:
                problems.append(
                    f"chargers[{ci}].connectors[{ki}].id: connector {c.id!r} is already on charger {connectors[c.id]!r}"
                )
            connectors[c.id] = ch.id
        if ch.is_ocpp:
            problems += _check_ocpp_charger(cfg, ci, ch)
        else:
            problems += _check_modbus_charger(cfg, ci, ch)
    problems += _check_ocpp_section(cfg)

    bay_of: dict[str, str] = {}
    for bi, bay in enumerate(cfg.bays):
        if bay.connector not in connectors:
            problems.append(f"bays[{bi}].connector: no connector {bay.connector!r} in [[chargers]]")
        elif bay.connector in bay_of:
            problems.append(f"bays[{bi}].connector: connector {bay.connector!r} already belongs to bay {bay_of[bay.connector]!r}")
        bay_of[bay.connector] = bay.id
    for ti, t in enumerate(cfg.terminals):
        for k, c in enumerate(t.connectors):
            if c not in connectors:
                problems.append(f"terminals[{ti}].connectors[{k}]: no connector {c!r} in [[chargers]]")
    for ri, r in enumerate(cfg.readers):
        if r.connector not in connectors:
            problems.append(f"readers[{ri}].connector: no connector {r.connector!r} in [[chargers]]")
        if not (r.path.startswith(("usb", "tty:", "udp:"))):
            problems.append(f"readers[{ri}].path: {r.path!r} is not an nfcpy path; expected usb, usb:VID:PID, tty:AMA0:pn532 or udp:HOST:PORT")
    listens: dict[str, str] = {}
    for gi, g in enumerate(cfg.gates):
        if g.camera:
            if g.camera.listen in listens:
                problems.append(f"gates[{gi}].camera.listen: {g.camera.listen} is also used by gate {listens[g.camera.listen]!r}")
            listens[g.camera.listen] = g.id
    if cfg.cloud.broker.startswith("mqtts://"):
        for key in ("ca_file", "cert_file", "key_file"):
            if not getattr(cfg.cloud, key):
                problems.append(f"cloud.{key}: required with an mqtts:// broker (the hub authenticates with a client certificate, R-M5)")
    for key in ("ca_file", "cert_file", "key_file"):
        v = getattr(cfg.cloud, key)
        if v and not _is_file(cfg.resolve(v)):
            problems.append(f"cloud.{key}: file {v!r} not found")
    from edge.cloud.signing import KeyFileError, load_keys, read_private_file

    if cfg.cloud.command_key_file:
        try:
            load_keys(cfg.resolve(cfg.cloud.command_key_file))
        except KeyFileError as exc:
            problems.append(f"cloud.command_key_file: {exc}")
        if cfg.cloud.allow_unsigned:
            problems.append("cloud.allow_unsigned: true beside a command_key_file; a hub with the cloud's key obeys "
                            "only signed messages, so remove allow_unsigned")
    if cfg.cloud.key_file and _is_file(cfg.resolve(cfg.cloud.key_file)):
        # The client certificate's private key proves to the broker that this
        # is the hub: as secret as the command key, checked the same way.
        try:
            read_private_file(cfg.resolve(cfg.cloud.key_file), "TLS key file", "key_file")
        except KeyFileError as exc:
            problems.append(f"cloud.key_file: {exc}")
    if cfg.hub.plate_secret_file and not _is_file(cfg.resolve(cfg.hub.plate_secret_file)):
        problems.append(f"hub.plate_secret_file: file {cfg.hub.plate_secret_file!r} not found")
    for section in SECTIONS.values():
        if section.check is not None:
            problems += section.check(cfg)
    return problems


@dataclass(frozen=True)
class PartSection:
    """A part's own table of the file: its model, and what in it must fit the
    rest of the file (one sentence per problem), checked after the rest."""

    model: type[BaseModel]
    check: Callable[[HubConfig], list[str]] | None = None


# section name -> its PartSection, filled by the parts when they are imported.
SECTIONS: dict[str, PartSection] = {}


def register_section(name: str, model: type[BaseModel], check: Callable[[HubConfig], list[str]] | None = None) -> None:
    """A part's ``[name]`` table: parsed by ``model`` (its problems named
    ``name.key`` like every other section's), read back as ``cfg.<name>``
    (None when the file has no such table)."""
    if name in HubConfig.model_fields:
        raise ValueError(f"[{name}] is a section of the core")
    SECTIONS[name] = PartSection(model, check)


def parse_config(data: dict, source: str | Path = "") -> HubConfig:
    """Validate a parsed TOML document. Raises ConfigError with every problem."""
    if "source" in data:
        # "source" is where the file was read from, set by the loader, not a key.
        raise ConfigError(source or "<config>", ["source: unknown key (check its spelling against config/README.md)"])
    load_parts()  # the parts register their sections
    own = {name: data[name] for name in SECTIONS if name in data}
    problems: list[str] = []
    try:
        cfg = HubConfig.model_validate({**{k: v for k, v in data.items() if k not in own}, "source": str(source)})
    except ValidationError as exc:
        cfg = None
        problems = [f"{_loc(e['loc'])}: {_describe(e)}" for e in exc.errors()]
    sections = {}
    for name, raw in own.items():
        try:
            sections[name] = SECTIONS[name].model.model_validate(raw)
        except ValidationError as exc:
            problems += [f"{_loc((name, *e['loc']))}: {_describe(e)}" for e in exc.errors()]
    if cfg is None or problems:
        raise ConfigError(source or "<config>", problems)
    cfg._sections = sections
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError(source or "<config>", problems)
    return cfg


def load_config(path: str | Path) -> HubConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}; check the path and its permissions"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, ["the file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError(path, ["not valid TOML for a hub: arrays or tables nested too deeply"]) from None
    return parse_config(data, path.resolve())


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
