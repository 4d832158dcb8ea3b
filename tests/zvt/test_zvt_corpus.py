"""Conformance: 25 APDUs captured from production Feig terminals (R-P6 masking included)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from drivers.zvt import messages as m
from drivers.zvt.apdu import decode_apdu
from drivers.zvt.bmp import RECEIPT_ALL
from drivers.zvt.client import ZvtClient
from drivers.zvt.link import Link, Timers
from drivers.zvt.result_codes import intermediate_text, reason_for

# Kept in the project's test data with its licence (MIT OR Apache-2.0), so
# the conformance tests run on every clone.
CORPUS = Path(__file__).resolve().parents[1] / "data" / "zvt-captures"


def blobs() -> list[Path]:
    return sorted(CORPUS.glob("*.blob"))


def load(name: str) -> m.Message:
    return m.decode_message((CORPUS / name).read_bytes())


def test_corpus_has_25_captures():
    assert len(blobs()) == 25


def test_corpus_travels_with_its_licence_and_readme():
    """The copy in the project's test data keeps its origin and licence."""
    assert "Apache License" in (CORPUS / "LICENSE.upstream").read_text()
    assert "MIT OR Apache-2.0" in " ".join((CORPUS / "README.md").read_text().split())


@pytest.mark.parametrize("path", blobs(), ids=lambda p: p.name)
def test_every_capture_decodes(path: Path):
    raw = path.read_bytes()
    apdu = decode_apdu(raw)
    message = m.decode_message(apdu)
    assert message.control == apdu.control
    assert "4711008005757038004" not in repr(message)


@pytest.mark.parametrize("path", [p for p in blobs() if "ecr_pt" in p.name], ids=lambda p: p.name)
def test_controller_side_captures_reencode_to_the_same_bytes(path: Path):
    raw = path.read_bytes()
    assert m.encode_message(m.decode_message(raw)) == raw


def test_pre_authorisation_25_eur_with_tlv():
    msg = load("1680728162.033575000_ecr_pt.blob")
    assert msg.control == m.PRE_AUTHORISATION
    assert msg.get(0x04) == 2500 and msg.get(0x49) == 978 and msg.get(0x19) == 0x40
    container = msg.tlv_find(0xE9)
    assert container is not None
    assert container.find(0x1F62).value == b"AC"
    assert container.find(0x1F63).value == b"384HH2"


def test_status_information_after_pre_authorisation_masks_the_card_number():
    """R-P6: BMP 22 comes out as BIN + last four at most."""
    msg = load("1680728165.675509000_pt_ecr.blob")
    assert msg.get(0x27) == 0
    assert msg.get(0x04) == 2500 and msg.get(0x49) == 978
    assert msg.get(0x87) == 231 and msg.get(0x0B) == 975
    assert msg.get(0x29) == "52523535"
    assert msg.get(0x0C) == "225558" and msg.get(0x0D) == "0405" and msg.get(0x0E) == "2405"
    assert msg.get(0x22) == "559883******8074"
    assert msg.get(0x8B) == "MasterCard\x00" and msg.get(0x8A) == 6 and msg.get(0x8C) == 1
    assert msg.get(0x2A) == "804011926      "
    assert msg.get(0x3B) == "750071\x00\x00"


def test_full_card_number_from_terminal_is_masked():
    """R-P6: a terminal that sends the whole number (girocard EF_ID) still gives BIN + last 4."""
    msg = load("1682066249.409078000_pt_ecr.blob")
    pan = msg.get(0x22)
    assert pan == "471100*********8004"
    assert msg.get(0x17) == 2 and msg.get(0x87) == 249 and msg.get(0x0B) == 1012
    assert msg.get(0x8B) == "girocard\x00"


def test_track_data_is_masked():
    msg = load("status_information_read_card.blob")
    track = msg.get(0x23)
    assert track == "672590*********0142"
    assert msg.tlv_find(0x1F0B).value.hex() == "000000010000"  # maximum pre-authorisation 100.00
    assert len(msg.tlv_find(0x1F14).value) == 16  # card identification item: the card token


def test_pre_authorisation_reversal_names_receipt():
    msg = load("1680728213.562478000_ecr_pt.blob")
    assert msg.control == m.PRE_AUTHORISATION_REVERSAL
    assert msg.get(0x87) == 231 and msg.get(0x49) == 978


def test_partial_reversal_carries_receipt_and_amount():
    msg = load("1681455683.221609000_ecr_pt.blob")
    assert msg.control == m.PARTIAL_REVERSAL
    assert msg.get(0x87) == 491 and msg.get(0x04) == 1295 and msg.get(0x49) == 978
    assert msg.tlv_find(0x1F63).value == b"MF2246"


def test_open_query_answer_is_abort_b8_with_receipt_ffff():
    msg = load("partial_reversal.blob")
    assert msg.control == m.ABORT_FROM_TERMINAL
    assert msg.field("result_code") == 0xB8
    assert msg.get(0x87) == RECEIPT_ALL
    assert reason_for(0xB8).startswith("pre-authorisation error")


