"""Pricing arithmetic for bank-card sessions (R-P2, R-P3, R-P8). Pure: no I/O.

Rounding rule (one rule, used everywhere, as on an invoice line):
  net   = energy (kWh) x price per kWh, rounded ROUND_HALF_UP to the minor unit;
  vat   = net x VAT rate, rounded ROUND_HALF_UP to the minor unit;
  gross = net + vat (exact, no further rounding).
Computing VAT from the rounded net keeps net + vat = gross on every receipt, so
the amount settled with the terminal is the sum a person can check by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Iterable


@dataclass(frozen=True)
class Currency:
    alpha: str  # ISO 4217 letters, e.g. "EUR"
    numeric: int  # ISO 4217 number, e.g. 978 (ZVT sends this as BCD 09 78)
    minor_unit: int  # digits after the decimal point


# ISO 4217: the currencies of the countries the operator runs hubs in, and their
# neighbours. Add a row here to support another; nothing else needs to change.
CURRENCIES: dict[str, Currency] = {
    c.alpha: c
    for c in (
        Currency("EUR", 978, 2),
        Currency("GBP", 826, 2),
        Currency("CHF", 756, 2),
        Currency("CZK", 203, 2),
        Currency("DKK", 208, 2),
        Currency("NOK", 578, 2),
        Currency("PLN", 985, 2),
        Currency("SEK", 752, 2),
        Currency("HUF", 348, 2),
        Currency("RON", 946, 2),
        Currency("ISK", 352, 0),
    )
}
_BY_NUMERIC = {c.numeric: c for c in CURRENCIES.values()}


def currency(alpha: str) -> Currency:
    try:
        return CURRENCIES[alpha.upper()]
    except KeyError:
        raise ValueError(
            f"unknown currency {alpha!r}: use an ISO 4217 code among {sorted(CURRENCIES)}"
        ) from None


def currency_by_numeric(numeric: int) -> Currency:
    try:
        return _BY_NUMERIC[numeric]
    except KeyError:
        raise ValueError(
            f"unknown ISO 4217 currency number {numeric}: add it to edge.pricing.CURRENCIES"
        ) from None


def minor_unit(alpha: str) -> int:
    """Digits after the decimal point (ISO 4217), e.g. 2 for EUR, 0 for ISK."""
    return currency(alpha).minor_unit


def quantum(alpha: str) -> Decimal:
    """The smallest amount of the currency: Decimal('0.01') for EUR."""
    return Decimal(1).scaleb(-minor_unit(alpha))


def round_money(amount: Decimal, alpha: str) -> Decimal:
    """ROUND_HALF_UP to the currency's minor unit (the rule stated above)."""
    _require_decimal("amount", amount)
    return amount.quantize(quantum(alpha), rounding=ROUND_HALF_UP)


def to_minor_units(amount: Decimal, alpha: str) -> int:
    """An exact amount in minor units (cents). Refuses amounts finer than the unit."""
    _require_decimal("amount", amount)
    scaled = amount.scaleb(minor_unit(alpha))
    if scaled != scaled.to_integral_value():
        raise ValueError(
            f"amount {amount} {alpha} has more decimals than the currency allows: round it first"
        )
    return int(scaled)


def from_minor_units(units: int, alpha: str) -> Decimal:
    return Decimal(units).scaleb(-minor_unit(alpha)).quantize(quantum(alpha))


@dataclass(frozen=True)
class Tariff:
    id: str
    currency: str
    price_per_kwh: Decimal  # excluding VAT
    vat_rate: Decimal  # e.g. Decimal("0.19")
    effective_from: datetime  # UTC, timezone-aware

    def __post_init__(self) -> None:
        currency(self.currency)
        _require_decimal("price_per_kwh", self.price_per_kwh)
        _require_decimal("vat_rate", self.vat_rate)
        if self.price_per_kwh < 0:
            raise ValueError(f"tariff {self.id}: price_per_kwh is negative: send a price of 0 or more")
        if not Decimal(0) <= self.vat_rate < Decimal(1):
            raise ValueError(
                f"tariff {self.id}: vat_rate {self.vat_rate} is outside 0..1: send 0.19 for 19 %"
            )
        if self.effective_from.tzinfo is None:
            raise ValueError(f"tariff {self.id}: effective_from has no timezone: send UTC")


