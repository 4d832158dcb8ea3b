"""ZVT messages: an APDU's data read as leading fields, BMPs and a tail. Pure.

Most ZVT messages are a list of BMPs. A few start with untagged fields (the
password of Registration, the result code of Abort ...): the layout table below
names them per CLASS/INSTR. Decoding keeps the order of everything read, so a
controller-side message re-encodes to the very same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.zvt.apdu import Apdu, decode_apdu, encode_apdu
from drivers.zvt.bmp import (
    BMPS,
    RECEIPT_ALL,
    BmpValue,
    Kind,
    decode_bmps,
    decode_field,
    encode_bmps,
    encode_field,
)
from drivers.zvt.errors import ZvtDecodeError
from drivers.zvt.tlv import TlvNode, find_tag

# --- control fields (CLASS, INSTR) ----------------------------------------------
REGISTRATION = (0x06, 0x00)
AUTHORISATION = (0x06, 0x01)
LOG_OFF = (0x06, 0x02)
COMPLETION = (0x06, 0x0F)
ABORT_FROM_TERMINAL = (0x06, 0x1E)
PRE_AUTHORISATION = (0x06, 0x22)
PARTIAL_REVERSAL = (0x06, 0x23)  # also: booking of a reservation; FF FF = open query
BOOK_TOTAL = (0x06, 0x24)
PRE_AUTHORISATION_REVERSAL = (0x06, 0x25)
REVERSAL = (0x06, 0x30)
REFUND = (0x06, 0x31)
END_OF_DAY = (0x06, 0x50)
ABORT = (0x06, 0xB0)
READ_CARD = (0x06, 0xC0)
PRINT_LINE = (0x06, 0xD1)
PRINT_TEXT_BLOCK = (0x06, 0xD3)
STATUS_ENQUIRY = (0x05, 0x01)
STATUS_INFORMATION = (0x04, 0x0F)
INTERMEDIATE_STATUS = (0x04, 0xFF)
ACK = (0x80, 0x00)
NAK_CLASS = 0x84
NAK_REPEAT = 0x9C  # 84 9C: terminal busy, send again

COMMAND_NAMES = {
    REGISTRATION: "registration",
    AUTHORISATION: "authorisation",
    LOG_OFF: "log-off",
    COMPLETION: "completion",
    ABORT_FROM_TERMINAL: "abort",
    PRE_AUTHORISATION: "pre-authorisation",
    PARTIAL_REVERSAL: "partial reversal",
    BOOK_TOTAL: "book total",
    PRE_AUTHORISATION_REVERSAL: "pre-authorisation reversal",
    REVERSAL: "reversal",
    REFUND: "refund",
    END_OF_DAY: "end-of-day",
    ABORT: "abort request",
    READ_CARD: "read card",
    PRINT_LINE: "print line",
    PRINT_TEXT_BLOCK: "print text block",
    STATUS_ENQUIRY: "status enquiry",
    STATUS_INFORMATION: "status information",
    INTERMEDIATE_STATUS: "intermediate status",
    ACK: "ack",
}

# Untagged leading fields: name -> (kind, size).
FIELD_KINDS: dict[str, tuple[Kind, int]] = {
    "password": ("num", 3),
    "config_byte": ("byte", 1),
    "currency": ("num", 2),
    "timeout": ("byte", 1),
    "result_code": ("byte", 1),
    "status": ("byte", 1),
    "sw_version": ("lllv_text", 0),
    "terminal_status": ("byte", 1),
    "attribute": ("byte", 1),
}

# Controls whose payload must parse; others fall back to an opaque tail so that
# a vendor's own command never stops the driver.
_STRICT = {
    REGISTRATION,
    PRE_AUTHORISATION,
    PARTIAL_REVERSAL,
    BOOK_TOTAL,
    PRE_AUTHORISATION_REVERSAL,
    END_OF_DAY,
    STATUS_INFORMATION,
    INTERMEDIATE_STATUS,
    ABORT_FROM_TERMINAL,
}


@dataclass(frozen=True)
class Message:
    cls: int
    instr: int
    fields: tuple[tuple[str, BmpValue], ...] = ()
    bmps: tuple[tuple[int, BmpValue], ...] = ()
    tail: bytes = field(default=b"", repr=False)

    @property
    def control(self) -> tuple[int, int]:
        return (self.cls, self.instr)

    @property
    def name(self) -> str:
        if self.cls == NAK_CLASS:
            return f"nak {self.instr:02X}"
        return COMMAND_NAMES.get(self.control, f"{self.cls:02X} {self.instr:02X}")

    def get(self, number: int, default: BmpValue | None = None) -> BmpValue | None:
        for n, v in self.bmps:
            if n == number:
                return v
        return default

    def field(self, name: str, default: BmpValue | None = None) -> BmpValue | None:
        for n, v in self.fields:
            if n == name:
                return v
        return default

    @property
    def tlv(self) -> tuple[TlvNode, ...]:
        value = self.get(0x06)
        return value if isinstance(value, tuple) else ()

    def tlv_find(self, tag: int) -> TlvNode | None:
        return find_tag(self.tlv, tag)

    def __repr__(self) -> str:
        names = [n for n, _ in self.fields] + [BMPS[n].name for n, _ in self.bmps]
        extra = f", tail={len(self.tail)} bytes" if self.tail else ""
        return f"Message({self.name}: {', '.join(names)}{extra})"


# --- decoding ----------------------------------------------------------------------


def _looks_like_lllv(data: bytes) -> bool:
    return len(data) >= 3 and all(b >> 4 == 0xF and (b & 0xF) <= 9 for b in data[:3])


def _read_fields(names: list[str], data: bytes, pos: int) -> tuple[list[tuple[str, BmpValue]], int]:
    out = []
    for name in names:
        kind, size = FIELD_KINDS[name]
        value, pos = decode_field(kind, size, data, pos, name)
        out.append((name, value))
    return out, pos


def _bmps_parse_cleanly(data: bytes) -> bool:
    try:
        _bmps, tail = decode_bmps(data)
    except ZvtDecodeError:
        return False
    return not tail


def _leading_fields(control: tuple[int, int], data: bytes) -> tuple[list[tuple[str, BmpValue]], int]:
    """The untagged fields before the BMPs, per the ZVT layout of each command."""
    if control in (END_OF_DAY, (0x06, 0x93), (0x08, 0x14)):
        return _read_fields(["password"], data, 0)
    if control == REGISTRATION:
        fields, pos = _read_fields(["password", "config_byte"], data, 0)
        rest = data[pos:]
        # The currency follows untagged; 03 and 06 would instead start a BMP.
        if len(rest) >= 2 and not (rest[0] in (0x03, 0x06) and _bmps_parse_cleanly(rest)):
            more, pos = _read_fields(["currency"], data, pos)
            fields += more
        return fields, pos
    if control == STATUS_ENQUIRY:
        if len(data) >= 3 and not _bmps_parse_cleanly(data):
            return _read_fields(["password"], data, 0)
        return [], 0
    if control == READ_CARD:
        return _read_fields(["timeout"], data, 0)
    if control == ABORT_FROM_TERMINAL:
        fields, pos = _read_fields(["result_code"], data, 0)
        rest = data[pos:]
        # With "wrong currency" (6F) the terminal appends its currency untagged.
        if fields[0][1] == 0x6F and len(rest) >= 2 and not _bmps_parse_cleanly(rest):
            more, pos = _read_fields(["currency"], data, pos)
            fields += more
        return fields, pos
    if control == INTERMEDIATE_STATUS:
        fields, pos = _read_fields(["status"], data, 0)
        rest = data[pos:]
        if rest and not (rest[0] == 0x06 and _bmps_parse_cleanly(rest)):
            more, pos = _read_fields(["timeout"], data, pos)
            fields += more
        return fields, pos
    if control == COMPLETION and _looks_like_lllv(data):
        # Completion of a Status Enquiry: software version, then terminal status.
        return _read_fields(["sw_version", "terminal_status"], data, 0)
    if control == PRINT_LINE:
        return _read_fields(["attribute"], data, 0)
    return [], 0


def decode_message(apdu: Apdu | bytes) -> Message:
    """Read one message. ZvtDecodeError when a known command is malformed;
    commands this driver has no layout for keep their payload as an opaque tail."""
    if not isinstance(apdu, Apdu):
        apdu = decode_apdu(apdu)
    control = apdu.control
    data = apdu.data
    if apdu.cls == NAK_CLASS or control == PRINT_LINE:
        if control == PRINT_LINE:
            fields, pos = _leading_fields(control, data)
            return Message(apdu.cls, apdu.instr, tuple(fields), (), data[pos:])
        return Message(apdu.cls, apdu.instr, (), (), data)
    try:
        fields, pos = _leading_fields(control, data)
        bmps, tail = decode_bmps(data, pos)
    except ZvtDecodeError:
        if control in _STRICT:
            raise
        return Message(apdu.cls, apdu.instr, (), (), data)
    return Message(apdu.cls, apdu.instr, tuple(fields), bmps, tail)


def message_to_apdu(message: Message) -> Apdu:
    out = bytearray()
    for name, value in message.fields:
        kind, size = FIELD_KINDS[name]
        out += encode_field(kind, size, value, name)
    out += encode_bmps(message.bmps)
    out += message.tail
    return Apdu(message.cls, message.instr, bytes(out))


def encode_message(message: Message) -> bytes:
    return encode_apdu(message_to_apdu(message))


# --- commands the controller sends -------------------------------------------------


def _tlv_bmp(tlv: tuple[TlvNode, ...] | None) -> list[tuple[int, BmpValue]]:
    return [(0x06, tuple(tlv))] if tlv else []


def registration(
    password: int,
    config_byte: int,
    currency_numeric: int | None = None,
    service_byte: int | None = None,
    tlv: tuple[TlvNode, ...] | None = None,
) -> Message:
    fields: list[tuple[str, BmpValue]] = [("password", password), ("config_byte", config_byte)]
    if currency_numeric is not None:
        fields.append(("currency", currency_numeric))
    bmps: list[tuple[int, BmpValue]] = []
    if service_byte is not None:
        bmps.append((0x03, service_byte))
    return Message(*REGISTRATION, tuple(fields), tuple(bmps + _tlv_bmp(tlv)))


def pre_authorisation(
    amount_minor: int,
    currency_numeric: int,
    payment_type: int | None = None,
    tlv: tuple[TlvNode, ...] | None = None,
) -> Message:
    bmps: list[tuple[int, BmpValue]] = []
    if payment_type is not None:
        bmps.append((0x19, payment_type))
    bmps += [(0x49, currency_numeric), (0x04, amount_minor)]
    return Message(*PRE_AUTHORISATION, (), tuple(bmps + _tlv_bmp(tlv)))


def partial_reversal(
    receipt_no: int,
    reversal_minor: int,
    currency_numeric: int,
    payment_type: int | None = None,
    tlv: tuple[TlvNode, ...] | None = None,
) -> Message:
    """06 23: books a pre-authorisation by releasing ``reversal_minor`` of it
    (the held amount minus the amount used)."""
    bmps: list[tuple[int, BmpValue]] = []
    if payment_type is not None:
        bmps.append((0x19, payment_type))
    bmps += [(0x87, receipt_no), (0x49, currency_numeric), (0x04, reversal_minor)]
    return Message(*PARTIAL_REVERSAL, (), tuple(bmps + _tlv_bmp(tlv)))


def open_preauthorisations_query() -> Message:
    """06 23 with receipt FF FF: the terminal answers which pre-authorisations are open."""
    return Message(*PARTIAL_REVERSAL, (), ((0x87, RECEIPT_ALL),))


def book_total(receipt_no: int, amount_minor: int, currency_numeric: int) -> Message:
    """06 24: books the pre-authorisation with the final amount."""
    return Message(*BOOK_TOTAL, (), ((0x04, amount_minor), (0x87, receipt_no), (0x49, currency_numeric)))


def pre_authorisation_reversal(
    receipt_no: int, currency_numeric: int, payment_type: int | None = None
) -> Message:
    bmps: list[tuple[int, BmpValue]] = []
    if payment_type is not None:
        bmps.append((0x19, payment_type))
    bmps += [(0x87, receipt_no), (0x49, currency_numeric)]
    return Message(*PRE_AUTHORISATION_REVERSAL, (), tuple(bmps))


def read_card(timeout_s: int) -> Message:
    """06 C0: read a card (no payment); the terminal answers with status
    information carrying the card's data, masked, and its card token."""
    return Message(*READ_CARD, (("timeout", timeout_s),))


