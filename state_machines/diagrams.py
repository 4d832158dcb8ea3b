"""Generate the state-machine diagrams in docs/ from the machines themselves.

`python -m state_machines.diagrams` rewrites docs/state-machines/*.md; a test
fails when a committed diagram no longer matches the code.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from transitions.extensions import GraphMachine

# name -> (module, title). Each module exposes STATES, TRANSITIONS and INITIAL
# (or a first state) and, optionally, DESCRIPTION.
MACHINES = {
    "connector": ("state_machines.connector", "Connector (R-C1)"),
    "payment": ("state_machines.payment", "Payment hold (R-P1..R-P4)"),
    "booking": ("state_machines.booking", "Booking lifecycle (R-B1..R-B7)"),
}

DOCS = Path(__file__).resolve().parent.parent / "docs" / "state-machines"


class _Model:
    pass


def mermaid(module_name: str, title: str | None = None) -> str:
    mod = importlib.import_module(module_name)
    model = _Model()
    # Conditions are shown as labels only; give the model no-op callables so
    # GraphMachine can bind them.
    for t in mod.TRANSITIONS:
        for key in ("conditions", "unless"):
            conds = t.get(key) or []
            for c in [conds] if isinstance(conds, str) else conds:
                setattr(model, c, lambda *a, **k: True)
    GraphMachine(
        model=model,
        states=mod.STATES,
        transitions=mod.TRANSITIONS,
        initial=getattr(mod, "INITIAL", mod.STATES[0]),
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
        title=title or module_name.rsplit(".", 1)[-1],
    )
    chart = model.get_graph().draw(None)
    # transitions 0.9.3 writes the title as bare front matter and capitalises
    # the `class` statement; mermaid wants `title:` and lower case, else
    # renderers reject the chart.
    chart = re.sub(r"\A---\n(?!title:)(.*)\n---", r"---\ntitle: \1\n---", chart, count=1)
    return re.sub(r"^(\s*)Class ", r"\1class ", chart, flags=re.MULTILINE)


def document(name: str) -> str:
    module_name, title = MACHINES[name]
    mod = importlib.import_module(module_name)
    desc = (mod.__doc__ or "").strip()
    return (
        f"# {title}\n\n"
        f"Generated from `{module_name}` by `python -m state_machines.diagrams`; do not edit by hand.\n\n"
        f"{desc}\n\n```mermaid\n{mermaid(module_name, title).strip()}\n```\n"
    )


def available() -> list[str]:
    names = []
    for name, (module_name, _) in MACHINES.items():
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in available():
        path = DOCS / f"{name}.md"
        path.write_text(document(name))
        print(f"wrote {path.relative_to(DOCS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
