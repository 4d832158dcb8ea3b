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
from decimal import ROUND_FLOOR, Decimal
from typing import Iterable

from units import (  # the money table and rounding live with the other units
    CURRENCIES,
    Currency,
    currency,
    currency_by_numeric,
    from_minor_units,
    minor_unit,
    quantum,
    require_decimal,
    round_money,
    to_minor_units,
)


@dataclass(frozen=True)
class Tariff:
    id: str
    currency: str
    price_per_kwh: Decimal  # excluding VAT
    vat_rate: Decimal  # e.g. Decimal("0.19")
    effective_from: datetime  # UTC, timezone-aware

    def __post_init__(self) -> None:
        currency(self.currency)
        require_decimal("price_per_kwh", self.price_per_kwh)
        require_decimal("vat_rate", self.vat_rate)
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
    require_decimal("net_amount", net_amount)
    require_decimal("vat_rate", vat_rate)
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
    require_decimal("hold_gross", hold_gross)
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
    require_decimal("cost_gross", cost_gross)
    require_decimal("hold", hold)
    if cost_gross < 0 or hold < 0:
        raise ValueError("cost and hold must not be negative")
    return min(cost_gross, hold)
