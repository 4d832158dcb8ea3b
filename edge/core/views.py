"""What the hub shows of itself: `hubctl status` and `hubctl devices`, the
cloud link's and the outbox's state, and the parts' sections. ``Hub``
(edge/core/hub.py) is built from this class.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from edge.core import VERSION
from units import rfc3339

log = logging.getLogger("hubedge.hub")


class StatusViews:
    """The Hub's views (a part of ``Hub``)."""

    # ------------------------------------------------------------------ views
    def status(self) -> dict:
        now = self.clock.now()
        connectors = []
        for cid, c in self.connectors.items():
            v = self.connector_view(c)
            s = self.sessions.get(c.session_id) if c.session_id else None
            if s:
                r = self.readings.get(cid)
                energy = getattr(r, "energy_wh", None)
                v["session_energy_wh"] = max(0, energy - (s.meter_start_wh or 0)) if energy is not None else None
                v["session_method"] = s.method
            connectors.append(v)
        return {
            "hub": self.hub_id,
            "version": VERSION,
            "ts": rfc3339(now),
            "timezone": self.cfg.hub.timezone,
            "uptime_s": round(time.monotonic() - self.started_mono),
            "ready": self.ready.is_set(),
            "clock": self.clock.view(),
            "connectors": connectors,
            "devices": self.device_views(),
            "cloud": self.cloud_view(),
            "outbox": self.outbox_view(),
            **self._part_sections(),
        }

    def device_views(self) -> list[dict]:
        """`hubctl devices`: every device with the connectors it serves, then
        the hub's own tasks and the store's writer (class ``task``)."""
        served: dict[str, list[str]] = {}
        for cid, place in self.places.items():
            served.setdefault(place.charger_id, []).append(cid)
        for t in self.cfg.terminals:
            served[t.id] = list(t.connectors)
        for r in self.cfg.readers:
            served[r.id] = [r.connector]
        rows = [d.as_dict() for d in self.devices.values()] + self.supervisor.views() + [self._writer_view()]
        return [{**row, "connectors": served.get(row["device"], [])} for row in rows]

    def _writer_view(self) -> dict:
        w = self.store.writer_view()
        problem = self.store.disk_problem()
        failing = w["failure"] is not None
        state = "fault" if failing or problem else "ok"
        if state != self._writer_state[0]:
            self._writer_state = (state, self.clock.now())
        return {
            "device": "store writer",
            "class": "task",
            "state": state,
            "since": rfc3339(self._writer_state[1]),
            "last_error": problem or (f"the card fails writes ({w['failure']}): they are kept and tried again; "
                                      f"check the SD card (dmesg, free space)" if failing else None),
            "detail": {"critical": True, **w},
        }

    def booked_slot(self, connector_id: str) -> tuple[datetime, datetime] | None:
        """The booked slot of the truck at a connector, from whichever part
        keeps bookings; None for a truck without one."""
        for part in self.capabilities:
            try:
                slot = part.booked_slot(connector_id)
            except Exception:
                log.exception("capability.failed part=%s hook=booked_slot", part.name)
                continue
            if slot is not None:
                return slot
        return None

    def _part_sections(self) -> dict:
        out: dict = {}
        for part in self.capabilities:
            try:
                out.update(part.status())
            except Exception:
                log.exception("capability.failed part=%s hook=status", part.name)
        return out

    def cloud_view(self) -> dict:
        if self.uplink is None:
            return {"configured": False, "connected": False}
        return {"configured": True, "broker": self.cfg.cloud.broker, **self.uplink.link_state()}

    def outbox_view(self) -> dict:
        from edge.core.outbox import outbox_summary

        out = outbox_summary(self.outbox, link=self.cloud_view(), now=self.clock.now())
        out["total_put"] = self.events_put
        return out
