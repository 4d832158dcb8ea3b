"""`hubedge run`: the daemon. One asyncio loop; systemd notify; graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from edge.core import systemd
from units import parse_rfc3339
from edge.core.config import HubConfig
from edge.core.control import Caller, ControlError, ControlServer, resolve_prefix
from edge.core.hub import Hub, NotFound, Refused
from edge.core.store import DiskError

log = logging.getLogger("hubedge.daemon")


def _arg(args: dict, key: str, required: bool = True) -> str | None:
    v = args.get(key)
    if v is None or v == "":
        if required:
            raise ControlError("bad_request", f"missing argument {key!r}")
        return None
    if not isinstance(v, str):
        raise ControlError("bad_request", f"argument {key!r} must be a string")
    return v


def _time(args: dict, key: str):
    v = _arg(args, key, required=False)
    if v is None:
        return None
    try:
        return parse_rfc3339(v)
    except ValueError:
        raise ControlError("bad_request", f"{key} {v!r} is not an RFC 3339 time such as 2026-11-24T08:00:00Z")


def _session_ref(hub: Hub, ref: str) -> str:
    return resolve_prefix(ref, hub.sessions.ids_starting(ref, 11), "session", "hubctl sessions")


def _connector_ref(hub: Hub, ref: str) -> str:
    """A connector id in any case (c1 is C1)."""
    found = next((cid for cid in hub.connectors if cid.lower() == ref.lower()), None)
    if found is None:
        raise NotFound(f"no connector {ref} at this hub (it has {', '.join(hub.connectors) or 'none'}); "
                       f"`hubctl status` lists them")
    return found


def control_handlers(hub: Hub) -> dict:
    """The commands of the control protocol, each a thin call into the hub."""

    async def status(args: dict, caller: Caller, progress) -> dict:
        return hub.status()

    async def devices(args: dict, caller: Caller, progress) -> list:
        return hub.device_views()

    async def sessions(args: dict, caller: Caller, progress) -> list:
        limit = args.get("limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise ControlError("bad_request", "limit must be a whole number from 1 to 10000")
        status_ = _arg(args, "status", required=False)
        if status_ and status_ not in ("starting", "active", "stopped", "failed"):
            raise ControlError("bad_request", f"status {status_!r} unknown: use starting, active, stopped or failed")
        session_ref = _arg(args, "session", False)
        connector_ref = _arg(args, "connector", False)
        found = hub.sessions.query(
            session=_session_ref(hub, session_ref) if session_ref else None,
            token=_arg(args, "token", False),
            connector=_connector_ref(hub, connector_ref) if connector_ref else None,
            location=_arg(args, "location", False),
            status=status_,
            since=_time(args, "since"),
            until=_time(args, "until"),
            limit=limit,
        )
        out = []
        for s in found:
            d = s.as_dict()
            d.pop("token", None)  # the masked form is enough for people
            out.append(d)
        return out

    async def connector(args: dict, caller: Caller, progress) -> dict:
        action = _arg(args, "action")
        cid = _connector_ref(hub, _arg(args, "id"))
        reason = _arg(args, "reason", required=False) or ""
        if action in ("unavailable", "available"):
            if action == "unavailable" and not reason:
                raise ControlError("reason_required", "say why with --reason (it goes into the audit log), e.g. --reason 'cable damaged'")
            with hub.store.transaction():  # the change and its audit event, one commit
                if action == "unavailable":
                    result = hub.set_availability(cid, False, f"technician: {reason}")
                else:
                    result = hub.set_availability(cid, True, reason or "technician")
                hub.audit(caller.user, f"connector.{action}", cid, reason, result)
        elif action == "unlock":
            ok = await hub.unlock(cid)
            result = f"connector {cid} unlocked" if ok else f"connector {cid} stayed locked: check the connector's latch and the charger's own display"
            hub.audit(caller.user, "connector.unlock", cid, reason, result if ok else "failed")
            if not ok:
                raise ControlError("device_failed", result)
        else:
            raise ControlError("bad_request", f"unknown connector action {action!r}: use available, unavailable or unlock")
        return {"connector": cid, "message": result, "state": hub.connectors[cid].state}

    async def session_stop(args: dict, caller: Caller, progress) -> dict:
        reason = _arg(args, "reason", required=False) or ""
        if not reason:
            raise ControlError("reason_required", "say why with --reason (it goes into the audit log), e.g. --reason 'driver asked by phone'")
        sid = _session_ref(hub, _arg(args, "id"))
        s = await hub.stop_session(sid, reason="technician")
        hub.audit(caller.user, "session.stop", sid, reason, "stopping")
        return {"session": s.id, "message": f"stop sent to connector {s.connector}; the session ends when the charger confirms"}

    async def outbox(args: dict, caller: Caller, progress) -> dict:
        return hub.outbox_view()

    async def resync(args: dict, caller: Caller, progress) -> dict:
        timeout = args.get("timeout", 60)
        if not isinstance(timeout, (int, float)) or not 1 <= timeout <= 3600:
            raise ControlError("bad_request", "timeout must be 1 to 3600 seconds")
        return await hub.request_resync(caller.user, progress, float(timeout))

    async def audit(args: dict, caller: Caller, progress) -> list:
        limit = args.get("limit", 200)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10000:
            raise ControlError("bad_request", "limit must be a whole number from 1 to 10000")
        return hub.audit_entries(since=_time(args, "since"), user=_arg(args, "user", False), limit=limit)

    return {
        "audit": audit,
        "resync": resync,
        "status": status,
        "devices": devices,
        "sessions": sessions,
        "connector": connector,
        "session_stop": session_stop,
        "outbox": outbox,
    }


def durable_replies(handlers: dict, store) -> dict:
    """Each command's reply is sent once what it changed is on disk: a power
    cut after a technician read "done" must not undo it. A command that
    committed nothing (a status) answers at once."""

    def durable(handler):
        async def answer(args: dict, caller: Caller, progress):
            before = store.commits
            data = await handler(args, caller, progress)
            if store.commits != before:
                try:
                    await store.durable()
                except DiskError as exc:
                    raise ControlError("disk_failed", f"done, but not yet on disk: {exc}") from None
            return data

        return answer

    return {name: durable(handler) for name, handler in handlers.items()}


async def serve(cfg: HubConfig, *, ready_timeout: float = 10.0) -> int:
    hub = Hub(cfg)
    handlers = control_handlers(hub)
    for part in hub.capabilities:
        handlers.update(part.control_handlers())
    handlers = durable_replies(handlers, hub.store)
    refused_at: dict[str, float] = {}

    def audit_refusal(caller: Caller) -> None:
        # Audited, but at most once a minute per user: a script hammering the
        # socket must not flood the outbox.
        now = time.monotonic()
        if now - refused_at.get(caller.user, -1e9) >= 60:
            refused_at[caller.user] = now
            hub.audit(caller.user, "control.connect", str(cfg.control.socket), "", f"refused: not in group {cfg.control.group}")

    control = ControlServer(cfg.resolve(cfg.control.socket), cfg.control.group, handlers, on_refused=audit_refusal)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running, ready = cfg, False

    def reload() -> None:
        # SIGHUP (systemctl reload): without a handler it ended the daemon,
        # and systemd did not restart a clean signal exit (edge/core/reload.py).
        nonlocal running
        from edge.core.reload import reload_config

        if ready:
            systemd.notify("RELOADING=1")
        try:
            running = reload_config(running, hub, control)
        except Exception:
            log.exception("daemon.reload_failed action=%r", "the daemon runs on as before; see the error above")
        if ready:
            systemd.notify(f"READY=1\nSTATUS=hub {cfg.hub.id}: {len(hub.connectors)} connectors")

    loop.add_signal_handler(signal.SIGHUP, reload)
    t0 = time.monotonic()
    await control.start()
    await hub.start()
    polled = await hub.wait_ready(ready_timeout)
    systemd.notify(f"READY=1\nSTATUS=hub {cfg.hub.id}: {len(hub.connectors)} connectors")
    ready = True
    log.info(
        "daemon.ready hub=%s connectors=%d chargers_polled=%s ready_s=%.3f",
        cfg.hub.id, len(hub.connectors), polled, time.monotonic() - t0,
    )
    watchdog = None
    interval = systemd.watchdog_interval()
    if interval:
        watchdog = loop.create_task(systemd.watchdog(interval, hub.health_problems))
    await stop.wait()
    log.info("daemon.stopping")
    systemd.notify("STOPPING=1")
    if watchdog:
        watchdog.cancel()
    await control.stop()
    await hub.stop()
    log.info("daemon.stopped")
    return 0


def run(cfg: HubConfig) -> int:
    try:
        return asyncio.run(serve(cfg))
    except (Refused, NotFound) as exc:
        log.error("daemon.refused reason=%s", exc)
        return 1
