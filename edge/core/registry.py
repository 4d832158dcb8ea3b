"""Where the parts plug into the core.

The core names no part. The package ``edge.parts`` lists the parts built
into this release; importing one lets it register what it brings (its
configuration section, its charger protocols), and its ``Capability``
class, if it has one, is built by the hub.
"""

from __future__ import annotations

import importlib

_loaded: list[tuple[object, str | None]] | None = None


def load_parts() -> list[tuple[object, str | None]]:
    """Import every part (once): (module, Capability class name or None),
    in start order. A part not built into this release is left out."""
    global _loaded
    if _loaded is None:
        found = []
        for spec in importlib.import_module("edge.parts").PARTS:
            module_name, _, cls_name = spec.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name:
                    continue  # part not built into this release
                raise
            found.append((module, cls_name or None))
        _loaded = found
    return _loaded
