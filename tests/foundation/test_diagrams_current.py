"""State machine diagrams in docs/ are generated from the code and current."""

from state_machines.diagrams import DOCS, available, document


def test_committed_diagrams_match_the_machines():
    names = available()
    assert "connector" in names
    for name in names:
        path = DOCS / f"{name}.md"
        assert path.exists(), f"{path} missing: run python -m state_machines.diagrams"
        assert path.read_text() == document(name), f"{path} is stale: run python -m state_machines.diagrams"


def test_the_event_catalogue_in_docs_is_current():
    from edge.cloud.schemas.catalogue import DOC, render

    assert DOC.read_text() == render(), "docs/events.md is stale: run python -m edge.cloud.schemas.catalogue"
