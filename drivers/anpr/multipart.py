"""The ISAPI notification inside a multipart body, found as the body streams in.

A Hikvision camera posts its ``EventNotificationAlert`` XML as one part of a
multipart body, next to the plate picture and a scene picture of a megabyte
or more. Only the XML is wanted. ``NotificationScan`` is fed the body piece
by piece as it arrives and keeps the XML part alone: picture bytes pass
through a buffer of a few dozen bytes (enough to see a boundary across two
pieces) and are dropped, so a read costs the same memory and time whatever
the pictures weigh. Each piece is searched for the boundary with
``bytearray.find``: the event loop never stalls on a picture.

No I/O here: the listener feeds what the socket gives, ``parse_hikvision``
feeds a whole body at once. The rules (RFC 2046, read leniently like the
cameras write): a delimiter is ``--boundary`` at the start of a line followed
by optional spaces and a line end, or ``--`` for the last one; line ends are
CRLF or LF; part headers end at the first empty line. The XML part is the one
declared XML (``*/xml`` or a ``.xml`` file name), else the first part whose
start looks like the notification.
"""

from __future__ import annotations

import binascii
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from drivers.anpr.read import PlateReadError

MAX_DOCUMENT = 256 * 1024  # an ISAPI notification is a few kB
MAX_PART_HEAD = 8 * 1024
_SNIFF = 4096  # how much of an undeclared part is looked at for the notification
_PADDING = 64  # spaces allowed after a delimiter before its line end

