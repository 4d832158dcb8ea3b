"""ZVT serial framing (RS-232): DLE STX, APDU with DLE doubled, DLE ETX, CRC. Pure.

The CRC is CRC-16 CCITT in its reflected form (polynomial 0x8408, initial value
0) over the APDU bytes (before doubling) and the ETX byte, sent low byte first.
Each frame is answered with a single ACK (06) or NAK (15) byte; on NAK or no
answer the sender sends it again (see drivers.zvt.link for the timers).
"""

from __future__ import annotations

from dataclasses import dataclass

DLE = 0x10
STX = 0x02
ETX = 0x03
ACK_BYTE = 0x06
NAK_BYTE = 0x15


def _table() -> list[int]:
    out = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        out.append(crc)
    return out


_CRC_TABLE = _table()


def crc16(data: bytes, crc: int = 0) -> int:
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def frame_crc(apdu: bytes) -> int:
    return crc16(bytes(apdu) + bytes((ETX,)))


def stuff(data: bytes) -> bytes:
    return bytes(data).replace(bytes((DLE,)), bytes((DLE, DLE)))


def unstuff(data: bytes) -> bytes:
    """Inverse of ``stuff``; ValueError on a lone DLE."""
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == DLE:
            if i + 1 >= len(data) or data[i + 1] != DLE:
                raise ValueError("lone DLE inside stuffed data")
            i += 1
        out.append(b)
        i += 1
    return bytes(out)


def encode_frame(apdu: bytes, *, corrupt_crc: bool = False) -> bytes:
    """The bytes on the wire for one APDU. ``corrupt_crc`` is for fault injection."""
    crc = frame_crc(apdu)
    if corrupt_crc:
        crc ^= 0xFFFF
    return bytes((DLE, STX)) + stuff(apdu) + bytes((DLE, ETX, crc & 0xFF, crc >> 8))


@dataclass(frozen=True)
class Frame:
    apdu: bytes
    crc_ok: bool


@dataclass(frozen=True)
class LineByte:
    """A lone ACK or NAK byte between frames."""

    value: int


class FrameReader:
    """Incremental parser: feed bytes as they come, collect frames and ACK/NAK bytes.

    Bytes outside a frame other than ACK, NAK and DLE STX are line noise and
    are dropped. A frame with a wrong CRC comes out with ``crc_ok=False`` so the
    caller can answer NAK."""

    _IDLE, _AFTER_DLE, _BODY, _BODY_DLE, _CRC = range(5)

    def __init__(self, max_apdu: int = 0xFFFF + 5) -> None:
        self._max = max_apdu
        self.reset()

    def reset(self) -> None:
        self._state = self._IDLE
        self._body = bytearray()
        self._crc = bytearray()

    @property
    def in_frame(self) -> bool:
        return self._state != self._IDLE

    def feed(self, data: bytes) -> list[Frame | LineByte]:
        events: list[Frame | LineByte] = []
        for b in data:
            st = self._state
            if st == self._IDLE:
                if b == DLE:
                    self._state = self._AFTER_DLE
                elif b in (ACK_BYTE, NAK_BYTE):
                    events.append(LineByte(b))
            elif st == self._AFTER_DLE:
                if b == STX:
                    self._body = bytearray()
                    self._state = self._BODY
                elif b == DLE:
                    self._state = self._AFTER_DLE
                else:
                    self._state = self._IDLE
            elif st == self._BODY:
                if b == DLE:
                    self._state = self._BODY_DLE
                else:
                    self._body.append(b)
                    if len(self._body) > self._max:
                        self.reset()
            elif st == self._BODY_DLE:
                if b == DLE:
                    self._body.append(DLE)
                    self._state = self._BODY
                elif b == ETX:
                    self._crc = bytearray()
                    self._state = self._CRC
                elif b == STX:  # a new frame started: the previous one was cut
                    self._body = bytearray()
                    self._state = self._BODY
                else:
                    self.reset()
            else:  # _CRC
                self._crc.append(b)
                if len(self._crc) == 2:
                    apdu = bytes(self._body)
                    got = self._crc[0] | (self._crc[1] << 8)
                    events.append(Frame(apdu, got == frame_crc(apdu)))
                    self.reset()
        return events
