"""Fuzzing the plate-camera input: Hikvision XML / multipart and Axis JSON
bodies, and the raw HTTP requests the listener reads (R-G4, R-G8, R-M3's local
form: a bad request gets a clear 4xx and emits nothing).

The last tests are the bugs the fuzzer found in the camera driver
(drivers/anpr), each kept as the test of its fix."""

import asyncio

import pytest
from fuzz_settings import CI
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import NOW, SECRET, answered, anpr_exchange, check_anpr_body, check_anpr_http, gen_anpr_body, gen_anpr_http
from drivers.anpr import PlateReadError, parse_axis, parse_hikvision


@CI(300)
@given(st.sampled_from(["hikvision", "axis"]), st.binary(max_size=400),
       st.sampled_from(["application/xml", "multipart/form-data; boundary=b", "multipart/mixed", ""]))
def test_r_g4_arbitrary_bodies_are_read_or_refused(vendor, body, ctype):
    """Any bytes: a PlateRead, None or PlateReadError with a reason."""
    check_anpr_body((vendor, body, ctype))


@CI(400)
@given(st.randoms(use_true_random=False))
def test_r_g8_mutated_camera_events_are_read_or_refused(rnd):
    """ISAPI XML (bare and multipart) and Axis LPV JSON with odd values and
    byte mutations: refused with PlateReadError or read with a confidence in
    0..1, a UTC time, a bounded plate that never shows raw in the repr."""
    case = gen_anpr_body(rnd)
    check_anpr_body(case)


@CI(150)
@given(st.randoms(use_true_random=False))
def test_r_g4_raw_http_requests_are_answered_and_never_crash_the_listener(rnd):
    """Request lines, headers, lengths, secrets and bodies, well-formed and
    mutated, pipelined, into the listener's connection (aiohttp's request
    handling and ours): each request read gets a status line, 4xx when
    refused, no internal error, and a read is emitted only when answered
    200 ok."""
    case = gen_anpr_http(rnd)
    loop = asyncio.new_event_loop()
    try:
        check_anpr_http(case, loop)
    finally:
        loop.close()


# ---- what the fuzzer found in the camera driver, each kept as the test of its fix


def test_r_g4_camera_time_off_the_calendar_is_refused_or_ignored():
    body = (b'<EventNotificationAlert><dateTime>0001-01-01T00:00:00+01:00</dateTime><eventType>ANPR</eventType>'
            b'<ANPR><licensePlate>AB123CD</licensePlate><confidenceLevel>90</confidenceLevel></ANPR>'
            b'</EventNotificationAlert>')
    read = parse_hikvision(body, "application/xml", received_at=NOW)
    assert read.ts == NOW  # a time that cannot be placed falls back to ours


def test_r_g4_axis_number_too_long_is_refused():
    body = b'{"carState":"new","plateText":"AB12CD","plateConfidence":' + b"9" * 5000 + b"}"
    with pytest.raises(PlateReadError):
        parse_axis(body, received_at=NOW)


def test_r_g8_doctype_in_utf16_is_refused():
    xml = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY p "AB123CD">]><EventNotificationAlert>'
           '<eventType>ANPR</eventType><ANPR><licensePlate>&p;</licensePlate><confidenceLevel>90</confidenceLevel>'
           '</ANPR></EventNotificationAlert>')
    with pytest.raises(PlateReadError):
        parse_hikvision(xml.encode("utf-16"), "application/xml", received_at=NOW)


def test_r_g4_content_length_superscript_digit_gets_400():
    raw = (f"POST /anpr HTTP/1.1\r\nHost: hub\r\nX-Hub-Secret: {SECRET}\r\nContent-Length: \xb2\r\n\r\nxx").encode("latin-1")
    check_anpr_http(("axis", raw))
    assert answered(anpr_exchange("axis", raw)[0]) == [400]


def test_r_g4_header_names_are_tokens():
    out, reads = anpr_exchange("axis", b"POST /anpr HTTP/1.1\r\nHost: hub\r\nContent-Length\n: 5\r\n\r\nxxxxx")
    assert answered(out) == [400] and reads == []
