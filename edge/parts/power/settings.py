"""The ``[power]`` section of the hub's configuration (R-E1..R-E4).

Absent: the hub never limits a charger. Present: it names the grid
connection's limit, what is kept free below it, the safe total for a silent
meter, the grid meter, and per charger what the sharing needs to know that
the charger does not say itself (its rated power per connector and a
minimum). A station that takes limits only in amps says so in its own
``[[chargers]]`` entry (the OCPP leniency ``limits_in_amps`` with
``voltage_v`` and ``phases``); the part cuts its shares to those amps.

Every number is checked here; what depends on the rest of the file (charger
ids, register maps, the fail-safe against the safe total) in
``power_problems``, called by the configuration's cross-check. Each problem
names its key and says what to write instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from edge.core.config import register_section

if TYPE_CHECKING:
    from edge.core.config import HubConfig

_Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_HostPort = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\[\]-]+:\d{1,5}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MeterRef(_Section):
    address: _HostPort
    unit: int = Field(default=1, ge=0, le=247)
    register_map: str = Field(min_length=1)
    # The meter's range: a reading beyond it is garbage, not a load (drivers/grid_meter.py).
    max_kw: float | None = Field(default=None, gt=0, le=100_000)
    timeout_s: float = Field(default=0.5, gt=0, le=10)

    @model_validator(mode="after")
    def _port(self):
        port = int(self.address.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} in {self.address!r} is out of range: use a port from 1 to 65535")
        return self


class PowerCharger(_Section):
    """What the sharing needs to know of one charger's connectors."""

    rated_kw: float | None = Field(default=None, gt=0, le=5000, description="per connector; default: the register map's rated power")
    min_kw: float | None = Field(default=None, ge=0, le=5000, description="per charging truck; default: [power] min_kw")


class PowerSection(_Section):
    grid_limit_kw: float = Field(gt=0, le=100_000, description="the grid connection's limit")
    margin_kw: float = Field(default=0.0, ge=0, description="kept free below the limit")
    fallback_kw: float = Field(ge=0, description="what all chargers together may draw while the meter is silent or stale")
    meter: MeterRef
    stale_after_s: float = Field(default=3.0, gt=0, le=60, description="a meter reading older than this is stale")
    frozen_after_s: float | None = Field(default=30.0, gt=0, le=3600, description="values unchanged this long are stale too")
    confirm_within_s: float = Field(default=2.0, gt=0, le=30, description="a limit not confirmed by then counts its charger at rated")
    # What each connector holds by itself when the hub is gone (R-E4); unset:
    # fallback_kw shared evenly among every connector.
    fail_safe_kw: float | None = Field(default=None, ge=0, le=5000)
    min_kw: float = Field(default=0.0, ge=0, le=5000, description="every charging truck's minimum, unless its charger says otherwise")
    booked_first: bool = True  # R-E3: booked trucks in their slot before ad-hoc ones
    unbooked_stay_min: float | None = Field(default=45.0, gt=0, le=24 * 60, description="an unbooked truck is taken to leave this long after it began")
    buffer_kw: float = Field(default=25.0, ge=0, le=1000, description="room a truck is given above what it draws")
    interval_s: float = Field(default=1.0, ge=0.1, le=10, description="how often the meter is read and shares are decided")
    chargers: dict[_Id, PowerCharger] = {}

    @model_validator(mode="after")
    def _budget(self):
        if self.margin_kw >= self.grid_limit_kw:
            raise ValueError(f"margin_kw {self.margin_kw:g} leaves nothing of grid_limit_kw {self.grid_limit_kw:g}; "
                             "keep the margin below the limit")
        if self.fallback_kw > self.grid_limit_kw - self.margin_kw:
            raise ValueError(f"fallback_kw {self.fallback_kw:g} is above grid_limit_kw - margin_kw "
                             f"({self.grid_limit_kw - self.margin_kw:g}); with the meter silent the site's other load "
                             "is unknown, so give a safe total below that")
        return self

    # ---- what the part asks of it

    def connector_min_kw(self, charger_id: str) -> float:
        ch = self.chargers.get(charger_id)
        return ch.min_kw if ch is not None and ch.min_kw is not None else self.min_kw

    def fail_safe_per_connector_kw(self, connectors: int) -> float:
        if self.fail_safe_kw is not None:
            return self.fail_safe_kw
        return self.fallback_kw / max(1, connectors)


def rated_kw(cfg: "HubConfig", charger_id: str) -> float | None:
    """A charger's rated power per connector: [power.chargers.ID] rated_kw,
    else its register map's rated_power_w; None when neither says."""
    ch = cfg.power.chargers.get(charger_id) if cfg.power else None
    if ch is not None and ch.rated_kw is not None:
        return ch.rated_kw
    section = next((c for c in cfg.chargers if c.id == charger_id), None)
    path = getattr(section, "register_map", None)
    if not path:
        return None
    from drivers.register_map import RegisterMapError, load_register_map

    try:
        rated = load_register_map(cfg.resolve(path)).rated_power_w
    except (RegisterMapError, OSError):
        return None
    return rated / 1000 if rated else None


def power_problems(cfg: "HubConfig") -> list[str]:
    """What in [power] does not fit the rest of the file, one sentence each."""
    p = cfg.power
    if p is None:
        return []
    problems: list[str] = []
    path = cfg.resolve(p.meter.register_map)
    try:
        ok = path.is_file()
    except (OSError, ValueError):
        ok = False
    if not ok:
        problems.append(f"power.meter.register_map: file {p.meter.register_map!r} not found "
                        "(relative paths are relative to the config file; maps ship in config/meter-maps/)")
    else:
        from drivers.meter_map import load_meter_map
        from drivers.register_map import RegisterMapError

        try:
            load_meter_map(path)
        except RegisterMapError as exc:
            problems += [f"power.meter.register_map ({p.meter.register_map}): {x}" for x in exc.problems]
    known = {c.id: c for c in cfg.chargers}
    for cid in p.chargers:
        if cid not in known:
            problems.append(f"power.chargers.{cid}: no charger {cid!r} in [[chargers]] "
                            f"(they are {', '.join(known) or 'none'})")
    connectors = 0
    for ch in cfg.chargers:
        connectors += len(ch.connectors)
        rated = rated_kw(cfg, ch.id)
        if rated is None:
            problems.append(f"power.chargers.{ch.id}.rated_kw: charger {ch.id} does not say its rated power; "
                            "give its rated kW per connector")
            continue
        low = p.connector_min_kw(ch.id)
        if low > rated:
            problems.append(f"power.chargers.{ch.id}.min_kw: minimum {low:g} kW is above the charger's rated "
                            f"{rated:g} kW per connector; lower it")
    if connectors and p.fail_safe_kw is not None and p.fail_safe_kw * connectors > p.fallback_kw + 1e-9:
        problems.append(f"power.fail_safe_kw: {p.fail_safe_kw:g} kW on each of {connectors} connectors is "
                        f"{p.fail_safe_kw * connectors:g} kW, above fallback_kw {p.fallback_kw:g}: a hub that dies "
                        f"would leave the site over its safe total; give at most {p.fallback_kw / connectors:g}")
    return problems


register_section("power", PowerSection, power_problems)  # [power]: absent, chargers are never limited
