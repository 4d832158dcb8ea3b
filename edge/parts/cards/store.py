"""The cards part's token lists as the cloud syncs them (R-A3, R-M3).

The list itself is a database of its own (edge/parts/cards/tokens.py); a
full list too large for one MQTT message arrives in parts, each kept in the
hub's database until the last one has come. The cards part owns both and
the cloud's ``tokens`` sync kind.
"""

from __future__ import annotations

import asyncio
import json

from edge.cloud.downlink import Rejected
from edge.parts.cards.tokens import TokenStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS token_list_parts (
    version INTEGER NOT NULL,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (version, part)
);
"""


class TokenLists:
    """Where the token list is kept; ``hub.tokens`` is the TokenStore itself,
    which the other parts and tools read."""

    def __init__(self, hub):
        self.store = hub.store
        self.tokens = TokenStore(hub.state_dir / "tokens.sqlite3", clock=hub.clock)
        hub.tokens = self.tokens
        self._tokens_lock = asyncio.Lock()
        self.store.db.executescript(SCHEMA)

    async def sync(self, msg: dict) -> dict:
        """R-A3: a token list (full, a part of one, or a delta) from the cloud."""
        # A full list of a million tokens takes seconds: off the loop,
        # one list at a time and in the order they arrived (a delta must
        # not overtake the list it builds on).
        async with self._tokens_lock:
            msg = self._token_list_part(msg)
            if msg.get("staged"):
                return msg  # a part of a chunked full list, kept until the last one
            result = await asyncio.to_thread(self.tokens.apply, msg)
        if not result.ok:
            raise Rejected("rejected", "; ".join(result.reasons[:5]) + (f" (+{len(result.reasons) - 5} more)" if len(result.reasons) > 5 else ""))
        return {"version": result.version, "counts": {"upserted": result.upserted, "removed": result.removed}}

    def _token_list_part(self, msg: dict) -> dict:
        """A full token list larger than one MQTT message arrives in parts
        (`part` 1..`parts` of one `version`): each is kept durably; the last
        one brings them together and the list applies whole (R-A3, R-M3).
        Anything else passes through unchanged."""
        parts = msg.get("parts")
        if parts is None:
            return msg
        part = msg.get("part")
        if msg.get("kind") != "full" or not isinstance(parts, int) or not isinstance(part, int) \
                or isinstance(parts, bool) or isinstance(part, bool) or not 1 <= part <= parts <= 10_000:
            raise Rejected("schema", "a chunked token list is a full list with whole numbers 1 <= part <= parts <= 10000")
        version = msg.get("version")
        db = self.store.db
        with self.store.transaction():
            # Parts of an older version are dropped: a newer list replaces it.
            db.execute("DELETE FROM token_list_parts WHERE version != ?", (version,))
            db.execute("INSERT OR REPLACE INTO token_list_parts (version, part, parts, body) VALUES (?,?,?,?)",
                       (version, part, parts, json.dumps({"upsert": msg.get("upsert") or [], "remove": msg.get("remove") or []})))
        have = db.execute("SELECT COUNT(*) FROM token_list_parts WHERE version = ? AND parts = ?", (version, parts)).fetchone()[0]
        if have < parts:
            return {"staged": True, "version": version, "part": part, "parts": parts, "received": have,
                    "message": f"part {part} of {parts} of token list version {version} kept; the list applies when all have come"}
        upsert: list = []
        remove: list = []
        for (body,) in db.execute("SELECT body FROM token_list_parts WHERE version = ? ORDER BY part", (version,)):
            b = json.loads(body)
            upsert += b["upsert"]
            remove += b["remove"]
        with self.store.transaction():
            db.execute("DELETE FROM token_list_parts WHERE version = ?", (version,))
        whole = {k: v for k, v in msg.items() if k not in ("part", "parts")}
        whole.update(upsert=upsert, remove=remove)
        return whole
