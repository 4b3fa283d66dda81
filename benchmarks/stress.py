"""Stress: do SAC runs survive, and learn alike, when the rewards are multiplied by 1, 1e3, 1e6?

Grid: Pendulum-v1 and dynsac/RandomLinear-v0, rewards multiplied by 1, 1e3 and 1e6, learning
rates 3e-4 and 3e-3, seeds 0, 1, 2; dynsac with its default config for the env (no hand-set
reward_scale) against Stable-Baselines3 SAC with the same hyperparameters. RandomLinear runs use
`context.source=none` on both sides (SB3 has no context), so both train the same algorithm.

Plus the "crash case" from the users' report: Pendulum-v1, rewards x1e6, lr 3e-3, tau 0.01, seed 0,
25,000 steps (SB3 2.9.2 dies there at env step 23,763 with `Normal(loc=nan)`), for SB3, dynsac's
defaults, and dynsac with `safety.reward_normalization=none` to show that its early warnings name
the trouble long before anything is non-finite.

Per run: crash (an exception escaped training), non-finite events (dynsac: skipped updates +
rollbacks + graceful stops; SB3: the exception's NaN, or non-finite parameters at the end),
rollbacks, early warnings, and the final deterministic return divided by the multiplier (10
episodes, episode i reset with seed `seed + 1_000_000 + i` on both sides; RandomLinear also the
optimality ratio = LQR return / agent return).

Targets: zero crashes for dynsac; for each env and learning rate, dynsac's mean return at x1e6
within 10% of its mean return at x1.

    PYTHONPATH=src python benchmarks/stress.py                            # everything (long)
    PYTHONPATH=src python benchmarks/stress.py --steps 300 --crash-steps 300 --seeds 0 \\
        --multipliers 1,1e6 --lrs 3e-3 --out /tmp/stress_smoke.json            # smoke test
    PYTHONPATH=src python benchmarks/stress.py --resume-results          # finish a killed run

Runs go to `--jobs` worker processes (one torch thread each); each finished run is written to the
JSON at once. Needs `pip install -e '.[bench]'` for the SB3 side (`--libs dynsac` runs without it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from common import (REPO_ROOT, git_revision, read_previous_runs, require_sb3, run_pool, snapshot_source,
                    use_snapshot, write_json)

ENVS = {
    "pendulum": {"id": "Pendulum-v1", "config": REPO_ROOT / "configs" / "pendulum.yaml", "overrides": []},
    "linear": {"id": "dynsac/RandomLinear-v0", "config": REPO_ROOT / "training" / "config_dynamics_map.yaml",
               "overrides": ["context.source=none"]},
}
LIBS = ("dynsac", "sb3")
MULTIPLIERS = (1.0, 1e3, 1e6)
LEARNING_RATES = (3e-4, 3e-3)
CRASH_CASE = {"env": "pendulum", "multiplier": 1e6, "lr": 3e-3, "tau": 0.01, "seed": 0}
CRASH_VARIANTS = {"sb3": ("sb3", []), "dynsac": ("dynsac", []),
                  "dynsac-no-normalization": ("dynsac", ["safety.reward_normalization=none"])}
EVAL_SEED_OFFSET = 1_000_000
SCALE_INVARIANCE_TOLERANCE = 0.10
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "stress.json"
RUNS_DIR = REPO_ROOT / "benchmarks" / "results" / "stress_runs"


class ScaledReward(gym.Wrapper):
    """`base_id` with every reward multiplied by `multiplier` (dynsac builds it as `stress:ScaledReward`)."""

    def __init__(self, base_id: str, multiplier: float, **base_kwargs: Any) -> None:
        from dynsac.envs.registration import register_envs

        register_envs()
        super().__init__(gym.make(base_id, **base_kwargs))
        self.multiplier = float(multiplier)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward) * self.multiplier, terminated, truncated, info


# ----------------------------------------------------------------------------- command line
def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Reward-scale stress test of dynsac against Stable-Baselines3 SAC.")
    parser.add_argument("--steps", type=int, default=10_000, help="env steps per grid run (default 10000)")
    parser.add_argument("--crash-steps", type=int, default=25_000, help="env steps of the crash case (default 25000; 0 skips it)")
    parser.add_argument("--envs", default=",".join(ENVS), help="comma-separated: pendulum, linear (default both)")
    parser.add_argument("--libs", default=",".join(LIBS), help="comma-separated: dynsac, sb3 (default both)")
    parser.add_argument("--multipliers", default="1,1e3,1e6", help="reward multipliers (default 1,1e3,1e6)")
    parser.add_argument("--lrs", default="3e-4,3e-3", help="learning rates (default 3e-4,3e-3)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds (default 0,1,2)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="deterministic eval episodes (default 10)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes, one torch thread each (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default benchmarks/results/stress.json)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="dynsac run folders (default benchmarks/results/stress_runs)")
    parser.add_argument("--resume-results", action="store_true", help="skip the runs --out already holds")
    parser.add_argument("--crash-case-only", action="store_true", help="run only the crash case (its --libs variants)")
    parser.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                        help="dynsac config override for every grid run, after its learning rate, e.g. "
                        "training.critic_learning_rate=5e-4 (the default critic rate, which an explicit "
                        "learning_rate replaces) (repeatable)")
    parser.add_argument("--crash-variants", default=",".join(CRASH_VARIANTS),
                        help=f"crash-case variants (default {','.join(CRASH_VARIANTS)})")
    args = parser.parse_args(argv)
    try:
        args.multipliers, args.lrs = _floats(args.multipliers), _floats(args.lrs)
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        parser.error(f"--multipliers/--lrs/--seeds: {err}; expected comma-separated numbers, e.g. --lrs 3e-4,3e-3")
    args.crash_variants = [v.strip() for v in args.crash_variants.split(",") if v.strip()]
    if unknown := [v for v in args.crash_variants if v not in CRASH_VARIANTS]:
        parser.error(f"--crash-variants: unknown {unknown}; choose from {', '.join(CRASH_VARIANTS)}")
    args.envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    args.libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    if unknown := [e for e in args.envs if e not in ENVS]:
        parser.error(f"--envs: unknown {unknown}; choose from {', '.join(ENVS)}")
    if unknown := [lib for lib in args.libs if lib not in LIBS]:
        parser.error(f"--libs: unknown {unknown}; choose from {', '.join(LIBS)}")
    if not (args.envs and args.libs and args.multipliers and args.lrs and args.seeds):
        parser.error("--envs, --libs, --multipliers, --lrs and --seeds each need at least one value")
    if args.steps < 1 or args.crash_steps < 0 or args.eval_episodes < 1 or args.jobs < 1:
        parser.error("--steps, --eval-episodes and --jobs must be >= 1, --crash-steps >= 0")
    if "sb3" in args.libs:
        require_sb3("dynsac")
    return args


# ----------------------------------------------------------------------------- the runs
def make_specs(args: argparse.Namespace, code_dir: str, configs: dict[str, Path]) -> list[dict[str, Any]]:
    specs = []
    if args.crash_steps and CRASH_CASE["env"] in args.envs:
        case = CRASH_CASE
        for variant, (lib, extra) in CRASH_VARIANTS.items():
            if lib in args.libs and variant in args.crash_variants:
                specs.append({"key": f"crash_case_{variant}", "group": "crash_case", "variant": variant, "lib": lib,
                              "env": case["env"], "multiplier": case["multiplier"], "lr": case["lr"],
                              "tau": case["tau"], "seed": case["seed"], "steps": args.crash_steps, "extra": extra})
    for seed in [] if args.crash_case_only else args.seeds:  # seed-major: a cut-short run has every cell's first seeds
        for env in args.envs:
            for multiplier in args.multipliers:
                for lr in args.lrs:
                    for lib in args.libs:
                        specs.append({"key": f"{env}_x{multiplier:g}_lr{lr:g}_{lib}_seed{seed}", "group": "grid",
                                      "variant": lib, "lib": lib, "env": env, "multiplier": multiplier, "lr": lr,
                                      "tau": None, "seed": seed, "steps": args.steps,
                                      "extra": args.set if lib == "dynsac" else []})
    for spec in specs:
        spec.update(code_dir=code_dir, config=str(configs[spec["env"]]), eval_episodes=args.eval_episodes,
                    log_dir=str(args.runs_dir / spec["key"]))
    return specs


def dynsac_config(spec: dict[str, Any]):
    from dynsac.config import load_config

    env = ENVS[spec["env"]]
    overrides = [
        *env["overrides"],
        "env.id=stress:ScaledReward",
        f"env.kwargs.base_id={env['id']}",
        f"env.kwargs.multiplier={spec['multiplier']}",
        f"training.seed={spec['seed']}",
        f"training.total_steps={spec['steps']}",
        f"training.learning_rate={spec['lr']}",
        "training.checkpoint_interval=0",
        "training.eval_interval=0",
        "training.torch_threads=1",
        "training.device=cpu",
        f"logging.dir={spec['log_dir']}",
        f"training.checkpoint_dir={spec['log_dir']}/checkpoints",  # where a safety stop's emergency checkpoint goes
        "logging.progress=off",
        *([f"training.tau={spec['tau']}"] if spec["tau"] is not None else []),
        *spec["extra"],
    ]
    return load_config(spec["config"], overrides)


def base_kwargs(config) -> dict[str, Any]:
    """The base env's own kwargs (without the ScaledReward ones)."""
    return {k: v for k, v in config.env.kwargs.items() if k not in ("base_id", "multiplier")}


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one run. Never raises: a crash is part of the result."""
    use_snapshot(spec["code_dir"])
    result = {k: spec[k] for k in ("key", "group", "variant", "lib", "env", "multiplier", "lr", "tau", "seed", "steps")}
    start = time.perf_counter()
    try:
        config = dynsac_config(spec)  # SB3 is built from the same values
        result.update(run_dynsac(spec, config) if spec["lib"] == "dynsac" else run_sb3(spec, config))
    except Exception as err:  # noqa: BLE001 - a harness failure is reported, not a crash of the library
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
    result["wall_s"] = time.perf_counter() - start
    return result


def run_dynsac(spec: dict[str, Any], config) -> dict[str, Any]:
    from dynsac.training import SACTrainer

    log_dir = Path(spec["log_dir"])
    if log_dir.exists():  # metrics.jsonl is appended to: start the folder afresh
        shutil.rmtree(log_dir)
    trainer = SACTrainer(config)
    out: dict[str, Any] = {"crashed": False}
    try:
        train = trainer.train()
        out["stop_reason"] = train.stop_reason
    except Exception as err:  # noqa: BLE001 - this is what the benchmark counts
        out.update(crashed=True, crash=f"{type(err).__name__}: {err}", crash_step=trainer.step,
                   traceback=traceback.format_exc())
    out["train_steps"] = trainer.step
    out["rollbacks"] = trainer.rollbacks
    out["skipped_updates"] = trainer.agent.skipped_steps
    out["nonfinite_events"] = trainer.rollbacks + trainer.agent.skipped_steps + int(bool(out.get("stop_reason")))
    out["warnings"] = dict(trainer.early_warnings.monitor.counts)
    out["warnings_first_step"] = dict(trainer.early_warnings.monitor.first_step)
    out["events"] = first_events(log_dir)
    if not out["crashed"]:
        ev = trainer.evaluate(spec["eval_episodes"])
        out["returns"] = [r / spec["multiplier"] for r in ev.returns]  # the wrapper scaled them
        out["optimal_returns"] = ev.optimal_returns  # from the unwrapped env: unscaled
    return out


def first_events(log_dir: Path, limit: int = 30) -> list[dict[str, Any]]:
    """The first `limit` safety events of a dynsac run (step, kind, message)."""
    from dynsac.training.logger import read_metrics

    events = [r for r in read_metrics(log_dir) if "event" in r]
    return [{"step": e["step"], "event": e["event"], "message": e["message"]} for e in events[:limit]]


def run_sb3(spec: dict[str, Any], config) -> dict[str, Any]:
    import torch
    from stable_baselines3 import SAC

    t = config.training
    env = ScaledReward(ENVS[spec["env"]]["id"], spec["multiplier"], **base_kwargs(config))
    model = SAC(
        "MlpPolicy", env, learning_rate=t.learning_rate, buffer_size=t.buffer_size, learning_starts=t.learning_starts,
        batch_size=t.batch_size, tau=t.tau, gamma=t.gamma, train_freq=1, gradient_steps=t.updates_per_step,
        ent_coef=f"auto_{t.init_alpha}" if t.alpha == "auto" else float(t.alpha),
        target_entropy="auto" if t.target_entropy == "auto" else float(t.target_entropy),
        policy_kwargs=dict(net_arch=list(t.hidden_sizes)), seed=spec["seed"], device="cpu", verbose=0,
    )
    out: dict[str, Any] = {"crashed": False}
    try:
        model.learn(total_timesteps=spec["steps"])
    except Exception as err:  # noqa: BLE001 - this is what the benchmark counts
        out.update(crashed=True, crash=f"{type(err).__name__}: {err}"[:400], crash_step=int(model.num_timesteps))
    env.close()
    nonfinite_parameters = [name for name, p in model.policy.named_parameters() if not torch.isfinite(p).all()]
    out["train_steps"] = int(model.num_timesteps)
    out["nonfinite_parameters"] = nonfinite_parameters
    out["nonfinite_events"] = int(bool(nonfinite_parameters) or "nan" in out.get("crash", "").lower())
    out["rollbacks"] = 0
    if not out["crashed"]:
        out["returns"], out["optimal_returns"] = evaluate_sb3(model, spec, config)
    return out


def evaluate_sb3(model, spec: dict[str, Any], config) -> tuple[list[float], list[float] | None]:
    """The same episodes as dynsac's evaluate, on the unscaled env."""
    from dynsac.envs.registration import register_envs

    register_envs()
    env = gym.make(ENVS[spec["env"]]["id"], **base_kwargs(config), **config.env.eval_kwargs)
    knows_optimum = hasattr(env.unwrapped, "optimal_return")
    returns, optimal = [], []
    for episode in range(spec["eval_episodes"]):
        seed = spec["seed"] + EVAL_SEED_OFFSET + episode
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        if knows_optimum:
            optimal.append(float(env.unwrapped.optimal_return(seed=seed)))
    env.close()
    return returns, optimal if knows_optimum else None


