"""ZVT bitmaps (BMPs): one tag byte, then a value whose size the tag fixes. Pure.

Sizes come from the ZVT specification's BMP summary. LLV and LLLV values carry
their length as two or three bytes F0+digit (F0 F8 = 8 bytes). Numbers are
packed BCD. The card number (BMP 22) and track data (23, 24, 2D) never leave
decoding in full: only the BIN (first six) and the last four digits survive,
as PCI DSS allows (R-P6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.zvt.errors import ZvtDecodeError
from drivers.zvt.tlv import TlvNode, decode_length, decode_tlv, encode_length, encode_tlv

Kind = Literal[
    "byte",  # one binary byte -> int
    "num",  # packed BCD -> int
    "digits",  # packed BCD -> str of digits (keeps leading zeros: dates, terminal id)
    "receipt",  # 2-byte BCD receipt number, or FF FF meaning "all / none" -> int (0xFFFF)
    "ascii",  # fixed size text -> str (latin-1, padding kept so bytes round-trip)
    "bytes",  # fixed size binary -> bytes
    "llv",  # LLV binary -> bytes
    "lllv",  # LLLV binary -> bytes
    "llv_text",  # LLV text -> str
    "lllv_text",  # LLLV text -> str
    "pan",  # LLV BCD card number -> masked str (decode only keeps BIN + last 4)
    "track_llv",  # LLV track data -> masked card number str
    "track_lllv",  # LLLV track data -> masked card number str
    "tlv",  # BER length + TLV nodes -> tuple[TlvNode, ...]
]

RECEIPT_ALL = 0xFFFF  # receipt number FF FF: "every open pre-authorisation" / "none left"


@dataclass(frozen=True)
class BmpSpec:
    number: int
    name: str
    kind: Kind
    size: int = 0  # for fixed kinds


_SPECS = [
    BmpSpec(0x01, "timeout", "byte"),
    BmpSpec(0x02, "max_status_infos", "byte"),
    BmpSpec(0x03, "service_byte", "byte"),
    BmpSpec(0x04, "amount", "num", 6),
    BmpSpec(0x05, "pump_no", "byte"),
    BmpSpec(0x06, "tlv", "tlv"),
    BmpSpec(0x0B, "trace_no", "num", 3),
    BmpSpec(0x0C, "time", "digits", 3),
    BmpSpec(0x0D, "date", "digits", 2),
    BmpSpec(0x0E, "expiry", "digits", 2),
    BmpSpec(0x17, "card_seq_no", "num", 2),
    BmpSpec(0x19, "payment_type", "byte"),
    BmpSpec(0x22, "pan", "pan"),
    BmpSpec(0x23, "track2", "track_llv"),
    BmpSpec(0x24, "track3", "track_lllv"),
    BmpSpec(0x27, "result_code", "byte"),
    BmpSpec(0x29, "terminal_id", "digits", 4),
    BmpSpec(0x2A, "vu_number", "ascii", 15),
    BmpSpec(0x2D, "track1", "track_llv"),
    BmpSpec(0x2E, "sync_chip_data", "lllv"),
    BmpSpec(0x37, "original_trace_no", "num", 3),
    BmpSpec(0x3A, "cvv", "bytes", 2),
    BmpSpec(0x3B, "aid", "ascii", 8),
    BmpSpec(0x3C, "additional_text", "lllv_text"),
    BmpSpec(0x3D, "password", "num", 3),
    BmpSpec(0x49, "currency", "num", 2),
    BmpSpec(0x4C, "blocked_goods_groups", "llv"),
    BmpSpec(0x60, "single_amounts", "lllv"),
    BmpSpec(0x87, "receipt_no", "receipt", 2),
    BmpSpec(0x88, "turnover_no", "num", 3),
    BmpSpec(0x8A, "card_type", "byte"),
    BmpSpec(0x8B, "card_name", "llv_text"),
    BmpSpec(0x8C, "card_type_id", "byte"),
    BmpSpec(0x92, "additional_data_ec_cash", "lllv"),
    BmpSpec(0x9A, "geldkarte_data", "lllv"),
    BmpSpec(0xA0, "result_code_as", "byte"),
    BmpSpec(0xA7, "chip_data", "llv"),
    BmpSpec(0xAA, "date_yymmdd", "digits", 3),
    BmpSpec(0xAF, "ef_info", "lllv"),
    BmpSpec(0xBA, "aid_parameter", "bytes", 5),
    BmpSpec(0xD0, "algorithm_key", "byte"),
    BmpSpec(0xD1, "card_offset", "llv"),
    BmpSpec(0xD2, "direction", "byte"),
    BmpSpec(0xD3, "key_position", "byte"),
    BmpSpec(0xE0, "input_min_length", "byte"),
    BmpSpec(0xE1, "input_line1", "llv_text"),
    BmpSpec(0xE2, "input_line2", "llv_text"),
    BmpSpec(0xE3, "input_line3", "llv_text"),
    BmpSpec(0xE4, "input_line4", "llv_text"),
    BmpSpec(0xE5, "input_line5", "llv_text"),
    BmpSpec(0xE6, "input_line6", "llv_text"),
    BmpSpec(0xE7, "input_line7", "llv_text"),
    BmpSpec(0xE8, "input_line8", "llv_text"),
    BmpSpec(0xE9, "input_max_length", "byte"),
    BmpSpec(0xEA, "input_echo", "byte"),
    BmpSpec(0xEB, "mac", "bytes", 8),
    BmpSpec(0xF0, "display_duration", "byte"),
    BmpSpec(0xF1, "line1", "llv_text"),
    BmpSpec(0xF2, "line2", "llv_text"),
    BmpSpec(0xF3, "line3", "llv_text"),
    BmpSpec(0xF4, "line4", "llv_text"),
    BmpSpec(0xF5, "line5", "llv_text"),
    BmpSpec(0xF6, "line6", "llv_text"),
    BmpSpec(0xF7, "line7", "llv_text"),
    BmpSpec(0xF8, "line8", "llv_text"),
    BmpSpec(0xF9, "beeps", "byte"),
    BmpSpec(0xFA, "card_status", "byte"),
    BmpSpec(0xFB, "ok_confirmation", "byte"),
    BmpSpec(0xFC, "dialog_control", "byte"),
]
BMPS: dict[int, BmpSpec] = {s.number: s for s in _SPECS}

BmpValue = int | str | bytes | tuple[TlvNode, ...]


# --- packed BCD -----------------------------------------------------------------


def bcd_encode(value: int | str, size: int) -> bytes:
    digits = str(value) if isinstance(value, int) else value
    if isinstance(value, int) and value < 0:
        raise ValueError(f"BCD value {value} is negative")
    if not digits.isdigit() and digits != "":
        raise ValueError(f"BCD value {value!r} is not made of digits")
    if len(digits) > 2 * size:
        raise ValueError(f"BCD value {value!r} does not fit in {size} bytes")
    digits = digits.rjust(2 * size, "0")
    return bytes.fromhex(digits)


def bcd_digits(raw: bytes) -> str:
    text = raw.hex()
    if not text.isdigit() and text != "":
        raise ZvtDecodeError(f"BCD field {raw.hex(' ')} holds a non-digit nibble")
    return text


# --- LLV / LLLV lengths -----------------------------------------------------------


def var_length_encode(n: int, digits: int) -> bytes:
    if n < 0 or n >= 10**digits:
        raise ValueError(f"length {n} does not fit an L{'L' * (digits - 1)}V field")
    return bytes(0xF0 | int(d) for d in str(n).rjust(digits, "0"))


def var_length_decode(data: bytes, pos: int, digits: int) -> tuple[int, int]:
    if pos + digits > len(data):
        raise ZvtDecodeError("BMP cut short inside an LLV/LLLV length")
    n = 0
    for b in data[pos : pos + digits]:
        if b >> 4 != 0xF or (b & 0x0F) > 9:
            raise ZvtDecodeError(f"LLV/LLLV length byte {b:02X} is not F0..F9")
        n = n * 10 + (b & 0x0F)
    return n, pos + digits


# --- card numbers ------------------------------------------------------------------


def mask_pan(pan: str) -> str:
    """At most the BIN (first 6) and the last 4 digits; every other digit is '*'.

    Numbers shorter than a real card number (13 digits) keep less, so that at
    least half of their digits stay hidden. Digits the terminal already hid
    stay hidden."""
    pan = "".join(ch for ch in pan if ch.isdigit() or ch == "*")
    n = len(pan)
    if n == 0:
        return ""
    hidden = max(3, n - 10) if n >= 13 else max(3, (n + 1) // 2)
    keep_tail = min(4, max(0, n - hidden))
    keep_head = min(6, max(0, n - hidden - keep_tail))
    return pan[:keep_head] + "*" * (n - keep_head - keep_tail) + pan[n - keep_tail :]


def _pan_from_nibbles(raw: bytes) -> str:
    out = []
    for b in raw:
        for nib in (b >> 4, b & 0x0F):
            if nib <= 9:
                out.append(str(nib))
            elif nib == 0xE:  # terminals mark digits they hid with E
                out.append("*")
            elif nib == 0xF:  # padding
                continue
            else:
                out.append("")  # a separator (D or =) ends the number in track data
                return "".join(out)
    return "".join(out)


def _pan_to_nibbles(pan: str) -> bytes:
    nibbles = "".join("E" if ch == "*" else ch for ch in pan)
    if not all(ch in "0123456789E" for ch in nibbles):
        raise ValueError("card number must be digits (or * for hidden digits)")
    if len(nibbles) % 2:
        nibbles += "F"
    return bytes.fromhex(nibbles)


def _track_to_nibbles(track: str) -> bytes:
    nibbles = "".join({"*": "E", "=": "D"}.get(ch, ch) for ch in track.upper())
    if not all(ch in "0123456789DE" for ch in nibbles):
        raise ValueError("track data must be digits, = or D as separator, * for hidden digits")
    if len(nibbles) % 2:
        nibbles += "F"
    return bytes.fromhex(nibbles)


# --- BMP codec ---------------------------------------------------------------------


def decode_field(kind: Kind, size: int, data: bytes, pos: int, name: str) -> tuple[BmpValue, int]:
    """Read one value of ``kind`` at ``pos``; returns (value, new position)."""
    if kind in ("byte",):
        if pos >= len(data):
            raise ZvtDecodeError(f"{name}: cut short")
        return data[pos], pos + 1
    if kind in ("num", "digits", "receipt", "ascii", "bytes"):
        if pos + size > len(data):
            raise ZvtDecodeError(f"{name}: needs {size} bytes, {len(data) - pos} remain")
        raw = data[pos : pos + size]
        end = pos + size
        if kind == "receipt" and raw == b"\xff\xff":
            return RECEIPT_ALL, end
        if kind in ("num", "receipt"):
            return int(bcd_digits(raw) or "0"), end
        if kind == "digits":
            return bcd_digits(raw), end
        if kind == "ascii":
            return raw.decode("latin-1"), end
        return bytes(raw), end
    if kind in ("llv", "llv_text", "pan", "track_llv", "lllv", "lllv_text", "track_lllv"):
        digits = 3 if kind.startswith("lllv") or kind == "track_lllv" else 2
        length, pos = var_length_decode(data, pos, digits)
        if pos + length > len(data):
            raise ZvtDecodeError(f"{name}: announces {length} bytes, {len(data) - pos} remain")
        raw = bytes(data[pos : pos + length])
        end = pos + length
        if kind in ("llv_text", "lllv_text"):
            return raw.decode("latin-1"), end
        if kind in ("pan", "track_llv", "track_lllv"):
            return mask_pan(_pan_from_nibbles(raw)), end
        return raw, end
    if kind == "tlv":
        length, pos, _size = decode_length(data, pos)
        if pos + length > len(data):
            raise ZvtDecodeError(f"{name}: TLV container announces {length} bytes, {len(data) - pos} remain")
        return decode_tlv(data[pos : pos + length]), pos + length
    raise AssertionError(f"unknown field kind {kind}")


def encode_field(kind: Kind, size: int, value: BmpValue, name: str) -> bytes:
    if kind == "byte":
        if not isinstance(value, int) or not 0 <= value <= 0xFF:
            raise ValueError(f"{name}: one byte (0..255) expected, got {value!r}")
        return bytes((value,))
    if kind == "receipt" and value == RECEIPT_ALL:
        return b"\xff\xff"
    if kind in ("num", "receipt", "digits"):
        if kind == "digits" and not isinstance(value, str):
            raise ValueError(f"{name}: a string of digits expected")
        if kind != "digits" and not isinstance(value, int):
            raise ValueError(f"{name}: a whole number expected")
        return bcd_encode(value, size)
    if kind in ("ascii", "bytes"):
        raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        if len(raw) != size:
            raise ValueError(f"{name}: exactly {size} bytes expected, got {len(raw)}")
        return raw
    if kind in ("llv", "llv_text", "pan", "track_llv", "lllv", "lllv_text", "track_lllv"):
        digits = 3 if kind.startswith("lllv") or kind == "track_lllv" else 2
        if kind == "pan":
            raw = _pan_to_nibbles(str(value))
        elif kind in ("track_llv", "track_lllv"):
            raw = _track_to_nibbles(str(value))
        elif isinstance(value, str):
            raw = value.encode("latin-1")
        else:
            raw = bytes(value)  # type: ignore[arg-type]
        return var_length_encode(len(raw), digits) + raw
    if kind == "tlv":
        body = encode_tlv(value)  # type: ignore[arg-type]
        return encode_length(len(body)) + body
    raise AssertionError(f"unknown field kind {kind}")


def decode_bmps(data: bytes, pos: int = 0) -> tuple[tuple[tuple[int, BmpValue], ...], bytes]:
    """BMPs from ``pos`` on: (ordered (number, value) pairs, unread tail).

    Reading stops at the first byte that is not a known BMP number: the rest is
    returned as the tail, so a vendor extension never hides the fields before
    it. A known BMP with a bad value raises ZvtDecodeError."""
    out: list[tuple[int, BmpValue]] = []
    data = bytes(data)
    while pos < len(data):
        spec = BMPS.get(data[pos])
        if spec is None:
            break
        value, pos = decode_field(spec.kind, spec.size, data, pos + 1, f"BMP {spec.number:02X} {spec.name}")
        out.append((spec.number, value))
    return tuple(out), data[pos:]


def encode_bmps(bmps: tuple[tuple[int, BmpValue], ...] | list[tuple[int, BmpValue]]) -> bytes:
    out = bytearray()
    for number, value in bmps:
        spec = BMPS.get(number)
        if spec is None:
            raise ValueError(f"BMP {number:02X} is not known to this driver")
        out.append(number)
        out += encode_field(spec.kind, spec.size, value, f"BMP {number:02X} {spec.name}")
    return bytes(out)
