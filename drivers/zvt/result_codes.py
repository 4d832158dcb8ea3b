"""ZVT result codes and intermediate status codes, as words for the driver at the arch.

Codes 01..63 (hex) come from the card issuer's host: they are the two-digit
ISO 8583 response codes (decimal 1..99) sent as one binary byte, so 0x33 is
host code 51, insufficient funds. Codes from 64 (hex) up are the terminal's own
(ZVT specification, chapter "error messages"). Any code not listed still gets
a reason: never a crash on a code the terminal vendor invented.
"""

from __future__ import annotations

SUCCESS = 0x00

# Reasons are what the driver of the truck reads on the arch display or what the
# controller logs: what happened, then what to do.
_TRY_OTHER = "use another card"
_REASONS: dict[int, str] = {
    0x00: "payment approved",
    # issuer host (ISO 8583 codes, decimal value as one byte)
    0x01: "card issuer asks for a referral: use another card or contact your bank",
    0x03: "card not accepted at this merchant: " + _TRY_OTHER,
    0x04: "card declined (pick up): use another card or contact your bank",
    0x05: "card declined: use another card or contact your bank",
    0x0C: "transaction refused by the bank: try again or use another card",
    0x0D: "amount refused by the bank: use another card",
    0x0E: "card number not valid: " + _TRY_OTHER,
    0x0F: "card issuer unknown: " + _TRY_OTHER,
    0x13: "card not read completely: tap or insert the card again",
    0x21: "card expired: " + _TRY_OTHER,
    0x29: "card reported lost: contact your bank",
    0x2B: "card reported stolen: contact your bank",
    0x33: "insufficient funds: try another card",
    0x36: "card expired: " + _TRY_OTHER,
    0x37: "wrong PIN: try again",
    0x39: "card not allowed for this payment: " + _TRY_OTHER,
    0x3A: "terminal not allowed to take this card: " + _TRY_OTHER,
    0x3D: "card limit reached: try another card",
    0x3E: "card restricted: " + _TRY_OTHER,
    0x41: "your bank asks for the PIN: insert the card and enter the PIN",
    0x4B: "too many wrong PIN entries: use another card or contact your bank",
    0x5B: "card issuer not reachable: try again in a minute or use another card",
    0x60: "bank system error: try again in a minute",
    # terminal (ZVT)
    0x64: "card could not be read: tap or insert it again",
    0x65: "no card data found: tap or insert the card again",
    0x66: "card reader error: tap or insert the card again",
    0x67: "function not allowed for this debit card: " + _TRY_OTHER,
    0x68: "function not allowed for this credit card: " + _TRY_OTHER,
    0x6A: "terminal memory full: the operator must run an end-of-day",
    0x6B: "terminal not registered: the operator must check the terminal set-up",
    0x6C: "payment cancelled (time-out or cancel key): start again when ready",
    0x6E: "card blocked: " + _TRY_OTHER,
    0x6F: "wrong currency: the operator must check the terminal set-up",
    0x71: "insufficient funds: try another card",
    0x72: "card chip error: tap or insert the card again, or " + _TRY_OTHER,
    0x73: "card data incorrect: " + _TRY_OTHER,
    0x77: "end-of-day not possible now: the operator must retry later",
    0x78: "card expired: " + _TRY_OTHER,
    0x79: "card not yet valid: " + _TRY_OTHER,
    0x7A: "card unknown: " + _TRY_OTHER,
    0x7B: "card could not be read: insert the card with its chip",
    0x7C: "card could not be read: insert the card with its chip",
    0x7D: "terminal cannot reach the payment network: try again in a minute",
    0x7E: "card could not be read: insert the card with its chip",
    0x83: "function not possible on this terminal: the operator must check the set-up",
    0x85: "terminal key missing: the operator must contact the payment provider",
    0x89: "PIN pad defective: the operator must call service; use another arch if possible",
    0x9A: "terminal protocol error: the operator must check the controller log",
    0x9B: "terminal connection error: try again in a minute",
    0x9C: "terminal busy: try again in a moment",
    0xA0: "payment network not ready: try again in a minute",
    0xA1: "payment network does not respond: try again in a minute",
    0xA3: "terminal has no network connection: try again in a minute",
    0xA5: "function not allowed by card security rules: " + _TRY_OTHER,
    0xB1: "terminal memory full: the operator must run an end-of-day",
    0xB2: "terminal journal full: the operator must run an end-of-day",
    0xB4: "already reversed: nothing more to do",
    0xB5: "reversal not possible: the operator must check the payment in the portal",
    0xB7: "amount above the pre-authorised amount: settle at most the held amount",
    0xB8: "pre-authorisation error (unknown or already closed): check open pre-authorisations",
    0xBF: "terminal power supply too low: the operator must call service",
    0xC2: "terminal needs a diagnosis: the operator must run one",
    0xC3: "maximum amount exceeded: use another card",
    0xC4: "card profiles invalid: the operator must update the terminal",
    0xC5: "payment method not supported: " + _TRY_OTHER,
    0xC6: "currency not accepted: the operator must check the terminal set-up",
    0xC8: "amount too small for this card: " + _TRY_OTHER,
    0xC9: "maximum transaction amount too small: use another card",
    0xCB: "function only allowed in euro: the operator must check the set-up",
    0xCC: "terminal printer not ready: the operator must check the printer",
    0xD2: "this card cannot pay: " + _TRY_OTHER,
    0xDC: "card still inserted: remove the card and start again",
    0xDD: "card could not be ejected: the operator must call service",
    0xDE: "card could not be inserted: try again or " + _TRY_OTHER,
    0xE0: "terminal under remote maintenance: try again in a few minutes",
    0xE2: "card reader not answering: the operator must call service",
    0xE3: "card slot shutter closed: the operator must check the terminal",
    0xE4: "terminal needs activation: the operator must activate it",
    0xEA: "card not allowed on this terminal: " + _TRY_OTHER,
    0xEC: "PIN processing not possible: " + _TRY_OTHER,
    0xED: "PIN pad defective: the operator must call service",
    0xF0: "open end-of-day batch: the operator must run an end-of-day",
    0xF1: "debit card offline error: try again or " + _TRY_OTHER,
    0xFA: "terminal could not send offline payments: the operator must check the network",
    0xFB: "terminal turnover data defective: the operator must call service",
    0xFC: "terminal device missing or defective: the operator must call service",
    0xFF: "terminal system error: try again; if it persists the operator must call service",
}


