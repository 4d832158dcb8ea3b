"""Pricing arithmetic: R-P2 (energy cap under the hold), R-P3 (settle never above the hold), R-P8 (tariffs)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.parts.payments.pricing import (
    Cost,
    Tariff,
    currency,
    currency_by_numeric,
    energy_cap_wh,
    from_minor_units,
    minor_unit,
    preauthorization_amount,
    round_money,
    session_cost,
    settlement_amount,
    tariff_in_force,
    to_minor_units,
)

T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)
DEFAULT = Tariff("adhoc", "EUR", Decimal("0.399"), Decimal("0.19"), T0)
EXAMPLES = settings(max_examples=200, deadline=None)


def test_r_p8_default_tariff_cost():
    # 100 kWh at 0.399 EUR + 19 % VAT
    assert session_cost(100_000, DEFAULT) == Cost(Decimal("39.90"), Decimal("7.58"), Decimal("47.48"), "EUR")
    assert session_cost(0, DEFAULT).gross == Decimal("0.00")


@pytest.mark.parametrize(
    "wh, net, vat",
    [
        (1, "0.00", "0.00"),  # 0.000399 -> 0.00
        (13, "0.01", "0.00"),  # 0.005187 -> 0.01 (half up)
        (12, "0.00", "0.00"),  # 0.004788 -> 0.00
        (25_000, "9.98", "1.90"),  # 9.975 exactly half -> 9.98; vat 1.8962 -> 1.90
    ],
)
def test_rounding_half_up_per_line(wh, net, vat):
    cost = session_cost(wh, DEFAULT)
    assert (cost.net, cost.vat) == (Decimal(net), Decimal(vat))
    assert cost.gross == cost.net + cost.vat


def test_half_cent_vat_rounds_up():
    t = Tariff("t", "EUR", Decimal("0.5"), Decimal("0.25"), T0)
    # net 0.50 * 0.25 = 0.125 -> 0.13
    assert session_cost(1000, t).vat == Decimal("0.13")


def test_minor_units_iso_4217():
    for alpha in ("EUR", "GBP", "CHF", "CZK", "DKK", "NOK", "PLN", "SEK"):
        assert minor_unit(alpha) == 2
    assert minor_unit("ISK") == 0
    assert currency("eur").numeric == 978 and currency_by_numeric(752).alpha == "SEK"
    with pytest.raises(ValueError, match="ISO 4217"):
        currency("XXX")
    assert to_minor_units(Decimal("236.81"), "EUR") == 23681
    assert from_minor_units(23681, "EUR") == Decimal("236.81")
    with pytest.raises(ValueError, match="round it first"):
        to_minor_units(Decimal("1.005"), "EUR")
    assert round_money(Decimal("1.005"), "EUR") == Decimal("1.01")
    assert session_cost(1000, Tariff("i", "ISK", Decimal("55.5"), Decimal("0.24"), T0)).net == Decimal("56")


def test_preauthorization_amount_with_and_without_vat():
    assert preauthorization_amount(Decimal("199.00"), Decimal("0.19"), "EUR", include_vat=False) == Decimal("199.00")
    assert preauthorization_amount(Decimal("199.00"), Decimal("0.19"), "EUR", include_vat=True) == Decimal("236.81")
    with pytest.raises(ValueError):
        preauthorization_amount(Decimal("0"), Decimal("0.19"), "EUR", include_vat=True)


def test_tariff_in_force_picks_latest_started():
    later = Tariff("market-2026", "EUR", Decimal("0.35"), Decimal("0.19"), datetime(2026, 1, 1, tzinfo=timezone.utc))
    tariffs = [later, DEFAULT]
    assert tariff_in_force(tariffs, T0 - timedelta(seconds=1)) is None
    assert tariff_in_force(tariffs, T0) is DEFAULT
    assert tariff_in_force(tariffs, datetime(2025, 12, 31, 23, 59, 59, tzinfo=timezone.utc)) is DEFAULT
    assert tariff_in_force(tariffs, datetime(2026, 1, 1, tzinfo=timezone.utc)) is later
    with pytest.raises(ValueError, match="naive"):
        tariff_in_force(tariffs, datetime(2026, 1, 1))


def test_tariff_validation():
    with pytest.raises(ValueError, match="timezone"):
        Tariff("x", "EUR", Decimal("0.4"), Decimal("0.19"), datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="float"):
        Tariff("x", "EUR", 0.4, Decimal("0.19"), T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0.19"):
        Tariff("x", "EUR", Decimal("0.4"), Decimal("19"), T0)


def test_r_p2_energy_cap_for_default_hold():
    hold = Decimal("236.81")
    cap = energy_cap_wh(hold, DEFAULT)
    assert session_cost(cap, DEFAULT).gross <= hold < session_cost(cap + 1, DEFAULT).gross
    assert energy_cap_wh(Decimal("0.00"), DEFAULT) == 12  # 12 Wh still cost 0.00
    assert energy_cap_wh(hold, Tariff("free", "EUR", Decimal("0"), Decimal("0.19"), T0)) is None


def test_r_p3_settlement_never_above_hold():
    assert settlement_amount(Decimal("49.77"), Decimal("236.81")) == Decimal("49.77")
    assert settlement_amount(Decimal("240.00"), Decimal("236.81")) == Decimal("236.81")


prices = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("2.000"), places=3)
vats = st.sampled_from([Decimal(v) for v in ("0", "0.05", "0.07", "0.19", "0.2", "0.21", "0.25", "0.255")])
holds = st.decimals(min_value=Decimal("0.00"), max_value=Decimal("2000.00"), places=2)


@EXAMPLES
@given(prices, vats, holds)
def test_r_p2_cap_is_exact(price, vat, hold):
    """At the cap the gross cost never exceeds the hold; one more Wh would."""
    tariff = Tariff("p", "EUR", price, vat, T0)
    cap = energy_cap_wh(hold, tariff)
    assert session_cost(cap, tariff).gross <= hold
    assert session_cost(cap + 1, tariff).gross > hold


@EXAMPLES
@given(st.integers(0, 2_000_000), prices, vats)
def test_cost_is_exact_to_the_cent_and_monotone(wh, price, vat):
    tariff = Tariff("p", "EUR", price, vat, T0)
    cost = session_cost(wh, tariff)
    assert cost.net.as_tuple().exponent == -2 and cost.vat.as_tuple().exponent == -2
    assert cost.gross == cost.net + cost.vat
    exact_net = Decimal(wh) * price / 1000
    assert abs(cost.net - exact_net) <= Decimal("0.005")
    assert session_cost(wh + 1, tariff).gross >= cost.gross


@EXAMPLES
@given(holds, holds)
def test_r_p3_settlement_property(cost, hold):
    settled = settlement_amount(cost, hold)
    assert settled <= hold and settled <= cost and settled in (cost, hold)
