"""The control socket between `hubctl` and the daemon (R-T1).

Protocol (version 1, documented in docs/control-protocol.md): the client
opens the Unix socket, writes one JSON object on one line
``{"v": 1, "cmd": NAME, "args": {...}}``, and reads lines back: zero or more
``{"v": 1, "progress": {...}}`` for long operations, then one final
``{"v": 1, "ok": true, "data": ...}`` or
``{"v": 1, "ok": false, "code": CODE, "message": TEXT}``.

Who may talk: the socket file is mode 0660, owned by the daemon's user and
the technicians' group; the daemon also checks the peer's credentials
(SO_PEERCRED), so a user outside the group gets a clear refusal even if the
file mode were loosened. The Unix user becomes the `who` of every audit event.

The socket's directory must let the group through too. systemd creates
/run/hubedge (RuntimeDirectory=, mode 0750) owned by the daemon's user *and
group*, so a technician could not even reach the socket; the daemon gives
that directory - and one it creates itself - to the technicians' group
(0750: they may enter, nobody else may). A directory someone else provided is
left as it is, with a warning when the group cannot pass it.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger("hubedge.control")

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict, "Caller", Callable[[dict], Awaitable[None]]], Awaitable[Any]]


class ControlError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Caller:
    def __init__(self, uid: int, gid: int, pid: int):
        self.uid, self.gid, self.pid = uid, gid, pid
        try:
            self.user = pwd.getpwuid(uid).pw_name
        except KeyError:
            self.user = f"uid{uid}"


def peer_credentials(sock: socket.socket) -> Caller:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(uid, gid, pid)


def caller_allowed(caller: Caller, group: str) -> bool:
    if caller.uid in (0, os.getuid()):
        return True
    try:
        g = grp.getgrnam(group)
    except KeyError:
        return False
    if caller.gid == g.gr_gid:
        return True
    try:
        return g.gr_gid in os.getgrouplist(caller.user, caller.gid)
    except (KeyError, OSError):
        return caller.user in g.gr_mem


class ControlServer:
    def __init__(self, path: str | Path, group: str, handlers: dict[str, Handler], *, on_refused=None):
        self.path = Path(path)
        self.group = group
        self.handlers = handlers
        self.on_refused = on_refused  # called with the Caller a refusal went to
        self._server: asyncio.AbstractServer | None = None
        self._own_directory = False  # the socket's directory is ours to give to the group

    async def start(self) -> None:
        directory = self.path.parent
        self._own_directory = not directory.exists() or _runtime_directory(directory)
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST + 2)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        self.set_group(self.group)
        log.info("control.listening path=%s", self.path)

    def set_group(self, group: str) -> None:
        """Give the socket (and the directory the daemon owns for it) to the
        technicians' ``group``; at start and again on a reload."""
        self.group = group
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warning("control.group_missing group=%s effect=owner_only action=%r", group,
                        f"create it (groupadd {group}) or set [control] group")
            return
        try:
            os.chown(self.path, -1, gid)
        except PermissionError:
            log.warning("control.chown_refused group=%s effect=owner_only action=%r", group,
                        f"make the daemon's user a member of {group} (SupplementaryGroups=)")
            return
        directory = self.path.parent
        if self._own_directory:
            try:
                os.chown(directory, -1, gid)
                os.chmod(directory, 0o750)
            except PermissionError:
                log.warning("control.chown_refused path=%s group=%s", directory, group)
        st = directory.stat()
        if not (st.st_mode & stat.S_IXOTH or st.st_gid == gid and st.st_mode & stat.S_IXGRP):
            log.warning("control.socket_unreachable dir=%s group=%s action=%r", directory, group,
                        f"members of {group} cannot reach the socket: chgrp {group} {directory} and chmod g+x it, "
                        f"or set [control] socket to a path under the daemon's runtime directory")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(obj: dict) -> None:
            writer.write((json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode())
            await writer.drain()

        try:
            caller = peer_credentials(writer.get_extra_info("socket"))
            # Read the request before answering, even a refusal: closing on a
            # client still writing would lose the refusal in a reset.
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
            except (asyncio.LimitOverrunError, ValueError):
                await send(_error("bad_request", f"request longer than {MAX_REQUEST} bytes"))
                return
            except asyncio.TimeoutError:
                return
            if not caller_allowed(caller, self.group):
                log.warning("control.refused user=%s", caller.user)
                if self.on_refused is not None:
                    self.on_refused(caller)
                await send(_error("forbidden", f"user {caller.user} is not in the {self.group} group: ask an administrator to add you (usermod -aG {self.group} {caller.user})"))
                return
            response = await self.dispatch(line, caller, lambda p: send({"v": PROTOCOL_VERSION, "progress": p}))
            await send(response)
        except (ConnectionError, BrokenPipeError):
            pass
        except Exception:
            log.exception("control.failed")
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass

    async def dispatch(self, line: bytes, caller: Caller, progress) -> dict:
        """Parse and run one request; never raises (a bad request changes nothing)."""
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting too deep
            return _error("bad_request", "request is not one line of JSON; use hubctl")
        if not isinstance(req, dict):
            return _error("bad_request", "request must be a JSON object")
        # true == 1 in Python: a boolean is not a version.
        if isinstance(req.get("v"), bool) or req.get("v") != PROTOCOL_VERSION:
            return _error("version", f"protocol version {req.get('v')!r} not spoken here (daemon speaks {PROTOCOL_VERSION}): use the hubctl of the same release")
        cmd, args = req.get("cmd"), req.get("args", {})
        if not isinstance(cmd, str) or not isinstance(args, dict):
            return _error("bad_request", "request needs a string 'cmd' and an object 'args'")
        handler = self.handlers.get(cmd)
        if handler is None:
            return _error("unknown_command", f"the daemon has no command {cmd!r}: hubctl and hubedge may be of different releases")
        try:
            data = await handler(args, caller, progress)
        except ControlError as exc:
            return _error(exc.code, exc.message)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str) and exc.__class__.__name__ in ("Refused", "NotFound", "Rejected"):
                return _error(code, str(exc))
            log.exception("control.command_failed cmd=%s", cmd)
            return _error("internal", f"{cmd} failed inside the daemon ({type(exc).__name__}); see the journal: journalctl -u hubedge")
        return {"v": PROTOCOL_VERSION, "ok": True, "data": data}


