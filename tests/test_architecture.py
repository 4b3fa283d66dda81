"""The design's shape holds: layers import one way, functions stay short, the loop stays small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dynsac"
LAYERS = ["config", "envs", "context", "sac", "safety", "training", "export", "cli"]
BESIDE = {"nn", "events", "version"}  # shared modules with no dynsac imports of a layer after them


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dynsac" else None


def _dynsac_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("dynsac")}


def test_layers_import_only_the_layers_before_them():
    backwards = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        if own not in LAYERS and own not in BESIDE:
            continue
        for module in _dynsac_imports(path):
            target = _layer(module)
            if module == "dynsac":
                backwards.append(f"{relative} imports the package's __init__")
            elif own in BESIDE and target in LAYERS and own != "events":
                backwards.append(f"{relative} imports {module}")
            elif own in LAYERS and target in LAYERS and LAYERS.index(target) > LAYERS.index(own):
                backwards.append(f"{relative} imports {module} (a later layer)")
    assert not backwards, "\n".join(backwards)


def test_no_function_is_long_and_the_trainer_is_small():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 70:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long, long
    trainer = PACKAGE / "training" / "trainer.py"
    assert len(trainer.read_text().splitlines()) < 400
    (cls,) = [n for n in ast.parse(trainer.read_text()).body if isinstance(n, ast.ClassDef) and n.name == "SACTrainer"]
    assert sum(isinstance(n, ast.FunctionDef) for n in cls.body) <= 25
