"""The notification found in a multipart body as it streams in
(drivers.anpr.multipart.NotificationScan): pictures pass, only the XML stays."""

from __future__ import annotations

import base64

import pytest

from drivers.anpr import PlateReadError
from drivers.anpr.multipart import MAX_PART_HEAD, NotificationScan
from simulators.camera import fake_jpeg


def scan(body: bytes, ctype: str, piece: int | None = None, **options) -> bytes:
    s = NotificationScan(ctype, **options)
    piece = piece or len(body) or 1
    for i in range(0, len(body), piece):
        s.feed(body[i:i + piece])
    return s.close()


def test_a_5_mb_scene_picture_passes_through_a_buffer_of_one_piece(hik, mp):
    """The loop's work and the memory held per piece do not grow with the
    picture: at most the piece being scanned and the XML are held."""
    body, ctype = mp([("anpr.xml", "application/xml", hik()), ("licensePlatePicture.jpg", "image/jpeg", fake_jpeg(20_000)),
                      ("detectionPicture.jpg", "image/jpeg", fake_jpeg(5_000_000))])
    s = NotificationScan(ctype)
    for i in range(0, len(body), 64 * 1024):
        s.feed(body[i:i + 64 * 1024])
    assert s.close() == hik()
    assert s.held < 64 * 1024 + len(hik()) + 200


def test_xml_after_a_large_picture_is_found_in_small_pieces(hik, mp):
    body, ctype = mp([("detectionPicture.jpg", "image/jpeg", fake_jpeg(300_000)), ("anpr.xml", "text/xml", hik())])
    assert scan(body, ctype, piece=1000) == hik()


def test_line_ends_may_be_bare_lf_and_delimiters_padded(hik):
    body = (b"preamble\n--b  \nContent-Type: image/jpeg\n\n\xff\xd8pic\n--b\t\nContent-Type: application/xml\n\n"
            + hik() + b"\n--b--\nepilogue")
    assert scan(body, "multipart/form-data; boundary=b", piece=3) == hik()


def test_the_boundary_inside_a_picture_with_more_after_it_is_no_delimiter(hik, mp):
    """`--BOUNDARYx` is not the delimiter of BOUNDARY: the picture goes on."""
    picture = b"\xff\xd8\r\n--MIME_boundary_42x not a delimiter\r\n\xff\xd9"
    body, ctype = mp([("pic.jpg", "image/jpeg", picture), ("event", "application/octet-stream", hik())])
    assert scan(body, ctype, piece=7) == hik()


def test_a_body_cut_before_its_closing_delimiter_keeps_the_parts_it_has(hik, mp):
    body, ctype = mp([("anpr.xml", "application/xml", hik()), ("pic.jpg", "image/jpeg", fake_jpeg(5000))])
    assert scan(body[:-40], ctype) == hik()


def test_declared_xml_wins_over_an_earlier_part_that_looks_like_it(hik, mp):
    body, ctype = mp([("event", "application/octet-stream", hik(plate="FIRST1")),
                      ("anpr.xml", "application/xml", hik(plate="SECOND2"))])
    assert scan(body, ctype) == hik(plate="SECOND2")


def test_base64_transfer_encoded_xml_part_is_decoded(hik):
    encoded = base64.encodebytes(hik())
    body = (b"--b\r\nContent-Type: text/xml\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + b"\r\n--b--\r\n")
    assert scan(body, 'multipart/mixed; boundary="b"') == hik()


def test_xml_part_over_the_document_limit_is_refused(hik, mp):
    body, ctype = mp([("anpr.xml", "application/xml", hik() + b" " * 5000)])
    with pytest.raises(PlateReadError, match="XML part is over 4096 bytes"):
        scan(body, ctype, max_document=4096)


def test_endless_part_headers_are_refused():
    body = b"--b\r\nX-Filler: " + b"a" * (MAX_PART_HEAD + 10)
    with pytest.raises(PlateReadError, match="part headers longer"):
        scan(body, "multipart/form-data; boundary=b", piece=1000)


@pytest.mark.parametrize("ctype", ["multipart/form-data", "multipart/form-data; boundary=", "multipart/x; boundary=\"\""])
def test_content_type_without_a_boundary_is_refused(ctype):
    with pytest.raises(PlateReadError, match="without a boundary"):
        NotificationScan(ctype)


def test_a_body_without_the_boundary_has_no_parts(hik):
    with pytest.raises(PlateReadError, match="no parts"):
        scan(hik(), "multipart/form-data; boundary=b")
