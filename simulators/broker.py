"""A throw-away mosquitto on loopback, for the demo, the tests and the benchmarks.

Each ``Broker`` runs its own mosquitto on free ports of 127.0.0.1 with its own
config, persistence file and log in a directory the caller owns - never the
system broker on 1883. Optional TLS listener with client certificates and an
ACL file. ``stop`` (graceful, saves persistence), ``kill`` (SIGKILL, like a
power cut) and ``start`` again on the same ports are fast, so tests can bounce
the broker many times.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def mosquitto_available() -> bool:
    return Path(MOSQUITTO).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, directory: Path, *, pki: Any = None, acl: str | None = None,
                 persistence: bool = True, tls_only: bool = False,
                 spawn: Callable[[], dict[str, Any]] | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.acl = acl
        self.persistence = persistence
        self.tls_only = tls_only
        # Popen options for the broker process, asked at each start; default:
        # a session of its own, so a Ctrl-C meant for its owner spares it.
        self.spawn = spawn or (lambda: {"start_new_session": True})
        self.port = free_port()
        self.tls_port = free_port() if pki else None
        self.proc: subprocess.Popen | None = None
        self.config = self.directory / "mosquitto.conf"
        self.log = self.directory / "mosquitto.log"
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this broker has no TLS listener: create it with pki=make_pki(...)")
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            "autosave_interval 0",
            # Keep every QoS 1 message queued for an offline subscriber: the
            # tests' cloud subscriber must see all of them.
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "allow_anonymous true",
            # Started as root, mosquitto would switch to its own user and then
            # could not write its log or persistence in our directory.
            f"user {getpass.getuser()}",
        ]
        if self.acl is not None:
            acl_file = self.directory / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        if not self.tls_only:
            lines += [f"listener {self.port} 127.0.0.1"]
        if self.pki:
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.pki.ca}",
                      f"certfile {self.pki.server_cert}", f"keyfile {self.pki.server_key}",
                      "require_certificate true", "use_identity_as_username true"]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 5.0) -> "Broker":
        if self.running:
            return self
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, **self.spawn())
        deadline = time.monotonic() + timeout
        ports = [p for p in (None if self.tls_only else self.port, self.tls_port) if p]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited at start (code {self.proc.returncode}): {err.strip()} "
                                   f"- see {self.log}")
            if all(_listening(p) for p in ports):
                return self
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {ports} within {timeout}s: see {self.log}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: mosquitto saves its persistence (sessions, queued
        and retained messages) first."""
        if not self.running:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
