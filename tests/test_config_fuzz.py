"""Every config field, mutated with hostile values, either trains or is refused by name.

For each field of each section (walked from the schema, so new fields are covered without
editing this file) and each hostile value, the mutation is applied to a tiny base config with
`--set` syntax. Then either the config is refused up front, with a `ConfigError` (or an
`EnvError` / `ContextError`, where the env or the context is at fault: what the CLI reports as
bad input) whose message names the mutated key, or a trainer is built and takes 20 training
steps. Nothing else may be raised, and no case may take more than a few seconds.

Values that validate to the same config are trained once (the outcome is deterministic), and the
context section is mutated on a base with a learned context, where its fields are read.
"""

from __future__ import annotations

import math
import random
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from dynsac.config import Config, ConfigError, load_config
from dynsac.context import ContextError
from dynsac.envs.factory import EnvError
from dynsac.training import SACTrainer
from dynsac.training.logger import RunLogger

SEED = 20240601
STEPS = 20
CASE_LIMIT_S = 5.0
BAD_INPUT = (ConfigError, EnvError, ContextError)

# The most hostile values: every field gets all of them (refusals cost ~0.1 ms each).
HOSTILE: list[str] = [
    "0", "-1", "-4", "1", "true", "1.5", "1000000000000", "9223372036854775808", "1e300",
    "0.0", "-1e30", "1e30", ".nan", ".inf", "-.inf", "nan", "inf",
    "[]", "[0]", "[-4]", "[256, -4]", "[1000000000000]", "[1.5]", "[abc]", "[65536]", "[65537]",
    "[" + ", ".join(["65536"] * 16) + "]", "[" + ", ".join(["8"] * 17) + "]",
    "abc", "''", "'   '", '"a\\0b"', "{a: 1}", "null", "", "x" * 10_000, "/" + "d/" * 3000,
]
# Values that only make sense for some fields; given to those fields only.
SPECIFIC: dict[str, list[str]] = {
    "env.id": ["NoSuchEnv-v0", "dynsac/NoSuch-v9", "no_such_module_xyz:Env", "os:path", "gymnasium:Env",
               "dynsac.envs:nothing", "Pendulum-v1:x", "CartPole-v1", "dynsac/RandomPendulum-v0"],
    "env.kwargs": ["{bogus_kwarg: 1}", "{g: -1e30}", "{g: .nan}", "[1, 2]"],
    "env.eval_kwargs": ["{bogus_kwarg: 1}", "[1, 2]"],
    "context.source": ["env", "learned", "none", "LEARNED"],
    "training.device": ["cuda", "tpu", "cpu", "auto", "cuda:0"],
    "training.alpha": ["auto", "0.2", "-0.1", "1e6", "1e7"],
    "training.target_entropy": ["auto", "-1e6", "1e7"],
    "training.log_std_min": ["-20", "-21", "1.999"],
    "training.log_std_max": ["20", "21", "-5"],
    "training.batch_size": ["100", "101"],
    "training.buffer_size": ["7", "1000000000000", "10000000000000"],
    "training.num_envs": ["3", "1025"],
    "training.torch_threads": ["1", "1025", "auto", "null"],
    "training.seed": ["4294967295", "4294967296"],
}
# A seeded sample of further values (ordinary and edge numbers), the same on every run.
_rng = random.Random(SEED)
SAMPLED: list[str] = [repr(_rng.choice([-1, 1]) * 10 ** _rng.uniform(-40, 40)) for _ in range(6)] + [
    str(_rng.randint(-(2**70), 2**70)) for _ in range(3)
]
# Values that are valid but slow for a reason that is the point of the field: compiling takes
# 10-30 s; 1024 envs, 1000 updates per step or 1024 threads make every step cost that much more.
# They are validated, and the trainer is built (envs, memory check), but no step is taken.
BUILD_ONLY: dict[str, Callable[[Any], bool]] = {
    "training.compile": lambda value: value is True,
    "training.num_envs": lambda value: value > 64,
    "training.updates_per_step": lambda value: value > 64,
    "training.torch_threads": lambda value: isinstance(value, int) and value > 16,
}

BASE: dict[str, str] = {
    "env.id": "Pendulum-v1",
    "training.total_steps": "20",
    "training.learning_starts": "10",
    "training.batch_size": "8",
    "training.buffer_size": "100",
    "training.hidden_sizes": "[8]",
    "training.eval_interval": "0",
    "training.eval_episodes": "1",
    "training.checkpoint_interval": "0",
    "training.device": "cpu",
    "training.torch_threads": "1",
    "logging.tensorboard": "false",
    "logging.progress": "off",
    "logging.log_interval": "1000",
    # Read only with context.source learned (the base of the context section's mutations).
    "context.dim": "2",
    "context.history_length": "3",
    "context.encoder_hidden_sizes": "[8]",
    "context.model_hidden_sizes": "[8]",
}


def boundary_values(key: str) -> list[str]:
    """Each numeric bound of the field at `key`, and the value just past it."""
    section, _, name = key.partition(".")
    if not name:
        return []
    field = Config.model_fields[section].annotation.model_fields[name]
    integer = "int" in str(field.annotation) and "float" not in str(field.annotation)
    values = []
    for rule in field.metadata:
        for attr, outward in (("ge", -math.inf), ("gt", -math.inf), ("le", math.inf), ("lt", math.inf)):
            bound = getattr(rule, attr, None)
            if bound is None:
                continue
            if integer:
                values += [str(bound), str(bound + (1 if outward > 0 else -1))]
            else:
                inward = -outward
                values += [repr(float(bound)), repr(math.nextafter(float(bound), outward)),
                           repr(math.nextafter(float(bound), inward))]
        if getattr(rule, "max_length", None) is not None:
            values += ["[" + ", ".join(["8"] * rule.max_length) + "]"]
    return values


