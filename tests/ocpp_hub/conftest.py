import pytest
from ocpp_hub_rig import OcppRig


@pytest.fixture
def rig(tmp_path):
    r = OcppRig(tmp_path, tokens={"04AA0001": "Active", "04BB0002": "Blocked"})
    yield r
    r.close()


@pytest.fixture
def rig201(tmp_path):
    r = OcppRig(tmp_path, version="ocpp2.0.1", tokens={"04AA0001": "Active", "04BB0002": "Blocked"})
    yield r
    r.close()
