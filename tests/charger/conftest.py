"""Fixtures for the charger unit tests: the shipped register maps and a
valid map as a dict that tests break on purpose."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

MAPS_DIR = Path(__file__).resolve().parents[2] / "config" / "register-maps"


@pytest.fixture
def map_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(MAPS_DIR.glob("*.toml"))}


@pytest.fixture
def good_map_dict() -> dict:
    with (MAPS_DIR / "hubcharge-mcs1200.toml").open("rb") as f:
        return copy.deepcopy(tomllib.load(f))