def schema_keys() -> list[str]:
    """Every section and every field of every section, as dotted keys."""
    keys = []
    for section, info in Config.model_fields.items():
        keys.append(section)
        keys += [f"{section}.{name}" for name in info.annotation.model_fields]
    return keys


def base_overrides(key: str, tmp_path) -> dict[str, str]:
    base = {**BASE, "logging.dir": str(tmp_path / "run"), "training.checkpoint_dir": str(tmp_path / "checkpoints")}
    if key.startswith("context"):
        base["context.source"] = "learned"
    if key in Config.model_fields:  # a whole section replaced: the base's entries for it would be refused
        base = {name: value for name, value in base.items() if not name.startswith(key + ".")}
    return base


def run_case(key: str, value: str, tmp_path, trained: dict) -> str | None:
    """None when the mutation trained or was refused by name; otherwise what went wrong."""
    overrides = base_overrides(key, tmp_path)
    overrides[key] = value
    setting = [f"{name}={text}" for name, text in overrides.items()]
    start = time.monotonic()
    try:
        config = load_config(None, setting)
    except BAD_INPUT as err:
        return _in_time(key, value, start, _named(key, value, err))
    except Exception:  # noqa: BLE001 - the point of the test
        return f"{key}={value[:60]!r}: validation raised\n{traceback.format_exc(limit=4)}"
    steps = 0 if BUILD_ONLY.get(key, lambda _: False)(_get(config, key)) else STEPS
    fingerprint = config.model_dump_json()
    if fingerprint in trained:
        return trained[fingerprint]
    threads, trainer = torch.get_num_threads(), None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = SACTrainer(config)
            # train_step logs on schedule through the logger that train() would open.
            trainer.logger = RunLogger(tmp_path / "logs" / str(len(trained)), config.logging.tensorboard)
            for _ in range(steps):
                trainer.train_step()
        outcome = None
    except BAD_INPUT as err:
        outcome = _named(key, value, err)
    except Exception:  # noqa: BLE001
        outcome = f"{key}={value[:60]!r}: training raised\n{traceback.format_exc(limit=6)}"
    finally:
        torch.set_num_threads(threads)
        if trainer is not None and trainer.logger is not None:
            trainer.logger.close()
    trained[fingerprint] = _in_time(key, value, start, outcome)
    return trained[fingerprint]


def _named(key: str, value: str, err: Exception) -> str | None:
    """None when the refusal `err` names `key`."""
    message = str(err)
    if key not in message:
        return f"{key}={value[:60]!r}: {type(err).__name__} does not name {key}: {message[:400]}"
    return None


def _in_time(key: str, value: str, start: float, outcome: str | None) -> str | None:
    elapsed = time.monotonic() - start
    if elapsed > CASE_LIMIT_S:
        return f"{key}={value[:60]!r}: took {elapsed:.1f} s (limit {CASE_LIMIT_S} s); {outcome or 'trained'}"
    return outcome


def _get(config: Config, key: str):
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("section", list(Config.model_fields))
def test_hostile_values_train_or_are_refused_by_name(section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a valid relative folder lands here
    keys = [key for key in schema_keys() if key == section or key.startswith(section + ".")]
    assert len(keys) > 1
    trained: dict[str, str | None] = {}
    failures = []
    for key in keys:
        for value in [*HOSTILE, *SAMPLED, *boundary_values(key), *SPECIFIC.get(key, [])]:
            problem = run_case(key, value, tmp_path, trained)
            if problem:
                failures.append(problem)
    assert not failures, f"{len(failures)} mutation(s) neither trained nor were refused by name:\n" + "\n".join(
        failures)


# Numeric fields bounded otherwise than by an upper limit in their Field: by a validator (unions
# with 'auto'), or only by being finite (any finite value is honoured: a clipping norm, a Huber
# threshold, an early-stopping target). Every float of every section must be finite.
BOUNDED_OTHERWISE = {"training.alpha", "training.target_entropy", "training.max_grad_norm", "training.huber_delta",
                     "training.stop_at", "training.torch_threads"}  # torch_threads: its int branch carries le=1024


def test_every_numeric_field_is_bounded():
    """No count, size or float can grow without limit: each int or float field has an upper bound
    (layer lists: in length, and their entries by the layer-size validator), or is listed above."""
    unbounded = []
    for section, info in Config.model_fields.items():
        model = info.annotation
        assert model.model_config.get("allow_inf_nan") is False, f"{section}: NaN/Inf must be refused"
        for name, field in model.model_fields.items():
            annotation = str(field.annotation)
            if "int" not in annotation and "float" not in annotation:
                continue
            upper = [rule for rule in field.metadata
                     if any(getattr(rule, attr, None) is not None for attr in ("le", "lt", "max_length"))]
            if not upper and f"{section}.{name}" not in BOUNDED_OTHERWISE:
                unbounded.append(f"{section}.{name}")
    assert not unbounded, f"fields without an upper bound: {unbounded}"
