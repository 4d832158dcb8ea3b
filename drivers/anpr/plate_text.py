"""Number plates as text: the compact and canonical forms and the mask for logs.

The camera driver masks every plate it logs (R-G8) and the hub matches plates
by the same canonical form (edge/parts/site/plates.py holds the matching rule and the
keyed hashes), so the forms live here, below both: a driver imports nothing
of the hub.

- Compact: Unicode NFKC, upper case, only letters and digits.
- Canonical: compact without a leading country sign, recognised when it is
  the camera's country field, or a known sign written as its own group
  ("NL-AB-123-C", "AB123C" with country NL and "ab 123 c" are one plate).
- Masked: first and last character of the canonical form, fixed width.
"""

from __future__ import annotations

import re
import unicodedata

# International distinguishing signs seen on European trucks, and the ISO
# 3166 codes cameras report in their country field, mapped to the sign.
COUNTRY_SIGNS: frozenset[str] = frozenset(
    {
        "A", "B", "BG", "BY", "CH", "CY", "CZ", "D", "DK", "E", "EST", "F",
        "FIN", "FL", "GB", "GR", "H", "HR", "I", "IRL", "L", "LT", "LV", "M",
        "MD", "MK", "N", "NL", "P", "PL", "RO", "S", "SK", "SLO", "SRB", "TR",
        "UA", "UK",
    }
)
ISO_TO_SIGN: dict[str, str] = {
    "AT": "A", "BE": "B", "BG": "BG", "CH": "CH", "CY": "CY", "CZ": "CZ",
    "DE": "D", "DK": "DK", "ES": "E", "EE": "EST", "FR": "F", "FI": "FIN",
    "LI": "FL", "GB": "GB", "GR": "GR", "HU": "H", "HR": "HR", "IT": "I",
    "IE": "IRL", "LU": "L", "LT": "LT", "LV": "LV", "MT": "M", "MD": "MD",
    "MK": "MK", "NO": "N", "NL": "NL", "PT": "P", "PL": "PL", "RO": "RO",
    "SE": "S", "SK": "SK", "SI": "SLO", "RS": "SRB", "TR": "TR", "UA": "UA",
    "UK": "UK", "BY": "BY",
}

_NOT_PLATE_CHAR = re.compile(r"[^A-Z0-9]")
_GROUPS = re.compile(r"[A-Z0-9]+")
# Shorter than this after dropping a sign, the "sign" was the plate itself.
_MIN_PLATE_LEN = 2


def _prepare(text: str) -> str:
    return unicodedata.normalize("NFKC", text).upper()


def compact_plate(text: str) -> str:
    """Upper case letters and digits only: the plate exactly as painted."""
    return _NOT_PLATE_CHAR.sub("", _prepare(text))


def _country_signs_for(country: str | None) -> set[str]:
    if not country:
        return set()
    c = compact_plate(country)
    return {c, ISO_TO_SIGN.get(c, c)}


def _strip_country(text: str, country: str | None) -> str | None:
    """The plate without its leading country sign, or None when it has none."""
    prepared = _prepare(text)
    groups = _GROUPS.findall(prepared)
    if len(groups) < 2:
        given = _country_signs_for(country)
        full = "".join(groups)
        # A camera may glue the sign on ("NLAB123C") when it also reports the
        # country; only then is stripping the unseparated prefix safe.
        for sign in sorted(given, key=len, reverse=True):
            if full.startswith(sign) and len(full) - len(sign) >= _MIN_PLATE_LEN + 2:
                return full[len(sign):]
        return None
    first = groups[0]
    rest = "".join(groups[1:])
    if len(rest) < _MIN_PLATE_LEN or not first.isalpha():
        return None
    if first in _country_signs_for(country) or first in COUNTRY_SIGNS:
        return rest
    return None


def exact_keys(text: str, country: str | None = None) -> tuple[str, ...]:
    """Every form a plate may be matched by exactly: canonical first."""
    full = compact_plate(text)
    stripped = _strip_country(text, country)
    if stripped and stripped != full:
        return (stripped, full)
    return (full,) if full else ()


def normalise_plate(text: str, country: str | None = None) -> str:
    """The canonical form: compact, without a recognised country sign."""
    keys = exact_keys(text, country)
    return keys[0] if keys else ""


def mask_plate(text: str, country: str | None = None) -> str:
    """A form for logs and screens: first and last character, fixed width,
    so neither the plate nor its length leaks ("NL-AB-123-C" -> "A***C")."""
    plate = normalise_plate(text, country)
    if len(plate) <= 3:
        return "***"
    return f"{plate[0]}***{plate[-1]}"
