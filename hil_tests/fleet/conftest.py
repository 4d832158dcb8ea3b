"""A fleet's broker for the tests: the example configuration shipped in
config/mosquitto/ run by a real mosquitto, with only its certificate paths,
ports and directories swapped for the test's (R-M5).

Two test CAs, as in production: the hub CA signs the broker's server
certificate and every hub's client certificate (CN = hub id); the cloud CA
signs the cloud services' client certificates (CN "cloud").
"""

from __future__ import annotations

import getpass
import re
import signal
import subprocess
from pathlib import Path

import pytest

from hil_tests.broker import PKI, make_pki
from simulators.broker import Broker, mosquitto_available

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "mosquitto"
HUB_PORT, CLOUD_PORT = 8883, 8884


class ExampleBroker(Broker):
    """mosquitto running config/mosquitto/mosquitto.conf and its ACL files
    as shipped. ``tls_port`` is the hubs' listener, ``port`` the cloud
    services' (TLS as well)."""

    def __init__(self, directory: Path, hub_pki: PKI, cloud_pki: PKI):
        self.cloud_pki = cloud_pki
        self.crl = revocation_list(hub_pki)
        super().__init__(directory, pki=hub_pki, tls_only=False)

    def reload(self) -> None:
        """What `systemctl reload mosquitto` does: re-read the configuration,
        certificates and revocation list."""
        self.proc.send_signal(signal.SIGHUP)

    @property
    def hub_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    @property
    def cloud_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def cloud_tls(self, name: str = "cloud") -> dict[str, str]:
        """A cloud service's files: its certificate from the cloud CA; the
        broker's server certificate is checked against the hub CA."""
        return {**self.cloud_pki.client(name), "ca": str(self.pki.ca)}

    def _write_config(self) -> None:
        self.config.write_text(render_example(
            (EXAMPLE / "mosquitto.conf").read_text(),
            ports={HUB_PORT: self.tls_port, CLOUD_PORT: self.port},
            files={
                "/etc/mosquitto/certs/hub-ca.crt": self.pki.ca,
                "/etc/mosquitto/certs/cloud-ca.crt": self.cloud_pki.ca,
                "/etc/mosquitto/certs/broker.crt": self.pki.server_cert,
                "/etc/mosquitto/certs/broker.key": self.pki.server_key,
                "/etc/mosquitto/hub-acl.conf": EXAMPLE / "hub-acl.conf",
                "/etc/mosquitto/cloud-acl.conf": EXAMPLE / "cloud-acl.conf",
                "/var/lib/mosquitto/": f"{self.directory}/",
                "/etc/mosquitto/certs/hub-ca.crl": self.crl,
            },
            tail=[
                f"log_dest file {self.log}",
                "log_type error", "log_type warning", "log_type notice",
                "autosave_interval 0",
                # Started as root, mosquitto would switch to its own user and
                # then could not write its log or persistence here.
                f"user {getpass.getuser()}",
            ],
        ))


def render_example(text: str, *, ports: dict[int, int], files: dict[str, object], tail: list[str]) -> str:
    """The example file with its listeners moved to loopback test ports and
    its file paths replaced. Every port and path named must occur in the
    example, so the example and this test cannot drift apart unnoticed."""
    out = text
    for port, test_port in ports.items():
        out, n = re.subn(rf"^listener {port}$", f"listener {test_port} 127.0.0.1", out, flags=re.M)
        assert n == 1, f"config/mosquitto/mosquitto.conf has no 'listener {port}' line"
    for path, test_path in files.items():
        assert path in out, f"config/mosquitto/mosquitto.conf no longer names {path}"
        out = out.replace(path, str(test_path))
    return out + "\n" + "\n".join(tail) + "\n"


def _ca_config(pki: PKI) -> Path:
    """A minimal `openssl ca` set-up beside the test CA, for revocations."""
    cnf = pki.directory / "revocation.cnf"
    if not cnf.exists():
        (pki.directory / "index.txt").write_text("")
        (pki.directory / "crlnumber").write_text("01\n")
        cnf.write_text(f"[ca]\ndefault_ca = hub_ca\n[hub_ca]\ndatabase = {pki.directory / 'index.txt'}\n"
                       f"crlnumber = {pki.directory / 'crlnumber'}\ndefault_md = sha256\ndefault_crl_days = 2\n")
    return cnf


def _openssl_ca(pki: PKI, *args: str) -> None:
    subprocess.run(["openssl", "ca", "-config", str(_ca_config(pki)), "-keyfile", "ca.key", "-cert", "ca.crt", *args],
                   cwd=pki.directory, check=True, capture_output=True)


def revocation_list(pki: PKI) -> Path:
    """The CA's current revocation list (made, empty, on first use)."""
    crl = pki.directory / "ca.crl"
    if not crl.exists():
        _openssl_ca(pki, "-gencrl", "-out", str(crl))
    return crl


def revoke(pki: PKI, name: str) -> None:
    """Revoke the certificate issued to ``name`` and publish a new list;
    the broker sees it after a reload. The files are moved aside, so that
    ``pki.client(name)`` issues a fresh certificate and key (a rotation)."""
    revocation_list(pki)
    cert = pki.directory / f"{name}.crt"
    _openssl_ca(pki, "-revoke", str(cert))
    _openssl_ca(pki, "-gencrl", "-out", str(pki.directory / "ca.crl"))
    for suffix in (".crt", ".key"):
        (pki.directory / f"{name}{suffix}").rename(pki.directory / f"{name}.revoked{suffix}")


@pytest.fixture(scope="module")
def fleet_pki(tmp_path_factory) -> tuple[PKI, PKI]:
    """(hub CA, cloud CA), each with the broker's server certificate made
    alongside (only the hub CA's is used)."""
    base = tmp_path_factory.mktemp("fleet-pki")
    return make_pki(base / "hub-ca"), make_pki(base / "cloud-ca")


@pytest.fixture
def example_broker(tmp_path, fleet_pki):
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed: `apt-get install mosquitto` (./dev test does it as root)")
    hub_pki, cloud_pki = fleet_pki
    b = ExampleBroker(tmp_path / "broker", hub_pki, cloud_pki).start()
    yield b
    b.kill()