def reason_for(code: int | None) -> str:
    """A reason a truck driver or operator understands, for any code."""
    if code is None:
        return "payment not completed: try again"
    if code in _REASONS:
        return _REASONS[code]
    if 0x01 <= code <= 0x63:
        return f"card declined by the bank (code {code}): use another card or contact your bank"
    return f"payment not completed (terminal code {code:02X}): try again or use another card"


def is_known(code: int) -> bool:
    return code in _REASONS


# Intermediate status (04 FF): what the terminal shows the card holder.
_INTERMEDIATE: dict[int, str] = {
    0x00: "waiting for amount confirmation",
    0x01: "please watch the PIN pad",
    0x02: "please watch the PIN pad",
    0x03: "not accepted",
    0x04: "waiting for response from the payment network",
    0x05: "sending automatic reversal",
    0x06: "sending post-bookings",
    0x07: "card not admitted",
    0x08: "card unknown",
    0x09: "card expired",
    0x0A: "insert card",
    0x0B: "please remove card",
    0x0C: "card not readable",
    0x0D: "processing error",
    0x0E: "please wait",
    0x0F: "terminal running automatic end-of-day",
    0x10: "invalid card",
    0x11: "balance display",
    0x12: "system malfunction",
    0x13: "payment not possible",
    0x14: "credit not sufficient",
    0x15: "incorrect PIN",
    0x16: "limit not sufficient",
    0x17: "please wait",
    0x18: "PIN try limit exceeded",
    0x19: "card data incorrect",
    0x1A: "service mode",
    0x1B: "approved, please fill up",
    0x1C: "approved, please take goods",
    0x1D: "declined",
    0x26: "PIN entry required",
    0x41: "please insert card (present it again)",
    0x43: "please enter PIN",
    0x4B: "please remove card",
    0x5E: "contactless card read",
}


def intermediate_text(status: int) -> str:
    return _INTERMEDIATE.get(status, f"terminal busy (status {status:02X})")


# Terminal status (completion of a Status Enquiry).
_TERMINAL_STATUS: dict[int, str] = {
    0x00: "ready",
    0x51: "initialisation required: the operator must initialise the terminal",
    0x62: "date/time incorrect: the operator must set the terminal clock",
    0x9C: "please wait (e.g. software update running)",
    0x9D: "partial issue of goods",
    0xB1: "memory full: the operator must run an end-of-day",
    0xB2: "merchant journal full: the operator must run an end-of-day",
    0xBF: "power supply too low: the operator must call service",
    0xC0: "card locking mechanism defective: the operator must call service",
    0xC1: "merchant card locked",
    0xC2: "diagnosis required: the operator must run a diagnosis",
    0xC4: "card profiles invalid: the operator must update the terminal",
    0xCC: "printer not ready",
    0xDC: "card inserted: remove the card",
    0xDF: "out of order: the operator must call service",
    0xE0: "remote maintenance running: wait a few minutes",
    0xE1: "card not completely removed",
    0xE2: "card reader not answering: the operator must call service",
    0xE3: "shutter closed",
    0xE4: "terminal activation required: the operator must activate it",
    0xF0: "reconciliation required: the operator must run an end-of-day",
    0xF6: "OPT data not available: the operator must personalise the terminal",
}


def terminal_status_text(code: int) -> str:
    return _TERMINAL_STATUS.get(code, f"terminal status {code:02X}: see the terminal's manual")
