"""Reader driver pieces without sockets: debounce (R-A4) and uid extraction."""

import nfc.clf
import pytest

from drivers.nfc_reader import CardReader, TapDebounce, mask_uid, uid_of
from simulators.card import SimCard


def test_r_a4_held_card_counts_once_and_retap_after_window_counts():
    d = TapDebounce(2.0)
    assert d.seen("04A1B2C3", 0.0)
    # Held: seen every 50 ms for 10 s, never counts again.
    assert not any(d.seen("04A1B2C3", t / 20) for t in range(1, 200))
    # Removed at 10 s, back at 12.5 s: counts.
    assert d.seen("04A1B2C3", 12.5)
    assert d.seen("04D4E5F6", 12.6), "another card is not held back"


def test_uid_of_each_technology():
    a = nfc.clf.RemoteTarget("106A", sdd_res=bytearray.fromhex("04112233445566"))
    b = nfc.clf.RemoteTarget("106B", sensb_res=bytearray.fromhex("50A1B2C3D4000000000081 81".replace(" ", "")))
    f = nfc.clf.RemoteTarget("212F", sensf_res=bytearray.fromhex("01" + "0102030405060708" + "FF" * 8))
    assert uid_of(a) == ("106A", bytes.fromhex("04112233445566"))
    assert uid_of(b) == ("106B", bytes.fromhex("A1B2C3D4"))
    assert uid_of(f) == ("212F", bytes.fromhex("0102030405060708"))


def test_mask_shows_last_four_hex_digits_only():
    assert mask_uid("04a1b2c3") == "*B2C3"


def test_reader_refuses_unknown_technology():
    with pytest.raises(ValueError, match="106A"):
        CardReader("r1", "udp:127.0.0.1:1", None, print, technologies=("106C",))


@pytest.mark.parametrize("uid,levels", [
    ("04A1B2C3", ["04A1B2C3D4"]),
    ("04112233445566", ["8804112231", "33445566" + "%02X" % (0x33 ^ 0x44 ^ 0x55 ^ 0x66)]),
])
def test_simulated_card_cascade_levels_carry_bcc(uid, levels):
    got = [lv.hex().upper() for lv in SimCard.parse(uid).cascade_levels()]
    assert got[0][:8] == levels[0][:8] and len(got) == len(levels)
    for lv in SimCard.parse(uid).cascade_levels():
        assert lv[4] == lv[0] ^ lv[1] ^ lv[2] ^ lv[3]


def test_simulated_card_refuses_bad_uids():
    for bad, tech in (("04A1B2", "106A"), ("8811223344556677", "106A"), ("zz", "106A"), ("0102", "212F")):
        with pytest.raises(ValueError):
            SimCard.parse(bad, tech)
