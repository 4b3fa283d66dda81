"""Throughput of dynsac's SAC against Stable-Baselines3's SAC: updates/s, env steps/s, GFLOP/s, memory.

Everything runs in ONE process on the same machine, with the variants interleaved in every
repetition (rep 1: dynsac-noguard, dynsac, sb3, learned; rep 2 reversed; ...) so that a change of
machine load hits all of them alike. Rates are medians over `--reps` repetitions; ratios are
medians of the per-repetition ratios (timings seconds apart, so slow drifts of the machine's speed
cancel).

1. updates/s with a filled replay buffer (`--fill` random transitions; M updates timed after
   `--warmup` warm-up updates, M chosen from a short probe so that one timing lasts ~`--seconds`,
   or fixed with `--updates`), for each hidden size h ([h, h] for the policy and both critics) and
   batch size B of the grid:
   - dynsac        `trainer.update()`: buffer sample + safety snapshot + forensics pre-update copy
                   + `agent.update` (non-finite gradient checks on) + the all-finite scan of every
                   state tensor when due (after a suspect gradient, before a snapshot, every
                   `safety.state_check_interval` updates) + metric accumulation: what a real run
                   does per update.
   - dynsac-noguard buffer sample + `agent.update` with `skip_nonfinite_gradients = False` + metric
                   accumulation: the same minus the guards (no snapshot, no forensics copy, no
                   all-finite scan, no skipping; the gradient norms, needed for clipping and the
                   metrics, are computed alike). Sampling is included in both, so
                   guard overhead = time(dynsac) / time(dynsac-noguard) - 1.
   - learned       `trainer.update()` with `context.source=learned` (the dynamics map, K =
                   `context.history_length`, default 10) on `dynsac/RandomPendulum-v0`, which has
                   Pendulum's shapes (obs 3, action 1); its cost ratio is time(learned) / time(dynsac).
   - sb3           `model.train(gradient_steps=M, batch_size=B)` of SB3's SAC built with the same
                   hyperparameters (net_arch [h, h], 2 critics, same batch, lr, tau, gamma, auto
                   entropy), its buffer filled by `model.learn(fill)` with `learning_starts = fill`
                   (random actions, no update). Per gradient step SB3 samples, does the alpha,
                   critic and actor steps, 4 `.item()` host syncs and a Polyak update; per call it
                   also updates learning rates and records 4-5 logger values (amortised over M).
   - dynsac-bf16   (`--bf16`) `trainer.update()` of the dynsac trainer with `training.precision: bf16`
                   (bfloat16 autocast forward passes): an option that changes the numerics, so
                   it is reported beside the targets, not in them.
   - dynsac-compile, learned-compile   (`--compile`) the same trainers with `training.compile: true`
                   (torch.compile of the update's arithmetic; the first call compiles, before the
                   timings), beside the targets too: an option.
   dynsac and plain SB3 run on Pendulum-v1. Both buffers have capacity = `--fill`.
2. env steps/s of the training loop (collect one step + one update per step, after the fill):
   dynsac the inner loop of `SACTrainer.train()` (collect_step, update, `_log_training` every
   `logging.log_interval` steps into a temporary run folder, TensorBoard as configured; no
   evaluation, no checkpoints) vs SB3 `model.learn(K, reset_num_timesteps=False)` (its default
   logging; no evaluation either). At [256, 256] batch 256 only, or every cell with `--loop-all`.
3. GFLOP/s: `sac_update_flops` counts the matmul FLOPs of one update (the same count for both
   libraries: they do the same math); achieved GFLOP/s = FLOPs x updates/s, against the measured
   fp32 rate of `torch.mm` at (B, h) x (h, h) with the same threads ("ceiling").
4. Memory (`--memory`, on by default), each in a fresh subprocess: resident memory of a replay
   buffer of `--memory-capacity` (1,000,000) transitions with HalfCheetah's shapes (obs 17, action
   6), completely filled, against the raw float32 bytes of the transitions; SB3's ReplayBuffer
   alongside for comparison.

    PYTHONPATH=src python benchmarks/throughput.py                              # the full grid (~10 min on 2 cores)
    PYTHONPATH=src python benchmarks/throughput.py --hidden 256 --batches 256   # one cell
    PYTHONPATH=src python benchmarks/throughput.py --hidden 32 --batches 32 --reps 1 --seconds 0.1 \\
        --fill 500 --skip-loop --memory-capacity 1000                          # smoke test

Run it on a quiet machine: the load average is recorded at the start and the end, and a warning is
printed when the machine was busy. The SB3 side needs `pip install -e '.[bench]'` (or `--libs
dynsac,learned`).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO_ROOT, git_revision, require_sb3, write_json

DEFAULT_CONFIG = REPO_ROOT / "configs" / "pendulum.yaml"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "throughput.json"
ENV_ID = "Pendulum-v1"
LEARNED_ENV_ID = "dynsac/RandomPendulum-v0"
LIBS = ("dynsac", "learned", "sb3")
# Interleaving order (odd reps reversed): dynsac sits next to each variant it is compared with,
# except learned, one timing further away.
VARIANT_ORDER = ("dynsac-bf16", "dynsac-compile", "dynsac-noguard", "dynsac", "sb3", "learned", "learned-compile")
# Options timed on the same trainer as their baseline: (variant, baseline, agent attribute, value).
OPTION_VARIANTS = (
    ("dynsac-bf16", "dynsac", "precision", "bf16"),  # training.precision: bf16
    ("dynsac-compile", "dynsac", "compile_update", True),  # training.compile: true
    ("learned-compile", "learned", "compile_update", True),
)
LOOP_VARIANTS = ("dynsac", "sb3", "learned")
DEFAULT_CELL = (256, 256)  # (hidden, batch) of the loop benchmark and of most targets
MEMORY_OBS_DIM, MEMORY_ACTION_DIM = 17, 6  # HalfCheetah


# ----------------------------------------------------------------------------- command line
def _int_list(text: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{what} {text!r}: expected comma-separated integers")
    if not values or any(v < 1 for v in values):
        parser.error(f"{what}: give at least one value, each >= 1")
    return list(dict.fromkeys(values))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SAC updates/s, env steps/s, GFLOP/s and replay memory: dynsac vs SB3.")
    parser.add_argument("--hidden", default="64,256,1024", help="hidden sizes h, two layers [h, h] (default 64,256,1024)")
    parser.add_argument("--batches", default="64,256,1024", help="batch sizes (default 64,256,1024)")
    parser.add_argument("--libs", default=",".join(LIBS),
                        help="comma-separated: dynsac (with its no-guard variant), learned, sb3 (default all)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions; medians are reported (default 5)")
    parser.add_argument("--seconds", type=float, default=2.0, help="target duration of one timing (default 2)")
    parser.add_argument("--updates", type=int, default=None, help="fixed updates per timing (default: from a probe)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates (loop: steps) before each timing (default 3)")
    parser.add_argument("--fill", type=int, default=10_000, help="random transitions in the buffer (default 10000)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both libraries (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both libraries train (default cpu, the reference; cuda: each timing ends with "
                             "a device synchronize)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="dynsac config both libraries are built from")
    parser.add_argument("--bf16", action="store_true",
                        help="also time dynsac with training.precision=bf16 (an option that changes the numerics)")
    parser.add_argument("--compile", action="store_true",
                        help="also time dynsac (and learned) with training.compile=true (torch.compile of the update)")
    parser.add_argument("--skip-loop", action="store_true", help="skip the env-steps/s training-loop benchmark")
    parser.add_argument("--loop-all", action="store_true", help="run the loop benchmark at every cell, not only [256,256] b256")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the replay buffer's memory in a subprocess (default on)")
    parser.add_argument("--memory-capacity", type=int, default=1_000_000, help="transitions of the memory test (default 1e6)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default benchmarks/results/throughput.json)")
    parser.add_argument("--memory-child", choices=("dynsac", "sb3"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        return args
    args.hidden = _int_list(args.hidden, "--hidden", parser)
    args.batches = _int_list(args.batches, "--batches", parser)
    libs = [lib.strip().lower() for lib in args.libs.split(",") if lib.strip()]
    unknown = [lib for lib in libs if lib not in LIBS]
    if unknown or not libs:
        parser.error(f"--libs: unknown {unknown}; choose from {', '.join(LIBS)}")
    args.libs = [lib for lib in LIBS if lib in libs]
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    if args.updates is not None and args.updates < 1:
        parser.error("--updates must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.fill < max(args.batches):
        parser.error(f"--fill ({args.fill}) must be at least the largest batch ({max(args.batches)})")
    if args.memory_capacity < 1:
        parser.error("--memory-capacity must be >= 1")
    return args


# ----------------------------------------------------------------------------- FLOPs and the ceiling
def mlp_flops(batch: int, sizes: list[int]) -> tuple[int, int]:
    """Forward matmul FLOPs of an MLP with layer widths `sizes` (input first) on `batch` rows, and
    the first layer's share."""
    terms = [2 * batch * fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    return sum(terms), terms[0]


def sac_update_flops(obs_dim: int, action_dim: int, hidden: list[int], batch: int, num_critics: int = 2) -> dict[str, int]:
    """Matmul FLOPs of one SAC update (plain SAC, no context), the same for dynsac and SB3.

    An MLP with widths d0 -> d1 -> ... -> dL costs F = sum_i 2 B d_{i-1} d_i forward (one
    multiply-add = 2 FLOPs). Backward: the weight gradients cost F again, the input gradients F
    minus the first layer's term L1 when the network's input needs no gradient. Biases,
    activations, the tanh-Gaussian, losses, Adam and the Polyak update are elementwise
    (O(parameters + B x width)) and not counted.

    Policy P: obs -> h -> h -> 2 x action (mean and log-std); critic Q: obs + action -> h -> h -> 1,
    `num_critics` (2) of them. One update, in SB3's order:

        policy forward on s (with grad)                               F_P
        alpha step                                                    ~0
        policy forward on s' (no grad)                                F_P
        target critics on (s', a')                                    2 F_Q
        critics on (s, a)                                             2 F_Q
        critic backward: weights + inputs of layers >= 2              2 (2 F_Q - Q_1)
        critics on (s, a~pi(s))                                       2 F_Q
        actor backward through the critics: input gradients only,
          first layer included (the action needs its gradient)        2 F_Q
        policy backward: weights + inputs of layers >= 2              2 F_P - P_1
        total = 4 F_P - P_1 + 12 F_Q - 2 Q_1   (num_critics = 2)

    SB3 also computes the critics' weight gradients in the actor backward (its critic parameters
    require grad; they are zeroed before the next critic step): `sb3_extra` = 2 F_Q of work that
    the algorithm does not need. dynsac skips it (`detach_params`). Achieved GFLOP/s of both
    libraries are computed on `total`, the useful work.
    """
    f_p, p_1 = mlp_flops(batch, [obs_dim, *hidden, 2 * action_dim])
    f_q, q_1 = mlp_flops(batch, [obs_dim + action_dim, *hidden, 1])
    n = num_critics
    parts = {
        "policy_forward_s": f_p,
        "policy_forward_next_s": f_p,
        "target_critics_forward": n * f_q,
        "critics_forward": n * f_q,
        "critics_backward": n * (2 * f_q - q_1),
        "critics_forward_actor_loss": n * f_q,
        "actor_backward_through_critics": n * f_q,
        "policy_backward": 2 * f_p - p_1,
    }
    return {"total": sum(parts.values()), "sb3_extra": n * f_q, "parts": parts}


def matmul_ceiling(batch: int, hidden: int, seconds: float, samples: int = 3, device: str = "cpu") -> dict[str, Any]:
    """Measured fp32 GFLOP/s of torch.mm (batch, hidden) x (hidden, hidden): median of `samples`."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a, w = torch.randn(batch, hidden, device=device), torch.randn(hidden, hidden, device=device)
    out = torch.empty(batch, hidden, device=device)
    for _ in range(3):
        torch.mm(a, w, out=out)
    sync()
    start, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start < min(0.05, seconds / samples / 4):
        torch.mm(a, w, out=out)
        n += 1
    sync()
    per_call = (time.perf_counter() - start) / n
    calls = max(3, int(seconds / samples / per_call))
    rates = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, w, out=out)
        sync()
        rates.append(2.0 * batch * hidden * hidden * calls / (time.perf_counter() - start) / 1e9)
    return {"gflops": statistics.median(rates), "samples": rates, "calls_per_sample": calls, "shape": [batch, hidden, hidden]}


# ----------------------------------------------------------------------------- building the variants
# Settings of newer dynsac versions that change the algorithm or the numerics: pinned to standard
# SAC in fp32 when the installed dynsac has them.
_PINNED_IF_PRESENT = {"policy_delay": 1, "precision": "fp32"}


def dynsac_config(args: argparse.Namespace, hidden: int, batch: int, log_dir: Path, learned: bool):
    from dynsac.config import TrainingParams, load_config

    overrides = [
        f"training.hidden_sizes=[{hidden},{hidden}]",
        f"training.batch_size={batch}",
        f"training.buffer_size={args.fill}",
        f"training.learning_starts={args.fill}",
        "training.updates_per_step=1",
        f"training.seed={args.seed}",
        f"training.torch_threads={args.threads}",
        f"training.device={args.device}",
        "training.eval_interval=0",
        "training.checkpoint_interval=0",
        f"logging.dir={log_dir}",
        "logging.progress=off",
        # The same math as SB3's SAC whatever the config file says (and what the FLOP count assumes).
        "training.actor_hidden_sizes=null",
        "training.critic_hidden_sizes=null",
        "training.critic_layer_norm=false",
        "training.max_grad_norm=null",
    ]
    overrides += [f"training.{key}={value}" for key, value in _PINNED_IF_PRESENT.items()
                  if key in TrainingParams.model_fields]
    if learned:
        overrides += [f"env.id={LEARNED_ENV_ID}", "context.source=learned"]
    else:
        overrides += [f"env.id={ENV_ID}", "context.source=none"]
    return load_config(args.config, overrides)


def shared_hyperparameters(config) -> dict[str, Any]:
    t = config.training
    return {
        "learning_rate": t.learning_rate, "gamma": t.gamma, "tau": t.tau, "alpha": t.alpha, "init_alpha": t.init_alpha,
        "target_entropy": t.target_entropy, "updates_per_step": t.updates_per_step, "max_grad_norm": t.max_grad_norm,
        "reward_normalization": config.safety.reward_normalization, "forensics": config.safety.forensics,
        "skip_nonfinite_gradients": config.safety.skip_nonfinite_gradients,
        "snapshot_interval": config.safety.snapshot_interval, "log_interval": config.logging.log_interval,
        "tensorboard": config.logging.tensorboard, "context_history_length": config.context.history_length,
        "context_dim": config.context.dim,
        **{key: getattr(t, key) for key in _PINNED_IF_PRESENT if hasattr(t, key)},
    }


class Variant:
    """One thing to time: `run(n)` does n updates (or n env steps for a loop variant)."""

    def __init__(self, name: str, run: Callable[[int], None], close: Callable[[], None] = lambda: None,
                 after: Callable[[], None] = lambda: None) -> None:
        self.name, self.run, self.close, self.after = name, run, close, after


def fill_dynsac(trainer, fill: int) -> None:
    while trainer.step < fill:  # learning_starts = fill: uniformly random actions
        trainer.collect_step()


def build_dynsac(args: argparse.Namespace, hidden: int, batch: int, log_dir: Path, learned: bool) -> Any:
    from dynsac.training import SACTrainer

    trainer = SACTrainer(dynsac_config(args, hidden, batch, log_dir, learned))
    fill_dynsac(trainer, args.fill)
    return trainer


def trainer_variant(name: str, trainer) -> Variant:
    def run(n: int) -> None:
        update = trainer.update
        for _ in range(n):
            update()

    return Variant(name, run, after=trainer.metrics.pop_means)  # the logger's read, outside the timing


def noguard_variant(trainer) -> Variant:
    """trainer.update() without the guards: same sampling, same agent, same metric accumulation."""
    agent, buffer, metrics = trainer.agent, trainer.buffer, trainer.metrics
    batch_size = trainer.config.training.batch_size
    context = trainer.config.context
    history = context.history_length if context.source == "learned" else 0

    def run(n: int) -> None:
        saved = agent.settings
        agent.configure(dataclasses.replace(saved, skip_nonfinite_gradients=False))
        try:
            for _ in range(n):
                metrics.add(agent.update(buffer.sample(batch_size, history)))
        finally:
            agent.configure(saved)

    return Variant("dynsac-noguard", run, after=metrics.pop_means)


def option_variant(name: str, trainer, attribute: str, value: Any) -> Variant:
    """trainer.update() with the agent's setting `attribute` set to `value` (`precision` "bf16":
    bf16 products; `compile_update`: torch.compile of the update), on the same
    trainer as its baseline: same weights, same buffer."""
    agent = trainer.agent

    def run(n: int) -> None:
        saved = agent.settings
        agent.configure(dataclasses.replace(saved, **{attribute: value}))
        try:
            for _ in range(n):
                trainer.update()
        finally:
            agent.configure(saved)

    return Variant(name, run, after=trainer.metrics.pop_means)


def dynsac_loop_variant(name: str, trainer, log_dir: Path) -> Variant:
    """The inner loop of SACTrainer.train(), without evaluation and checkpoints."""
    from dynsac.training.logger import RunLogger

    trainer.logger = RunLogger(log_dir, trainer.config.logging.tensorboard)
    trainer._log_clock = (time.monotonic(), trainer.step, trainer.num_updates)  # what train() sets

    def run(n: int) -> None:
        for _ in range(n):
            trainer.train_step()

    def close() -> None:
        trainer.logger.close()
        trainer.logger = None

    return Variant(name, run, close)


def build_sb3(args: argparse.Namespace, config) -> Any:
    import gymnasium as gym
    from stable_baselines3 import SAC

    t = config.training
    ent_coef: str | float = f"auto_{t.init_alpha}" if t.alpha == "auto" else float(t.alpha)
    target_entropy: str | float = "auto" if t.target_entropy == "auto" else float(t.target_entropy)
    model = SAC(
        "MlpPolicy", gym.make(ENV_ID), learning_rate=t.learning_rate, buffer_size=args.fill,
        learning_starts=args.fill, batch_size=t.batch_size, tau=t.tau, gamma=t.gamma, train_freq=1,
        gradient_steps=t.updates_per_step, ent_coef=ent_coef, target_entropy=target_entropy,
        policy_kwargs=dict(net_arch=list(t.hidden_sizes)), seed=args.seed, device=args.device, verbose=0,
    )
    model.learn(total_timesteps=args.fill)  # random actions, no gradient step (num_timesteps == learning_starts)
    return model


def sb3_variant(model, batch: int) -> Variant:
    return Variant("sb3", lambda n: model.train(gradient_steps=n, batch_size=batch))


def sb3_loop_variant(model) -> Variant:
    return Variant("sb3", lambda n: model.learn(total_timesteps=n, reset_num_timesteps=False))


def synced(variant: Variant, device: str) -> Variant:
    """On a GPU, the variant's run waits for the device, so that a timing covers the work queued."""
    if device != "cuda":
        return variant
    import torch

    def run(n: int) -> None:
        variant.run(n)
        torch.cuda.synchronize()

    return Variant(variant.name, run, variant.close, variant.after)


