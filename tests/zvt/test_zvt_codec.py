"""Pure codec: APDU, BMP, TLV, serial framing, masking, result codes (R-P1, R-P6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.zvt import messages as m
from drivers.zvt.apdu import Apdu, decode_apdu, encode_apdu
from drivers.zvt.bmp import BMPS, RECEIPT_ALL, decode_bmps, encode_bmps, mask_pan
from drivers.zvt.errors import ZvtDecodeError
from drivers.zvt.framing import DLE, ETX, STX, Frame, FrameReader, LineByte, crc16, encode_frame, stuff, unstuff
from drivers.zvt.result_codes import intermediate_text, reason_for, terminal_status_text
from drivers.zvt.tlv import SENSITIVE_TAGS, TlvNode, decode_tlv, encode_tlv

EXAMPLES = settings(max_examples=200, deadline=None)


# --- APDU ------------------------------------------------------------------------


def test_apdu_short_and_extended_length():
    assert encode_apdu(Apdu(0x06, 0x0F, b"")) == b"\x06\x0f\x00"
    data = bytes(300)
    raw = encode_apdu(Apdu(0x06, 0xD3, data))
    assert raw[:5] == bytes((0x06, 0xD3, 0xFF, 300 & 0xFF, 300 >> 8))
    assert decode_apdu(raw) == Apdu(0x06, 0xD3, data)
    # 255 bytes no longer fit one length byte (FF is the escape)
    assert encode_apdu(Apdu(1, 2, bytes(255)))[2:5] == b"\xff\xff\x00"


def test_apdu_rejects_bad_lengths_with_clear_errors():
    with pytest.raises(ZvtDecodeError, match="too short"):
        decode_apdu(b"\x06")
    with pytest.raises(ZvtDecodeError, match="announces 5"):
        decode_apdu(b"\x06\x01\x05\x00")
    with pytest.raises(ZvtDecodeError):
        decode_apdu(b"\x06\x01\xff\x01")


@EXAMPLES
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=600))
def test_apdu_round_trip(cls, instr, data):
    assert decode_apdu(encode_apdu(Apdu(cls, instr, data))) == Apdu(cls, instr, data)


def test_apdu_repr_hides_data():
    assert "4111" not in repr(Apdu(4, 0x0F, b"4111111111111111"))


# --- masking (R-P6) --------------------------------------------------------------


@pytest.mark.parametrize(
    "pan, masked",
    [
        ("4111111111111111", "411111******1111"),
        ("4711008005757038004", "471100*********8004"),
        ("559883******8074", "559883******8074"),
        ("1234567890123", "123456***0123"),
        ("12345678", "****5678"),
        ("1234", "***4"),
        ("", ""),
    ],
)
def test_mask_pan_keeps_at_most_bin_and_last_four(pan, masked):
    assert mask_pan(pan) == masked


@EXAMPLES
@given(st.text(alphabet="0123456789", min_size=1, max_size=19))
def test_mask_pan_never_shows_more_than_ten_digits_and_hides_some(pan):
    masked = mask_pan(pan)
    assert len(masked) == len(pan)
    shown = sum(ch.isdigit() for ch in masked)
    assert shown <= 10 and shown < len(pan)
    if len(pan) >= 13:
        assert masked[:6] == pan[:6] and masked[-4:] == pan[-4:]


# --- BMPs ------------------------------------------------------------------------


def _bmp_value(number: int):
    spec = BMPS[number]
    k = spec.kind
    if k == "byte":
        return st.integers(0, 255)
    if k == "num":
        return st.integers(0, 10 ** (2 * spec.size) - 1)
    if k == "receipt":
        return st.one_of(st.integers(0, 9999), st.just(RECEIPT_ALL))
    if k == "digits":
        return st.text(alphabet="0123456789", min_size=2 * spec.size, max_size=2 * spec.size)
    if k == "ascii":
        return st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=spec.size, max_size=spec.size)
    if k == "bytes":
        return st.binary(min_size=spec.size, max_size=spec.size)
    if k in ("llv", "lllv"):
        return st.binary(max_size=99 if k == "llv" else 300)
    if k in ("llv_text", "lllv_text"):
        return st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=99)
    if k == "tlv":
        return st.just((TlvNode(0x1F07, b"\x01"),))
    return None


_ROUND_TRIP_BMPS = [n for n, s in BMPS.items() if s.kind not in ("pan", "track_llv", "track_lllv")]


@EXAMPLES
@given(st.lists(st.sampled_from(_ROUND_TRIP_BMPS), max_size=8).flatmap(
    lambda numbers: st.tuples(*[st.tuples(st.just(n), _bmp_value(n)) for n in numbers])
))
def test_bmp_round_trip(bmps):
    bmps = tuple(bmps)
    decoded, tail = decode_bmps(encode_bmps(bmps))
    assert tail == b"" and decoded == bmps


@EXAMPLES
@given(st.text(alphabet="0123456789", min_size=1, max_size=19))
def test_pan_bmp_decodes_masked(pan):
    decoded, _ = decode_bmps(encode_bmps([(0x22, pan)]))
    assert decoded == ((0x22, mask_pan(pan)),)
    if len(pan) >= 8:
        assert pan not in decoded[0][1]


def test_amount_bmp_is_six_byte_bcd_cents():
    assert encode_bmps([(0x04, 2500)]) == bytes.fromhex("04 000000002500")
    assert encode_bmps([(0x87, RECEIPT_ALL)]) == bytes.fromhex("87 ffff")
    assert encode_bmps([(0x8B, "Visa")]) == bytes.fromhex("8b f0f4") + b"Visa"
    assert encode_bmps([(0x3C, "x")]) == bytes.fromhex("3c f0f0f1") + b"x"


def test_bmp_errors_are_clear():
    with pytest.raises(ZvtDecodeError, match="non-digit"):
        decode_bmps(bytes.fromhex("04 0000000025a0"))
    with pytest.raises(ZvtDecodeError, match="F0..F9"):
        decode_bmps(bytes.fromhex("8b 0104") + b"Visa")
    with pytest.raises(ZvtDecodeError, match="needs 6 bytes"):
        decode_bmps(bytes.fromhex("04 0000"))
    # an unknown BMP stops reading; what came before is kept
    bmps, tail = decode_bmps(bytes.fromhex("27 00 99 01 02"))
    assert bmps == ((0x27, 0),) and tail == bytes.fromhex("990102")


# --- TLV -------------------------------------------------------------------------

_primitive_tags = st.one_of(
    st.integers(0x01, 0x1E).filter(lambda t: t not in SENSITIVE_TAGS),
    st.integers(0x40, 0x5E).filter(lambda t: t not in SENSITIVE_TAGS and t & 0x1F != 0x1F),
    st.integers(0x1F01, 0x1F7F).filter(lambda t: t not in SENSITIVE_TAGS),
    st.integers(0x00, 0x7F).map(lambda b: 0x1F8000 | b),
)
_leaf = st.builds(TlvNode, _primitive_tags, st.binary(max_size=300))
_tree = st.recursive(
    _leaf,
    lambda children: st.builds(
        lambda tag, kids: TlvNode(tag, b"", tuple(kids)),
        st.sampled_from([0x23, 0x24, 0x25, 0x60, 0xE4, 0xE9, 0x2D]),
        st.lists(children, min_size=1, max_size=4),
    ),
    max_leaves=12,
)


@EXAMPLES
@given(st.lists(_tree, max_size=5))
def test_tlv_round_trip(nodes):
    raw = encode_tlv(nodes)
    assert encode_tlv(decode_tlv(raw)) == raw


def test_tlv_lengths_and_tags():
    node = TlvNode(0x1F62, b"x" * 200)
    raw = encode_tlv([node])
    assert raw[:4] == bytes.fromhex("1f62 81c8")
    long = encode_tlv([TlvNode(0x25, b"", (TlvNode(0x07, b"a" * 300),))])
    assert long[:4] == bytes.fromhex("25 82 0130")[:4]
    # a non-minimal length form is kept as sent
    odd = bytes.fromhex("07 8103 616263")
    assert encode_tlv(decode_tlv(odd)) == odd


def test_tlv_sensitive_tags_are_dropped():
    raw = encode_tlv([TlvNode(0x5A, bytes.fromhex("4111111111111111"))])
    (node,) = decode_tlv(raw)
    assert node.tag == 0x5A and node.value == b""


def test_tlv_errors_are_clear():
    with pytest.raises(ZvtDecodeError, match="announces 5 bytes"):
        decode_tlv(bytes.fromhex("07 05 6162"))
    with pytest.raises(ZvtDecodeError, match="not supported"):
        decode_tlv(bytes.fromhex("07 83 000001 61"))
    with pytest.raises(ZvtDecodeError, match="longer than 3"):
        decode_tlv(bytes.fromhex("1f 81 82 03 00"))


# --- messages --------------------------------------------------------------------


def test_command_builders():
    assert m.encode_message(m.pre_authorisation(2500, 978)) == bytes.fromhex("06 22 0a 49 0978 04 000000002500")
    assert m.encode_message(m.open_preauthorisations_query()) == bytes.fromhex("06 23 03 87 ffff")
    assert m.encode_message(m.book_total(12, 4977, 978)) == bytes.fromhex("06 24 0d 04 000000004977 87 0012 49 0978")
    assert m.encode_message(m.status_enquiry()) == bytes.fromhex("05 01 00")
    assert m.encode_message(m.abort_request()) == bytes.fromhex("06 b0 00")
    assert m.encode_message(m.ack()) == bytes.fromhex("80 00 00")
    assert m.encode_message(m.nak(0x83)) == bytes.fromhex("84 83 00")
    reg = m.encode_message(m.registration(123456, 0xDE, 978, service_byte=0x01))
    assert m.decode_message(reg).fields[-1] == ("currency", 978)
    assert m.decode_message(reg).get(0x03) == 0x01


def test_status_enquiry_with_password_round_trips():
    raw = m.encode_message(m.status_enquiry(password=123456))
    assert m.decode_message(raw).field("password") == 123456
    assert m.encode_message(m.decode_message(raw)) == raw


@EXAMPLES
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=80))
def test_garbage_message_never_crashes(cls, instr, data):
    """Any APDU either decodes or raises ZvtDecodeError: never another exception."""
    try:
        m.decode_message(Apdu(cls, instr, data))
    except ZvtDecodeError as exc:
        assert str(exc)


@EXAMPLES
@given(st.binary(max_size=120))
def test_garbage_bytes_never_crash_apdu_decoding(raw):
    try:
        m.decode_message(raw)
    except ZvtDecodeError:
        pass


# --- serial framing --------------------------------------------------------------


def test_crc_is_ccitt_reflected_kermit():
    assert crc16(b"123456789") == 0x2189


def test_frame_layout():
    frame = encode_frame(bytes.fromhex("80 00 00"))
    assert frame[:2] == bytes((DLE, STX)) and frame[-4:-2] == bytes((DLE, ETX))
    crc = crc16(bytes.fromhex("80 00 00 03"))
    assert frame[-2:] == bytes((crc & 0xFF, crc >> 8))
    assert encode_frame(b"\x10")[2:4] == b"\x10\x10"


@EXAMPLES
@given(st.binary(max_size=300))
def test_dle_stuffing_round_trip(data):
    stuffed = stuff(data)
    assert unstuff(stuffed) == data
    assert len(stuffed) == len(data) + data.count(DLE)


@EXAMPLES
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4), st.integers(1, 64))
def test_frames_survive_any_chunking(apdus, chunk):
    wire = b"".join(b"\x06" + encode_frame(a) for a in apdus)
    reader = FrameReader()
    events = []
    for i in range(0, len(wire), chunk):
        events += reader.feed(wire[i : i + chunk])
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.apdu for f in frames] == apdus and all(f.crc_ok for f in frames)
    assert [e.value for e in events if isinstance(e, LineByte)] == [0x06] * len(apdus)


@EXAMPLES
@given(st.binary(min_size=1, max_size=100), st.data())
def test_crc_detects_corruption(apdu, data):
    frame = bytearray(encode_frame(apdu))
    idx = data.draw(st.integers(2, len(frame) - 1))
    bit = data.draw(st.integers(0, 7))
    frame[idx] ^= 1 << bit
    events = FrameReader().feed(bytes(frame))
    assert not any(isinstance(e, Frame) and e.crc_ok and e.apdu == apdu for e in events) or frame == encode_frame(apdu)


def test_corrupt_crc_flagged():
    (event,) = FrameReader().feed(encode_frame(b"\x80\x00\x00", corrupt_crc=True))
    assert isinstance(event, Frame) and not event.crc_ok


@EXAMPLES
@given(st.binary(max_size=300))
def test_garbage_frames_never_crash_the_reader(noise):
    reader = FrameReader()
    reader.feed(noise)
    # after any noise, a good frame still gets through
    events = reader.feed(b"\x10\x03\x00\x00" + encode_frame(b"\x80\x00\x00"))
    assert any(isinstance(e, Frame) and e.crc_ok and e.apdu == b"\x80\x00\x00" for e in events)


# --- result codes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "code, words",
    [
        (0x33, "insufficient funds: try another card"),
        (0x71, "insufficient funds"),
        (0x78, "card expired: use another card"),
        (0x37, "wrong PIN: try again"),
        (0x05, "card declined: use another card or contact your bank"),
        (0x6C, "cancelled"),
    ],
)
def test_result_codes_map_to_driver_reasons(code, words):
    assert words in reason_for(code)


@EXAMPLES
@given(st.integers(0, 255))
def test_every_code_has_a_reason(code):
    """R-P1: unknown codes give a generic reason, never a crash."""
    if code != 0:
        assert ":" in reason_for(code)
    assert intermediate_text(code)
    assert terminal_status_text(code)
