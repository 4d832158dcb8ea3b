"""docs/events.md, generated from the event schemas: every event type the hub
sends, by stream, with what it means. `python -m edge.cloud.schemas.catalogue`
rewrites it; a test fails when it is stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[2] / "docs" / "events.md"


def render() -> str:
    rows: dict[str, list[tuple[str, str, list[str]]]] = {}
    for path in sorted((HERE / "events").glob("*.json")):
        schema = json.loads(path.read_text())
        type_ = path.stem
        stream = "device" if type_ == "alarm" else type_.split(".", 1)[0]
        title = schema.get("title", "").removeprefix(f"{type_} data").strip(" :-") or schema.get("description", "")
        rows.setdefault(stream, []).append((type_, title, list(schema.get("required", []))))
    lines = [
        "# Events the hub sends",
        "",
        "Generated from `edge/cloud/schemas/events/` by `python -m edge.cloud.schemas.catalogue`; do not edit by hand.",
        "Every event travels in the envelope of [cloud-contract.md](cloud-contract.md) (`{v, id, hub, stream, seq, ts, type, offline, data}`)",
        "on `hub/{id}/event/{stream}`; `data` follows the schema named here.",
        "",
    ]
    for stream in sorted(rows):
        lines += [f"## stream `{stream}`", "", "| type | meaning | required data |", "|---|---|---|"]
        for type_, title, required in rows[stream]:
            lines.append(f"| `{type_}` | {title or '—'} | {', '.join(f'`{r}`' for r in required) or '—'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    DOC.write_text(render())
    print(f"wrote {DOC.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
