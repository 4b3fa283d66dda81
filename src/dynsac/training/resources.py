"""The memory check made before anything large is allocated: a run that cannot fit is refused up front.

The replay buffer is preallocated when the trainer is built (every slot exists from the start),
and every network comes with its gradients, its Adam moments, the rollback snapshot and the
forensics copy (the critics also with their targets). `check_resources` estimates those bytes
from the config and the env's sizes, with the acting windows and one update's working memory,
and compares them with the memory available: host RAM (`MemAvailable`, within the cgroup's
limit), or the CUDA device's free memory for what lives on it. A run that cannot fit gets a
`ConfigError` with the numbers (bytes needed against bytes available) and the field to lower,
instead of an allocation failure or the out-of-memory killer later.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dynsac.config import Config, ConfigError

__all__ = ["MemoryPart", "check_resources", "estimate_memory", "host_memory_available", "device_memory_available"]

FLOAT = 4  # bytes of a float32 (weights, gradients and optimizer states stay fp32 under bf16 too)


@dataclass
class MemoryPart:
    """One thing the run allocates: its bytes, where they live and the fields that size it."""

    name: str
    nbytes: int
    knobs: list[str]  # fields that make it smaller, the first the main one
    detail: str = ""
    on_device: bool = True  # on the training device (host memory when it is the CPU)
    pieces: dict[str, int] = field(default_factory=dict)


def mlp_parameters(in_dim: int, hidden_sizes: list[int], out_dim: int) -> int:
    """Weights and biases of a Linear/ReLU MLP."""
    sizes = [in_dim, *hidden_sizes, out_dim]
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def network_parameters(config: Config, obs_dim: int, action_dim: int, context_dim: int) -> tuple[int, int]:
    """Parameters of the policy and of the critic ensemble `config` builds: the modules themselves,
    built on the meta device (shapes only, no memory), so every critic option is counted."""
    from dynsac.sac.agent import make_critic
    from dynsac.sac.build import build_value_head
    from dynsac.sac.networks import GaussianPolicy

    params = config.training
    head = build_value_head(config)
    with torch.device("meta"):
        policy = GaussianPolicy(obs_dim, action_dim, params.actor_layers, context_dim, network=params.network)
        critic = make_critic(obs_dim, action_dim, params.critic_layers, context_dim, network=params.network,
                             num_critics=params.num_critics, layer_norm=params.critic_layer_norm,
                             outputs=1 if head is None else head.bins, dropout=params.critic_dropout,
                             batch_renorm=params.crossq)
    return sum(p.numel() for p in policy.parameters()), sum(p.numel() for p in critic.parameters())


def _copies(config: Config) -> tuple[int, int, str]:
    """Float copies per trained parameter and per target parameter, and what they are."""
    forensics = int(config.safety.forensics)
    # value, gradient, Adam's two moments; the rollback snapshot's value and moments; forensics' copy
    trained = 4 + 3 + forensics
    target = 1 + 1 + forensics  # value; snapshot; forensics
    what = "gradients, Adam moments, rollback snapshot" + (", forensics copy" if forensics else "")
    return trained, target, what


def _actor_knob(config: Config) -> str:
    return "training.actor_hidden_sizes" if config.training.actor_hidden_sizes else "training.hidden_sizes"


def _critic_knob(config: Config) -> str:
    return "training.critic_hidden_sizes" if config.training.critic_hidden_sizes else "training.hidden_sizes"


def estimate_memory(config: Config, obs_dim: int, action_dim: int, context_dim: int) -> list[MemoryPart]:
    """What the run described by `config` allocates for an env of these sizes (`context_dim`: the
    width of the context the policy and critics read, 0 without one)."""
    params, context = config.training, config.context
    trained_copies, target_copies, copies_what = _copies(config)
    learned = context.source == "learned"
    stored_context = context_dim if context.source == "env" else 0
    parts = []

    per_slot = {
        "obs": FLOAT * obs_dim, "next_obs": FLOAT * obs_dim, "action": FLOAT * action_dim, "reward": FLOAT,
        "terminated": FLOAT, "truncated": 1, "episode_id": 8,
    }
    if stored_context:
        per_slot.update(context=FLOAT * stored_context, next_context=FLOAT * stored_context)
    capacity = params.buffer_size
    pieces = {name: capacity * size for name, size in per_slot.items()}
    parts.append(MemoryPart(
        "the replay buffer", sum(pieces.values()), ["training.buffer_size"],
        f"{capacity:,} transitions x {sum(per_slot.values())} bytes: "
        + ", ".join(f"{name} {format_bytes(size)}" for name, size in pieces.items()),
        pieces=pieces,
    ))

    actor, critic = network_parameters(config, obs_dim, action_dim, context_dim)
    parts.append(MemoryPart(
        "the policy", actor * FLOAT * trained_copies, [_actor_knob(config)],
        f"{actor:,} parameters x {trained_copies} copies (value, {copies_what})",
    ))

    target_copies = 0 if params.crossq else target_copies  # CrossQ has no target network
    parts.append(MemoryPart(
        "the critics", critic * FLOAT * (trained_copies + target_copies), [_critic_knob(config)],
        f"{params.num_critics} critics, {critic:,} parameters x {trained_copies} copies (value, {copies_what}) "
        f"+ {target_copies} of the targets",
    ))

    feature = 2 * obs_dim + action_dim  # (s, a, s' - s)
    window = context.history_length * (feature + 1)  # the flattened window and its mask
    if learned:
        encoder = mlp_parameters(window, context.encoder_hidden_sizes, context.dim)
        parts.append(MemoryPart(
            "the dynamics-map encoder", encoder * FLOAT * trained_copies,
            ["context.encoder_hidden_sizes", "context.history_length"],
            f"{encoder:,} parameters x {trained_copies} copies; its input is context.history_length x "
            f"(2 obs + action + 1) = {context.history_length:,} x {feature + 1} = {window:,} wide",
        ))
        predictors = 2 * mlp_parameters(obs_dim + action_dim + context.dim, context.model_hidden_sizes, obs_dim)
        parts.append(MemoryPart(
            "the dynamics predictors", predictors * FLOAT * trained_copies, ["context.model_hidden_sizes"],
            f"forward and backward, {predictors:,} parameters x {trained_copies} copies",
        ))
        acting = (params.num_envs + 1) * window * FLOAT  # one window per training env, one for evaluation
        parts.append(MemoryPart(
            "the acting windows", acting, ["context.history_length", "training.num_envs"],
            f"{params.num_envs + 1} windows of {window:,} floats", on_device=False,
        ))

    parts.append(_update_memory(config, obs_dim, action_dim, context_dim, stored_context, feature, window))
    return parts


def _update_memory(config: Config, obs_dim: int, action_dim: int, context_dim: int, stored_context: int,
                   feature: int, window: int) -> MemoryPart:
    """One update's working memory: the sampled batch, the gathered windows, the activations and
    their gradients (an estimate: a few passes of each network over the batch)."""
    params, context = config.training, config.context
    batch = params.batch_size
    floats = batch * (2 * obs_dim + action_dim + 3 + 2 * stored_context)
    actor_width = obs_dim + context_dim + sum(params.actor_layers) + 2 * action_dim
    outputs = params.critic_bins if params.critic_loss in ("hl_gauss", "two_hot") else 1
    widening = 6 if params.network == "simba" else 1  # a SimBa block: its width, 4x inside, its LayerNorm
    critic_width = obs_dim + action_dim + context_dim + widening * sum(params.critic_layers) + outputs
    floats += batch * 2 * 2 * widening * actor_width  # s and s', value and gradient
    floats += batch * 3 * params.num_critics * 2 * critic_width  # Q(s, a), Q(s', a'), Q(s, pi(s))
    knobs, detail = ["training.batch_size"], f"{batch:,} transitions"
    if context.source == "learned":
        steps = context.history_length + 1  # the windows before s and before s', gathered together
        gathered = batch * steps * (feature + 1) * 6  # obs, action, next_obs, features, normalised, masked
        floats += gathered + batch * steps * 5  # slot indices (int64) and masks
        model_width = obs_dim + action_dim + context.dim + sum(context.model_hidden_sizes) + obs_dim
        floats += batch * 2 * 2 * (window + sum(context.encoder_hidden_sizes) + context.dim)
        floats += batch * 2 * 2 * model_width
        knobs.append("context.history_length")
        detail += f" with windows of {steps:,} transitions"
    return MemoryPart("one update's working memory", floats * FLOAT, knobs, detail)


# ----------------------------------------------------------------------------- memory available
def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_memory_available() -> tuple[int, str] | None:
    """Bytes of host memory this process can still allocate, and where the number comes from:
    `MemAvailable` of /proc/meminfo (or free pages from sysconf), lowered to what the cgroup's
    memory limit leaves. None where no number is to be had."""
    found: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
                break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages (sysconf)"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            found.append((max(limit - usage, 0), f"the cgroup's memory limit ({limit_file})"))
            break
    return min(found) if found else None


def device_memory_available() -> tuple[int, str] | None:
    """Free bytes of the current CUDA device (`torch.cuda.mem_get_info`)."""
    try:
        free, _total = torch.cuda.mem_get_info()
    except (RuntimeError, AssertionError, AttributeError):
        return None
    return int(free), f"free memory of CUDA device {torch.cuda.current_device()}"


def _uses_cuda(config: Config) -> bool:
    return config.training.device != "cpu" and torch.cuda.is_available()


# ----------------------------------------------------------------------------- the check
def check_resources(config: Config, obs_dim: int, action_dim: int, context_dim: int) -> None:
    """Refuse, with a `ConfigError` naming the field to lower, a run whose preallocated replay
    buffer, networks, optimizer states and working memory exceed the memory available."""
    cuda = _uses_cuda(config)
    pools: list[tuple[bool, Callable[[], tuple[int, str] | None], str]] = [(False, host_memory_available, "host")]
    if cuda:
        pools.insert(0, (True, device_memory_available, "CUDA device"))
    for on_device, available_fn, pool in pools:
        def needed(candidate: Config, on_device: bool = on_device) -> list[MemoryPart]:
            parts = estimate_memory(candidate, obs_dim, action_dim, context_dim)
            return [part for part in parts if part.on_device == on_device or not cuda]

        parts = needed(config)
        total = sum(part.nbytes for part in parts)
        available = available_fn()
        if available is None or total <= available[0]:
            continue
        raise ConfigError(_explain(config, parts, total, available, pool, needed))


def _explain(config: Config, parts: list[MemoryPart], total: int, available: tuple[int, str], pool: str,
             needed: Callable[[Config], list[MemoryPart]]) -> str:
    free, source = available
    largest = max(parts, key=lambda part: part.nbytes)
    knob = largest.knobs[0]
    others = "; ".join(f"{part.name} {format_bytes(part.nbytes)}" for part in parts if part is not largest)
    advice = knob
    if knob in _SIZES:
        most = _largest_that_fits(config, knob, free, needed)
        advice += f" (at most ~{most:,} here)" if most else f" (even {knob} = 1 does not fit: lower the rest first)"
    for other in largest.knobs[1:]:
        if other not in _SIZES:
            advice += f" or {other}"
        elif most := _largest_that_fits(config, other, free, needed):
            advice += f" or {other} (at most ~{most:,} here)"
    return (
        f"{knob} = {_value(config, knob)}: {largest.name} would take {format_bytes(largest.nbytes)} "
        f"({largest.detail}); with the rest ({others}) the run needs {format_bytes(total)} ({total:,} bytes) of "
        f"{pool} memory, but {format_bytes(free)} ({free:,} bytes) are available ({source}); lower {advice}"
    )


def _with(config: Config, key: str, value: Any) -> Config:
    section, name = key.split(".")
    updated = getattr(config, section).model_copy(update={name: value})
    return config.model_copy(update={section: updated})


# Integer fields (smallest value 1) whose largest value that fits is worth computing.
_SIZES = ("training.buffer_size", "training.batch_size", "context.history_length")


def _largest_that_fits(config: Config, key: str, free: int, needed: Callable[[Config], list[MemoryPart]]) -> int:
    """The largest value of integer field `key` with which the run fits in `free` bytes (0: none)."""
    def fits(value: int) -> bool:
        return sum(part.nbytes for part in needed(_with(config, key, value))) <= free

    if not fits(1):
        return 0
    low, high = 1, int(_value(config, key))  # fits(low); the current value does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _value(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def format_bytes(count: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"
