"""Speed as users run it: whole processes, each library with its own defaults, on Pendulum-v1.

Systems (one process per run; one update per env step, batch 256, learning starts at step 100,
hidden [h, h] for the policy and the critics):

- `dynsac`          `dynsac train --config configs/pendulum.yaml` (context none), evaluation and
                    checkpoints off (the peers' `learn()` does neither), everything else default
- `dynsac-learned`  the same on dynsac/RandomPendulum-v0 (Pendulum's shapes) with
                    `context.source=learned` (the dynamics map, K = 10)
- `dynsac-random`   `dynsac` on dynsac/RandomPendulum-v0, context none (only when named in
                    `--systems`): the learned map's own cost per step is dynsac-learned against it,
                    on the same env (RandomPendulum's step costs more than Pendulum-v1's)
- `dynsac-compiled` `dynsac` with `training.compile=true` (only when named in `--systems`); its
                    start-up includes no compiling: that happens at the first update, in the loop
- `dynsac-fp32`, `dynsac-bf16`  `dynsac` with `training.precision` fp32 / bf16 (only when named
                    in `--systems`): what the default `auto` precision chooses, against either
- `dynsac-ref`      `dynsac` run from another source tree (`--ref-src PATH`, e.g. a `git worktree`
                    of an earlier commit; only when named in `--systems`): a change's before/after
                    as users run it, alternating like the rest
- `sb3`             `stable_baselines3.SAC("MlpPolicy", "Pendulum-v1", ...).learn(N)`
- `sbx`             `sbx.SAC("MlpPolicy", "Pendulum-v1", ...).learn(N)` (JAX, jit-compiled update)

Runs alternate within each repetition (the order reversed every other one) so that the
machine's drifts hit every system alike; ratios are medians of per-repetition ratios. Reported:
env steps/s of the training loop (`learn()`, or dynsac's training segment from `summary.json`),
env steps/s of the whole process, the start-up time (whole process minus the loop: imports,
construction, and for sbx the first jit compile), and the useful-matmul GFLOP/s as a fraction of
the fp32 matmul ceiling (`torch.mm` (256, h) x (h, h), 2 threads) measured in the same run.
`--busy` runs everything beside one CPU-bound process.

    python benchmarks/cli_speed.py [--hidden 64,256,1024] [--reps 3] [--steps 3000] [--busy] [--policies]

`--policies` times dynsac alone under pinned thread counts and OpenMP wait policies (and
`training.torch_threads: auto`), the table behind dynsac's thread policy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, git_revision, write_json

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "cli_speed.json"
SYSTEMS = ("dynsac", "dynsac-learned", "sb3", "sbx")
OPTIONAL_SYSTEMS = ("dynsac-compiled", "dynsac-random", "dynsac-fp32", "dynsac-bf16", "dynsac-ref")  # run only when named in --systems
# `--policies`: dynsac (context none) under pinned thread counts and OpenMP wait policies.
POLICIES = {
    "2 threads, PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "2 threads, ACTIVE": ({"OMP_WAIT_POLICY": "ACTIVE"}, 2),
    "2 threads, default spin": ({}, 2),
    "1 thread": ({}, 1),
    "auto (the default)": ({}, None),
}
PEER_SCRIPT = """
import sys, time
start = time.time()
if sys.argv[1] == "sbx":
    from sbx import SAC
else:
    from stable_baselines3 import SAC
hidden, steps = int(sys.argv[2]), int(sys.argv[3])
model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=100, batch_size=256, train_freq=1, gradient_steps=1,
            policy_kwargs=dict(net_arch=[hidden, hidden]), verbose=0)
