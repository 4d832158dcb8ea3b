"""The handshake over real websockets on 127.0.0.1 (R-O1): unknown stations
and wrong passwords refused with 401 before any upgrade, logged with the
identity and the remote address and reported to the hub; subprotocols as
OCPP-J says; security profile 2 over TLS 1.2+."""

import logging
import ssl
import warnings

import aiohttp
import pytest
from ocpp_rig import PASSWORD

from drivers.ocpp import StationConfig
from drivers.ocpp.events import HandshakeRefused, StationConnected
from hil_tests.broker import make_pki
from simulators.ocpp_station import CallFailed

pytestmark = [pytest.mark.hil, pytest.mark.charger]


@pytest.mark.parametrize("station_id,password,reason", [
    ("CS-UNKNOWN", PASSWORD, "unknown station"),
    ("CS-1", "wrong-password-123456", "wrong password"),
    ("CS-1", None, "no credentials"),
])
async def test_r_o1_refused_at_the_handshake_with_401_logged_and_reported(ocpp_rig, caplog, station_id, password,
                                                                          reason):
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6")])
    caplog.set_level(logging.WARNING, logger="hubedge.ocpp")
    station = ocpp_rig.station(station_id, "ocpp1.6", password=password)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await station.connect()
    assert refused.value.status == 401 and station.handshake_status == 401
    event = ocpp_rig.recorder.of(HandshakeRefused)[0]
    assert (event.station, event.status) == (station_id, 401) and event.reason.startswith(reason)
    assert event.remote.startswith("127.0.0.1:")
    line = next(r.getMessage() for r in caplog.records if "ocpp_refused" in r.getMessage())
    assert station_id in line and "127.0.0.1:" in line and reason in line
    assert PASSWORD not in caplog.text and "wrong-password" not in caplog.text
    assert not ocpp_rig.recorder.of(StationConnected)
    assert not ocpp_rig.listener.station("CS-1").connected


async def test_r_o1_basic_user_must_be_the_station_identity(ocpp_rig):
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6"), StationConfig("CS-2", "ocpp1.6")])
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": aiohttp.encode_basic_auth("CS-2", PASSWORD)}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{ocpp_rig.base_url}/CS-1", protocols=("ocpp1.6",), headers=headers)
    assert refused.value.status == 401
    assert "Basic user" in ocpp_rig.recorder.of(HandshakeRefused)[0].reason


async def test_r_o1_percent_encoded_identity_is_compared_decoded(ocpp_rig):
    await ocpp_rig.start([StationConfig("RDAM 12/A", "ocpp2.0.1")])
    station = ocpp_rig.station("RDAM 12/A", "ocpp2.0.1")
    await station.connect()
    assert ocpp_rig.listener.station("RDAM 12/A").connected and station.boot_status == "Accepted"


async def test_r_o1_wrong_subprotocol_completes_without_one_then_closes(ocpp_rig):
    """OCPP-J 1.6 §3.2 / 2.0.1 §3.2: no common subprotocol -> the handshake
    completes without the header and the central system closes."""
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6")])
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": aiohttp.encode_basic_auth("CS-1", PASSWORD)}
        ws = await session.ws_connect(f"{ocpp_rig.base_url}/CS-1", protocols=("ocpp2.0.1",), headers=headers)
        assert ws.protocol is None
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 1002
    refused = ocpp_rig.recorder.of(HandshakeRefused)[0]
    assert refused.status == 101 and "offered ocpp2.0.1, configured ocpp1.6" in refused.reason
    assert not ocpp_rig.recorder.of(StationConnected)


async def test_r_o1_leading_comma_in_the_subprotocol_list_still_matches(ocpp_rig):
    """A station firmware sends 'Sec-WebSocket-Protocol: ,ocpp2.0.1'."""
    await ocpp_rig.start([StationConfig("CS-1", "ocpp2.0.1")])
    station = ocpp_rig.station("CS-1", "ocpp2.0.1", subprotocol=",ocpp2.0.1")
    await station.connect()
    assert station.boot_status == "Accepted"


async def test_r_o1_no_subprotocol_refused_unless_the_station_has_assume_subprotocol(ocpp_rig, caplog):
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6"),
                          StationConfig("CS-2", "ocpp1.6", leniencies=frozenset({"assume_subprotocol"}))])
    strict = ocpp_rig.station("CS-1", "ocpp1.6", subprotocol=None)
    await strict.connect(boot=False)
    with pytest.raises(CallFailed):
        await strict.boot()
    caplog.set_level(logging.WARNING, logger="hubedge.ocpp")
    lenient = ocpp_rig.station("CS-2", "ocpp1.6", subprotocol=None)
    await lenient.connect()
    assert lenient.boot_status == "Accepted"
    assert "leniency=assume_subprotocol" in caplog.text
    assert [e.station for e in ocpp_rig.recorder.of(StationConnected)] == ["CS-2"]


async def test_r_o1_security_profile_2_over_tls(ocpp_rig, tmp_path):
    pki = make_pki(tmp_path / "pki")
    await ocpp_rig.start([StationConfig("CS-1", "ocpp2.0.1", security_profile=2)], tls_cert=str(pki.server_cert),
                         tls_key=str(pki.server_key))
    assert ocpp_rig.listener.url("CS-1").startswith("wss://")
    trust = ssl.create_default_context(cafile=str(pki.ca))
    station = ocpp_rig.station("CS-1", "ocpp2.0.1", ssl=trust)
    station.url = station.url.replace("ws://", "wss://")
    await station.connect()
    assert station.boot_status == "Accepted"
    from drivers.ocpp.listener import tls_context
    assert tls_context(str(pki.server_cert), str(pki.server_key)).minimum_version == ssl.TLSVersion.TLSv1_2
    old = ssl.create_default_context(cafile=str(pki.ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    legacy = ocpp_rig.station("CS-1", "ocpp2.0.1", ssl=old)
    legacy.url = station.url
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, OSError)):
        await legacy.connect()
    plain = ocpp_rig.station("CS-1", "ocpp2.0.1")
    with pytest.raises((aiohttp.ClientError, OSError)):
        await plain.connect()


def test_r_o1_profile_2_without_tls_is_a_config_error():
    from drivers.ocpp import ListenerSettings, OcppListener, password_check
    with pytest.raises(ValueError, match="security_profile 2"):
        OcppListener(ListenerSettings(), [StationConfig("CS-1", "ocpp1.6", security_profile=2)], None,
                     password_check({}))


async def test_r_o1_hex_form_of_a_1_6_key_only_with_hex_basic_password(ocpp_rig, caplog):
    """1.6: the key is bytes; a station sending its hex form is let in only
    with the leniency, and the repair is logged."""
    caplog.set_level(logging.WARNING, logger="hubedge.ocpp")
    await ocpp_rig.start([StationConfig("CS-1", "ocpp1.6"),
                          StationConfig("CS-2", "ocpp1.6", leniencies=frozenset({"hex_basic_password"}))])
    hex_form = PASSWORD.encode().hex()
    strict = ocpp_rig.station("CS-1", "ocpp1.6", password=hex_form)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await strict.connect()
    lenient = ocpp_rig.station("CS-2", "ocpp1.6", password=hex_form)
    await lenient.connect()
    assert lenient.boot_status == "Accepted"
    assert "leniency=hex_basic_password" in caplog.text and hex_form not in caplog.text
