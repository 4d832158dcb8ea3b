"""ZVT TLV container (BMP 06): BER tags of 1 to 3 bytes and BER lengths. Pure.

A tag whose first byte has the constructed bit (0x20) normally holds more TLV;
some terminals set that bit on tags that carry plain bytes (seen: Feig FF40), so
a constructed tag is read as children only when its value parses cleanly and
completely, and as plain bytes otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.zvt.errors import ZvtDecodeError

CONSTRUCTED = 0x20

# Tags that hold card numbers or track data: their value never leaves decode.
SENSITIVE_TAGS = frozenset({0x57, 0x5A, 0x1F08, 0x1F09, 0x1F0A, 0x1F1A})


@dataclass(frozen=True)
class TlvNode:
    tag: int
    value: bytes = b""
    children: tuple["TlvNode", ...] | None = None
    length_size: int | None = None  # bytes the sender used for the length, when not minimal

    def __repr__(self) -> str:
        if self.children is not None:
            return f"TlvNode({self.tag:X}, {list(self.children)!r})"
        return f"TlvNode({self.tag:X}, {len(self.value)} bytes)"

    def find(self, tag: int) -> "TlvNode | None":
        return find_tag(self.children or (), tag)

    def find_all(self, tag: int) -> list["TlvNode"]:
        return [n for n in (self.children or ()) if n.tag == tag]

    @property
    def text(self) -> str:
        return self.value.decode("latin-1")


def find_tag(nodes: tuple[TlvNode, ...] | list[TlvNode], tag: int) -> TlvNode | None:
    """First node with ``tag``, searching depth-first through constructed nodes."""
    for node in nodes:
        if node.tag == tag:
            return node
        if node.children:
            hit = find_tag(node.children, tag)
            if hit is not None:
                return hit
    return None


def encode_tag(tag: int) -> bytes:
    if tag < 0:
        raise ValueError("TLV tag must not be negative")
    size = max(1, (tag.bit_length() + 7) // 8)
    if size > 3:
        raise ValueError(f"TLV tag {tag:X} is longer than the 3 bytes ZVT allows")
    raw = tag.to_bytes(size, "big")
    if size == 1 and (raw[0] & 0x1F) == 0x1F:
        raise ValueError(f"TLV tag {tag:X}: a first byte ending in 1F announces more tag bytes")
    if size > 1:
        if (raw[0] & 0x1F) != 0x1F:
            raise ValueError(f"TLV tag {tag:X}: a multi-byte tag must start with a byte ending in 1F")
        if any(b & 0x80 == 0 for b in raw[1:-1]) or raw[-1] & 0x80:
            raise ValueError(f"TLV tag {tag:X}: continuation bits are wrong")
    return raw


def encode_length(n: int, size: int | None = None) -> bytes:
    """BER length: short form below 128, else 81 xx or 82 xx xx."""
    if n < 0 or n > 0xFFFF:
        raise ValueError(f"TLV length {n} is outside 0..65535")
    minimal = 0 if n < 0x80 else (1 if n <= 0xFF else 2)
    size = minimal if size is None else max(size, minimal)
    if size == 0:
        return bytes((n,))
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def decode_tag(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise ZvtDecodeError("TLV cut short where a tag was expected")
    first = data[pos]
    tag = first
    pos += 1
    if first & 0x1F == 0x1F:
        for count in range(2):
            if pos >= len(data):
                raise ZvtDecodeError("TLV cut short inside a multi-byte tag")
            b = data[pos]
            tag = (tag << 8) | b
            pos += 1
            if not b & 0x80:
                break
        else:
            raise ZvtDecodeError("TLV tag longer than 3 bytes")
    return tag, pos


def decode_length(data: bytes, pos: int) -> tuple[int, int, int | None]:
    """(length, new position, length size when the long form was used)."""
    if pos >= len(data):
        raise ZvtDecodeError("TLV cut short where a length was expected")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos, None
    size = first & 0x7F
    if size not in (1, 2):
        raise ZvtDecodeError(f"TLV length form {first:02X} is not supported (81 or 82 expected)")
    if pos + size > len(data):
        raise ZvtDecodeError("TLV cut short inside a length")
    return int.from_bytes(data[pos : pos + size], "big"), pos + size, size


def decode_tlv(data: bytes) -> tuple[TlvNode, ...]:
    """Every node in ``data``; ZvtDecodeError when the bytes are not TLV."""
    nodes: list[TlvNode] = []
    pos = 0
    data = bytes(data)
    while pos < len(data):
        tag, pos = decode_tag(data, pos)
        length, pos, length_size = decode_length(data, pos)
        if pos + length > len(data):
            raise ZvtDecodeError(
                f"TLV tag {tag:X} announces {length} bytes but only {len(data) - pos} remain"
            )
        value = data[pos : pos + length]
        pos += length
        nodes.append(_node(tag, value, length_size))
    return tuple(nodes)


def _node(tag: int, value: bytes, length_size: int | None) -> TlvNode:
    if tag in SENSITIVE_TAGS:
        # Card number or track data: keep that the tag was there, drop its value.
        return TlvNode(tag, b"", None, length_size)
    first = tag >> (8 * ((tag.bit_length() - 1) // 8)) if tag else 0
    if first & CONSTRUCTED and value:
        try:
            # Parsing consumes the value exactly or raises, and every length
            # form is kept, so the children re-encode to the same bytes.
            return TlvNode(tag, b"", decode_tlv(value), length_size)
        except ZvtDecodeError:
            pass
    return TlvNode(tag, value, None, length_size)


def encode_tlv(nodes: tuple[TlvNode, ...] | list[TlvNode]) -> bytes:
    out = bytearray()
    for node in nodes:
        value = encode_tlv(node.children) if node.children is not None else bytes(node.value)
        out += encode_tag(node.tag) + encode_length(len(value), node.length_size) + value
    return bytes(out)


def primitive(tag: int, value: bytes | str) -> TlvNode:
    if isinstance(value, str):
        value = value.encode("latin-1")
    return TlvNode(tag, bytes(value))


def constructed(tag: int, *children: TlvNode) -> TlvNode:
    return TlvNode(tag, b"", tuple(children))
