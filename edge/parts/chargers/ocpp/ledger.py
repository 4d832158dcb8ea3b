"""OCPP transactions into the hub's session ledger (R-O3, R-S1).

Over Modbus a session begins when the hub starts it and ends when the
connector machine sees the charge end. Over OCPP the station names both
ends: a transaction message. These two functions make the session step a
transaction message calls for, inside the caller's ``store.transaction()``,
with the same rows, events and hooks as the hub's own steps
(``session.started``, ``session.stopped``, the parts' records in the same
commit and their hooks after it), so payments, bookings and the cloud see one kind of
session whatever the charger speaks.
"""

from __future__ import annotations

from datetime import datetime

from edge.core.hub import _changing
from edge.core.sessions import Session, mask

# OCPP stop reasons (1.6 Reason, 2.0.1 stoppedReason) in the ledger's words.
STOP_REASONS = {
    "EVDisconnected": "ev_disconnected",
    "Local": "local",
    "Remote": "remote",
    "DeAuthorized": "token_blocked",
    "EmergencyStop": "emergency_stop",
    "EnergyLimitReached": "energy_limit",
    "GroundFault": "charger_fault",
    "HardReset": "charger_reset",
    "SoftReset": "charger_reset",
    "Reboot": "charger_reset",
    "ImmediateReset": "charger_reset",
    "PowerLoss": "power_loss",
    "PowerQuality": "charger_fault",
    "Other": "other",
    "OvercurrentFault": "charger_fault",
    "StoppedByEV": "ev_finished",
    "SOCLimitReached": "ev_finished",
    "TimeLimitReached": "time_limit",
    "UnlockCommand": "unlock",
    "MasterPass": "card",
    "LocalOutOfCredit": "cost_cap",
    "Timeout": "timeout",
}


def open_session(hub, connector_id: str, *, session_id: str | None, method: str, token: str | None,
                 started_at: datetime, meter_start_wh: float | None, extra: dict) -> Session:
    """The session an OCPP transaction belongs to, active from its start: the
    one the hub asked for (``session_id``, a remote start) or a new one (the
    station's own reader, a start queued while the hub was down). Binds the
    connector when it has no open session."""
    now = hub.clock.now()
    s = hub.sessions.get(session_id) if session_id else None
    start_wh = int(meter_start_wh) if meter_start_wh is not None else None
    c = hub.connectors[connector_id]
    with _changing(c), hub.store.transaction():
        if s is not None and s.is_open:
            s.extra = {**s.extra, **extra}
            if start_wh is not None:
                s.meter_start_wh = start_wh
            was_starting = s.status == "starting"
            s.status = "active"
            hub.sessions.update(s, now)
            if was_starting:
                hub.emit("session.started", hub._session_event(s))
                hub._record_hooks(hub.session_started_records, s)
                hub.store.after_commit(lambda: hub._run_hooks(hub.session_started_hooks, s))
            return s
        place = hub.places[connector_id]
        s = Session(id=hub.sessions.new_id(), hub=hub.hub_id, connector=connector_id, bay=place.bay, method=method,
                    status="active", started_at=started_at, token=token,
                    token_masked=mask(token) if token else None, meter_start_wh=start_wh,
                    currency=hub.cfg.hub.currency, extra=extra)
        hub.sessions.insert(s, now)
        current = hub.sessions.get(c.session_id) if c.session_id else None
        if current is None or not current.is_open:
            c.session_id = s.id
            hub._persist(c)
        hub.emit("session.started", hub._session_event(s))
        hub._record_hooks(hub.session_started_records, s)
        hub.store.after_commit(lambda: hub._run_hooks(hub.session_started_hooks, s))
    return s


def close_session(hub, s: Session, *, meter_stop_wh: float | None, stopped_at: datetime, reason: str,
                  signed_stop: str | None) -> Session:
    """End the session of an ended transaction with the station's own meter
    stop. A session the connector machine already ended (the station said
    Finishing before StopTransaction) gets the station's figures instead of
    the last reading's, without a second event."""
    now = hub.clock.now()
    c = hub.connectors.get(s.connector)
    stop_wh = int(meter_stop_wh) if meter_stop_wh is not None else None
    start = s.meter_start_wh
    with _changing(*([c] if c else [])), hub.store.transaction():
        if not s.is_open:
            if stop_wh is not None:
                s.meter_stop_wh = stop_wh
                s.energy_wh = max(0, stop_wh - (start if start is not None else stop_wh))
            s.signed_stop = signed_stop or s.signed_stop
            s.extra = {**s.extra, "ocpp_stop_reason": reason}
            hub.sessions.update(s, now)
            return s
        s.status = "stopped"
        s.stop_reason = hub._stop_reasons.pop(s.id, None) or reason
        s.stopped_at = stopped_at
        if stop_wh is None:
            stop_wh = start if start is not None else 0
        s.meter_stop_wh = stop_wh
        s.energy_wh = max(0, stop_wh - (start if start is not None else stop_wh))
        s.signed_stop = signed_stop or s.signed_stop
        hub.sessions.update(s, now)
        if c is not None and c.session_id == s.id:
            c.session_id = None
            c.last_session_id = s.id
            hub._persist(c)
        hub.emit("session.stopped", hub._stopped_event(s))
        hub._record_hooks(hub.session_ended_records, s)
        hub.store.after_commit(lambda: hub._session_ended(c, s))
    return s
