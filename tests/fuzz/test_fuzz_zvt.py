"""Fuzzing the ZVT codec and client (R-P6, R-M3's local form: bad input gets a
clear error and changes nothing). The oracles live in bench/fuzz.py, where the
long runs use them too; here hypothesis drives them with a CI-sized budget."""

import asyncio

from fuzz_settings import CI
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import (
    check_zvt_apdu,
    check_zvt_client,
    check_zvt_frames,
    gen_zvt_apdu,
    gen_zvt_client,
    gen_zvt_frames,
)


@CI(200)
@given(st.binary(max_size=400), st.lists(st.integers(1, 80), max_size=30))
def test_r_p6_deframing_any_bytes_any_chunking(data, chunks):
    """FrameReader on arbitrary line bytes cut arbitrarily: the same frames
    and ACK/NAK bytes come out however the bytes are chunked, never an error."""
    check_zvt_frames((data, tuple(chunks), None))


@CI(200)
@given(st.randoms(use_true_random=False))
def test_r_p6_deframing_recovers_every_good_frame_between_noise(rnd):
    """Frames sent between line noise (ACK, NAK, stray bytes) and cut into
    chunks come out one for one; frames with a bad CRC are reported as such."""
    check_zvt_frames(gen_zvt_frames(rnd))


@CI(300)
@given(st.binary(max_size=300))
def test_r_p6_apdu_decoding_of_arbitrary_bytes(raw):
    """decode_message: ZvtDecodeError with a message, or a Message that never
    holds a card number beyond BIN and last four."""
    check_zvt_apdu(raw)


@CI(300)
@given(st.randoms(use_true_random=False))
def test_r_p6_apdu_decoding_of_mutated_terminal_messages(rnd):
    """Well-formed terminal messages (every BMP kind, TLV, PAN, track data),
    then bit flips, cuts and inserts: decoded or refused, never a crash, and a
    decoded message encodes again."""
    check_zvt_apdu(gen_zvt_apdu(rnd))


@CI(300)
@given(st.randoms(use_true_random=False))
def test_r_p6_client_exchange_with_a_terminal_that_says_anything(rnd):
    """Pre-authorisation, status enquiry, open pre-authorisations ... against
    a terminal answering mutated messages: a result or a TerminalError, and no
    result carries a card number."""
    loop = asyncio.new_event_loop()
    try:
        check_zvt_client(gen_zvt_client(rnd), loop)
    finally:
        loop.close()
