"""Render the config reference (every field, its default and meaning) as Markdown.

`python -m dynsac.config.reference` prints it; the README's config reference is this output, and a
test keeps the two identical.
"""

from __future__ import annotations

import json

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
            lines.append(f"| `{name}` | `{json.dumps(default)}` | {info.description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
