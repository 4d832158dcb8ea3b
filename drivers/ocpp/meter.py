"""Meter values of both versions into ``MeterReading`` (R-O4).

The hub needs three figures (energy register in Wh, power in W, state of
charge) and the signed values kept verbatim (R-S3). 1.6 sends every value as
text with a unit name; 2.0.1 as a number with a unit and a power of ten.
A value that is not a number is skipped and reported, never guessed; a
signed value (1.6 format SignedData, 2.0.1 signedMeterValue) is never read
as a number.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from drivers.ocpp.events import MeterReading, SampledValue, SignedMeterValue
from drivers.ocpp.rpc import parse_time

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
SOC = "SoC"
_SCALE = {"kWh": ("Wh", 1000.0), "kW": ("W", 1000.0), "kvarh": ("varh", 1000.0), "kvar": ("var", 1000.0),
          "kVA": ("VA", 1000.0)}
_PHASES = ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N")


def _signed_16(text: str, sample: dict) -> SignedMeterValue:
    """1.6 SignedData: the OCA JSON form or raw OCMF/EDL text, kept as sent."""
    encoding = signing = key = None
    if text.startswith("OCMF|"):
        encoding = "OCMF"
    else:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            encoding = str(doc.get("encodingMethod") or "") or None
            signing = str(doc.get("signingMethod") or "") or None
            key = str(doc.get("publicKey") or "") or None
            if encoding is None and str(doc.get("signedMeterData", "")).startswith("OCMF|"):
                encoding = "OCMF"
    return SignedMeterValue(text, encoding, signing, key, sample.get("context"), sample.get("measurand"))


def _signed_201(signed: dict, sample: dict) -> SignedMeterValue:
    return SignedMeterValue(signed["signedMeterData"], signed.get("encodingMethod") or None,
                            signed.get("signingMethod") or None, signed.get("publicKey") or None,
                            sample.get("context"), sample.get("measurand"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _scaled(number: float, multiplier: int, factor: float) -> float | None:
    """number x 10^multiplier x factor, or None when it is no finite float
    (a 2.0.1 multiplier is any integer the schema allows)."""
    if not -300 <= multiplier <= 300:
        return None
    try:
        value = number * 10.0 ** multiplier * factor
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def reading(meter_value: dict, version: str, problems: list[str]) -> MeterReading:
    """One MeterValue element (timestamp + sampledValue list)."""
    at: datetime = parse_time(meter_value["timestamp"])
    samples: list[SampledValue] = []
    signed: list[SignedMeterValue] = []
    context = None
    for raw in meter_value.get("sampledValue", []):
        context = context or raw.get("context")
        measurand = raw.get("measurand", ENERGY)
        if version == "ocpp1.6":
            if raw.get("format") == "SignedData":
                signed.append(_signed_16(str(raw.get("value", "")), raw))
                continue
            unit = raw.get("unit", "Wh")
            multiplier = 0
        else:
            if raw.get("signedMeterValue"):
                signed.append(_signed_201(raw["signedMeterValue"], raw))
            uom = raw.get("unitOfMeasure") or {}
            unit = uom.get("unit", "Wh")
            multiplier = uom.get("multiplier", 0)
        number = _number(raw.get("value"))
        if number is None:
            problems.append(f"{measurand} value {str(raw.get('value'))[:30]!r} is not a number: skipped")
            continue
        base, factor = _SCALE.get(unit, (unit, 1.0))
        scaled = _scaled(number, multiplier, factor)
        if scaled is None:
            problems.append(f"{measurand} value {number!r} x 10^{multiplier} {unit} is out of range: skipped")
            continue
        samples.append(SampledValue(measurand, scaled, base, raw.get("phase"), raw.get("context"),
                                    raw.get("location")))
    return MeterReading(at, context, _figure(samples, ENERGY, "Wh"), _figure(samples, POWER, "W"),
                        _figure(samples, SOC, "Percent"), tuple(samples), tuple(signed))


def _figure(samples: list[SampledValue], measurand: str, unit: str) -> float | None:
    """The station-wide value: the one without a phase, else the phases summed
    (SoC: never summed). Samples at the EV or the cable are left out for
    energy and power, which the hub wants at the outlet."""
    mine = [s for s in samples if s.measurand == measurand and s.unit == unit
            and (measurand == SOC or s.location in (None, "Outlet", "Inlet"))]
    whole = [s for s in mine if s.phase is None]
    if whole:
        return whole[-1].value
    if measurand == SOC:
        return mine[-1].value if mine else None
    phases = {s.phase: s.value for s in mine if s.phase in _PHASES}
    return sum(phases.values()) if phases else None


def readings(meter_values: list | None, version: str, problems: list[str]) -> tuple[MeterReading, ...]:
    return tuple(reading(mv, version, problems) for mv in meter_values or ())
