"""The hub's local token list and its authorisation cache (R-A1, R-A2, R-A3).

The cloud syncs the operator's own charge cards and roaming (eMSP) tokens as a
versioned list, in full or by difference. It may hold a million tokens on a
Raspberry Pi, so the list lives in its own SQLite file (one table keyed by uid,
WITHOUT ROWID so the key is the row) rather than in Python objects: a dict of
a million small objects costs several hundred MB; the file costs a bounded page
cache. Every apply is one transaction, so a refused or failed apply changes
nothing, and WAL with synchronous=FULL survives a power cut on an SD card.

The authorisation cache keeps the cloud's answers for roaming cards
(OCPP-style: valid and invalid ids, with an expiry) in the same file, so it
survives a reboot. The local list wins over the cache.

A damaged file never stops the hub: at open it is moved aside and the last
online backup (``tokens.sqlite3.bak``, made by ``backup`` while the hub runs)
restored, or an empty list started; ``alarms`` says which, and the hub then
asks the cloud for what it lacks (the version held says how much).

The id of the last message applied is kept with the list, in the same
commit: the broker delivers a message again when the hub died before
acknowledging it, and that copy must not be judged against the version it
has itself brought (a delta would look stale).
"""

from __future__ import annotations

import gc
import itertools
import logging
import re
import sqlite3
import threading
from operator import itemgetter, methodcaller
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from units import Clock, parse_rfc3339
from edge.core.sessions import mask  # noqa: F401  (the cards part's users take it from here)
from edge.core.recovery import online_backup, open_database

log = logging.getLogger("hubedge.tokens")

STATUSES = ("Active", "Blocked", "Expired")
TOKEN_TYPES = ("own", "emsp")
# Answers the cloud gives for a roaming check (docs/cloud-contract.md auth/response).
CLOUD_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "Unknown")

_STATUS_SET = frozenset(STATUSES)
_TYPE_SET = frozenset(TOKEN_TYPES)
_UID = re.compile(r"^[0-9A-Za-z._\-]{1,36}$")
_MAX_LABEL = 200
_CACHE_LIMIT = 20_000  # roaming answers kept; the oldest go first


def normalise_uid(uid: str) -> str:
    """Token ids compare case-insensitively (readers give hex in either case)."""
    return uid.strip().upper()


@dataclass(frozen=True)
class TokenInfo:
    uid: str
    status: str  # Active | Blocked | Expired
    type: str  # own | emsp
    group: str | None = None
    reference: str | None = None  # plate or person, as the cloud labels the card
    expires: datetime | None = None

    def status_at(self, now: datetime) -> str:
        """The status in force at ``now``: a passed expiry makes it Expired."""
        if self.status == "Active" and self.expires is not None and now >= self.expires:
            return "Expired"
        return self.status


@dataclass(frozen=True)
class CachedAuthorisation:
    uid: str
    status: str  # one of CLOUD_STATUSES
    expires: datetime  # when the cached answer stops counting
    group: str | None = None
    reference: str | None = None


@dataclass
class ApplyResult:
    ok: bool
    version: int  # the version held after the apply (unchanged when refused)
    kind: str | None = None
    upserted: int = 0
    removed: int = 0
    reasons: list[str] = field(default_factory=list)
    again: bool = False  # this message had been applied already: nothing changed

    @property
    def message(self) -> str:
        if self.again:
            return f"token list message applied already: version {self.version} held, nothing changed"
        if self.ok:
            return f"token list {self.kind} applied: now at version {self.version}"
        return "token list refused, nothing changed: " + "; ".join(self.reasons)


def _epoch(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp())