# ----------------------------------------------------------------------------- statistics
def run_return(run: dict[str, Any]) -> float | None:
    return float(np.mean(run["returns"])) if run.get("returns") else None


def run_ratio(run: dict[str, Any]) -> float | None:
    if not run.get("returns") or not run.get("optimal_returns"):
        return None
    return float(np.sum(run["optimal_returns"]) / np.sum(run["returns"]))


def is_complete(run: dict[str, Any] | None, spec: dict[str, Any]) -> bool:
    return bool(run) and "error" not in run and run.get("steps") == spec["steps"]


def summarize_cells(runs: dict[str, Any]) -> list[dict[str, Any]]:
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs.values():
        if run.get("group") == "grid" and "error" not in run:
            cells.setdefault((run["env"], run["multiplier"], run["lr"], run["lib"]), []).append(run)
    rows = []
    for (env, multiplier, lr, lib), members in sorted(cells.items()):
        returns = [r for r in map(run_return, members) if r is not None]
        ratios = [r for r in map(run_ratio, members) if r is not None]
        rows.append({
            "env": env, "multiplier": multiplier, "lr": lr, "lib": lib, "runs": len(members),
            "crashes": sum(r["crashed"] for r in members),
            "nonfinite_events": sum(r["nonfinite_events"] for r in members),
            "rollbacks": sum(r["rollbacks"] for r in members),
            "warnings": sum(sum(r.get("warnings", {}).values()) for r in members),
            "return_mean": float(np.mean(returns)) if returns else None,
            "return_std": float(np.std(returns)) if returns else None,
            "ratio_mean": float(np.mean(ratios)) if ratios else None,
        })
    return rows


