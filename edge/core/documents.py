"""Document sets on disk: TinyDB files written whole and atomically, with
the last good copy kept beside them (edge/core/store.py says why).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

from edge.core.recovery import _corrupt_name
from edge.core.store import atomic_write
from units import Clock

log = logging.getLogger("hubedge.store")


class AtomicJSONStorage(Storage):
    """TinyDB storage that writes the whole file atomically, keeps the
    previous good copy as ``.bak`` and recovers from a damaged file at open.

    Single writer: one instance per file, used from one thread at a time.
    ``batch()`` groups several TinyDB writes into one file write, so a batch
    applies whole or not at all. With ``defer`` the file write is handed to
    ``defer(path, bytes)`` (the store's writer thread) instead of being done
    here; reads see the new content at once.
    """

    def __init__(self, path: Path | str, *, alarms: list[str] | None = None, clock: Clock | None = None,
                 defer: Callable[[Path, bytes], None] | None = None):
        super().__init__()
        self.path = Path(path)
        self.alarms = alarms if alarms is not None else []
        self._clock = clock or Clock()
        self._defer = defer
        self._text = self._load()  # cached serialised content; the file is never re-read
        self._pending: str | None = None
        self._batch_depth = 0

    # -- opening and recovery
    def _parse(self, raw: bytes) -> dict:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
            raise ValueError("not a TinyDB document file (top level must map table names to objects)")
        return data

    def _load(self) -> str:
        for stale in self.path.parent.glob(f".{self.path.name}*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a crash before the rename: never the live copy
        bak = self.path.with_name(self.path.name + ".bak")
        if self.path.exists():
            try:
                return json.dumps(self._parse(self.path.read_bytes()))
            except (ValueError, UnicodeDecodeError) as e:
                aside = _corrupt_name(self.path, self._clock)
                os.replace(self.path, aside)
                problem = f"{self.path.name} is damaged ({type(e).__name__}) and was moved to {aside.name}"
        elif bak.exists():
            problem = f"{self.path.name} is missing"
            aside = None
        else:
            return "{}"
        if bak.exists():
            try:
                text = json.dumps(self._parse(bak.read_bytes()))
                atomic_write(self.path, text.encode())
                self._alarm(f"{problem}; restored the last good copy {bak.name}: changes since then may be "
                            f"missing, ask the cloud for a resync (hubctl resync)")
                return text
            except (ValueError, UnicodeDecodeError):
                bak_aside = _corrupt_name(bak, self._clock)
                os.replace(bak, bak_aside)
                problem += f"; its backup was damaged too and was moved to {bak_aside.name}"
        self._alarm(f"{problem}; started empty: ask the cloud for a resync (hubctl resync)")
        return "{}"

    def _alarm(self, message: str) -> None:
        self.alarms.append(message)
        log.error("store.recovered file=%s problem=%r", self.path.name, message)

    # -- tinydb Storage
    def read(self) -> dict[str, dict[str, Any]] | None:
        text = self._pending if self._pending is not None else self._text
        # A fresh copy each time: TinyDB edits what read() returns before write().
        return json.loads(text)

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        text = json.dumps(data, ensure_ascii=False)
        if self._batch_depth:
            self._pending = text
            return
        self._store(text)

    def _store(self, text: str) -> None:
        if self._defer is not None:
            self._text = text
            self._defer(self.path, text.encode("utf-8"))
            return
        atomic_write(self.path, text.encode("utf-8"), backup=True)
        self._text = text

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Writes inside the block reach the file in one atomic write at the
        end; an exception discards them all."""
        self._batch_depth += 1
        try:
            yield
        except BaseException:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self._pending = None
            raise
        self._batch_depth -= 1
        if self._batch_depth == 0 and self._pending is not None:
            pending, self._pending = self._pending, None
            self._store(pending)