before = time.time()
model.learn(steps)
print("LOOP_S", time.time() - before, "SETUP_S", before - start)
"""


def run_system(system: str, hidden: int, steps: int, folder: Path, ref_src: Path | None = None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if system == "dynsac-ref":  # its `src` first on the path: `import dynsac` finds that tree's package
        env["PYTHONPATH"] = os.pathsep.join([str(ref_src / "src"), *filter(None, [env.get("PYTHONPATH")])])
    start = time.time()
    threads = None
    if system in POLICIES:
        extra, threads = POLICIES[system]
        env.update(extra)
    if system.startswith("dynsac") or system in POLICIES:
        run_dir = folder / f"{system}-{hidden}-{time.time_ns()}"
        command = [sys.executable, "-m", "dynsac.cli", "train", "--config", str(REPO_ROOT / "configs/pendulum.yaml")]
        sets = [f"training.total_steps={steps}", f"training.hidden_sizes=[{hidden},{hidden}]",
                "training.eval_interval=0", "training.checkpoint_interval=0", f"logging.dir={run_dir}",
                "logging.progress=off", "training.eval_episodes=1"]  # the final evaluation: one episode
        if system == "dynsac-compiled":
            sets += ["training.compile=true"]
        if system in ("dynsac-fp32", "dynsac-bf16"):
            sets.append(f"training.precision={system.removeprefix('dynsac-')}")
        if system in ("dynsac-learned", "dynsac-random"):
            sets.append("env.id=dynsac/RandomPendulum-v0")
        if system == "dynsac-learned":
            sets.append("context.source=learned")
        if threads is not None:
            sets.append(f"training.torch_threads={threads}")
        command += [arg for value in sets for arg in ("--set", value)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
        whole = time.time() - start
        if done.returncode:
            raise RuntimeError(f"{system}: {done.stderr[-2000:]}")
        loop = json.loads((run_dir / "summary.json").read_text())["wall_s"]
    else:
        done = subprocess.run([sys.executable, "-c", PEER_SCRIPT, system, str(hidden), str(steps)], env=env,
                              capture_output=True, text=True, cwd=folder)
        whole = time.time() - start
        if done.returncode:
            raise RuntimeError(f"{system}: {done.stderr[-2000:]}")
        words = done.stdout.split()
        loop = float(words[words.index("LOOP_S") + 1])
    return {"loop_steps_per_s": steps / loop, "whole_steps_per_s": steps / whole, "startup_s": whole - loop,
            "loop_s": loop, "whole_s": whole}


def matmul_ceiling(hidden: int, batch: int = 256, threads: int = 2, seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of torch.mm (batch, h) x (h, h) on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(batch, hidden), torch.randn(hidden, hidden)
    for _ in range(10):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            a @ b
        count += 20
    return 2 * batch * hidden * hidden * count / (time.perf_counter() - start) / 1e9


def update_flops(hidden: int, obs_dim: int = 3, action_dim: int = 1, batch: int = 256) -> float:
    """Useful matmul FLOPs of one SAC update, in passes of B rows through a network (2 x rows x
    weights each): the policy forward on s and s' (2) and its backward on s (input and weight
    gradients: 2); per critic, the forward on (s, a) and its weight gradients (2), the target's
    forward on (s', a') (1), the actor's forward through it and its input gradients (2)."""
    def weights(inputs: int, outputs: int) -> int:
        return inputs * hidden + hidden * hidden + hidden * outputs

    policy, critic = weights(obs_dim, 2 * action_dim), weights(obs_dim + action_dim, 1)
    return float(2 * batch * (4 * policy + 2 * 5 * critic))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="64,256,1024", help="hidden sizes h (default 64,256,1024)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"default {','.join(SYSTEMS)} (also: {','.join(OPTIONAL_SYSTEMS)}); with --policies, numbers of the policies (1-{len(POLICIES)})")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--steps", type=int, default=3000, help="env steps per run at h <= 256 (default 3000)")
    parser.add_argument("--steps-1024", type=int, default=800, help="env steps per run at h >= 1024 (default 800)")
    parser.add_argument("--busy", action="store_true", help="run beside one CPU-bound process")
    parser.add_argument("--policies", action="store_true",
                        help="time dynsac under thread counts and OpenMP wait policies instead of the systems")
    parser.add_argument("--ref-src", type=Path, default=None,
                        help="the source tree (holding src/dynsac) that the dynsac-ref system runs")
    parser.add_argument("--out", default=None, help="JSON results (default benchmarks/results/cli_speed[_busy].json)")
    args = parser.parse_args()
    systems = args.systems.split(",")
    if args.policies:  # --systems then picks among the policies (by their position, 1-based) when given
        chosen = list(POLICIES)
        systems = chosen if args.systems == ",".join(SYSTEMS) else [chosen[int(i) - 1] for i in systems]
    elif unknown := [system for system in systems if system not in SYSTEMS + OPTIONAL_SYSTEMS]:
        parser.error(f"--systems: unknown {unknown}; known: {', '.join(SYSTEMS + OPTIONAL_SYSTEMS)}")
    if "dynsac-ref" in systems and (args.ref_src is None or not (args.ref_src / "src" / "dynsac").is_dir()):
        parser.error(f"--systems dynsac-ref needs --ref-src PATH holding src/dynsac (got {args.ref_src})")
    hiddens = [int(h) for h in args.hidden.split(",")]
    name = f"cli_speed{'_policies' if args.policies else ''}{'_busy' if args.busy else ''}.json"
    out = Path(args.out) if args.out else DEFAULT_OUT.with_name(name)
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    cells: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for hidden in hiddens:
                steps = args.steps if hidden < 1024 else args.steps_1024
                runs: dict[str, list[dict[str, float]]] = {system: [] for system in systems}
                ceilings = []
                for rep in range(args.reps):
                    ceilings.append(matmul_ceiling(hidden))
                    for system in (systems if rep % 2 == 0 else systems[::-1]):
                        result = run_system(system, hidden, steps, Path(tmp), args.ref_src)
                        runs[system].append(result)
                        print(f"[{hidden}x{hidden}] rep {rep + 1}/{args.reps} {system:<24} "
                              f"{result['loop_steps_per_s']:7.1f} steps/s in the loop, "
                              f"{result['whole_steps_per_s']:7.1f} whole, start-up {result['startup_s']:.1f} s",
                              file=sys.stderr, flush=True)
                cells[str(hidden)] = summarize(runs, ceilings, hidden, steps)
                write_json(out, results(cells, args.busy, args.reps))  # a later size's failure keeps this one
    finally:
        if competitor is not None:
            competitor.kill()
    print(format_table(cells, args.busy))
    write_json(out, results(cells, args.busy, args.reps))
    print(f"wrote {out}")