def _from_epoch(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def validate_tokens_message(message: dict, held_version: int) -> tuple[list[tuple], list[str], list[str]]:
    """Check a ``sync/tokens`` message against the version held.

    Returns (rows to upsert, uids to remove, reasons). Any reason refuses the
    whole message. The version rule (R-A3):

    - ``full``: replaces the list; its version must not be older than the one
      held (an equal version is a resend and applies again).
    - ``delta``: applies on top of exactly the version held. It says so with
      ``base_version``; without one, its ``version`` must be the held one plus 1.
      A delta whose base does not match is refused: the cloud must send a full
      list (or the deltas in between).
    """
    reasons: list[str] = []
    if not isinstance(message, dict):
        return [], [], ["message: expected a JSON object"]
    version = message.get("version")
    kind = message.get("kind")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        reasons.append(f"version: expected a whole number of at least 1, got {version!r}")
    if kind not in ("full", "delta"):
        reasons.append(f"kind: expected full or delta, got {kind!r}")
    upsert = message.get("upsert", [])
    remove = message.get("remove", [])
    if not isinstance(upsert, list):
        reasons.append("upsert: expected a list")
        upsert = []
    if not isinstance(remove, list):
        reasons.append("remove: expected a list")
        remove = []
    if reasons:
        return [], [], reasons

    if kind == "full":
        if remove:
            reasons.append("remove: a full list replaces everything, so it carries no remove list")
        if version < held_version:
            reasons.append(f"version: full list v{version} is older than v{held_version} held; send the current list")
    else:
        base = message.get("base_version")
        if base is not None and (not isinstance(base, int) or isinstance(base, bool)):
            reasons.append(f"base_version: expected a whole number, got {base!r}")
        elif base is None and version != held_version + 1:
            reasons.append(
                f"version: delta v{version} does not follow v{held_version} held and names no base_version; "
                "send a full list (resync)"
            )
        elif base is not None and base != held_version:
            reasons.append(
                f"base_version: delta applies on top of v{base} but the hub holds v{held_version}; "
                "send a full list (resync)"
            )
        elif version <= held_version:
            reasons.append(f"version: delta v{version} is not newer than v{held_version} held")

    fast = _rows_in_bulk(upsert, kind)
    if fast is not None:
        rows, seen = fast
    else:
        rows, seen = _rows_item_by_item(upsert, reasons)

    removes: list[str] = []
    for i, uid in enumerate(remove):
        if not isinstance(uid, str) or not _UID.match(uid.strip()):
            reasons.append(f"remove[{i}]: expected a token uid")
            continue
        uid = normalise_uid(uid)
        if uid in seen:
            reasons.append(f"remove[{i}]: token {mask(uid)} is both upserted and removed")
        removes.append(uid)
    if len(reasons) > 20:  # keep the reply readable; the count says how bad it is
        reasons = reasons[:20] + [f"... and {len(reasons) - 20} more problems"]
    return rows, removes, reasons


_NONE_TYPE = type(None)
_LABEL_TYPES = frozenset({str, _NONE_TYPE})


_UID_LINES = re.compile(r"[0-9A-Za-z._\-]{1,36}(?:\n[0-9A-Za-z._\-]{1,36})*")


def _rows_in_bulk(upsert: list, kind: str) -> tuple[list[tuple], set[str]] | None:
    """The usual case, a well-formed list, checked column by column with
    C-level calls: about three times faster than the item loop on a million
    tokens. None when anything is off: the item loop then names every
    problem. A full list's duplicates are left to the table's primary key
    (the apply then falls back to the item loop to name them)."""
    if upsert and set(map(type, upsert)) != {dict}:
        return None
    try:
        uids = list(map(itemgetter("uid"), upsert))
        statuses = list(map(itemgetter("status"), upsert))
        types = list(map(itemgetter("type"), upsert))
        groups = list(map(methodcaller("get", "group"), upsert))
        references = list(map(methodcaller("get", "reference"), upsert))
        expires = list(map(methodcaller("get", "expires"), upsert))
        if not set(map(type, uids)) <= {str}:
            return None
        # One regex scan over all uids, one per line; a uid holding a line
        # break itself would pass as two, so the line count is checked too.
        joined = "\n".join(uids)
        if uids and (not _UID_LINES.fullmatch(joined) or joined.count("\n") != len(uids) - 1):
            return None
        if not set(statuses) <= _STATUS_SET or not set(types) <= _TYPE_SET:
            return None
        for labels in (groups, references):
            if not set(map(type, labels)) <= _LABEL_TYPES:
                return None
            if max(map(len, filter(None, labels)), default=0) > _MAX_LABEL:
                return None
    except (KeyError, TypeError):
        return None  # a missing key, an unhashable value
    if joined.upper() != joined:
        uids = list(map(str.upper, uids))
    seen: set[str] = set()
    if kind != "full":
        seen = set(uids)
        if len(seen) != len(uids):
            return None
    if expires.count(None) != len(expires):
        for k, value in enumerate(expires):
            if value is not None:
                try:
                    expires[k] = _epoch(parse_rfc3339(value))
                except (TypeError, ValueError, AttributeError):
                    return None
    return list(zip(uids, statuses, types, groups, references, expires)), seen


def _rows_item_by_item(upsert: list, reasons: list[str]) -> tuple[list[tuple], set[str]]:
    rows: list[tuple] = []
    seen: set[str] = set()
    statuses, types, uid_ok, add, append = _STATUS_SET, _TYPE_SET, _UID.fullmatch, seen.add, rows.append
    for i, item in enumerate(upsert):
        if item.__class__ is not dict:
            reasons.append(f"upsert[{i}]: expected an object")
            continue
        get = item.get
        uid, status, ttype, group, reference, expires = (
            get("uid"), get("status"), get("type"), get("group"), get("reference"), get("expires"))
        if uid.__class__ is not str or not uid_ok(uid):
            uid = uid.strip() if isinstance(uid, str) else uid
            if not isinstance(uid, str) or not uid_ok(uid):
                reasons.append(f"upsert[{i}].uid: expected 1 to 36 letters, digits or ._-")
                continue
        uid = uid.upper()
        if uid in seen:
            reasons.append(f"upsert[{i}].uid: token {mask(uid)} appears twice in this message")
        add(uid)
        if status not in statuses:
            reasons.append(f"upsert[{i}].status: expected one of {', '.join(STATUSES)}, got {status!r}")
        if ttype not in types:
            reasons.append(f"upsert[{i}].type: expected own or emsp, got {ttype!r}")
        if group is not None and (group.__class__ is not str or len(group) > _MAX_LABEL):
            reasons.append(f"upsert[{i}].group: expected text of at most {_MAX_LABEL} characters")
        if reference is not None and (reference.__class__ is not str or len(reference) > _MAX_LABEL):
            reasons.append(f"upsert[{i}].reference: expected text of at most {_MAX_LABEL} characters")
        if expires is not None:
            try:
                expires = _epoch(parse_rfc3339(expires))
            except (TypeError, ValueError, AttributeError):
                reasons.append(f"upsert[{i}].expires: expected an RFC 3339 time with a zone, got {expires!r}")
        append((uid, status, ttype, group, reference, expires))
    return rows, seen


_ROW = "(?,?,?,?,?,?)"
_BATCH = 100  # rows per INSERT statement (600 parameters, far below SQLite's limit)


def _insert_in_batches(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """INSERT many rows a hundred per statement: the per-statement cost of
    executemany, not SQLite, dominates a million single-row inserts."""
    full = len(rows) - len(rows) % _BATCH
    chain = itertools.chain.from_iterable
    if full:
        statement = "INSERT INTO token VALUES " + ",".join([_ROW] * _BATCH)
        db.executemany(statement, (tuple(chain(rows[i:i + _BATCH])) for i in range(0, full, _BATCH)))
    if full < len(rows):
        rest = rows[full:]
        db.execute("INSERT INTO token VALUES " + ",".join([_ROW] * len(rest)), tuple(chain(rest)))


def _count_present(db: sqlite3.Connection, uids: list[str]) -> int:
    present = 0
    for i in range(0, len(uids), 500):
        part = uids[i:i + 500]
        present += db.execute(
            f"SELECT count(*) FROM token WHERE uid IN ({','.join('?' * len(part))})", part).fetchone()[0]
    return present


class TokenStore:
    """The local token list and authorisation cache in one SQLite file.

    Two connections: the writer (a list apply runs for seconds in a worker
    thread, cache writes) and a reader for lookups. In WAL mode the reader
    sees the last committed list while an apply is in progress, so a card
    tap never waits for a sync."""

    def __init__(self, path: str | Path, *, cache_kib: int = 4096, clock: Clock | None = None):
        self.path = str(path)
        self._cache_kib = cache_kib
        self._lock = threading.Lock()  # apply may run in a worker thread
        self.alarms: list[str] = []
        self._db, alarm = open_database(
            Path(path), self._connect, clock=clock or Clock(),
            lost_since_backup="token list changes since then are missing until the cloud resends them (the hub "
                              "asks for them at its next connection)",
            lost_if_empty="the token list is empty until the cloud sends it again (the hub asks for it at its next "
                          "connection); meanwhile own cards are decided as unknown ([auth] unknown_offline)")
        if alarm:
            self.alarms.append(alarm)
            log.error("tokens.recovered problem=%r", alarm)
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA query_only=ON")
        self._reader.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        row = self._db.execute("SELECT value FROM token_meta WHERE key='version'").fetchone()
        self._version = row[0] if row else 0
        row = self._db.execute("SELECT id FROM token_message").fetchone()
        self._message_id = row[0] if row else None
        self._count = self._db.execute("SELECT count(*) FROM token").fetchone()[0]
        self._backed_up: int | None = None  # version of the last backup made by this process

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA cache_size=-{int(self._cache_kib)}")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS token (
                uid TEXT PRIMARY KEY, status TEXT NOT NULL, type TEXT NOT NULL,
                grp TEXT, reference TEXT, expires INTEGER
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS token_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS token_message (slot INTEGER PRIMARY KEY CHECK (slot = 0), id TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS auth_cache (
                uid TEXT PRIMARY KEY, status TEXT NOT NULL, expires INTEGER NOT NULL,
                grp TEXT, reference TEXT, stored INTEGER NOT NULL
            ) WITHOUT ROWID;
            """
        )
        return db

    def backup(self) -> bool:
        """An online copy of the file to ``tokens.sqlite3.bak`` when the list
        changed since the last one (a million tokens are tens of MB: an SD
        card is not rewritten for nothing). Blocking: run it in a thread.
        True when a copy was made."""
        path = Path(self.path)
        bak = path.with_name(path.name + ".bak")
        version = self._version
        if version == self._backed_up and bak.exists():
            return False
        online_backup(path, bak)
        self._backed_up = version
        return True

    @property
    def version(self) -> int:
        """The list version held; 0 before the first full list (R-A3)."""
        return self._version

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    # -- the local list ----------------------------------------------------------------
    def lookup(self, uid: str) -> TokenInfo | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT uid, status, type, grp, reference, expires FROM token WHERE uid=?", (normalise_uid(uid),)
            ).fetchone()
        if row is None:
            return None
        return TokenInfo(row[0], row[1], row[2], row[3], row[4], _from_epoch(row[5]))

    def apply(self, message: dict) -> ApplyResult:
        """Apply a ``sync/tokens`` message whole, or refuse it and change nothing.

        Checked and written under the writer's lock, so two messages applied
        from two threads are judged against the version actually held. The
        cyclic garbage collector is paused meanwhile: a million fresh row
        tuples would otherwise trigger a dozen full collections (about 1 s
        on a small board) that find nothing to free."""
        with self._lock:
            collecting = gc.isenabled()
            gc.disable()
            try:
                return self._apply_locked(message)
            finally:
                if collecting:
                    gc.enable()

    def _apply_locked(self, message: dict) -> ApplyResult:
        kind = message.get("kind") if isinstance(message, dict) else None
        message_id = message.get("id") if isinstance(message, dict) and isinstance(message.get("id"), str) else None
        if message_id is not None and message_id == self._message_id:
            log.info("tokens.applied_already version=%d", self._version)
            return ApplyResult(True, self._version, kind, again=True)
        rows, removes, reasons = validate_tokens_message(message, self._version)
        if reasons:
            return self._refused(message, kind, reasons)
        version = message["version"]
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if kind == "full":
                db.execute("DELETE FROM token")
                # Sorted inserts fill the B-tree in order: several times faster.
                rows.sort(key=itemgetter(0))
                _insert_in_batches(db, rows)
                count = len(rows)
            else:
                known = _count_present(db, [r[0] for r in rows])
                db.executemany("INSERT OR REPLACE INTO token VALUES (?,?,?,?,?,?)", rows)
                before = db.total_changes
                db.executemany("DELETE FROM token WHERE uid=?", ((u,) for u in removes))
                count = self._count + len(rows) - known - (db.total_changes - before)
            db.execute("INSERT OR REPLACE INTO token_meta VALUES ('version', ?)", (version,))
            if message_id is not None:
                db.execute("INSERT OR REPLACE INTO token_message VALUES (0, ?)", (message_id,))
            db.execute("COMMIT")
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            # A uid twice in a full list (left to the primary key on the
            # fast path): the item loop names each one.
            reasons = []
            _rows_item_by_item(message["upsert"], reasons)
            return self._refused(message, kind, reasons or ["upsert: a token uid appears twice in this message"])
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            log.error("tokens.apply_failed version=%d error=%s", version, exc)
            return ApplyResult(
                False, self._version, kind,
                reasons=[f"storage error ({exc}); nothing changed, check free space on the state directory and resend"],
            )
        self._version, self._count, self._message_id = version, count, message_id or self._message_id
        log.info("tokens.applied kind=%s version=%d upserted=%d removed=%d count=%d", kind, version, len(rows), len(removes), count)
        return ApplyResult(True, version, kind, upserted=len(rows), removed=len(removes))

    def _refused(self, message, kind: str | None, reasons: list[str]) -> ApplyResult:
        if len(reasons) > 21:
            reasons = reasons[:20] + [f"... and {len(reasons) - 20} more problems"]
        version = message.get("version") if isinstance(message, dict) else None
        log.warning("tokens.refused version=%r held=%d problems=%d", version, self._version, len(reasons))
        return ApplyResult(False, self._version, kind, reasons=reasons)

    # -- the authorisation cache (roaming answers) -------------------------------------
    def cached(self, uid: str, now: datetime) -> CachedAuthorisation | None:
        """The cloud's last answer for ``uid`` while it has not expired."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT uid, status, expires, grp, reference FROM auth_cache WHERE uid=?", (normalise_uid(uid),)
            ).fetchone()
        if row is None or row[2] <= now.timestamp():
            return None
        return CachedAuthorisation(row[0], row[1], _from_epoch(row[2]), row[3], row[4])

    def remember(self, answer: CachedAuthorisation, now: datetime) -> None:
        """Keep a cloud answer; expired ones and the oldest beyond the limit go."""
        if answer.status not in CLOUD_STATUSES:
            raise ValueError(f"cache status {answer.status!r} unknown: expected one of {CLOUD_STATUSES}")
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO auth_cache VALUES (?,?,?,?,?,?)",
                    (normalise_uid(answer.uid), answer.status, _epoch(answer.expires), answer.group, answer.reference, _epoch(now)),
                )
                db.execute("DELETE FROM auth_cache WHERE expires <= ?", (_epoch(now),))
                db.execute(
                    "DELETE FROM auth_cache WHERE uid IN (SELECT uid FROM auth_cache ORDER BY stored DESC LIMIT -1 OFFSET ?)",
                    (_CACHE_LIMIT,),
                )
                db.execute("COMMIT")
            except sqlite3.Error:
                db.execute("ROLLBACK")
                raise

    def forget_cached(self, uid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM auth_cache WHERE uid=?", (normalise_uid(uid),))
