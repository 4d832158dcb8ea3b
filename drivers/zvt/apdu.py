"""ZVT APDU: CLASS, INSTR, LEN, data. Pure functions.

LEN is one byte for up to 254 data bytes; the value FF announces a two-byte
little-endian length that follows (so up to 65535 data bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.zvt.errors import ZvtDecodeError

EXTENDED_LENGTH = 0xFF
MAX_DATA = 0xFFFF


@dataclass(frozen=True)
class Apdu:
    cls: int
    instr: int
    data: bytes = b""

    @property
    def control(self) -> tuple[int, int]:
        return (self.cls, self.instr)

    def __repr__(self) -> str:
        # The data can carry card data: never print it, only its size.
        return f"Apdu({self.cls:02X} {self.instr:02X}, {len(self.data)} bytes)"


def encode_apdu(apdu: Apdu) -> bytes:
    if not (0 <= apdu.cls <= 0xFF and 0 <= apdu.instr <= 0xFF):
        raise ValueError(f"CLASS/INSTR must be bytes, got {apdu.cls!r} {apdu.instr!r}")
    n = len(apdu.data)
    if n > MAX_DATA:
        raise ValueError(f"APDU data of {n} bytes exceeds the ZVT limit of {MAX_DATA}")
    if n < EXTENDED_LENGTH:
        header = bytes((apdu.cls, apdu.instr, n))
    else:
        header = bytes((apdu.cls, apdu.instr, EXTENDED_LENGTH, n & 0xFF, n >> 8))
    return header + bytes(apdu.data)


def header_size_and_length(head: bytes) -> tuple[int, int] | None:
    """From the first bytes of an APDU: (header size, data length), or None when
    more bytes are needed to know. Used by stream readers."""
    if len(head) < 3:
        return None
    if head[2] != EXTENDED_LENGTH:
        return 3, head[2]
    if len(head) < 5:
        return None
    return 5, head[3] | (head[4] << 8)


def decode_apdu(raw: bytes) -> Apdu:
    """One complete APDU; refuses short or over-long input with ZvtDecodeError."""
    raw = bytes(raw)
    if len(raw) < 3:
        raise ZvtDecodeError(f"APDU of {len(raw)} bytes is too short: need CLASS, INSTR and LEN")
    sizes = header_size_and_length(raw)
    if sizes is None:
        raise ZvtDecodeError("APDU announces a two-byte length (FF) but is cut short")
    header, length = sizes
    if len(raw) != header + length:
        raise ZvtDecodeError(
            f"APDU {raw[0]:02X} {raw[1]:02X} announces {length} data bytes "
            f"but carries {len(raw) - header}: the frame is truncated or two were merged"
        )
    return Apdu(raw[0], raw[1], raw[header:])
