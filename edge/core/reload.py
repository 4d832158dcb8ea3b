"""`systemctl reload hubedge` (SIGHUP): the running daemon re-reads its
configuration file and takes over what it can without a restart.

Taken over at once: the log level (and the log stream is set up afresh), the
cloud's command keys (the key file is read again, so a rotated key counts
without dropping a charge), allow_unsigned and the command limits, and the
technicians' group of the control socket. Anything else that changed -
devices, bays, the broker, the state directory - is named in the log as
needing a restart (`systemctl restart hubedge`), and the daemon keeps
running as it was. A file that no longer loads is refused whole: the daemon
keeps everything as it was and logs every problem, as `hubctl config
validate` would.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from edge.core.config import ConfigError, HubConfig, load_config

if TYPE_CHECKING:
    from edge.core.control import ControlServer
    from edge.core.hub import Hub

log = logging.getLogger("hubedge.reload")

# What a reload takes over: section -> keys (all of the section's keys when None).
RELOADABLE: dict[str, tuple[str, ...] | None] = {
    "logging": None,
    "cloud": ("command_key_file", "allow_unsigned", "command_max_age_s", "clock_skew_s"),
    "control": ("group",),
}


def needs_restart(running: HubConfig, new: HubConfig) -> list[str]:
    """The keys (section or section.key) that changed and only take effect at
    a restart."""
    changed = []
    for section in type(running).model_fields:
        if section == "source":
            continue
        old, now = getattr(running, section), getattr(new, section)
        if old == now:
            continue
        keys = RELOADABLE.get(section, ())
        if keys is None:
            continue
        if keys and hasattr(type(old), "model_fields"):
            changed += [f"{section}.{k}" for k in type(old).model_fields
                        if k not in keys and getattr(old, k) != getattr(now, k)]
        else:
            changed.append(section)
    return changed


def reload_config(running: HubConfig, hub: "Hub", control: "ControlServer") -> HubConfig:
    """Apply what can be applied of the file at ``running.source``; returns
    the configuration the daemon now runs with (``running`` when refused)."""
    from edge.core.journal import setup_logging
    from edge.cloud.signing import KeyFileError, load_keys

    try:
        new = load_config(running.source)
    except ConfigError as exc:
        log.error("daemon.reload_refused problems=%r action=%r", exc.problems,
                  "nothing was changed; fix the file (hubctl config validate) and reload again")
        return running
    keys: tuple[bytes, ...] = ()
    if new.cloud.command_key_file:
        try:
            keys = load_keys(new.resolve(new.cloud.command_key_file))
        except KeyFileError as exc:  # spoilt between the config check and now
            log.error("daemon.reload_refused problems=%r action=%r", [str(exc)], "nothing was changed")
            return running
    setup_logging(new.logging.level)
    applied = ["logging"]
    if hub.downlink is not None:
        hub.downlink.set_keys(keys, new.cloud.allow_unsigned)
        hub.downlink.command_max_age = timedelta(seconds=new.cloud.command_max_age_s)
        hub.downlink.clock_skew = timedelta(seconds=new.cloud.clock_skew_s)
        applied.append(f"command_keys={len(keys)}")
    control.set_group(new.control.group)
    applied.append(f"control_group={new.control.group}")
    restart = needs_restart(running, new)
    if restart:
        log.warning("daemon.reload_needs_restart changed=%s action=%r", ",".join(restart),
                    "these take effect at the next start: systemctl restart hubedge when no truck is charging")
    log.info("daemon.reloaded applied=%s needs_restart=%s", ",".join(applied), ",".join(restart) or "none")
    # What was applied now counts as running; the rest still does not.
    return running.model_copy(update={
        "logging": new.logging,
        "cloud": running.cloud.model_copy(update={k: getattr(new.cloud, k) for k in RELOADABLE["cloud"]}),
        "control": running.control.model_copy(update={"group": new.control.group}),
    })
