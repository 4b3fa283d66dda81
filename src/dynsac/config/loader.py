"""Load a YAML config, apply `--set a.b=v` overrides, validate, and explain every mistake."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dynsac.config.schema import Config


class ConfigError(ValueError):
    """A config that cannot be used; the message names every problem and what would be valid."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars, as users expect: `1e6` and `3e-4` are floats, and only
    true/false are booleans (`off`, `no`, `on` stay strings)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_config(path: str | Path | Sequence[str | Path] | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read `path` (YAML; a list of files: each merged over the ones before, section by section and
    key by key), apply `key.path=value` overrides in order, and validate."""
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    raw: dict[str, Any] = {}
    for each in paths:
        raw = merge_sections(raw, read_yaml(Path(each)))
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, source=" + ".join(str(each) for each in paths) or "<defaults>")


def merge_sections(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`: mappings key by key, anything else replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in the nested dict `raw`; the value is parsed as a YAML scalar."""
    key_path, sep, text = override.partition("=")
    keys = key_path.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"--set {override!r}: expected KEY.PATH=VALUE, e.g. training.learning_rate=1e-5")
    try:
        value = parse_yaml(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML: {err}") from None
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"--set {override!r}: {where} holds {child!r}, not a mapping")
        node = child
    node[keys[-1]] = value


def validate_config(raw: Mapping[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = [_describe(error) for error in err.errors()]
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(f"  - {p}" for p in problems)) from None


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key{_did_you_mean(loc)}"
    message = error["msg"].removeprefix("Value error, ")
    allowed = _allowed_range(loc)
    if allowed and error["type"] in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        message = f"out of range; allowed: {allowed}"
    if isinstance(error.get("input"), Mapping):
        return f"{path}: {message}"
    shown = repr(error.get("input"))
    if len(shown) > 200:  # a pasted blob: enough to recognise it
        shown = f"{shown[:120]}... ({len(shown):,} characters)"
    return f"{path} = {shown}: {message}"


def _allowed_range(loc: tuple[Any, ...]) -> str:
    """Render a field's numeric bounds, e.g. '0 < value <= 1'."""
    field = _field_info(loc)
    if field is None:
        return ""
    low = high = ""
    for rule in field.metadata:
        if getattr(rule, "gt", None) is not None:
            low = f"{rule.gt} < "
        if getattr(rule, "ge", None) is not None:
            low = f"{rule.ge} <= "
        if getattr(rule, "lt", None) is not None:
            high = f" < {rule.lt}"
        if getattr(rule, "le", None) is not None:
            high = f" <= {rule.le}"
    return f"{low}value{high}" if low or high else ""


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """Suggest the closest field name of the section the unknown key sits in."""
    section = _section_model(loc[:-1])
    if section is None:
        return ""
    valid = sorted(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (valid keys here: {', '.join(valid)})"


def _section_model(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class at a path of section names (() is the whole Config)."""
    model: Any = Config
    for part in path:
        field = model.model_fields.get(str(part))
        model = getattr(field, "annotation", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model


def _field_info(loc: tuple[Any, ...]) -> Any:
    section = _section_model(loc[:-1]) if loc else None
    return None if section is None else section.model_fields.get(str(loc[-1]))
