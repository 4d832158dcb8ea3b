"""The hub's side of the cloud link: the uplink and downlink wired to the
hub, the cloud's commands (docs/cloud-contract.md), the parts' sync kinds,
and resync requests. ``Hub`` (edge/core/hub.py) is built from this class.
"""

from __future__ import annotations

import asyncio
import logging
import time

from edge.core import VERSION
from edge.core.connectors import NotFound, Refused
from state_machines.connector import Connector

log = logging.getLogger("hubedge.hub")


class CloudSide:
    """The Hub's methods for the cloud link (a part of ``Hub``)."""

    # ---------------------------------------------------------------- cloud
    def _start_cloud(self) -> None:
        from edge.cloud.downlink import Downlink

        loop = asyncio.get_running_loop()
        keys = self._command_keys()
        from datetime import timedelta

        cloud = self.cfg.cloud
        self.downlink = Downlink(self.hub_id, self.store, clock=self.clock, reply=self._reply, on_event=self.emit,
                                 keys=keys, allow_unsigned=cloud.allow_unsigned,
                                 command_max_age=timedelta(seconds=cloud.command_max_age_s),
                                 clock_skew=timedelta(seconds=cloud.clock_skew_s))
        self._register_commands()
        if not self.cfg.cloud.broker:
            log.info("cloud.disabled reason=no_broker_configured")
            return
        if not keys and cloud.allow_unsigned:
            log.warning("cloud.commands_unverified reason=allow_unsigned action=%r",
                        "syncs and commands from the broker are obeyed unsigned: for a test bench only; on a site "
                        "set [cloud] command_key_file to the cloud's command key for this hub (docs/deploy.md)")
        elif not keys:
            log.warning("cloud.commands_refused reason=no_command_key_file action=%r",
                        "every sync and command from the cloud is refused (bad_signature): set [cloud] "
                        "command_key_file to the cloud's command key for this hub (docs/deploy.md)")
        from edge.cloud.uplink import Uplink

        tls = None
        if self.cfg.cloud.broker.startswith("mqtts://"):
            tls = {
                "ca": str(self.cfg.resolve(self.cfg.cloud.ca_file)),
                "cert": str(self.cfg.resolve(self.cfg.cloud.cert_file)),
                "key": str(self.cfg.resolve(self.cfg.cloud.key_file)),
            }
        self.uplink = Uplink(
            self.hub_id,
            self.cfg.cloud.broker,
            client_id=self.cfg.cloud.client_id or f"hubedge-{self.hub_id}",
            outbox=self.outbox,
            clock=self.clock,
            tls=tls,
            version=VERSION,
            on_message=self._on_cloud_message,
            on_link=self._on_link,
            on_session=self._on_cloud_session,
            loop=loop,
            keepalive=self.cfg.cloud.keepalive_s,
        )
        self.uplink.start()

    def _command_keys(self) -> tuple[bytes, ...]:
        """The cloud's command keys (edge/cloud/signing.py), none when not configured.
        The config check has read the file already; a file spoilt since then
        stops the start with the same message."""
        from edge.core.config import ConfigError
        from edge.cloud.signing import KeyFileError, load_keys

        if not self.cfg.cloud.command_key_file:
            return ()
        try:
            keys = load_keys(self.cfg.resolve(self.cfg.cloud.command_key_file))
        except KeyFileError as exc:
            raise ConfigError(self.cfg.source or "<config>", [f"cloud.command_key_file: {exc}"]) from None
        log.info("cloud.commands_signed keys=%d", len(keys))
        return keys

    def _reply(self, payload: dict) -> None:
        if self.uplink is not None:
            self.uplink.publish_reply(payload)

    def _on_cloud_message(self, topic: str, payload: bytes, sig: str | None) -> asyncio.Task | None:
        # The uplink acknowledges the message to the broker once this task
        # has applied and recorded it durably (edge/cloud/uplink.py).
        if self.downlink is not None:
            return self._spawn(self.downlink.handle(topic, payload, sig))
        return None

    def _on_cloud_session(self, reason: str) -> None:
        # At start and after the link was away, the cloud resends what the
        # broker may not have kept (edge/cloud/downlink.py: ask_resync).
        if self.downlink is not None:
            self.downlink.ask_resync(reason, held=self._held())

    def _on_link(self, up: bool) -> None:
        self.link_up = up
        log.info("cloud.link up=%s", up)
        if up:
            for c in self.connectors.values():
                self._publish_state(c)
        for part in self.capabilities:
            try:
                part.on_link(up)
            except Exception:
                log.exception("capability.failed part=%s hook=link", part.name)

    def _register_commands(self) -> None:
        """The cloud's commands (docs/cloud-contract.md). Their args were
        checked against edge/cloud/schemas/cmd/ before they get here; a refusal is
        answered in the cloud's terms (reply codes of edge/cloud/schemas/reply.json,
        no advice meant for a technician's hubctl)."""
        from edge.cloud.downlink import Rejected

        def refusal(exc: Refused) -> Rejected:
            text = "; ".join(part for part in str(exc).split("; ") if "hubctl" not in part)
            if isinstance(exc, NotFound):
                return Rejected("not_found", text, {"reason": exc.code})
            return Rejected("refused", text, {"reason": exc.code})

        def connector_of(cid: str) -> Connector:
            if cid not in self.connectors:
                raise Rejected("not_found", f"no connector {cid!r} at hub {self.hub_id}: it has "
                                            f"{', '.join(self.connectors) or 'none'}; nothing was done")
            return self.connectors[cid]

        async def unlock_connector(msg: dict) -> dict:
            cid = msg["args"]["connector"]
            c = connector_of(cid)
            if c.session_id:
                raise Rejected("refused", f"connector {cid} has session {c.session_id} running: send stop_session "
                                          f"for it first, then unlock_connector", {"session": c.session_id})
            try:
                ok = await self.unlock(cid)
            except Refused as exc:
                raise refusal(exc)
            if not ok:
                raise Rejected("unlock_failed", f"connector {cid} stayed locked; send a technician")
            self.audit("cloud", "connector.unlock", cid, "", "done")
            return {"connector": cid}

        async def set_availability(msg: dict) -> dict:
            args = msg["args"]
            cid, available = args["connector"], args["available"]
            connector_of(cid)
            try:
                with self.store.transaction():  # the change and its audit event, one commit
                    result = self.set_availability(cid, available, str(args.get("reason") or "cloud command"))
                    self.audit("cloud", "connector.available" if available else "connector.unavailable", cid,
                               str(args.get("reason") or ""), result)
            except Refused as exc:
                raise refusal(exc)
            return {"connector": cid, "message": result}

        async def stop_session(msg: dict) -> dict:
            sid = msg["args"]["session"]
            if self.sessions.get(sid) is None:
                raise Rejected("not_found", f"no session {sid!r} at hub {self.hub_id}; nothing was done")
            try:
                await self.stop_session(sid, reason="remote")
            except Refused as exc:
                raise refusal(exc)
            self.audit("cloud", "session.stop", sid, "", "stopping")
            return {"session": sid}

        async def resync(msg: dict) -> dict:
            # The cloud asks for the hub's state again: retained status and
            # every connector's state are published anew.
            for c in self.connectors.values():
                self._publish_state(c)
            self.audit("cloud", "hub.resync", self.hub_id, "", "states republished")
            return {"connectors": len(self.connectors)}

        self.downlink.register("cmd:resync", resync)
        for part in self.capabilities:
            for kind, handler in part.sync_handlers().items():
                self.downlink.register(kind, handler)
        self.downlink.register("cmd:unlock_connector", unlock_connector)
        self.downlink.register("cmd:set_availability", set_availability)
        self.downlink.register("cmd:stop_session", stop_session)

    # ------------------------------------------------------- synced stores
    def _held(self) -> dict:
        """What the hub holds of each synced kind, told to the cloud with a
        resync request so it can send a delta (the parts say)."""
        held: dict = {}
        for part in self.capabilities:
            held.update(part.resync_held())
        return held

    async def request_resync(self, user: str, progress, timeout: float = 60.0) -> dict:
        """Ask the cloud for a full resend of every synced kind and follow
        which have arrived (sync.applied) until all have or the time is up."""
        from edge.cloud.downlink import SYNC_KINDS

        asked_at = self.clock.now()
        with self.store.transaction():  # the request and its audit, one commit
            if self.downlink is not None:
                self.downlink.ask_resync("technician", requested_by=user, held=self._held())
            else:
                self.emit("sync.resync_requested", {"kinds": list(SYNC_KINDS), "requested_by": user, "reason": "technician"})
            self.audit(user, "hub.resync", self.hub_id, "", "requested")
        deadline = time.monotonic() + timeout
        done: list[str] = []
        while True:
            done = [k for k in SYNC_KINDS if self.last_sync.get(k, asked_at) > asked_at]
            await progress({"received": done, "waiting": [k for k in SYNC_KINDS if k not in done], "link": self.link_up})
            if len(done) == len(SYNC_KINDS) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        return {"received": done, "complete": len(done) == len(SYNC_KINDS), "link": self.link_up}
