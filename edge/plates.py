"""Number plates: normalising, keyed hashing and masking (R-G4, R-G8).

The matching rule, decided once for the whole hub:

1. A plate is compacted: Unicode NFKC, upper case, and everything that is not
   a letter or digit dropped (spaces, dashes, dots, the euro band's stars).
2. A leading country sign ("NL-", "D ", "CH ") is recognised when it is the
   camera's country field, or a known sign written as its own group. The
   *canonical* form drops it; the compact form with the sign kept is still
   an *exact key* too. That way "NL-AB-123-C", "AB123C" with country NL and
   "ab 123 c" are one plate, and a Düsseldorf plate "D-AB 123" (where "D" is
   the district, not Germany) still matches a booking written "DAB123".
3. Exact keys are matched first. Only when no exact key matches does the
   matcher compare *confusion classes*: O/0, I/1, B/8, S/5, Z/2 folded to
   the digit. A confusion match counts only if the folded key belongs to
   exactly one booked plate in the whole book, so two different real plates
   that fold together ("AB1S" and "A81S") never open for each other: the
   read goes to manual review instead.

Raw plates never reach logs (R-G8): logs carry `mask_plate` or `log_ref` of
the keyed hash. The hash is HMAC-SHA256 over the canonical form with the
site secret, so a leaked store cannot be reversed by hashing every plate.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass

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

# Letters a plate camera commonly reads in place of a digit, folded to it.
_CONFUSIONS = str.maketrans({"O": "0", "I": "1", "B": "8", "S": "5", "Z": "2"})
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


def confusion_form(normalised: str) -> str:
    """Fold the letters cameras mistake for digits (O/0, I/1, B/8, S/5, Z/2)."""
    return normalised.translate(_CONFUSIONS)


def plate_hash(normalised: str, secret: bytes) -> str:
    """Keyed hash (HMAC-SHA256, hex) of a normalised plate (R-G8)."""
    if not secret:
        raise ValueError("plate hashing needs the site secret: set it in the hub configuration")
    return hmac.new(secret, normalised.encode("ascii", "ignore"), hashlib.sha256).hexdigest()


def confusion_hash(normalised: str, secret: bytes) -> str:
    """Keyed hash of the confusion class; domain-separated from `plate_hash`
    so a folded key can never equal an exact one."""
    return plate_hash("~" + confusion_form(normalised), secret)


def mask_plate(text: str, country: str | None = None) -> str:
    """A form for logs and screens: first and last character, fixed width,
    so neither the plate nor its length leaks ("NL-AB-123-C" -> "A***C")."""
    plate = normalise_plate(text, country)
    if len(plate) <= 3:
        return "***"
    return f"{plate[0]}***{plate[-1]}"


def log_ref(hashed: str) -> str:
    """Short, stable reference to a hashed plate, fit for logs."""
    return "plate#" + hashed[:10]


@dataclass(frozen=True)
class PlateKeys:
    """What the hub keeps of one plate once matching is set up (R-G8): the
    keyed hash of its canonical form (its identity), the hashes of every
    exact key, and of their confusion classes. No raw plate in here."""

    canonical: str
    exact: tuple[str, ...]
    folded: tuple[str, ...]

    def to_document(self) -> dict:
        return {"canonical": self.canonical, "exact": list(self.exact), "folded": list(self.folded)}

    @classmethod
    def from_document(cls, doc: dict) -> "PlateKeys":
        return cls(doc["canonical"], tuple(doc["exact"]), tuple(doc["folded"]))


def plate_keys(text: str, country: str | None, secret: bytes) -> PlateKeys:
    keys = exact_keys(text, country)
    if not keys:
        raise ValueError("plate has no letters or digits")
    exact = tuple(plate_hash(k, secret) for k in keys)
    folded = tuple(dict.fromkeys(confusion_hash(k, secret) for k in keys))
    return PlateKeys(canonical=exact[0], exact=exact, folded=folded)
