"""`python -m hil_tests.crash.daemon [--trace FILE] [--arm FILE] [--kill before|after POINT] run --config FILE`

The real daemon (`hubedge run`, edge.cli) with every commit that makes state
durable counted, and on request a SIGKILL of itself just before or just after
one of them. Nothing of this is in the production modules: this entry point
wraps them from the outside before the daemon starts.

What counts as a commit:

* the outermost COMMIT of a sqlite transaction, on every connection the
  daemon opens (the hub's database in edge/core/store.py, the token store in
  edge/parts/cards/tokens.py), and a write statement sqlite commits on its own because
  no transaction is open;
* an ``atomic_write`` (edge/core/store.py) of a document set or any other file:
  the rename that makes the new content the file.

A commit point is named by what made it, so that two runs of one journey
name it alike although polls and ticks commit at their own times: the
innermost edge/* functions on the stack when the transaction began (up to
four, innermost first; edge/core/store.py's own frames left out) and the tables it
wrote (or the file it replaced), plus its occurrence number among the points
of that name. ``--arm FILE`` starts the counting once FILE exists, so a
journey counts from its own first step, not from the daemon's start-up.
``--trace FILE`` appends one JSON line per counted commit as it lands.
Without ``--trace`` or ``--kill`` nothing is wrapped: the daemon runs as it
ships. Either way SIGUSR1 writes every thread's stack to the log.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGE = str(ROOT / "edge") + os.sep
STORE = str(ROOT / "edge" / "core" / "store.py")
CONTEXTLIB = os.sep + "contextlib.py"
FRAMES = 4
_WRITE = re.compile(r"^\s*(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM)\s+"
                    r"[\"`\[]?(\w+)", re.IGNORECASE)


def point_name(label: str, occurrence: int) -> str:
    return f"{label} #{occurrence}"


def parse_point(text: str) -> tuple[str, int]:
    label, _, n = text.rpartition(" #")
    if not label or not n.isdigit():
        raise argparse.ArgumentTypeError(f"a commit point is 'LABEL #N' as the trace names it, not {text!r}")
    return label, int(n)


def opener() -> str:
    """The innermost edge/* functions on this thread's stack, innermost first:
    from the first one below the store (or the thread's own entry) up to
    the first frame of anything else (the event loop, a worker thread)."""
    names: list[str] = []
    frame = sys._getframe(1)
    while frame is not None and len(names) < FRAMES:
        path = frame.f_code.co_filename
        if path.startswith(EDGE) and path != STORE:
            qual = frame.f_code.co_qualname.replace(".<locals>", "")
            names.append(qual if "." in qual else f"{Path(path).stem}.{qual}")
        elif names and path != STORE and not path.endswith(CONTEXTLIB):
            break
        frame = frame.f_back
    return " < ".join(names) or "(outside edge)"


def label_pattern(pattern: str) -> re.Pattern:
    """A point's label with ``*`` standing for any text (nothing else is
    special: labels hold brackets)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


class Commits:
    """Counts commits once armed; kills the process at the chosen one.

    ``kill`` is (before|after, label pattern, n): the n-th commit whose label
    matches. A label as the trace wrote it is a pattern matching itself."""

    def __init__(self, trace: Path | None, arm: Path | None, kill: tuple[str, str, int] | None):
        self._trace_fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if trace else None
        self._arm = arm
        self._armed = arm is None
        self._kill = kill
        self._kill_label = label_pattern(kill[1]) if kill else None
        self._matched = 0  # commits matching the kill's label so far
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _armed_now(self) -> bool:
        if not self._armed and self._arm is not None and self._arm.exists():
            self._armed = True
        return self._armed

    def before(self, label: str) -> tuple[int, int] | None:
        """Called just before a commit; returns its place (None while not
        armed). Kills the process here if this is the point."""
        with self._lock:
            if not self._armed_now():
                return None
            n = self._counts[label] = self._counts.get(label, 0) + 1
            matched = 0
            if self._kill_label is not None and self._kill_label.fullmatch(label):
                matched = self._matched = self._matched + 1
        self._maybe_kill("before", label, n, matched)
        return n, matched

    def failed(self, label: str, place: tuple[int, int] | None) -> None:
        """The commit did not happen (an error): its numbers are free again."""
        if place is not None:
            with self._lock:
                self._counts[label] -= 1
                if place[1]:
                    self._matched -= 1

    def after(self, label: str, place: tuple[int, int] | None) -> None:
        if place is None:
            return
        if self._trace_fd is not None:
            # One write(2) per line on an O_APPEND descriptor: whole lines even when a kill follows.
            os.write(self._trace_fd, (json.dumps({"label": label, "n": place[0]}) + "\n").encode())
        self._maybe_kill("after", label, *place)

    def _maybe_kill(self, when: str, label: str, n: int, matched: int) -> None:
        if self._kill is None or not matched or self._kill[0] != when or self._kill[2] != matched:
            return
        point = point_name(label, n)
        if self._trace_fd is not None:
            # When the link went, for the cloud checker's offline windows.
            os.write(self._trace_fd, (json.dumps({"kill": when, "point": point, "t": time.time(),
                                                  "mono": time.monotonic()}) + "\n").encode())
        os.write(2, f"crash.sigkill when={when} point={point!r}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


COMMITS: Commits | None = None


class CountingConnection(sqlite3.Connection):
    """A sqlite3 connection that reports its commits to COMMITS."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._opened_by: str | None = None
        self._tables: set[str] = set()
        # Every statement passes here, whichever way it was issued (cursor,
        # executemany, script): the tables a transaction wrote.
        self.set_trace_callback(self._traced)

    def _traced(self, sql: str) -> None:
        m = _WRITE.match(sql)
        if m:
            self._tables.add(m.group(1).lower())

    def _label(self, tables: set[str]) -> str:
        return f"{self._opened_by or opener()} [{','.join(sorted(tables)) or '-'}]"

    def _commit_point(self, run):
        label = self._label(self._tables)
        self._opened_by = None
        self._tables = set()
        place = COMMITS.before(label)
        try:
            result = run()
        except BaseException:
            COMMITS.failed(label, place)
            raise
        COMMITS.after(label, place)
        return result

    def execute(self, sql, *args):
        head = sql.lstrip()[:16].upper()
        if head.startswith("BEGIN"):
            self._opened_by = opener()
            self._tables = set()
            return super().execute(sql, *args)
        if head.startswith(("COMMIT", "END")) and self.in_transaction:
            return self._commit_point(lambda: super(CountingConnection, self).execute(sql, *args))
        if head.startswith("ROLLBACK") and not head.startswith("ROLLBACK TO"):
            self._opened_by = None
            self._tables = set()
            return super().execute(sql, *args)
        if not self.in_transaction and _WRITE.match(sql):
            # sqlite commits this statement on its own.
            return self._autocommit(sql, lambda: super(CountingConnection, self).execute(sql, *args))
        return super().execute(sql, *args)

    def _autocommit(self, sql: str, run):
        self._opened_by = opener()
        self._tables = {_WRITE.match(sql).group(1).lower()}
        return self._commit_point(run)

    def executemany(self, sql, *args):
        if not self.in_transaction and _WRITE.match(sql):
            # sqlite commits each of these on its own: one point for the lot.
            return self._autocommit(sql, lambda: super(CountingConnection, self).executemany(sql, *args))
        return super().executemany(sql, *args)

    def commit(self):
        if not self.in_transaction:
            return super().commit()
        return self._commit_point(super().commit)


def install(commits: Commits) -> None:
    """Count every commit of the daemon from here on."""
    global COMMITS
    COMMITS = commits
    connect = sqlite3.connect

    def counting_connect(*args, **kwargs):
        kwargs.setdefault("factory", CountingConnection)
        return connect(*args, **kwargs)

    sqlite3.connect = counting_connect

    import edge.core.store

    atomic_write = edge.core.store.atomic_write

    def counted_atomic_write(path, data, **kwargs):
        label = f"{opener()} [file {Path(path).name}]"
        place = COMMITS.before(label)
        try:
            atomic_write(path, data, **kwargs)
        except BaseException:
            COMMITS.failed(label, place)
            raise
        COMMITS.after(label, place)

    # Callers look the name up in edge.core.store when they call it (the
    # document storage) or import it from there at the call (the key files).
    edge.core.store.atomic_write = counted_atomic_write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil_tests.crash.daemon", description=__doc__.splitlines()[0])
    p.add_argument("--trace", type=Path, metavar="FILE", help="append one JSON line per counted commit")
    p.add_argument("--arm", type=Path, metavar="FILE", help="count only once FILE exists (default: from the start)")
    p.add_argument("--kill", nargs=2, metavar=("WHEN", "POINT"),
                   help="SIGKILL just before or just after the commit point 'LABEL #N' (in LABEL, * stands for any "
                        "text: the N-th commit whose label matches)")
    p.add_argument("hubedge", nargs=argparse.REMAINDER, help="the hubedge command line, e.g. run --config FILE")
    args = p.parse_args(argv)
    kill = None
    if args.kill:
        when, point = args.kill
        if when not in ("before", "after"):
            p.error(f"--kill {when!r}: say before or after")
        try:
            label, n = parse_point(point)
        except argparse.ArgumentTypeError as exc:
            p.error(str(exc))
        kill = (when, label, n)
    if args.trace or kill:
        install(Commits(args.trace, args.arm, kill))  # without either, the daemon runs as it ships
    # A daemon that stops answering: SIGUSR1 writes every thread's stack to its log.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from edge.cli import main as hubedge

    return hubedge(args.hubedge)


if __name__ == "__main__":
    sys.exit(main())