_PREAMBLE, _HEADERS, _BODY, _EPILOGUE = range(4)
_DROP, _KEEP, _SNIFFING = range(3)


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type, as bytes."""
    try:
        header = Message()
        header["Content-Type"] = content_type
        boundary = header.get_boundary()
    except Exception:  # a header the email package cannot take apart is no boundary
        boundary = None
    if not boundary or len(boundary) > 200:
        raise PlateReadError("multipart body without a boundary in its Content-Type")
    try:
        return boundary.encode("latin-1")
    except UnicodeEncodeError:
        raise PlateReadError("multipart boundary is not ASCII: check the camera's Content-Type") from None


def _looks_like_notification(start: bytes) -> bool:
    return start.lstrip()[:1] == b"<" and b"EventNotificationAlert" in start[:_SNIFF]


class NotificationScan:
    """Feed a multipart body in pieces (``feed``), then ``close`` for the
    notification XML. Malformed input raises ``PlateReadError``."""

    def __init__(self, content_type: str, *, max_document: int = MAX_DOCUMENT):
        self._delimiter = b"\n--" + boundary_of(content_type)
        self.max_document = max_document
        # A line break before the body lets a first delimiter at its very
        # start match like every later one.
        self._buf = bytearray(b"\n")
        self._state = _PREAMBLE
        self._search_from = 0
        self.parts = 0
        self.held = 0  # most bytes held at once: the scan buffer and the part being kept
        self._declared: bytes | None = None
        self._fallback: bytes | None = None
        self._part_mode = _DROP
        self._part_declared = False
        self._part_encoding = ""
        self._part = bytearray()

    # -- input

    def feed(self, data: bytes) -> None:
        self._buf += data
        self.held = max(self.held, len(self._buf) + len(self._part))
        self._run(final=False)

    def close(self) -> bytes:
        """The notification XML; ``PlateReadError`` when there is none."""
        self._run(final=True)
        if self._state == _BODY:  # no closing delimiter: take the part as it stands
            self._part_data(bytes(self._buf))
            self._end_part()
        self._buf.clear()
        if not self.parts:
            raise PlateReadError("multipart body has no parts: check the boundary")
        if self._declared is not None:
            return self._declared
        if self._fallback is not None:
            return self._fallback
        raise PlateReadError("multipart body has no XML part: expected the EventNotificationAlert document")

    # -- the scan

    def _run(self, *, final: bool) -> None:
        while True:
            if self._state == _EPILOGUE:
                self._buf.clear()
                return
            if self._state == _HEADERS:
                if not self._headers(final):
                    return
                continue
            found = self._next_delimiter(final)
            if found is None:
                # What lies before a possible delimiter (and the CR of its
                # line end) cannot be one any more: pass it on.
                done = self._search_from - 1
                if done > 0:
                    if self._state == _BODY:
                        self._part_data(bytes(self._buf[:done]))
                    del self._buf[:done]
                    self._search_from -= done
                return
            start, after, last = found
            if self._state == _BODY:
                end = start - 1 if start and self._buf[start - 1] == 0x0D else start  # the CR of the CRLF
                self._part_data(bytes(self._buf[:end]))
                self._end_part()
            del self._buf[:after]
            self._search_from = 0
            self._state = _EPILOGUE if last else _HEADERS

    def _next_delimiter(self, final: bool) -> tuple[int, int, bool] | None:
        """(start, end, is the last) of the next delimiter line in the buffer;
        None when there is none, or not enough bytes yet to tell."""
        buf, delimiter = self._buf, self._delimiter
        at = self._search_from
        while True:
            start = buf.find(delimiter, at)
            if start < 0:
                self._search_from = max(at, len(buf) - len(delimiter) + 1)
                return None
            i = start + len(delimiter)
            if buf[i:i + 2] == b"--":
                return start, i + 2, True
            if buf[i:i + 1] == b"-" and i + 1 == len(buf) and not final:
                self._search_from = start
                return None
            j = i
            while j < len(buf) and j - i <= _PADDING and buf[j] in b" \t":
                j += 1
            if j == len(buf):
                if final:  # the body ends on a delimiter without its line end
                    return start, j, True
                if j - i <= _PADDING:
                    self._search_from = start
                    return None
            if buf[j:j + 2] == b"\r\n":
                return start, j + 2, False
            if buf[j:j + 1] == b"\n":
                return start, j + 1, False
            if buf[j:j + 1] == b"\r" and j + 1 == len(buf) and not final:
                self._search_from = start
                return None
            at = start + 1  # "--boundaryX": not this boundary, look further

    def _headers(self, final: bool) -> bool:
        """Take one part's header block; False when more bytes are needed."""
        buf = self._buf
        if buf[:2] == b"\r\n":
            block, used = b"", 2
        elif buf[:1] == b"\n":
            block, used = b"", 1
        else:
            ends = [(i, n) for i, n in ((buf.find(b"\n\r\n"), 3), (buf.find(b"\n\n"), 2)) if i >= 0]
            if not ends:
                if len(buf) > MAX_PART_HEAD:
                    raise PlateReadError(f"multipart part headers longer than {MAX_PART_HEAD} bytes")
                if final and buf:
                    self._start_part(bytes(buf))
                    self._end_part()
                    buf.clear()
                    self._state = _EPILOGUE
                return False
            i, n = min(ends)
            block, used = bytes(buf[:i + 1]), i + n
        if used > MAX_PART_HEAD:
            raise PlateReadError(f"multipart part headers longer than {MAX_PART_HEAD} bytes")
        self._start_part(block)
        del buf[:used]
        self._state = _BODY
        return True

    # -- one part

    def _start_part(self, block: bytes) -> None:
        self.parts += 1
        self._part.clear()
        try:
            headers = BytesHeaderParser(policy=compat32).parsebytes(block)
            ctype = headers.get_content_type()
            filename = headers.get_filename() or headers.get_param("name", header="content-disposition") or ""
            encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
        except Exception:  # malformed part headers: the part is not the notification
            ctype, filename, encoding = "", "", ""
        if not isinstance(filename, str):
            filename = ""
        self._part_encoding = encoding if encoding in ("base64", "quoted-printable") else ""
        self._part_declared = ctype.endswith("/xml") or filename.lower().endswith(".xml")
        if self._declared is not None:
            self._part_mode = _DROP
        elif self._part_declared:
            self._part_mode = _KEEP
        elif self._fallback is None:
            self._part_mode = _KEEP if self._part_encoding else _SNIFFING
        else:
            self._part_mode = _DROP

    def _part_data(self, data: bytes) -> None:
        if self._part_mode == _DROP or not data:
            return
        self._part += data
        if self._part_mode == _SNIFFING and len(self._part) >= _SNIFF:
            if _looks_like_notification(bytes(self._part[:_SNIFF])):
                self._part_mode = _KEEP
            else:  # a picture: let the rest of it pass
                self._part_mode = _DROP
                self._part.clear()
                return
        if len(self._part) > self.max_document:
            if self._part_declared:
                raise PlateReadError(
                    f"the XML part is over {self.max_document} bytes: an ISAPI notification is a few kB"
                )
            self._part_mode = _DROP  # too big to be the notification
            self._part.clear()

    def _end_part(self) -> None:
        mode, data = self._part_mode, bytes(self._part)
        self._part.clear()
        self._part_mode = _DROP
        if mode == _DROP:
            return
        if self._part_encoding == "base64":
            try:
                data = binascii.a2b_base64(data)
            except (binascii.Error, ValueError):
                if self._part_declared:
                    raise PlateReadError("the XML part's base64 cannot be decoded") from None
                return
        elif self._part_encoding == "quoted-printable":
            data = binascii.a2b_qp(data)
        if self._part_declared:
            self._declared = data
        elif self._fallback is None and _looks_like_notification(data[:_SNIFF]):
            self._fallback = data