@dataclass(frozen=True)
class Cost:
    net: Decimal
    vat: Decimal
    gross: Decimal
    currency: str


def tariff_in_force(tariffs: Iterable[Tariff], at: datetime) -> Tariff | None:
    """The tariff whose effective_from is the latest one not after ``at`` (R-P8).

    None when no tariff has started yet. Equal start times: the highest id wins,
    so the answer never depends on the order the cloud sent them in."""
    if at.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware UTC time")
    started = [t for t in tariffs if t.effective_from <= at]
    if not started:
        return None
    return max(started, key=lambda t: (t.effective_from, t.id))


def session_cost(energy_wh: int, tariff: Tariff) -> Cost:
    """Cost of ``energy_wh`` at ``tariff``, rounded by the rule in the module docstring."""
    if isinstance(energy_wh, bool) or not isinstance(energy_wh, int):
        raise TypeError("energy_wh must be a whole number of Wh (int)")
    if energy_wh < 0:
        raise ValueError(f"energy_wh {energy_wh} is negative: check the meter readings")
    net = round_money(Decimal(energy_wh) * tariff.price_per_kwh / 1000, tariff.currency)
    vat = round_money(net * tariff.vat_rate, tariff.currency)
    return Cost(net=net, vat=vat, gross=net + vat, currency=tariff.currency)


def preauthorization_amount(
    net_amount: Decimal, vat_rate: Decimal, currency_alpha: str, include_vat: bool
) -> Decimal:
    """The amount asked of the card (R-P1): the configured net amount, plus VAT
    when the site says the hold includes VAT, rounded like a session cost."""
    _require_decimal("net_amount", net_amount)
    _require_decimal("vat_rate", vat_rate)
    if net_amount <= 0:
        raise ValueError(f"pre-authorisation amount {net_amount} must be above zero")
    net = round_money(net_amount, currency_alpha)
    if not include_vat:
        return net
    return net + round_money(net * vat_rate, currency_alpha)


def energy_cap_wh(hold_gross: Decimal, tariff: Tariff) -> int | None:
    """The largest whole Wh whose gross cost does not exceed the hold (R-P2).

    None when the tariff is free (no energy cap follows from the hold).
    Gross cost is non-decreasing in energy, so a search finds the exact edge;
    the estimate from the unrounded price is only where the search starts."""
    _require_decimal("hold_gross", hold_gross)
    if hold_gross < 0:
        raise ValueError(f"hold {hold_gross} is negative")
    if tariff.price_per_kwh == 0:
        return None
    per_wh_gross = tariff.price_per_kwh * (1 + tariff.vat_rate) / 1000
    estimate = int((hold_gross / per_wh_gross).to_integral_value(rounding=ROUND_FLOOR))

    def fits(wh: int) -> bool:
        return session_cost(wh, tariff).gross <= hold_gross

    lo = max(0, estimate - 1)
    while lo > 0 and not fits(lo):  # zero always fits: the hold is never negative
        lo = max(0, lo - max(1, lo // 1000) * 16)
    hi = lo + 1
    step = 1
    while fits(hi):
        lo = hi
        step *= 2
        hi = lo + step
    # invariant: fits(lo) and not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def settlement_amount(cost_gross: Decimal, hold: Decimal) -> Decimal:
    """The amount to settle with the terminal: the cost, never above the hold (R-P3)."""
    _require_decimal("cost_gross", cost_gross)
    _require_decimal("hold", hold)
    if cost_gross < 0 or hold < 0:
        raise ValueError("cost and hold must not be negative")
    return min(cost_gross, hold)


def _require_decimal(name: str, value: object) -> None:
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal (money is never a float), got {type(value).__name__}")
