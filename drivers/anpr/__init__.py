"""ANPR cameras: number-plate reads pushed to the hub over HTTP.

Two wire formats are understood: Hikvision ISAPI ``EventNotificationAlert``
XML (bare, or one part of a multipart body next to JPEG pictures) and Axis
License Plate Verifier push JSON. The parsers are pure functions from bytes
to a ``PlateRead`` (or ``None`` for a well-formed event that carries no plate
decision, such as a heartbeat or an Axis LOST); anything malformed raises
``PlateReadError``. ``AnprListener`` is the I/O edge the camera posts to.

- ``read``: the ``PlateRead`` and the vocabularies the vendors share
- ``hikvision``, ``axis``: one parser per vendor; ``multipart``: the
  notification found in a multipart body as it streams in
- ``listener``: the HTTP endpoint (aiohttp)
- ``plate_text``: the plate's canonical form and its mask for logs (R-G8)
"""

from drivers.anpr.axis import parse_axis
from drivers.anpr.hikvision import parse_hikvision, parse_isapi
from drivers.anpr.plate_text import mask_plate
from drivers.anpr.read import DEFAULT_MAX_BODY, MAX_PLATE_CHARS, PlateRead, PlateReadError

__all__ = [
    "DEFAULT_MAX_BODY", "MAX_PLATE_CHARS", "AnprListener", "PlateRead", "PlateReadError", "mask_plate",
    "parse_axis", "parse_hikvision", "parse_isapi",
]


def __getattr__(name: str):
    # The listener brings aiohttp in (a fifth of a second): loaded when asked
    # for, so that the hub's plate matching (edge.parts.site.plates) and hubctl do not pay it.
    if name == "AnprListener":
        from drivers.anpr import listener

        return getattr(listener, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
