"""What the learned dynamics map costs per env step, in one process, and where it goes.

Trainers are built side by side on dynsac/RandomPendulum-v0 (Pendulum's shapes) and blocks of
`--steps` train steps alternate between them (the order reversed every other block), so a change
of the machine's speed hits all of them alike; each row reports the median time per step and
the median of its per-block ratios to `none`:

- `none`       context none (the base the issue's 1.5x target is measured against)
- `learned`    `context.source=learned`, the shipped map
- `small`      the same with encoder [64, 64] and predictors [64, 64] (rejected in docs/critics.md:
               it loses the held-out pendulums)
- `forward-only`  the shipped map with `context.backward_weight=0`: no backward predictor
- `every2`     what-if: the shipped map whose prediction step (and its optimizer step) runs on
               every other update only; the contexts of the other updates come from a forward pass
               of the encoder. Not a dynsac option: patched in here to size what it would save.
- `small-every2`  both.

Then, for `learned` alone, the time per step spent in each part (wall-clock wrappers around the
trainer's methods, so the parts are as they run inside the loop, cold caches included).

    PYTHONPATH=src python benchmarks/map_cost.py --hidden 64 --blocks 10 --steps 200
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import REPO_ROOT, git_revision, write_json

import dynsac.sac.agent as agent_module
from dynsac.config import load_config
from dynsac.training import SACTrainer

SMALL = ["context.encoder_hidden_sizes=[64,64]", "context.model_hidden_sizes=[64,64]"]
VARIANTS: dict[str, tuple[list[str], bool]] = {  # name: (overrides, map learns every other update)
    "none": ([], False),
    "learned": (["context.source=learned"], False),
    "small": (["context.source=learned", *SMALL], False),
    "forward-only": (["context.source=learned", "context.backward_weight=0"], False),
    "every2": (["context.source=learned"], True),
    "small-every2": (["context.source=learned", *SMALL], True),
}


def build(hidden: int, threads: str, overrides: list[str]) -> SACTrainer:
    folder = tempfile.mkdtemp()
    sets = [f"training.hidden_sizes=[{hidden},{hidden}]", "training.eval_interval=0", "training.checkpoint_interval=0",
            f"logging.dir={folder}/run", "logging.progress=off", "training.learning_starts=300",
            f"training.torch_threads={threads}", "env.id=dynsac/RandomPendulum-v0", *overrides]
    return SACTrainer(load_config(str(REPO_ROOT / "configs/pendulum.yaml"), sets))


def learn_every_other_update(trainer: SACTrainer) -> None:
    """Patch the map's prediction step to run on every other call; the calls between encode only."""
    agent, dynamics_map = trainer.agent, trainer.agent.dynamics_map
    full_step, optimizer, calls = dynamics_map.learn_by_hand, agent.map_optimizer, [0]

    def learn(window, mask, next_window, next_mask, *rest, **kwargs):
        calls[0] += 1
        agent.map_optimizer = optimizer if calls[0] % 2 else None
        if calls[0] % 2:
            return full_step(window, mask, next_window, next_mask, *rest, **kwargs)
        contexts = dynamics_map.encode(torch.cat([window, next_window]), torch.cat([mask, next_mask]))
        zero = torch.zeros(())
        return contexts[: len(window)], contexts[len(window):], {"forward_loss": zero, "backward_loss": zero}

    dynamics_map.learn_by_hand = learn


def map_adam_steps(trainer: SACTrainer) -> int | None:
    """How many steps the map's optimizer has taken (None without a map)."""
    optimizer = trainer.agent.map_optimizer
    if trainer.agent.dynamics_map is None or optimizer is None:
        return None
    first = optimizer.param_groups[0]["params"][0]
    return int(optimizer.state[first]["step"]) if first in optimizer.state else 0


def time_blocks(trainers: dict[str, SACTrainer], blocks: int, steps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    for block in range(blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            trainer = trainers[name]
            for _ in range(10):
                trainer.train_step()
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    return times


def parts(trainer: SACTrainer, steps: int) -> dict[str, float]:
    """ms per step inside each wrapped method (nested parts are included in their callers)."""
    spent: dict[str, float] = collections.defaultdict(float)

    def wrap(owner: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        setattr(owner, name, timed)

    agent = trainer.agent
    wrap(trainer, "collect_step", "collect (act + env + store)")
    wrap(trainer.rollout, "_acting_context", "  context for acting")
    wrap(trainer, "_store", "  store (buffer + map statistics)")
    wrap(trainer, "update", "update (whole)")
    wrap(trainer.buffer, "windows", "  replay windows")
    if agent.dynamics_map is not None:
        wrap(agent.dynamics_map, "learn_by_hand", "  map prediction step")
        wrap(agent.map_optimizer, "fast_step", "  map Adam step")
    module_functions = {name: getattr(agent_module, name) for name in ("clipped_grad_norm", "guard_context")}
    wrap(agent_module, "clipped_grad_norm", "  gradient norms and clipping (all)")
    wrap(agent_module, "guard_context", "  context guard")
    try:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        total = (time.perf_counter() - start) / steps * 1e3
    finally:  # the next trainer's parts must not run through these wrappers too
        for name, function in module_functions.items():
            setattr(agent_module, name, function)
    result = {label: seconds / steps * 1e3 for label, seconds in spent.items()}
    result["total"] = total
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="train steps per block")
    parser.add_argument("--threads", default="auto", help="training.torch_threads of every trainer")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--warmup", type=int, default=500, help="train steps before timing (updates from 300)")
    parser.add_argument("--parts-steps", type=int, default=1000, help="steps of the per-part timing (0: skip)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/map_cost.json"))
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(map(repr, unknown))}; expected some of {', '.join(VARIANTS)}")
    if names[0] != "none":
        parser.error("--variants must start with none (the base of the ratios)")
    trainers = {}
    for name in names:
        overrides, every_other = VARIANTS[name]
        trainers[name] = build(args.hidden, args.threads, overrides)
        if every_other:
            learn_every_other_update(trainers[name])
        for _ in range(args.warmup):
            trainers[name].train_step()
    times = time_blocks(trainers, args.blocks, args.steps)
    rows = {}
    print(f"ms per env step, dynsac/RandomPendulum-v0, [{args.hidden}, {args.hidden}], batch 256, "
          f"threads {args.threads}, {args.blocks} alternating blocks of {args.steps} steps")
    print(f"{'variant':14s} {'ms/step':>8s} {'/ none':>7s}")
    for name in names:
        ratios = [own / base for own, base in zip(times[name], times["none"])]
        rows[name] = {"ms_per_step": statistics.median(times[name]), "ratio_to_none": statistics.median(ratios),
                      "block_ms": times[name], "map_adam_steps": map_adam_steps(trainers[name])}
        print(f"{name:14s} {rows[name]['ms_per_step']:8.3f} {rows[name]['ratio_to_none']:7.3f}")
    result: dict[str, Any] = {"benchmark": "map_cost", "git": git_revision(), "hidden": args.hidden, "threads": args.threads,
                              "blocks": args.blocks, "steps": args.steps, "variants": rows}
    if args.parts_steps:
        for name in ("none", "learned"):
            if name in trainers:
                result[f"parts_{name}"] = spent = parts(trainers[name], args.parts_steps)
                print(f"\n{name}: ms per step in each part ({args.parts_steps} steps)")
                for label, ms in sorted(spent.items(), key=lambda item: -item[1]):
                    print(f"  {label:38s} {ms:7.3f}")
    write_json(Path(args.out), result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