def results(cells: dict[str, Any], busy: bool, reps: int) -> dict[str, Any]:
    return {"cells": cells, "busy": busy, "reps": reps, "machine": platform.platform(), "cpus": os.cpu_count(),
            "git": git_revision()}


def summarize(runs: dict[str, list[dict[str, float]]], ceilings: list[float], hidden: int, steps: int) -> dict:
    flops = update_flops(hidden)
    cell: dict[str, Any] = {"steps": steps, "ceiling_gflops": statistics.median(ceilings), "systems": {}, "ratios": {}}
    for system, results in runs.items():
        loop = statistics.median(r["loop_steps_per_s"] for r in results)
        cell["systems"][system] = {
            "loop_steps_per_s": loop, "whole_steps_per_s": statistics.median(r["whole_steps_per_s"] for r in results),
            "startup_s": statistics.median(r["startup_s"] for r in results),
            "fraction_of_ceiling": loop * flops / 1e9 / cell["ceiling_gflops"], "runs": results}
    for a, b in (("dynsac", "sb3"), ("dynsac", "sbx"), ("dynsac", "dynsac-ref"), ("dynsac-ref", "sb3"),
                 ("dynsac-ref", "sbx"), ("dynsac-learned", "dynsac"), ("dynsac-learned", "dynsac-random"),
                 ("dynsac-compiled", "dynsac"), ("dynsac", "dynsac-fp32"), ("dynsac-bf16", "dynsac-fp32"),
                 ("dynsac-bf16", "sb3"), ("dynsac-bf16", "sbx"),
                 ("dynsac-compiled", "sb3"), ("dynsac-compiled", "sbx")):
        if a in runs and b in runs:
            cell["ratios"][f"{a}/{b}"] = statistics.median(
                x["loop_steps_per_s"] / y["loop_steps_per_s"] for x, y in zip(runs[a], runs[b]))
            cell["ratios"][f"{a}/{b} whole"] = statistics.median(
                x["whole_steps_per_s"] / y["whole_steps_per_s"] for x, y in zip(runs[a], runs[b]))
    return cell


def format_table(cells: dict[str, Any], busy: bool) -> str:
    lines = [f"env steps/s, Pendulum-v1, batch 256, whole processes{' beside one busy process' if busy else ''} "
             "(loop / whole process; start-up s; % of the fp32 matmul ceiling)"]
    for hidden, cell in cells.items():
        lines.append(f"[{hidden}, {hidden}] ({cell['steps']} steps, ceiling {cell['ceiling_gflops']:.0f} GFLOP/s)")
        for system, row in cell["systems"].items():
            lines.append(f"  {system:<24} {row['loop_steps_per_s']:8.1f} / {row['whole_steps_per_s']:6.1f}   "
                         f"start-up {row['startup_s']:5.1f} s   {100 * row['fraction_of_ceiling']:5.1f}% of ceiling")
        lines.append("  " + ", ".join(f"{name} {value:.2f}" for name, value in cell["ratios"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
