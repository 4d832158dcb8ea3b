"""The project's docs stand alone (issue 19): every link and every path they
name exists in the project, and none points at a document outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The project's own documents, and each room's README under edge/ (the core,
# the cloud link, every part).
DOCS = sorted(
    {ROOT / "README.md", ROOT / "config" / "README.md", ROOT / "hil_tests" / "README.md",
     *(ROOT / "edge").rglob("README.md"), *(ROOT / "docs").rglob("*.md")}
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"`((?:docs|edge|config|hil_tests|tests|bench|drivers|simulators|systemd|state_machines)/[^`\s]+)`")
OUTSIDE = ("interfaces.md", "requirements.md", "reference.md", "style.md")
# A path of one machine (a home or work directory) means nothing on another.
MACHINE_PATH = re.compile(r"(?:^|[\s`(\"'=])/(?:home|root|Users|work|mnt)/[\w.-]")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_named_path_exists(doc):
    text = doc.read_text()
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    for path in PATH.findall(text):
        if any(ch in path for ch in "<{*"):
            continue  # a pattern such as edge/cloud/schemas/events/<type>.json
        if not (ROOT / path.split("::", 1)[0].rstrip(".,;:")).exists():  # a test named file::test
            missing.append(path)
    assert not missing, f"{doc.relative_to(ROOT)} points at what the project does not have: {missing}"
    named = [name for name in OUTSIDE if name in text] + [m.group(0).strip() for m in MACHINE_PATH.finditer(text)]
    assert not named, f"{doc.relative_to(ROOT)} names documents outside the project: {named}"


def test_the_cloud_contract_documents_every_command_sync_kind_and_schema():
    from edge.cloud.downlink import COMMANDS, SYNC_KINDS

    doc = (ROOT / "docs" / "cloud-contract.md").read_text()
    for name in COMMANDS:
        assert f"`{name}`" in doc and f"`{name}.json`" in doc, name
    for kind in SYNC_KINDS:
        assert f"`hub/{{id}}/sync/{kind}`" in doc and f"`{kind}.json`" in doc, kind
    for schema in (ROOT / "edge" / "cloud" / "schemas").glob("*.json"):
        assert f"`{schema.name}`" in doc, schema.name
    events = (ROOT / "docs" / "events.md").read_text()
    for schema in (ROOT / "edge" / "cloud" / "schemas" / "events").glob("*.json"):
        assert f"`{schema.stem}`" in events, schema.stem
