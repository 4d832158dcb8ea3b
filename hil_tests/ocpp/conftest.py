"""The OCPP rig for the HIL tests: the listener and station simulators over
real websockets on 127.0.0.1."""

import logging

import pytest
from ocpp_rig import OcppRig

logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@pytest.fixture
async def ocpp_rig():
    rig = OcppRig()
    yield rig
    await rig.close()
