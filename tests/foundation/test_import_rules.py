"""The house as built (issue 16): which room may import which.

Arrows point down only. ``units`` (time and money) imports nothing of ours;
``drivers`` and ``state_machines`` stand on ``units`` alone; the simulators
are the device side and may use only ``units`` and ``drivers``, so a test rig
can run them without the hub. In ``edge``, the core knows no part and no
face, the cloud link knows no part, and a part plugs into the core and the
cloud link but never into another part (a part's demo scene and hubctl
commands may also load the simulators and the faces that run them).

Every import statement of every module counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("units", "drivers", "state_machines", "simulators", "edge", "bench")
FACES = ("edge.cli", "edge.hubctl", "edge.hubctl_completion", "edge.demo")
PART_FACE_FILES = ("demo", "hubctl")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> list[Path]:
    found = [ROOT / "units.py"]
    for top in ("drivers", "state_machines", "simulators", "edge"):
        found += sorted((ROOT / top).rglob("*.py"))
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of one of our modules."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from edge.parts import cards` imports the module edge.parts.cards
            targets = [target] + [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
        else:
            continue
        out += [(node.lineno, t) for t in targets if t.split(".")[0] in OURS]
    return out


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def within(name: str, *rooms: str) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rooms)


def part_of(name: str) -> str | None:
    """edge.parts.<part>: the part a module belongs to (the chargers part
    holds its protocols, edge.parts.chargers.ocpp and .modbus)."""
    bits = name.split(".")
    if len(bits) >= 3 and bits[:2] == ["edge", "parts"]:
        return ".".join(bits[:3])
    return None


def allowed(importer: str, target: str) -> bool:
    if importer == "units":
        return False
    if within(importer, "drivers"):
        return within(target, "units", "drivers")
    if within(importer, "state_machines"):
        return within(target, "units", "state_machines")
    if within(importer, "simulators"):
        return within(target, "units", "drivers", "simulators")
    if within(importer, "edge.core"):
        return not part_of(target) and not within(target, *FACES) and not within(target, "simulators", "bench")
    if within(importer, "edge.cloud"):
        return not part_of(target) and not within(target, *FACES) and not within(target, "simulators", "bench")
    part = part_of(importer)
    if part:
        base = ("units", "drivers", "state_machines", "edge.core", "edge.cloud", part)
        if importer.rsplit(".", 1)[-1] in PART_FACE_FILES:
            base += ("simulators", "edge.demo", "edge.hubctl")
        return within(target, *base) or target == "edge.parts" or target == "edge"
    return True  # the faces at the top of edge/ may use every room


def violations() -> list[str]:
    bad = []
    for path in modules():
        importer = module_name(path)
        for line, target in imports_of(path):
            if target in ("edge", "edge.parts") and part_of(importer) is None and not within(importer, "edge"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            elif not allowed(importer, target):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


def test_every_module_keeps_the_import_rules():
    bad = violations()
    assert not bad, "imports against the house rules (tests/foundation/test_import_rules.py says which):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "importer, target, ok",
    [
        ("units", "drivers.device", False),
        ("drivers.zvt.client", "units", True),
        ("drivers.zvt.client", "edge.core.store", False),
        ("state_machines.connector", "drivers.device", False),
        ("simulators.charger", "drivers.register_map", True),
        ("simulators.cloud", "edge.cloud.signing", False),
        ("edge.core.hub", "edge.cloud.downlink", True),
        ("edge.core.hub", "edge.parts.cards.tokens", False),
        ("edge.core.config", "edge.hubctl", False),
        ("edge.cloud.downlink", "edge.parts.payments.pricing", False),
        ("edge.parts.chargers.ocpp.part", "edge.parts.cards.auth", False),
        ("edge.parts.chargers.ocpp.part", "edge.parts.chargers.modbus", True),
        ("edge.parts.site.part", "edge.core.hub", True),
        ("edge.parts.site.part", "simulators.camera", False),
        ("edge.parts.site.demo", "simulators.camera", True),
        ("edge.parts.site.demo", "edge.demo", True),
        ("edge.parts.site.demo", "edge.parts.cards.demo", False),
        ("edge.hubctl", "edge.parts.cards.hubctl", True),
    ],
)
def test_the_rules_themselves(importer, target, ok):
    assert allowed(importer, target) is ok


def test_no_module_of_the_core_is_over_800_lines():
    """The core stays readable: split a module along its seams before it
    passes 800 lines (issue 16)."""
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "edge" / "core").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 800}
    assert not long, f"split these along their seams: {long}"
