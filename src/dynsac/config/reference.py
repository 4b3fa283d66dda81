"""Render the config reference (every field, its default and meaning) as Markdown.

`python -m dynsac.config.reference` prints it; `... --update docs/configs.md` rewrites that docs
page's section between the config-reference markers (a test keeps the two identical).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from dynsac.config.schema import Config


def config_reference() -> str:
    lines = []
    for section, field in Config.model_fields.items():
        model: type[BaseModel] = field.annotation  # type: ignore[assignment]
        lines += [f"**`{section}:`** {model.__doc__.strip().splitlines()[0]}", "", "| key | default | meaning |",
                  "|---|---|---|"]
        for name, info in model.model_fields.items():
            default = info.default_factory() if info.default_factory else info.default
            meaning = info.description.replace("|", "\\|")  # a bare | would end the table cell
            lines.append(f"| `{name}` | `{json.dumps(default)}` | {meaning} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def update_page(path: Path) -> None:
    """Rewrite the part of the Markdown page at `path` between the config-reference markers."""
    text = path.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + START + config_reference() + END + tail)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update_page(Path(sys.argv[2]))
    else:
        print(config_reference(), end="")
