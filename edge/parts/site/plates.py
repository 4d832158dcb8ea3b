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

Steps 1 and 2 and the mask are the camera driver's too (it masks what it
logs): they live in drivers/anpr/plate_text.py and are this module's by import.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from drivers.anpr.plate_text import (  # noqa: F401 (the hub's plate vocabulary)
    COUNTRY_SIGNS,
    ISO_TO_SIGN,
    compact_plate,
    exact_keys,
    mask_plate,
    normalise_plate,
)

# Letters a plate camera commonly reads in place of a digit, folded to it.
_CONFUSIONS = str.maketrans({"O": "0", "I": "1", "B": "8", "S": "5", "Z": "2"})


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
