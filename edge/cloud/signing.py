"""Signed cloud-to-hub messages: the hub obeys only what the cloud signed.

TLS and the broker's ACL say who may publish on a hub's downlink topics; they
cannot tell the cloud service from anyone else holding the cloud's broker
account, or from the broker itself. An HMAC-SHA256 over the topic and the
payload, with a key only the cloud and the hub know, can.

What is signed: the bytes ``topic + "\\n" + payload`` (topic UTF-8, payload as
sent). The signature travels in the MQTT v5 user property ``hubedge-sig`` as
``hmac-sha256=<64 lowercase hex digits>``. Binding the topic means a message
signed for one hub, or for one kind, is refused on any other topic.

The key file holds one key a line, 64 hex digits (32 bytes); ``#`` starts a
comment. Every key listed verifies, so a new key is rolled out by adding it
beside the old one, switching the cloud to it, then removing the old line.
The file must be readable by its owner only, as ssh wants of its keys.
Neither a key nor a signature is ever logged or put in a message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

SIGNATURE_PROPERTY = "hubedge-sig"
SCHEME = "hmac-sha256"
KEY_BYTES = 32
MAX_FILE_BYTES = 64 * 1024  # room for comments and hundreds of keys
GENERATE = 'python -c "import secrets; print(secrets.token_hex(32))"'

_KEY_LINE = re.compile(r"[0-9a-fA-F]{64}")


class KeyFileError(Exception):
    """The command key file cannot be used; the message says why and what to do."""


def signed_bytes(topic: str, payload: bytes) -> bytes:
    return topic.encode("utf-8") + b"\n" + bytes(payload)


def sign(key: bytes, topic: str, payload: bytes) -> str:
    """The value of the ``hubedge-sig`` property for this message."""
    digest = hmac.new(key, signed_bytes(topic, payload), hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def verify(keys: Iterable[bytes], topic: str, payload: bytes, signature: str | None) -> bool:
    """True when ``signature`` was made with one of ``keys`` for exactly this
    topic and payload. Compared in constant time; every key is tried, so the
    time taken does not tell which one matched."""
    if not isinstance(signature, str):
        return False
    given = signature.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(sign(key, topic, payload).encode("ascii"), given)
    return ok


def parse_keys(text: str, where: str = "key file") -> tuple[bytes, ...]:
    """Keys from the text of a key file, in file order, each once. Error
    messages name the line, never its content."""
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        if not _KEY_LINE.fullmatch(value):
            found = (f"{len(value)} characters" if len(value) != 64
                     else "64 characters that are not all hex digits")
            raise KeyFileError(f"{where} line {number}: expected a key of 64 hex digits (32 bytes), found {found}; "
                               f"make a key with {GENERATE}")
        key = bytes.fromhex(value)
        if key not in keys:
            keys.append(key)
    if not keys:
        raise KeyFileError(f"{where} holds no key: put the hub's command key in it, one line of 64 hex digits "
                           f"(make one with {GENERATE}, and give the cloud the same key)")
    return tuple(keys)


def read_private_file(path: str | Path, what: str, setting: str) -> bytes:
    """The bytes of a secret file (a command key, a TLS private key), at most
    MAX_FILE_BYTES + 1 of them. Refuses a file its group or others may read
    or write, and anything but a regular file; ``setting`` names the key of
    the configuration that points at it, for the message."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a FIFO must not hang the start
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = exc.strerror if isinstance(exc, OSError) else "not a usable file name"
        raise KeyFileError(f"{what} {path}: cannot read it ({reason}); check the path, and that "
                           f"the hub's user owns the file") from None
    try:
        # The mode of what was opened, not of whatever the path names now.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"{what} {path} is not a regular file: point {setting} at the file itself")
        if mode & 0o077:
            raise KeyFileError(f"{what} {path} gives its group or others access (mode "
                               f"{stat.S_IMODE(mode):04o}): whoever reads it can act as this hub or its cloud; "
                               f"run chmod 600 {path}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)


def load_keys(path: str | Path) -> tuple[bytes, ...]:
    """The command keys in ``path``. Refuses a file that others may read or
    write, an empty file and a malformed line."""
    path = Path(path)
    raw = read_private_file(path, "command key file", "command_key_file")
    if len(raw) > MAX_FILE_BYTES:
        raise KeyFileError(f"command key file {path} is over {MAX_FILE_BYTES} bytes, not a key file: it holds one key "
                           f"a line, 64 hex digits")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"command key file {path} is not plain text: it holds one key a line, 64 hex digits "
                           f"(make one with {GENERATE})") from None
    return parse_keys(text, f"command key file {path}")