def scale_invariance(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """dynsac's mean return at the largest multiplier against x1, per env and learning rate."""
    checks = []
    by_key = {(r["env"], r["multiplier"], r["lr"], r["lib"]): r for r in rows}
    for (env, multiplier, lr, lib), row in sorted(by_key.items()):
        if lib != "dynsac" or multiplier != max(MULTIPLIERS) or (env, 1.0, lr, lib) not in by_key:
            continue
        base = by_key[(env, 1.0, lr, lib)]["return_mean"]
        high = row["return_mean"]
        if base is None or high is None:
            continue
        deviation = abs(high - base) / abs(base)
        checks.append({"env": env, "lr": lr, "return_x1": base, f"return_x{multiplier:g}": high,
                       "relative_difference": deviation, "met": deviation <= SCALE_INVARIANCE_TOLERANCE})
    return checks


# ----------------------------------------------------------------------------- report
def _num(value: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def format_grid(rows: list[dict[str, Any]]) -> str:
    header = (f"{'env':<9} {'reward x':>8} {'lr':>7} {'lib':<7} {'runs':>4} {'crashes':>7} {'non-finite':>10} "
              f"{'rollbacks':>9} {'warnings':>8} {'return/x (mean ± std)':>24} {'LQR ratio':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ret = "-" if r["return_mean"] is None else f"{r['return_mean']:.1f} ± {r['return_std']:.1f}"
        ratio = "-" if r["ratio_mean"] is None else f"{r['ratio_mean']:.3f}"
        lines.append(f"{r['env']:<9} {r['multiplier']:>8g} {r['lr']:>7g} {r['lib']:<7} {r['runs']:>4} {r['crashes']:>7} "
                     f"{r['nonfinite_events']:>10} {r['rollbacks']:>9} {r['warnings']:>8} {ret:>24} {ratio:>9}")
    return "\n".join(lines)


def format_crash_case(runs: dict[str, Any]) -> str:
    case = CRASH_CASE
    lines = [f"Crash case: {ENVS[case['env']]['id']}, rewards x{case['multiplier']:g}, lr {case['lr']:g}, "
             f"tau {case['tau']}, seed {case['seed']}"]
    for variant in CRASH_VARIANTS:
        run = runs.get(f"crash_case_{variant}")
        if run is None or "error" in run:
            lines.append(f"  {variant:<24} {'not run' if run is None else 'harness error: ' + run['error']}")
            continue
        outcome = (f"CRASHED at step {run['crash_step']:,}: {run['crash'][:120]}" if run["crashed"]
                   else f"finished {run['train_steps']:,} steps, return/x {run_return(run):.1f}")
        lines.append(f"  {variant:<24} {outcome}; non-finite events {run['nonfinite_events']}, "
                     f"rollbacks {run['rollbacks']}")
        for event in run.get("events", [])[:8]:
            lines.append(f"      step {event['step']:>6,} {event['event']}: {event['message'][:150]}")
    return "\n".join(lines)


def build_report(runs: dict[str, Any], specs: list[dict[str, Any]], meta: dict[str, Any], wall_s: float,
                 earlier_wall_s: float) -> dict[str, Any]:
    rows = summarize_cells(runs)
    complete = [s["key"] for s in specs if is_complete(runs.get(s["key"]), s)]
    dynsac_crashes = sum(r["crashed"] for r in runs.values() if r.get("lib") == "dynsac" and "error" not in r)
    return {**meta, "runs_expected": len(specs), "runs_complete": len(complete),
            "finished": len(complete) == len(specs), "wall_time_s": wall_s,
            "wall_time_total_s": earlier_wall_s + wall_s, "grid": rows, "scale_invariance": scale_invariance(rows),
            "dynsac_crashes": dynsac_crashes, "runs": runs}


def print_report(report: dict[str, Any]) -> None:
    print("\n" + "=" * 110)
    print(f"Stress benchmark: {report['steps']:,} steps per grid run, seeds {report['seeds']}, "
          f"{report['eval_episodes']} eval episodes; runs complete {report['runs_complete']}/{report['runs_expected']}"
          + ("" if report["finished"] else " (PARTIAL RESULTS)"))
    print("return/x: deterministic eval return divided by the reward multiplier (unscaled units), mean ± std over "
          "seeds; non-finite: skipped updates + rollbacks + stops (dynsac), NaN crash or NaN weights (SB3)")
    for key, run in report["runs"].items():
        if "error" in run:
            print(f"  run {key}: harness error: {run['error']}")
    print()
    print(format_grid(report["grid"]))
    print()
    print(f"dynsac crashes: {report['dynsac_crashes']} (target 0)")
    for check in report["scale_invariance"]:
        top = max(MULTIPLIERS)
        print(f"scale invariance {check['env']} lr {check['lr']:g}: x1 {check['return_x1']:.1f}, "
              f"x{top:g} {check[f'return_x{top:g}']:.1f}, difference {check['relative_difference']:.1%} "
              f"({'met' if check['met'] else 'NOT met'}, target <= {SCALE_INVARIANCE_TOLERANCE:.0%})")
    if any(k.startswith("crash_case_") for k in report["runs"]):
        print()
        print(format_crash_case(report["runs"]))
    print(f"\nTotal wall time {report['wall_time_total_s'] / 60:.1f} min; results: {report['out']}")
    print("=" * 110)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    meta = {"benchmark": "stress", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "git": git_revision(), "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "jobs": args.jobs, "steps": args.steps,
            "crash_steps": args.crash_steps, "seeds": args.seeds, "envs": args.envs, "libs": args.libs,
            "multipliers": args.multipliers, "learning_rates": args.lrs, "eval_episodes": args.eval_episodes,
            "extra_overrides": args.set,
            "base_configs": {e: {"path": str(ENVS[e]["config"].relative_to(REPO_ROOT)), "overrides": ENVS[e]["overrides"]}
                             for e in args.envs},
            "out": str(args.out)}
    runs, earlier_wall = read_previous_runs(args.out) if args.resume_results else ({}, 0.0)
    snapshot, copies = snapshot_source("stress_src_", [ENVS[e]["config"] for e in args.envs])
    shutil.copyfile(Path(__file__).resolve(), snapshot / "stress.py")  # workers build `stress:ScaledReward`
    shutil.copyfile(Path(__file__).resolve().parent / "common.py", snapshot / "common.py")
    specs = make_specs(args, str(snapshot), {e: copies[ENVS[e]["config"]] for e in args.envs})
    todo = [s for s in specs if not is_complete(runs.get(s["key"]), s)]
    print(f"[stress] {len(todo)} run(s) to do ({len(specs) - len(todo)} already in {args.out}), {args.jobs} worker(s)",
          flush=True)

    def save() -> dict[str, Any]:
        report = build_report(runs, specs, meta, time.monotonic() - start, earlier_wall)
        write_json(args.out, report)
        return report

    interrupted = False
    save()
    try:
        for done, result in enumerate(run_pool(run_one, todo, args.jobs), 1):
            runs[result["key"]] = result
            save()
            if "error" in result:
                status = f"harness error: {result['error']}"
            elif result["crashed"]:
                status = f"CRASHED at step {result['crash_step']:,}: {result['crash'][:100]}"
            else:
                status = f"return/x {run_return(result):.1f}, non-finite events {result['nonfinite_events']}"
            print(f"[stress] {done}/{len(todo)} {result['key']} ({result['wall_s']:.0f} s): {status} "
                  f"[elapsed {(time.monotonic() - start) / 60:.1f} min]", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\n[stress] interrupted: finished runs are saved (continue with --resume-results)", flush=True)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    report = save()
    print_report(report)
    if interrupted:
        return 130
    return 0 if report["finished"] and report["dynsac_crashes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