def _runtime_directory(directory: Path) -> bool:
    """Whether systemd made ``directory`` for this daemon (RuntimeDirectory=,
    named in $RUNTIME_DIRECTORY, several separated by colons)."""
    made = os.environ.get("RUNTIME_DIRECTORY", "")
    try:
        return any(d and Path(d).resolve() == directory.resolve() for d in made.split(":"))
    except OSError:
        return False


def resolve_prefix(ref: str, candidates: list[str], what: str, listing: str) -> str:
    """The one id that starts with ``ref`` (tables show the first 8
    characters): not found, or ambiguous with the candidates, refused."""
    found = [c for c in candidates if c.startswith(ref)]
    if ref in found:
        return ref
    if len(found) == 1:
        return found[0]
    if not found:
        raise ControlError("not_found", f"no {what} {ref!r}; `{listing}` lists them")
    shown = ", ".join(sorted(found)[:10]) + (" ..." if len(found) > 10 else "")
    raise ControlError("ambiguous", f"{what} {ref!r} matches {len(found)} {what}s ({shown}): give more characters")


def _error(code: str, message: str) -> dict:
    return {"v": PROTOCOL_VERSION, "ok": False, "code": code, "message": message}


async def request(path: str | Path, cmd: str, args: dict | None = None, *, timeout: float = 30, on_progress=None) -> dict:
    """Client side: send one request, return the final response object."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024), timeout)
    try:
        writer.write((json.dumps({"v": PROTOCOL_VERSION, "cmd": cmd, "args": args or {}}) + "\n").encode())
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise ConnectionError("the daemon closed the connection without an answer")
            msg = json.loads(line)
            if "progress" in msg:
                if on_progress:
                    on_progress(msg["progress"])
                continue
            return msg
    finally:
        writer.close()