def test_registration_end_of_day_completion():
    reg = load("1681273860.511128000_ecr_pt.blob")
    assert reg.fields == (("password", 123456), ("config_byte", 0xDE), ("currency", 978))
    assert m.encode_message(m.registration(123456, 0xDE, 978)) == (CORPUS / "1681273860.511128000_ecr_pt.blob").read_bytes()
    eod = load("1681282621.302434000_ecr_pt.blob")
    assert eod.fields == (("password", 123456),)
    assert m.encode_message(m.end_of_day(123456)) == (CORPUS / "1681282621.302434000_ecr_pt.blob").read_bytes()
    done = load("1680728165.827009000_pt_ecr.blob")
    assert done.control == m.COMPLETION and not done.bmps and not done.tail
    reg_done = load("1680761818.641601000_pt_ecr.blob")
    assert reg_done.get(0x19) == 0x10 and reg_done.get(0x29) == "52523535" and reg_done.get(0x49) == 978


def test_builders_match_captures():
    assert m.encode_message(m.pre_authorisation_reversal(231, 978, 0x40)) == (
        CORPUS / "1680728213.562478000_ecr_pt.blob"
    ).read_bytes()
    assert m.encode_message(m.abort_from_terminal(0xB8, [(0x87, RECEIPT_ALL)])) == (
        CORPUS / "partial_reversal.blob"
    ).read_bytes()


def test_intermediate_status_and_enquiry_completion():
    inter = load("1680728162.647465000_pt_ecr.blob")
    assert inter.field("status") == 0x17
    assert intermediate_text(0x17) == "please wait"
    enquiry = load("1680728219.054216000_pt_ecr.blob")
    assert enquiry.field("sw_version") == "GER-APP-v2.0.9;cS02.01.01-10.10-2-2;CC26"
    assert enquiry.field("terminal_status") == 0
    assert enquiry.tlv_find(0x1F40).text == "cVEND plug"
    assert enquiry.tlv_find(0x1F44).value.hex() == "52523535"


def test_print_text_block_lines():
    msg = load("1680728215.585561000_pt_ecr.blob")
    assert msg.tlv_find(0x1F07).value == b"\x02"
    lines = msg.tlv_find(0x25)
    assert len(lines.find_all(0x07)) == 33
    assert lines.find(0x09).value == b"\xff"
    system = load("print_system_configuration_reply.blob")
    assert len(system.tlv_find(0x25).find_all(0x07)) == 118


def test_vendor_messages_keep_their_payload():
    feig = load("1680761818.768770000_pt_ecr.blob")
    assert feig.control == m.COMPLETION and feig.tail.startswith(b"17FD1E3C")
    write = load("1682080275.594788000_192.168.0.139_192.168.0.59.blob")
    assert write.field("password") == 123456 and write.tlv_find(0x1D).value == b"\x23"
    config = load("change_host_config.blob")
    assert config.tlv_find(0xFF40).value == bytes.fromhex("123456")


class _ReplayLink(Link):
    """Feeds captured terminal messages to the client, as the terminal would."""

    def __init__(self, replies: list[bytes]):
        super().__init__(Timers(t3_command=0.5, t4_completion=0.5))
        self.replies = list(replies)
        self.sent: list[bytes] = []

    async def open(self):
        import asyncio

        self._inbox = asyncio.Queue()

    async def send(self, apdu):
        self.sent.append(apdu)
        if len(self.sent) == 1:  # the command: the terminal answers with the whole capture
            for r in self.replies:
                self._inbox.put_nowait(r)

    async def close(self):
        pass


async def test_client_reads_captured_pre_authorisation_flow():
    """R-P1/R-P6: the captured Feig pre-authorisation becomes an approved result with
    receipt, trace, amount, masked PAN and the terminal's texts."""
    replies = [
        bytes.fromhex("800000"),
        (CORPUS / "1680728162.647465000_pt_ecr.blob").read_bytes(),
        (CORPUS / "1680728165.675509000_pt_ecr.blob").read_bytes(),
        (CORPUS / "1680728165.827009000_pt_ecr.blob").read_bytes(),
    ]
    link = _ReplayLink(replies)
    seen: list[str] = []
    client = ZvtClient(link, password=123456, on_status=seen.append)
    await client.connect()
    result = await client.preauthorize(Decimal("25.00"))
    assert result.ok and result.reason == "approved"
    assert result.receipt_no == 231 and result.trace_no == 975
    assert result.amount == Decimal("25.00") and result.currency == "EUR"
    assert result.masked_pan == "559883******8074"
    assert result.card_name == "MasterCard" and result.terminal_id == "52523535"
    assert seen == ["please wait"] and result.texts == ("please wait",)
    # one command, then one 80 00 for each of the three terminal messages
    assert link.sent[0][:2] == b"\x06\x22" and link.sent[1:] == [b"\x80\x00\x00"] * 3