# ----------------------------------------------------------------------------- timing
def timed(variant: Variant, n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    variant.run(n)
    elapsed = time.perf_counter() - start
    variant.after()
    return elapsed


def choose_count(variant: Variant, seconds: float, fixed: int | None, warmup: int, minimum: int) -> tuple[int, float]:
    """Units per timing so that one timing lasts ~`seconds` (or `fixed`), from a short probe."""
    if warmup:
        variant.run(warmup)
        variant.after()
    probe_n = 1
    elapsed = timed(variant, probe_n)
    while elapsed < min(0.1 * seconds, 0.5) and probe_n < 1_000_000:
        probe_n = max(probe_n * 2, int(probe_n * min(0.1 * seconds, 0.5) / max(elapsed, 1e-6)) + 1)
        elapsed = timed(variant, probe_n)
    per_unit = elapsed / probe_n
    count = fixed if fixed is not None else max(minimum, int(round(seconds / per_unit)))
    return count, per_unit


def interleaved(variants: dict[str, Variant], counts: dict[str, int], reps: int, warmup: int,
                label: str, unit: str) -> dict[str, list[dict[str, float]]]:
    """`reps` timings of each variant, interleaved, odd repetitions in reverse order."""
    import torch

    threads = torch.get_num_threads()
    raw: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for rep in range(reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            variant = variants[name]
            if warmup:
                variant.run(warmup)
                variant.after()
            if torch.get_num_threads() != threads:  # a library changed it: restore, and say so
                print(f"  warning: {name} changed torch threads to {torch.get_num_threads()}; restored", flush=True)
                torch.set_num_threads(threads)
            seconds = timed(variant, counts[name])
            rate = counts[name] / seconds
            raw[name].append({"rep": rep, unit: counts[name], "seconds": seconds, f"{unit}_per_s": rate})
            print(f"  {label} rep {rep + 1}/{reps} {name:<15} {rate:10.1f} {unit}/s ({counts[name]} in {seconds:.2f}s)",
                  flush=True)
    return raw


def medians(raw: dict[str, list[dict[str, float]]], key: str) -> dict[str, float]:
    return {name: statistics.median(r[key] for r in runs) for name, runs in raw.items() if runs}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _minus_one(value: float | None) -> float | None:
    return None if value is None else value - 1.0


def paired_ratio(raw: dict[str, list[dict[str, float]]], a: str, b: str, key: str) -> float | None:
    """Median over repetitions of a's rate over b's in the same repetition. The two timings are
    seconds apart, so a drift of the machine's speed over minutes (+-20% on this VM) cancels,
    which a ratio of the two medians does not do."""
    if not raw.get(a) or not raw.get(b):
        return None
    ratios = [run_a[key] / run_b[key] for run_a, run_b in zip(raw[a], raw[b]) if run_b[key]]
    return statistics.median(ratios) if ratios else None


# ----------------------------------------------------------------------------- one cell of the grid
def run_cell(args: argparse.Namespace, hidden: int, batch: int, tmp: Path, run_loop: bool) -> dict[str, Any]:
    import torch

    cell_dir = tmp / f"h{hidden}_b{batch}"
    print(f"\n== hidden [{hidden}, {hidden}], batch {batch}: filling buffers with {args.fill:,} random transitions",
          flush=True)
    if args.compile:
        # Each cell compiles its own shapes. Without this, the grid's cells add up past torch's
        # recompile limit (8 per function), beyond which the "compiled" variants run uncompiled.
        torch.compiler.reset()
    trainers: dict[str, Any] = {}
    variants: dict[str, Variant] = {}
    model = None
    build_s: dict[str, float] = {}
    options = {name: (base, attribute, value) for name, base, attribute, value in OPTION_VARIANTS
               if (args.bf16 if attribute == "precision" else args.compile)}
    for name in ("dynsac", "dynsac-noguard", "learned", "sb3"):  # noguard and the options reuse their baseline's trainer
        start = time.perf_counter()
        if name == "dynsac" and "dynsac" in args.libs:
            trainers["dynsac"] = build_dynsac(args, hidden, batch, cell_dir / "dynsac", learned=False)
            variants["dynsac"] = trainer_variant("dynsac", trainers["dynsac"])
        elif name == "dynsac-noguard" and "dynsac" in args.libs:
            variants["dynsac-noguard"] = noguard_variant(trainers["dynsac"])
        elif name == "learned" and "learned" in args.libs:
            trainers["learned"] = build_dynsac(args, hidden, batch, cell_dir / "learned", learned=True)
            variants["learned"] = trainer_variant("learned", trainers["learned"])
        elif name == "sb3" and "sb3" in args.libs:
            reference = dynsac_config(args, hidden, batch, cell_dir / "unused", learned=False)
            model = build_sb3(args, reference)
            torch.set_num_threads(args.threads)
            variants["sb3"] = sb3_variant(model, batch)
        build_s[name] = time.perf_counter() - start
    for name, (base, attribute, value) in options.items():
        if base in trainers:
            variants[name] = option_variant(name, trainers[base], attribute, value)
    variants = {name: synced(variants[name], args.device) for name in VARIANT_ORDER if name in variants}

    counts, probe = {}, {}
    minimum = 3
    for name, variant in variants.items():
        counts[name], probe[name] = choose_count(variant, args.seconds, args.updates, args.warmup, minimum)
    print("  updates per timing: " + ", ".join(f"{n} {c} (~{probe[n] * 1e3:.2f} ms/update)" for n, c in counts.items()),
          flush=True)
    raw = interleaved(variants, counts, args.reps, args.warmup, f"[{hidden}x{batch}]", "updates")
    ups = medians(raw, "updates_per_s")

    flops = sac_update_flops(3, 1, [hidden, hidden], batch)
    ceiling = matmul_ceiling(batch, hidden, min(0.6, args.seconds / 2), device=args.device)
    gflops = {name: flops["total"] * rate / 1e9 for name, rate in ups.items() if not name.startswith("learned")}
    result: dict[str, Any] = {
        "hidden": [hidden, hidden],
        "batch": batch,
        "updates_per_timing": counts,
        "probe_seconds_per_update": probe,
        "build_seconds": build_s,
        "raw": raw,
        "median_updates_per_s": ups,
        "ratios": {  # medians of per-repetition ratios (`paired_ratio`)
            "dynsac_over_sb3": paired_ratio(raw, "dynsac", "sb3", "updates_per_s"),
            "dynsac_noguard_over_sb3": paired_ratio(raw, "dynsac-noguard", "sb3", "updates_per_s"),
            "guard_overhead": _minus_one(paired_ratio(raw, "dynsac-noguard", "dynsac", "updates_per_s")),
            "learned_over_none_cost": paired_ratio(raw, "dynsac", "learned", "updates_per_s"),
            "dynsac_bf16_over_sb3": paired_ratio(raw, "dynsac-bf16", "sb3", "updates_per_s"),
            "dynsac_bf16_over_dynsac": paired_ratio(raw, "dynsac-bf16", "dynsac", "updates_per_s"),
            "dynsac_compile_over_sb3": paired_ratio(raw, "dynsac-compile", "sb3", "updates_per_s"),
            "dynsac_compile_over_dynsac": paired_ratio(raw, "dynsac-compile", "dynsac", "updates_per_s"),
            "learned_compile_over_none_compile_cost": paired_ratio(raw, "dynsac-compile", "learned-compile",
                                                                   "updates_per_s"),
        },
        "flops_per_update": flops["total"],
        "flops_parts": flops["parts"],
        "sb3_extra_flops_per_update": flops["sb3_extra"],
        "achieved_gflops": gflops,
        "ceiling_gflops": ceiling["gflops"],
        "ceiling": ceiling,
        "fraction_of_ceiling": {name: value / ceiling["gflops"] for name, value in gflops.items()},
    }

    if run_loop:
        result["loop"] = run_loop_cell(args, hidden, batch, trainers, model, cell_dir)

    for trainer in trainers.values():
        if trainer.env is not None:
            trainer.env.close()
    if model is not None:
        model.env.close()
    return result


def run_loop_cell(args: argparse.Namespace, hidden: int, batch: int, trainers: dict[str, Any], model,
                  cell_dir: Path) -> dict[str, Any]:
    print(f"  training loop (collect + update per env step) at [{hidden}, {hidden}] batch {batch}", flush=True)
    loops: dict[str, Variant] = {}
    for name in LOOP_VARIANTS:
        if name in trainers:
            loops[name] = dynsac_loop_variant(name, trainers[name], cell_dir / f"loop_{name}")
        elif name == "sb3" and model is not None:
            loops["sb3"] = sb3_loop_variant(model)
    loops = {name: synced(variant, args.device) for name, variant in loops.items()}
    try:
        counts, probe = {}, {}
        for name, variant in loops.items():
            counts[name], probe[name] = choose_count(variant, args.seconds, None, max(args.warmup, 5), 20)
        raw = interleaved(loops, counts, args.reps, max(args.warmup, 5), f"[{hidden}x{batch}] loop", "steps")
    finally:
        for variant in loops.values():
            variant.close()
    sps = medians(raw, "steps_per_s")
    return {
        "steps_per_timing": counts,
        "probe_seconds_per_step": probe,
        "raw": raw,
        "median_steps_per_s": sps,
        "ratios": {"dynsac_over_sb3": paired_ratio(raw, "dynsac", "sb3", "steps_per_s"),
                   "learned_over_none_cost": paired_ratio(raw, "dynsac", "learned", "steps_per_s")},
    }


# ----------------------------------------------------------------------------- memory
def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _filled_dynsac_buffer(capacity: int, chunk: int = 65_536):
    """A dynsac ReplayBuffer of `capacity` HalfCheetah-shaped transitions, completely filled.

    ReplayBuffer has no batched add: its preallocated tensors are written directly, chunk by chunk
    (as load_state_dict does), then size/position are set as `add` would have left them. Episodes
    of 1000 steps, ids increasing, as in a real run."""
    import torch

    from dynsac.sac.replay import ReplayBuffer

    rng = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(capacity, MEMORY_OBS_DIM, MEMORY_ACTION_DIM)
    allocated = current_rss_bytes()
    for start in range(0, capacity, chunk):
        stop = min(start + chunk, capacity)
        n, steps = stop - start, torch.arange(start, stop)
        buffer.obs[start:stop] = torch.randn(n, MEMORY_OBS_DIM, generator=rng)
        buffer.next_obs[start:stop] = torch.randn(n, MEMORY_OBS_DIM, generator=rng)
        buffer.action[start:stop] = torch.rand(n, MEMORY_ACTION_DIM, generator=rng) * 2 - 1
        buffer.reward[start:stop] = torch.randn(n, generator=rng)
        buffer.terminated[start:stop] = (torch.rand(n, generator=rng) < 0.001).float()
        buffer.truncated[start:stop] = steps % 1000 == 999
        buffer.episode_id[start:stop] = steps // 1000
    buffer.size, buffer.position = capacity, 0
    fields = {name: {"dtype": str(getattr(buffer, name).dtype).replace("torch.", ""),
                     "bytes_per_transition": getattr(buffer, name).element_size()
                     * int(np.prod(getattr(buffer, name).shape[1:]))}
              for name in buffer._fields}
    return buffer, allocated, fields, buffer.nbytes()


def _filled_sb3_buffer(capacity: int, chunk: int = 65_536):
    """SB3's ReplayBuffer (n_envs 1, optimize_memory_usage off: its default), completely filled."""
    import gymnasium as gym
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_space = gym.spaces.Box(-np.inf, np.inf, (MEMORY_OBS_DIM,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (MEMORY_ACTION_DIM,), np.float32)
    buffer = ReplayBuffer(capacity, obs_space, action_space, device="cpu", n_envs=1)
    allocated = current_rss_bytes()
    rng = np.random.default_rng(0)
    for start in range(0, capacity, chunk):
        stop = min(start + chunk, capacity)
        n = stop - start
        buffer.observations[start:stop] = rng.standard_normal((n, 1, MEMORY_OBS_DIM), dtype=np.float32)
        buffer.next_observations[start:stop] = rng.standard_normal((n, 1, MEMORY_OBS_DIM), dtype=np.float32)
        buffer.actions[start:stop] = rng.uniform(-1, 1, (n, 1, MEMORY_ACTION_DIM)).astype(np.float32)
        buffer.rewards[start:stop] = rng.standard_normal((n, 1), dtype=np.float32)
        buffer.dones[start:stop] = rng.random((n, 1)) < 0.001
        buffer.timeouts[start:stop] = (np.arange(start, stop) % 1000 == 999)[:, None]
    buffer.full, buffer.pos = True, 0
    arrays = {"observations": buffer.observations, "next_observations": buffer.next_observations,
              "actions": buffer.actions, "rewards": buffer.rewards, "dones": buffer.dones, "timeouts": buffer.timeouts}
    fields = {name: {"dtype": str(a.dtype), "bytes_per_transition": a.itemsize * int(np.prod(a.shape[1:]))}
              for name, a in arrays.items()}
    return buffer, allocated, fields, sum(a.nbytes for a in arrays.values())


def _sample_check(kind: str, buffer) -> bool:
    import torch

    if kind == "dynsac":
        return bool(torch.isfinite(buffer.sample(min(256, buffer.size), 10).window).all())  # windows rebuild by index
    return bool(np.isfinite(buffer.sample(256).observations.numpy()).all())


def memory_child(kind: str, capacity: int) -> dict[str, Any]:
    """Resident memory of a completely filled replay buffer of `capacity` transitions (run in a
    fresh process). The same code first runs on a 1,000-transition buffer, so that one-time
    allocations (torch's first use of each op, the RNGs) are in the baseline, not in the delta."""
    make = _filled_dynsac_buffer if kind == "dynsac" else _filled_sb3_buffer
    warm, *_ = make(1_000)
    _sample_check(kind, warm)
    del warm
    gc.collect()
    rss_before, peak_before = current_rss_bytes(), peak_rss_bytes()
    buffer, rss_allocated, fields, nbytes = make(capacity)
    gc.collect()
    rss_after, peak_after = current_rss_bytes(), peak_rss_bytes()
    sample_ok = _sample_check(kind, buffer)  # after the measurement: a batch's own memory is not the buffer's
    return {
        "kind": kind,
        "capacity": capacity,
        "obs_dim": MEMORY_OBS_DIM,
        "action_dim": MEMORY_ACTION_DIM,
        "fields": fields,
        "stores_next_obs_separately": any("next" in name for name in fields),
        "nbytes": nbytes,
        "rss_before": rss_before,
        "rss_after_allocation": rss_allocated,  # zero-filled pages are not resident until written
        "rss_after_fill": rss_after,
        "rss_delta": rss_after - rss_before,
        "peak_rss_before": peak_before,
        "peak_rss_after": peak_after,
        # The process's peak RSS during the fill, above the baseline; meaningful when the fill set a new
        # peak (peak_is_from_fill), not when an earlier moment (imports) was the peak.
        "peak_rss_delta": peak_after - rss_before,
        "peak_is_from_fill": peak_after > peak_before,
        "sample_ok": sample_ok,
    }


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    capacity = args.memory_capacity
    raw_per = (2 * MEMORY_OBS_DIM + MEMORY_ACTION_DIM + 1 + 1) * 4  # obs, next_obs, action, reward, done: float32
    ids_per = raw_per + 8 + 1  # + episode id (int64, to rebuild windows) + truncated flag (bool)
    result: dict[str, Any] = {
        "capacity": capacity,
        "raw_bytes_per_transition": raw_per,
        "raw_definition": "float32 obs (17) + next_obs (17) + action (6) + reward (1) + done (1) = 42 x 4 bytes",
        "raw_with_ids_bytes_per_transition": ids_per,
        "raw_with_ids_definition": "raw + episode id (int64; what the learned dynamics map needs to rebuild "
                                   "its windows by index) + truncated flag (bool; termination and truncation are "
                                   "stored apart)",
        "raw_bytes": raw_per * capacity,
        "raw_with_ids_bytes": ids_per * capacity,
    }
    kinds = ["dynsac"] + (["sb3"] if "sb3" in args.libs else [])
    for kind in kinds:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", kind, "--memory-capacity", str(capacity)]
        print(f"\n== memory: {kind} replay buffer, {capacity:,} transitions (obs {MEMORY_OBS_DIM}, action "
              f"{MEMORY_ACTION_DIM}), in a subprocess", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            print(f"  warning: memory child failed:\n{done.stderr[-2000:]}", flush=True)
            result[kind] = {"error": done.stderr[-2000:]}
            continue
        child = json.loads(done.stdout.strip().splitlines()[-1])
        child["rss_over_raw"] = child["rss_delta"] / result["raw_bytes"]
        child["rss_over_raw_with_ids"] = child["rss_delta"] / result["raw_with_ids_bytes"]
        child["nbytes_over_raw"] = child["nbytes"] / result["raw_bytes"]
        result[kind] = child
        peak = f"peak +{child['peak_rss_delta'] / 2**20:.1f} MiB" if child["peak_is_from_fill"] else "peak set earlier"
        print(f"  RSS +{child['rss_delta'] / 2**20:.1f} MiB ({peak}), "
              f"tensors {child['nbytes'] / 2**20:.1f} MiB, raw {result['raw_bytes'] / 2**20:.1f} MiB: "
              f"RSS/raw {child['rss_over_raw']:.3f}", flush=True)
    return result


# ----------------------------------------------------------------------------- reporting
def _fmt(value: float | None, spec: str, width: int) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def cell_key(hidden: int, batch: int) -> str:
    return f"h{hidden}_b{batch}"


def format_tables(cells: dict[str, dict[str, Any]], memory: dict[str, Any] | None) -> str:
    lines = []
    head = (f"{'hidden':>11} {'batch':>5} | {'dynsac':>8} {'noguard':>8} {'learned':>8} {'sb3':>8} | "
            f"{'dyn/sb3':>7} {'ng/sb3':>7} {'guard%':>7} {'lrn/none':>8}")
    lines += ["updates/s (median over reps; dynsac = trainer.update() with guards, noguard = without; "
              "ratios: median of per-rep ratios)", head,
              "-" * len(head)]
    for cell in cells.values():
        u, r = cell["median_updates_per_s"], cell["ratios"]
        overhead = None if r["guard_overhead"] is None else 100 * r["guard_overhead"]
        lines.append(
            f"{str(cell['hidden']):>11} {cell['batch']:>5} | {_fmt(u.get('dynsac'), '.1f', 8)} "
            f"{_fmt(u.get('dynsac-noguard'), '.1f', 8)} {_fmt(u.get('learned'), '.1f', 8)} {_fmt(u.get('sb3'), '.1f', 8)} | "
            f"{_fmt(r['dynsac_over_sb3'], '.2f', 7)} {_fmt(r['dynsac_noguard_over_sb3'], '.2f', 7)} "
            f"{_fmt(overhead, '+.1f', 7)} {_fmt(r['learned_over_none_cost'], '.2f', 8)}")
    bf16_cells = [cell for cell in cells.values() if "dynsac-bf16" in cell["median_updates_per_s"]]
    if bf16_cells:
        head = f"{'hidden':>11} {'batch':>5} | {'fp32':>8} {'bf16':>8} {'sb3':>8} | {'bf16/fp32':>9} {'bf16/sb3':>8}"
        lines += ["", "updates/s with training.precision=bf16 (option; changes the numerics), same trainer", head,
                  "-" * len(head)]
        for cell in bf16_cells:
            u = cell["median_updates_per_s"]
            lines.append(f"{str(cell['hidden']):>11} {cell['batch']:>5} | {_fmt(u.get('dynsac'), '.1f', 8)} "
                         f"{_fmt(u.get('dynsac-bf16'), '.1f', 8)} {_fmt(u.get('sb3'), '.1f', 8)} | "
                         f"{_fmt(cell['ratios']['dynsac_bf16_over_dynsac'], '.2f', 9)} "
                         f"{_fmt(cell['ratios']['dynsac_bf16_over_sb3'], '.2f', 8)}")
    compile_cells = [cell for cell in cells.values() if "dynsac-compile" in cell["median_updates_per_s"]]
    if compile_cells:
        head = (f"{'hidden':>11} {'batch':>5} | {'eager':>8} {'compiled':>8} {'sb3':>8} {'lrn-comp':>8} | "
                f"{'comp/eager':>10} {'comp/sb3':>8} {'lrn/none':>8}")
        lines += ["", "updates/s with training.compile=true (option; same math, rounding may differ), same trainers",
                  head, "-" * len(head)]
        for cell in compile_cells:
            u, r = cell["median_updates_per_s"], cell["ratios"]
            lines.append(f"{str(cell['hidden']):>11} {cell['batch']:>5} | {_fmt(u.get('dynsac'), '.1f', 8)} "
                         f"{_fmt(u.get('dynsac-compile'), '.1f', 8)} {_fmt(u.get('sb3'), '.1f', 8)} "
                         f"{_fmt(u.get('learned-compile'), '.1f', 8)} | "
                         f"{_fmt(r['dynsac_compile_over_dynsac'], '.2f', 10)} "
                         f"{_fmt(r['dynsac_compile_over_sb3'], '.2f', 8)} "
                         f"{_fmt(r['learned_compile_over_none_compile_cost'], '.2f', 8)}")
    head = (f"{'hidden':>11} {'batch':>5} | {'MFLOP/upd':>10} {'ceiling':>8} | {'dynsac':>7} {'%ceil':>6} | "
            f"{'noguard':>7} {'%ceil':>6} | {'sb3':>7} {'%ceil':>6}")
    lines += ["", "GFLOP/s (useful matmul FLOPs x updates/s; ceiling = measured torch.mm (B,h)x(h,h))", head,
              "-" * len(head)]
    for cell in cells.values():
        g, f = cell["achieved_gflops"], cell["fraction_of_ceiling"]
        cols = " | ".join(f"{_fmt(g.get(n), '.2f', 7)} {_fmt(None if f.get(n) is None else 100 * f[n], '.1f', 6)}"
                          for n in ("dynsac", "dynsac-noguard", "sb3"))
        lines.append(f"{str(cell['hidden']):>11} {cell['batch']:>5} | {cell['flops_per_update'] / 1e6:>10.2f} "
                     f"{cell['ceiling_gflops']:>8.2f} | {cols}")
    loops = {key: cell["loop"] for key, cell in cells.items() if "loop" in cell}
    if loops:
        head = f"{'hidden':>11} {'batch':>5} | {'dynsac':>8} {'learned':>8} {'sb3':>8} | {'dyn/sb3':>7} {'lrn/none':>8}"
        lines += ["", "training loop env steps/s (collect + 1 update per step, logging cadence as in runs)", head,
                  "-" * len(head)]
        for key, loop in loops.items():
            s, r = loop["median_steps_per_s"], loop["ratios"]
            lines.append(f"{str(cells[key]['hidden']):>11} {cells[key]['batch']:>5} | {_fmt(s.get('dynsac'), '.1f', 8)} "
                         f"{_fmt(s.get('learned'), '.1f', 8)} {_fmt(s.get('sb3'), '.1f', 8)} | "
                         f"{_fmt(r['dynsac_over_sb3'], '.2f', 7)} {_fmt(r['learned_over_none_cost'], '.2f', 8)}")
    if memory:
        head = f"{'buffer':>8} | {'RSS MiB':>9} {'peak MiB':>9} {'tensors':>9} {'raw MiB':>9} {'RSS/raw':>8} {'RSS/raw+ids':>11}"
        lines += ["", f"replay memory, {memory['capacity']:,} transitions, obs {MEMORY_OBS_DIM} action "
                      f"{MEMORY_ACTION_DIM} (raw = {memory['raw_bytes_per_transition']} B/transition: "
                      f"obs + next_obs + action + reward + done, float32; +ids = {memory['raw_with_ids_bytes_per_transition']} B)",
                  head, "-" * len(head)]
        for kind in ("dynsac", "sb3"):
            m = memory.get(kind)
            if not m or "error" in m:
                continue
            peak = m["peak_rss_delta"] / 2**20 if m["peak_is_from_fill"] else None  # else: the imports were the peak
            lines.append(f"{kind:>8} | {m['rss_delta'] / 2**20:>9.1f} {_fmt(peak, '.1f', 9)} "
                         f"{m['nbytes'] / 2**20:>9.1f} {memory['raw_bytes'] / 2**20:>9.1f} {m['rss_over_raw']:>8.3f} "
                         f"{m['rss_over_raw_with_ids']:>11.3f}")
    return "\n".join(lines)


def evaluate_targets(cells: dict[str, dict[str, Any]], memory: dict[str, Any] | None) -> list[dict[str, Any]]:
    def ratio(hidden: int, batch: int, name: str) -> float | None:
        cell = cells.get(cell_key(hidden, batch))
        return None if cell is None else cell["ratios"][name]

    def worst(name: str, pick: Callable[[list[float]], float]) -> str:
        values = [(c["ratios"][name], c) for c in cells.values() if c["ratios"][name] is not None]
        if len(values) < 2:
            return ""
        value, cell = pick(values, key=lambda vc: vc[0])
        return f"grid worst {value:.3f} at {cell['hidden']} batch {cell['batch']}"

    h, b = DEFAULT_CELL
    targets = [
        {"name": f"dynsac/SB3 updates/s at [{h},{h}] batch {b}", "value": ratio(h, b, "dynsac_over_sb3"),
         "op": ">=", "threshold": 1.5, "note": ""},
        {"name": f"dynsac/SB3 updates/s at [64,64] batch {b}", "value": ratio(64, b, "dynsac_over_sb3"),
         "op": ">=", "threshold": 2.5, "note": ""},
        {"name": f"learned/none cost per update at [{h},{h}] batch {b}", "value": ratio(h, b, "learned_over_none_cost"),
         "op": "<=", "threshold": 1.5, "note": worst("learned_over_none_cost", max)},
        {"name": f"guard overhead at [{h},{h}] batch {b}", "value": ratio(h, b, "guard_overhead"),
         "op": "<=", "threshold": 0.05, "note": worst("guard_overhead", max)},
    ]
    if memory and isinstance(memory.get("dynsac"), dict) and "rss_over_raw" in memory["dynsac"]:
        targets.append({"name": f"replay RSS / raw transition bytes ({memory['capacity']:,} x obs 17, act 6)",
                        "value": memory["dynsac"]["rss_over_raw"], "op": "<=", "threshold": 1.2, "note": ""})
    for target in targets:
        value = target["value"]
        target["met"] = None if value is None else (value >= target["threshold"] if target["op"] == ">=" else value <= target["threshold"])
    return targets


def format_targets(targets: list[dict[str, Any]]) -> str:
    lines = ["targets:"]
    for t in targets:
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(f"  {t['name']:<62} {value:>7} {t['op']} {t['threshold']:<5} {verdict}{note}")
    return "\n".join(lines)


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        import gymnasium

        info["gymnasium"] = gymnasium.__version__
        import stable_baselines3

        info["stable_baselines3"] = stable_baselines3.__version__
    except ImportError:
        pass
    import dynsac

    info["dynsac"] = getattr(dynsac, "__version__", "?")
    return info


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.memory_capacity)))
        return 0
    if "sb3" in args.libs:
        require_sb3("dynsac,learned")

    import torch

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs: the machine is busy, "
              "timings will be noisy and slow", flush=True)
    out_path = Path(args.out)
    started = time.perf_counter()
    cells: dict[str, dict[str, Any]] = {}
    memory: dict[str, Any] | None = None
    info = machine_info(args.threads)
    info["device"] = args.device
    revision = git_revision()
    grid = [(h, b) for h in args.hidden for b in args.batches]
    loop_cells = [] if args.skip_loop else (grid if args.loop_all else [c for c in grid if c == DEFAULT_CELL])
    if not args.skip_loop and not loop_cells:
        print(f"note: the loop benchmark runs at [{DEFAULT_CELL[0]}]*2 batch {DEFAULT_CELL[1]}, not in this grid; "
              "use --loop-all to run it at every cell", flush=True)
    where = f"cuda ({info['gpu']})" if args.device == "cuda" else "cpu"
    print(f"throughput: grid hidden {args.hidden} x batch {args.batches}, libs {args.libs}, {args.reps} reps, "
          f"~{args.seconds}s per timing, {args.threads} torch threads, fill {args.fill:,}; {info['cpu_model']}, device {where}, "
          f"torch {info['torch']}, revision {revision}", flush=True)
    reference = None
    with tempfile.TemporaryDirectory(prefix="dynsac_throughput_") as tmp_name:
        tmp = Path(tmp_name)
        reference = shared_hyperparameters(dynsac_config(args, DEFAULT_CELL[0], min(args.batches), tmp / "ref", False))

        def payload(complete: bool) -> dict[str, Any]:
            targets = evaluate_targets(cells, memory)
            return {
                "benchmark": "throughput",
                "complete": complete,
                "git_revision": revision,
                "args": {k: v for k, v in vars(args).items() if k != "memory_child"},
                "env_ids": {"dynsac": ENV_ID, "dynsac-noguard": ENV_ID, "sb3": ENV_ID, "learned": LEARNED_ENV_ID},
                "hyperparameters": reference,
                "machine": info,
                "load_average_start": list(load_start),
                "load_average_now": list(os.getloadavg()),
                "wall_s": time.perf_counter() - started,
                "updates": cells,
                "loop": {key: cell["loop"] for key, cell in cells.items() if "loop" in cell},
                "memory": memory,
                "targets": targets,
            }

        for hidden, batch in grid:
            cells[cell_key(hidden, batch)] = run_cell(args, hidden, batch, tmp, (hidden, batch) in loop_cells)
            write_json(out_path, payload(complete=False))  # partial results survive a crash
    if args.memory:
        memory = run_memory(args)
    final = payload(complete=True)
    write_json(out_path, final)
    print()
    print(format_tables(cells, memory))
    print()
    print(format_targets(final["targets"]))
    load_end = os.getloadavg()
    print(f"\nload average start {load_start[0]:.2f}, end {load_end[0]:.2f}; {args.threads} torch threads; "
          f"total wall time {final['wall_s']:.0f}s")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
