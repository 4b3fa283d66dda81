"""Typed, validated configuration loaded from YAML with `--set a.b=v` overrides."""

from dynsac.config.loader import ConfigError, apply_override, load_config, validate_config
from dynsac.config.schema import (
    Config,
    ContextConfig,
    EnvConfig,
    LoggingConfig,
    SafetyConfig,
    TrainingParams,
)

__all__ = [
    "Config",
    "ConfigError",
    "ContextConfig",
    "EnvConfig",
    "LoggingConfig",
    "SafetyConfig",
    "TrainingParams",
    "apply_override",
    "load_config",
    "validate_config",
]
