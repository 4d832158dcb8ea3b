"""The camera driver stands alone: it loads nothing of the hub (edge), so a
rig can run the listener without the hub, and the hub takes the plate mask
from the driver, not the other way round."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_camera_driver_loads_nothing_of_the_hub():
    probe = ("import sys, drivers.anpr; drivers.anpr.AnprListener; "
             "print(sorted(m for m in sys.modules if m == 'edge' or m.startswith('edge.')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
