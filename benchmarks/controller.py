"""Acting speed of an exported controller: actions/s and latency per call of `Controller.act`.

For each context source (none, learned) of the default config (`training/config_dynamics_map.yaml`:
dynsac/RandomLinear-v0, 10-dimensional actions, policy [256, 256]; the learned map's encoder
[256, 128, 64] over K = 10 transitions), a checkpoint of freshly initialised networks (speed does
not depend on what was learned) is exported to .pt2 and .onnx, and the three controllers

- `checkpoint`  the checkpoint, eager torch (`load_controller("...pt")`)
- `pt2`         the torch.export program
- `onnx`        the ONNX graph on onnxruntime (CPU)

act at batch 1 (one env: a control loop's case, where latency is the figure) and batch 64, the
variants interleaved in every repetition. The time is that of `Controller.act` as a user calls it,
history handling and input checks included. Medians over `--reps`; the table and JSON
(`benchmarks/results/controller.json`).

    python benchmarks/controller.py [--reps 5] [--seconds 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO_ROOT, git_revision, write_json

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "controller.json"
KINDS = ("checkpoint", "pt2", "onnx")
BATCHES = (1, 64)


def make_controllers(source: str, folder: Path, threads: int) -> dict[str, object]:
    from dynsac import SACTrainer, load_controller
    from dynsac.config import load_config
    from dynsac.export import export_controller

    config = load_config(REPO_ROOT / "training" / "config_dynamics_map.yaml", [
        f"context.source={source}", "training.buffer_size=1000", "training.batch_size=256",
        f"training.checkpoint_dir={folder}", f"logging.dir={folder}/run", "training.device=cpu"])
    checkpoint = SACTrainer(config).save_checkpoint(folder / f"{source}.pt")
    return {"checkpoint": load_controller(checkpoint),
            "pt2": load_controller(export_controller(checkpoint, folder / f"{source}.pt2")),
            "onnx": load_controller(export_controller(checkpoint, folder / f"{source}.onnx"), threads=threads)}


def time_calls(controller, batch: int, seconds: float) -> float:
    """Calls per second of `act` on a batch, over about `seconds` (an episode of 50 steps per reset)."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(batch, controller.obs_dim)).astype(np.float32)
    controller.reset()
    for _ in range(20):
        controller.act(obs)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        controller.reset()
        for _ in range(50):
            controller.act(obs)
        calls += 50
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions; medians are reported (default 5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one timing (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        controllers = {source: make_controllers(source, Path(tmp), args.threads) for source in ("none", "learned")}
        for rep in range(args.reps):
            order = KINDS if rep % 2 == 0 else KINDS[::-1]
            for source, by_kind in controllers.items():
                for batch in BATCHES:
                    for kind in order:
                        key = f"{source}/{kind}/b{batch}"
                        rates.setdefault(key, []).append(time_calls(by_kind[kind], batch, args.seconds))
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    rows = {}
    for key, values in rates.items():
        source, kind, batch = key.split("/")
        calls = statistics.median(values)
        rows[key] = {"source": source, "kind": kind, "batch": int(batch[1:]), "calls_per_s": calls,
                     "actions_per_s": calls * int(batch[1:]), "latency_ms": 1e3 / calls, "reps": values}
    print(format_table(rows))
    write_json(Path(args.out), {"rows": rows, "threads": args.threads, "reps": args.reps, "seconds": args.seconds,
                                "torch": torch.__version__, "machine": platform.platform(), "git": git_revision()})
    print(f"wrote {args.out}")


def format_table(rows: dict[str, dict]) -> str:
    lines = [f"{'context':<8} {'file':<11} | {'b1 actions/s':>12} {'b1 ms/call':>10} | {'b64 actions/s':>13} "
             f"{'b64 ms/call':>11}", "-" * 74]
    for source in ("none", "learned"):
        for kind in KINDS:
            one, many = rows[f"{source}/{kind}/b1"], rows[f"{source}/{kind}/b64"]
            lines.append(f"{source:<8} {kind:<11} | {one['actions_per_s']:>12,.0f} {one['latency_ms']:>10.3f} | "
                         f"{many['actions_per_s']:>13,.0f} {many['latency_ms']:>11.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