def end_of_day(password: int) -> Message:
    return Message(*END_OF_DAY, (("password", password),))


def status_enquiry(password: int | None = None, service_byte: int | None = None) -> Message:
    fields = (("password", password),) if password is not None else ()
    bmps = ((0x03, service_byte),) if service_byte is not None else ()
    return Message(*STATUS_ENQUIRY, fields, bmps)


def abort_request() -> Message:
    return Message(*ABORT)


def ack() -> Message:
    return Message(*ACK)


def nak(code: int) -> Message:
    return Message(NAK_CLASS, code)


# --- messages the terminal sends (used by the simulator) ---------------------------


def status_information(bmps: list[tuple[int, BmpValue]]) -> Message:
    return Message(*STATUS_INFORMATION, (), tuple(bmps))


def intermediate_status(status: int, timeout: int | None = None) -> Message:
    fields: tuple[tuple[str, BmpValue], ...] = (("status", status),)
    if timeout is not None:
        fields += (("timeout", timeout),)
    return Message(*INTERMEDIATE_STATUS, fields)


def completion(bmps: list[tuple[int, BmpValue]] | None = None) -> Message:
    return Message(*COMPLETION, (), tuple(bmps or ()))


def enquiry_completion(sw_version: str, terminal_status: int, tlv: tuple[TlvNode, ...] | None = None) -> Message:
    return Message(
        *COMPLETION,
        (("sw_version", sw_version), ("terminal_status", terminal_status)),
        tuple(_tlv_bmp(tlv)),
    )


def abort_from_terminal(result_code: int, bmps: list[tuple[int, BmpValue]] | None = None) -> Message:
    return Message(*ABORT_FROM_TERMINAL, (("result_code", result_code),), tuple(bmps or ()))
