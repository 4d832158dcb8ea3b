"""Tariffs as the cloud syncs them (R-P8): kept as a document set by the
payments part, which registers the ``tariffs`` sync kind with the cloud link.

A batch applies whole or not at all; a tariff the hub could not price, or in
another currency than the site's, is refused (stored, it would never be in
force while the cloud believed it was).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation

from tinydb import Query

from edge.cloud.downlink import Rejected
from edge.core.store import Store
from units import CURRENCIES, parse_rfc3339, rfc3339


def _decimal(value: str, field: str, tariff_id: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise Rejected("rejected", f"tariff {tariff_id}: {field} {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise Rejected("rejected", f"tariff {tariff_id}: {field} must be a finite decimal")
    return number


def apply_tariffs(store: Store, message: dict, *, currency: str | None = None) -> dict:
    """Upsert the message's tariffs (by id) into store.documents("tariffs"),
    all or none: one bad tariff refuses the whole batch. A tariff in a currency
    the hub cannot price, or other than the site's ``currency``, is refused:
    stored, it would never be in force while the cloud believed it was."""
    seen: set[str] = set()
    clean = []
    for tariff in message["tariffs"]:
        tid = tariff["id"]
        if tid in seen:
            raise Rejected("rejected", f"tariff {tid} appears twice in the batch: send each tariff once; nothing applied")
        seen.add(tid)
        if tariff["currency"] not in CURRENCIES:
            raise Rejected("rejected", f"tariff {tid}: currency {tariff['currency']} is not one this hub can price "
                                       f"(known: {', '.join(sorted(CURRENCIES))}); nothing applied")
        if currency is not None and tariff["currency"] != currency:
            raise Rejected("rejected", f"tariff {tid}: currency {tariff['currency']} is not this site's currency "
                                       f"{currency}: send the tariff in {currency}; nothing applied")
        price = _decimal(tariff["price_per_kwh"], "price_per_kwh", tid)
        vat = _decimal(tariff["vat_rate"], "vat_rate", tid)
        if price > 100:
            raise Rejected("rejected", f"tariff {tid}: price_per_kwh {tariff['price_per_kwh']} per kWh is implausible "
                                       f"(over 100): check the unit (currency units per kWh); nothing applied")
        if not vat < 1:
            raise Rejected("rejected", f"tariff {tid}: vat_rate {tariff['vat_rate']} must be a fraction below 1 "
                                       f"(send 0.19 for 19 %); nothing applied")
        clean.append({"id": tid, "currency": tariff["currency"], "price_per_kwh": tariff["price_per_kwh"],
                      "vat_rate": tariff["vat_rate"],
                      "effective_from": rfc3339(parse_rfc3339(tariff["effective_from"]))})
    T = Query()
    with store.documents_batch("tariffs") as db:
        for tariff in clean:
            db.upsert(tariff, T.id == tariff["id"])
    return {"counts": {"upserted": len(clean)}}


def tariff_in_force(tariffs: Iterable[Mapping], now: datetime, currency: str | None = None) -> Mapping | None:
    """The tariff with the latest effective_from not after ``now`` (R-P8);
    equal start times: the highest id wins, as in edge.parts.payments.pricing.tariff_in_force,
    so the answer never depends on the order the tariffs were stored in."""
    best, best_key = None, None
    for tariff in tariffs:
        if currency is not None and tariff["currency"] != currency:
            continue
        since = parse_rfc3339(tariff["effective_from"])
        key = (since, tariff["id"])
        if since <= now and (best_key is None or key > best_key):
            best, best_key = tariff, key
    return best
