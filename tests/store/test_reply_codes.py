"""Every reply code the hub can send the cloud is one reply.json allows
(issue 19: `not_found` and `refused` replies failed the shipped schema).

The codes are collected from the code itself: the refusals of the downlink
(``_refusal(...)``, the answers it builds) and every ``Rejected(...)`` a
sync or command handler raises anywhere in edge/. A code that is not a
literal cannot be checked, so it fails here too."""

from __future__ import annotations

import ast
from pathlib import Path

from edge.cloud.schemas import validator

EDGE = Path(__file__).resolve().parents[2] / "edge"
ALLOWED = set(validator("reply").schema["properties"]["code"]["enum"])


def _codes_of(expr: ast.expr, where: str) -> set[str]:
    """The string literals an expression can give; `x.code` of a caught
    Rejected is allowed (its own literal is collected where it is raised)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.BoolOp):
        return set().union(*(_codes_of(v, where) for v in expr.values))
    if isinstance(expr, ast.IfExp):
        return _codes_of(expr.body, where) | _codes_of(expr.orelse, where)
    if isinstance(expr, ast.Attribute) and expr.attr == "code" and isinstance(expr.value, ast.Name) and expr.value.id == "e":
        return set()  # `except Rejected as e`: e.code
    if isinstance(expr, ast.Name) and expr.id == "code" and where.startswith("edge/cloud/downlink.py"):
        return set()  # the parameter of Downlink._refusal, whose callers are checked
    raise AssertionError(f"{where}: a reply code that is not a literal ({ast.unparse(expr)}): make it one, so it can be checked")


def collect() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(EDGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(EDGE.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name == "Rejected" and node.args:
                    for code in _codes_of(node.args[0], where):
                        found.setdefault(code, set()).add(where)
                elif name == "_refusal" and path.name == "downlink.py" and len(node.args) >= 3:
                    for code in _codes_of(node.args[2], where):
                        found.setdefault(code, set()).add(where)
            elif isinstance(node, ast.Dict) and path.name == "downlink.py":
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "code" and value is not None:
                        for code in _codes_of(value, where):
                            found.setdefault(code, set()).add(where)
    return found


def test_every_reply_code_in_the_code_validates_against_reply_json():
    found = collect()
    # The collection itself works: codes of the downlink and of the command handlers are there.
    assert {"ok", "schema", "duplicate", "error", "not_found", "refused", "unlock_failed", "rejected"} <= found.keys()
    unknown = {code: sorted(where) for code, where in found.items() if code not in ALLOWED}
    assert not unknown, f"reply codes missing from edge/cloud/schemas/reply.json: {unknown}"


def test_every_code_reply_json_allows_is_one_the_code_can_send():
    """No code promised to the cloud that the hub never sends."""
    assert ALLOWED - collect().keys() == set()
