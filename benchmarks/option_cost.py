"""What each learning-quality option costs per update: `trainer.update()` time against the classic SAC update.

For each option (a set of config overrides) a dynsac trainer is built on the same env and
network sizes, its replay buffer filled with `--fill` random transitions (the warm-up's
`collect_step`), and `trainer.update()` timed over `--updates` updates: what a real run does per
update (buffer sample, safety snapshot and checks, the update, metric accumulation). The options
run interleaved in every repetition (order reversed every other repetition), so a change of the
machine's speed hits all alike; the table shows the median ms per update and the median of the
per-repetition ratios to the classic update. The learned dynamics map runs on
dynsac/RandomPendulum-v0 (Pendulum's shapes); everything else on Pendulum-v1.

    PYTHONPATH=src python benchmarks/option_cost.py                       # [256, 256], batch 256
    PYTHONPATH=src python benchmarks/option_cost.py --hidden 64 --reps 3 --updates 100 --out /tmp/cost.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import REPO_ROOT, git_revision, write_json

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "option_cost.json"
LEARNED = ["env.id=dynsac/RandomPendulum-v0", "context.source=learned"]
# Every option is timed on top of the classic critic (`training.critic_loss: mse`, which the base config
# sets), so each ratio is that option's own cost; `hl_gauss` is the default critic (hl_gauss_N: N atoms).
# redq: 10 critics, the target's min over 2; droq: dropout 0.01 with LayerNorm; adamw: weight decay 0.01;
# learned: the default dynamics map (dim 4, encoder [128, 64], predictors [128, 128]); learned-previous:
# the map's sizes before they were chosen by measurement (dim 10, encoder [256, 128, 64], predictors [200, 200]).
OPTIONS: dict[str, list[str]] = {
    "classic": [],
    "hl_gauss": ["training.critic_loss=hl_gauss"],
    "hl_gauss_51": ["training.critic_loss=hl_gauss", "training.critic_bins=51"],
    "hl_gauss_64": ["training.critic_loss=hl_gauss", "training.critic_bins=64"],
    "hl_gauss_101": ["training.critic_loss=hl_gauss", "training.critic_bins=101"],
    "hl_gauss_bf16": ["training.critic_loss=hl_gauss", "training.precision=bf16"],
    "two_hot": ["training.critic_loss=two_hot"],
    "crossq": ["training.crossq=true", "training.adam_beta1=0.5"],
    "redq": ["training.num_critics=10", "training.critic_subset=2"],
    "droq": ["training.critic_dropout=0.01", "training.critic_layer_norm=true"],
    "layer_norm": ["training.critic_layer_norm=true"],
    "obs_normalization": ["training.obs_normalization=true"],
    "adamw": ["training.weight_decay=0.01"],
    "n_step": ["training.n_step=3"],
    "learned": LEARNED,
    "learned+hl_gauss": [*LEARNED, "training.critic_loss=hl_gauss"],
    "learned-previous": [*LEARNED, "context.dim=10", "context.encoder_hidden_sizes=[256, 128, 64]",
                         "context.model_hidden_sizes=[200, 200]"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size h of [h, h] policy and critics (default 256)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--updates", type=int, default=300, help="timed updates per option and repetition (default 300)")
    parser.add_argument("--fill", type=int, default=2000, help="random transitions in the buffer (default 2000)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated option names (default all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default benchmarks/results/option_cost.json)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.options.split(",") if name not in OPTIONS]
    if unknown:
        parser.error(f"--options: unknown {unknown}; known: {', '.join(OPTIONS)}")
    return args


def build_trainer(overrides: list[str], args: argparse.Namespace, folder: Path) -> Any:
    from dynsac.config import load_config
    from dynsac.training import SACTrainer

    base = [
        "env.id=Pendulum-v1", f"training.hidden_sizes=[{args.hidden}, {args.hidden}]",
        f"training.batch_size={args.batch}", f"training.learning_starts={args.fill + 1}",
        f"training.buffer_size={args.fill + 10}", "training.checkpoint_interval=0", "training.eval_interval=0",
        f"training.torch_threads={args.threads}", f"logging.dir={folder / 'run'}", "logging.progress=off",
        f"training.checkpoint_dir={folder / 'checkpoints'}", "training.critic_loss=mse",
    ]
    trainer = SACTrainer(load_config(None, base + overrides))
    for _ in range(args.fill):
        trainer.collect_step()
    for _ in range(5):  # warm-up: the optimizers' first steps create their state
        trainer.update()
    return trainer


def time_updates(trainer: Any, updates: int) -> float:
    """Seconds per `trainer.update()`, the metrics read once at the end as a logger would."""
    start = time.perf_counter()
    for _ in range(updates):
        metrics = trainer.update()
    float(metrics["critic_loss"])
    return (time.perf_counter() - start) / updates


def measure(args: argparse.Namespace, names: list[str]) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="dynsac-option-cost-") as tmp:
        trainers = {name: build_trainer(OPTIONS[name], args, Path(tmp) / f"run{i}") for i, name in enumerate(names)}
        torch.set_num_threads(args.threads)
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else reversed(names):
                seconds[name].append(time_updates(trainers[name], args.updates))
            print(f"[option_cost] repetition {rep + 1}/{args.reps} done", flush=True)
    return seconds


def summarize(seconds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    classic = seconds.get("classic")
    rows = {}
    for name, times in seconds.items():
        row = {"ms_per_update": 1e3 * statistics.median(times)}
        if classic is not None:
            row["ratio_to_classic"] = statistics.median(t / c for t, c in zip(times, classic))
        rows[name] = row
    return rows


def format_table(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = [f"Per-update cost, [{args.hidden}, {args.hidden}] batch {args.batch}, {args.threads} thread(s), "
             f"median of {args.reps} repetitions x {args.updates} updates", "",
             "| option | ms / update | x classic |", "|---|---|---|"]
    for name, row in rows.items():
        ratio = row.get("ratio_to_classic")
        lines.append(f"| {name} | {row['ms_per_update']:.2f} | {'-' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.options.split(",")
    started = time.time()
    seconds = measure(args, names)
    rows = summarize(seconds)
    print(format_table(rows, args))
    write_json(Path(args.out), {
        "args": vars(args), "rows": rows, "seconds": seconds, "git_revision": git_revision(),
        "torch": torch.__version__, "machine": platform.platform(), "wall_s": time.time() - started,
    })
    print(f"Results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
