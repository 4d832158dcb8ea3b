"""Plate normalising, keyed hashing and masking (R-G4, R-G8)."""

from __future__ import annotations

import logging
from datetime import timedelta

from hypothesis import given, settings, strategies as st

from booking_builders import NOW, SECRET, bays_of, booking_item, make_book
from edge.parts.site.plates import (confusion_form, exact_keys, mask_plate, normalise_plate, plate_hash,
                         plate_keys)


def test_r_g4_case_spaces_dashes_dots_and_country_prefix_normalise_to_one_plate():
    forms = ["NL-AB-123-C", "nl ab 123 c", "AB.123.C", "ab-123-c", "NL AB123C"]
    assert {normalise_plate(f) for f in forms} == {"AB123C"}
    assert normalise_plate("AB123C", country="NL") == "AB123C"
    assert normalise_plate("NLAB123C", country="NL") == "AB123C"  # sign glued on, country field given
    assert normalise_plate("D M-AB 1234") == "MAB1234"
    assert normalise_plate("1-ABC-123", country="BE") == "1ABC123"


def test_r_g4_country_field_given_as_iso_code_strips_the_distinguishing_sign():
    assert normalise_plate("D-XY 42", country="DE") == "XY42"
    assert normalise_plate("A W 12345", country="AT") == "W12345"


def test_r_g4_a_district_code_that_looks_like_a_country_sign_still_matches_exactly():
    """Düsseldorf's 'D-AB 123': the canonical form drops 'D', but the form
    with it kept is an exact key too, so a booking written DAB123 matches."""
    assert exact_keys("D-AB 123") == ("AB123", "DAB123")
    book = make_book(bays_of(2), booking_item("k1", NOW + timedelta(hours=1), plates=["DAB123"]))
    m = book.find_by_plate("D-AB 123")
    assert m.booking_ids == ("k1",) and not m.fuzzy


def test_r_g4_a_lone_sign_is_not_stripped_into_an_empty_plate():
    assert normalise_plate("NL 1") == "NL1"
    assert normalise_plate("D") == "D"
    assert normalise_plate("  --  ") == ""


def test_r_g4_ocr_confusions_fold_to_digits():
    assert confusion_form("OIBSZ") == "01852"
    assert confusion_form("AB1S0") == confusion_form("A81SO")


def test_r_g4_confusion_fallback_matches_only_when_no_exact_match_and_one_plate_folds_there():
    book = make_book(bays_of(3), booking_item("k1", NOW + timedelta(hours=1), plates=["BX-5O-ZI"]))
    m = book.find_by_plate("8X-50-21")
    assert m.booking_ids == ("k1",) and m.fuzzy
    exact = book.find_by_plate("bx 5o zi")
    assert exact.booking_ids == ("k1",) and not exact.fuzzy


def test_r_g4_two_real_plates_that_fold_together_never_match_each_other():
    """AB1S and A81S are different trucks: each matches itself exactly, and
    a third read folding to both is ambiguous, not a match."""
    book = make_book(bays_of(3),
                     booking_item("k1", NOW + timedelta(hours=1), plates=["AB1S"]),
                     booking_item("k2", NOW + timedelta(hours=1), plates=["A81S"]))
    assert book.find_by_plate("AB1S").booking_ids == ("k1",)
    assert book.find_by_plate("A81S").booking_ids == ("k2",)
    third = book.find_by_plate("AB15")
    assert third.hits == () and third.ambiguous_fold


def test_r_g8_plate_hash_is_keyed_and_stable():
    h = plate_hash("AB123C", SECRET)
    assert h == plate_hash("AB123C", SECRET)
    assert h != plate_hash("AB123C", b"another-site")
    assert "AB123C" not in h and len(h) == 64
    keys = plate_keys("NL-AB-123-C", None, SECRET)
    assert keys.canonical == h
    assert all("AB123C" not in k for k in keys.exact + keys.folded)


def test_r_g8_masked_plate_hides_the_plate_and_its_length():
    assert mask_plate("NL-AB-123-C") == "A***C"
    assert mask_plate("XY-99") == "X***9"
    assert mask_plate("AB1234567") == "A***7"
    assert mask_plate("A1") == "***"


def test_r_g8_no_raw_plate_in_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="hubedge")
    book = make_book(bays_of(2), booking_item("k1", NOW + timedelta(hours=1), plates=["NL-QQ-777-Z"]))
    book.find_by_plate("QQ777Z")
    assert "QQ777Z" not in caplog.text and "QQ-777" not in caplog.text
    assert "plate#" in caplog.text


plate_text = st.text(alphabet="ABCDEFGHJKLMNPRTUVWXY0123456789", min_size=3, max_size=8)


@settings(max_examples=300, deadline=None)
@given(plate_text, st.sampled_from(["", " ", "-", "."]), st.booleans())
def test_r_g4_property_separators_and_case_never_stop_a_plate_matching_itself(plate, sep, lower):
    """However the plate is written, the read and the booking share an exact
    key (a leading group that is a country sign may move the canonical form,
    "BG 00" reads as Bulgaria, but the form with it kept still matches)."""
    written = sep.join([plate[:2], plate[2:]]) if sep else plate
    written = written.lower() if lower else written
    assert set(exact_keys(written)) & set(exact_keys(plate))
    book = make_book(bays_of(1), booking_item("k1", NOW + timedelta(hours=1), plates=[plate]))
    m = book.find_by_plate(written)
    assert m.booking_ids == ("k1",) and not m.fuzzy


clear_text = st.text(alphabet="ACDEFGHJKLMNPRTUVWXY34679", min_size=4, max_size=8)


@settings(max_examples=300, deadline=None)
@given(clear_text, clear_text)
def test_r_g4_property_different_plates_without_confusable_characters_never_match(a, b):
    if normalise_plate(a) == normalise_plate(b) or set(exact_keys(a)) & set(exact_keys(b)):
        return
    book = make_book(bays_of(2),
                     booking_item("ka", NOW + timedelta(hours=1), plates=[a]),
                     booking_item("kb", NOW + timedelta(hours=1), plates=[b]))
    assert book.find_by_plate(a).booking_ids == ("ka",)
    assert book.find_by_plate(b).booking_ids == ("kb",)
