"""Does the dynamics map help? SAC with no context, a learned context and the oracle context.

For each env (dynsac/RandomLinear-v0, dynsac/RandomPendulum-v0; dynsac/RandomHalfCheetah-v0 on
request, `--envs halfcheetah`, needs MuJoCo), each `context.source` (`none`: plain SAC; `learned`:
the dynamics-map encoder; `env`: the env's true dynamics parameters, an upper bound) and each
seed, SAC is trained for a fixed number of steps and its deterministic policy is evaluated on
train-range and on held-out test-range dynamics (`trainer.evaluate(episodes, {"split": "train" |
"test"})`, `--eval-episodes`, 10 each). During training every run also logs a learning curve:
`eval/return_mean` every `--eval-interval` steps (1000; 0 = none) over `--curve-episodes`
episodes (5) on the config's eval dynamics (`env.eval_kwargs`: train range for RandomLinear and
RandomPendulum, test range for RandomHalfCheetah).

The script prints a table (mean ± std over seeds) and checks three targets:
  1. RandomLinear, learned: optimality ratio >= 0.9 on train-range dynamics;
  2. on every env, learned beats none on test-range dynamics by more than the seeds' spread
     (mean(learned) - mean(none) > std(none) + std(learned));
  3. on every env, learned closes at least half the none -> env gap on test:
     (mean(learned) - mean(none)) / (mean(env) - mean(none)) >= 0.5.

Runs go to a pool of `--jobs` worker processes (spawned; one torch thread each). Each finished
run is written to the JSON at once, so a killed benchmark leaves partial results, and
`--resume-results` skips the runs the JSON already holds (same step budget and eval interval,
run folder still there). `--set KEY=VALUE` (repeatable) adds config overrides to every run, e.g.
smaller networks for a smoke test; the keys the script sets itself are refused.

    PYTHONPATH=src python benchmarks/context_benefit.py                      # full: 18 runs
    PYTHONPATH=src python benchmarks/context_benefit.py --linear-steps 300 --pendulum-steps 300 \\
        --seeds 0 --out /tmp/cb_smoke.json                                   # smoke test
    PYTHONPATH=src python benchmarks/context_benefit.py --resume-results     # finish a killed run
    dynsac plot benchmarks/results/context_benefit_runs/ --out context_benefit.png   # its curves

Per-run logs (metrics.jsonl, config.yaml, summary.json, TensorBoard) go to
benchmarks/results/context_benefit_runs/{env}_{source}_seed{seed}: `dynsac plot` on that folder
draws each env's none / learned / env curves (mean over seeds, min-max band, the LQR optimum on
RandomLinear); benchmarks/gallery.py draws the README's gallery from short runs of this script.
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

import numpy as np

from common import REPO_ROOT, git_revision, read_previous_runs, run_pool, snapshot_source, use_snapshot, write_json

# ----------------------------------------------------------------------------- what is compared
# Base config of each env: change these to benchmark other settings.
LINEAR_CONFIG = REPO_ROOT / "training" / "config_dynamics_map.yaml"
LINEAR_OVERRIDES: list[str] = []
PENDULUM_CONFIG = REPO_ROOT / "configs" / "random_pendulum.yaml"
PENDULUM_OVERRIDES: list[str] = []
HALFCHEETAH_CONFIG = REPO_ROOT / "configs" / "random_halfcheetah_learned.yaml"
HALFCHEETAH_OVERRIDES = ["training.learning_starts=1000"]  # the config's 10,000 exceeds this script's budgets
# Used only while configs/random_pendulum.yaml does not exist.
PENDULUM_FALLBACK_CONFIG = LINEAR_CONFIG
PENDULUM_FALLBACK_OVERRIDES = [
    "env.id=dynsac/RandomPendulum-v0",
    "env.kwargs={}",
    "training.reward_scale=1.0",
    "training.learning_rate=1e-3",
    "training.learning_starts=1000",
]

ENVS = ("linear", "pendulum", "halfcheetah")
DEFAULT_ENVS = ("linear", "pendulum")
ENV_IDS = {"linear": "dynsac/RandomLinear-v0", "pendulum": "dynsac/RandomPendulum-v0",
           "halfcheetah": "dynsac/RandomHalfCheetah-v0"}
SOURCES = ("none", "learned", "env")
SPLITS = ("train", "test")
EVAL_EPISODES = 10
EVAL_INTERVAL = 1000
CURVE_EPISODES = 5
# Set per run by the script: --set may not override them (the flag that does is named in the error).
RESERVED_KEYS = {
    "training.seed": "--seeds", "training.total_steps": "--linear-steps / --pendulum-steps / --halfcheetah-steps",
    "context.source": "--sources", "training.eval_interval": "--eval-interval",
    "training.eval_episodes": "--curve-episodes", "logging.dir": "--runs-dir", "env.id": "--envs",
    "training.checkpoint_interval": None, "logging.progress": None, "training.torch_threads": None,
}

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "context_benefit.json"
RUNS_DIR = REPO_ROOT / "benchmarks" / "results" / "context_benefit_runs"

# Targets.
LINEAR_TRAIN_RATIO_TARGET = 0.9
GAP_CLOSED_TARGET = 0.5


# ----------------------------------------------------------------------------- command line
def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train SAC with context.source none / learned / env on RandomLinear and RandomPendulum "
        "(and RandomHalfCheetah on request) and compare returns on train-range and held-out test-range dynamics."
    )
    parser.add_argument("--linear-steps", type=int, default=10_000, help="training steps per RandomLinear run (default 10000)")
    parser.add_argument("--pendulum-steps", type=int, default=10_000, help="training steps per RandomPendulum run (default 10000)")
    parser.add_argument("--halfcheetah-steps", type=int, default=10_000,
                        help="training steps per RandomHalfCheetah run (default 10000; only with --envs halfcheetah)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated context sources (default none,learned,env)")
    parser.add_argument("--envs", default=",".join(DEFAULT_ENVS),
                        help="comma-separated envs: linear, pendulum, halfcheetah (needs MuJoCo) (default linear,pendulum)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes, one torch thread each (default 2)")
    parser.add_argument("--eval-episodes", type=int, default=EVAL_EPISODES,
                        help="final evaluation episodes per split (default 10)")
    parser.add_argument("--eval-interval", type=int, default=EVAL_INTERVAL,
                        help="log eval/return_mean every N training steps, the learning curve `dynsac plot` draws "
                        f"(training.eval_interval; default {EVAL_INTERVAL}; 0: only at the end)")
    parser.add_argument("--curve-episodes", type=int, default=CURVE_EPISODES,
                        help=f"episodes per learning-curve evaluation (training.eval_episodes; default {CURVE_EPISODES})")
    parser.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run, e.g. training.hidden_sizes=[16,16] (repeatable)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default benchmarks/results/context_benefit.json)")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR), help="per-run log folders (default benchmarks/results/context_benefit_runs)")
    parser.add_argument("--resume-results", action="store_true", help="skip the runs --out already holds complete (same step budget and "
                        "learning-curve settings, run folder still there)")
    args = parser.parse_args(argv)

    try:
        args.seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    if not args.seeds or any(s < 0 for s in args.seeds):
        parser.error("--seeds: give at least one seed, each >= 0")
    args.seeds = sorted(set(args.seeds))
    for name, valid in (("sources", SOURCES), ("envs", ENVS)):
        chosen = [v.lower() for v in _csv(getattr(args, name))]
        unknown = [v for v in chosen if v not in valid]
        if unknown or not chosen:
            parser.error(f"--{name}: unknown {unknown}; choose from {', '.join(valid)}")
        setattr(args, name, [v for v in valid if v in chosen])  # canonical order, no duplicates
    for name in ("linear_steps", "pendulum_steps", "halfcheetah_steps", "jobs", "eval_episodes", "curve_episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.eval_interval < 0:
        parser.error("--eval-interval must be >= 0 (0: no learning curve, only the final evaluation)")
    for override in args.set:
        key, sep, _ = override.partition("=")
        key = key.strip()
        if not sep or not key:
            parser.error(f"--set {override!r}: expected KEY=VALUE, e.g. training.hidden_sizes=[16,16]")
        if key in RESERVED_KEYS:
            flag = RESERVED_KEYS[key]
            parser.error(f"--set {override!r}: {key} is set by this script" + (f"; use {flag}" if flag else ""))
    args.out = Path(args.out)
    args.runs_dir = Path(args.runs_dir)
    return args


def base_config(env: str) -> tuple[Path, list[str]]:
    if env == "linear":
        return LINEAR_CONFIG, list(LINEAR_OVERRIDES)
    if env == "halfcheetah":
        return HALFCHEETAH_CONFIG, list(HALFCHEETAH_OVERRIDES)
    if PENDULUM_CONFIG.is_file():
        return PENDULUM_CONFIG, list(PENDULUM_OVERRIDES)
    return PENDULUM_FALLBACK_CONFIG, list(PENDULUM_FALLBACK_OVERRIDES)


def run_key(env: str, source: str, seed: int) -> str:
    return f"{env}_{source}_seed{seed}"


# ----------------------------------------------------------------------------- one run (in a worker)
def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one agent and evaluate it on both splits. Never raises: errors are returned."""
    import torch

    torch.set_num_threads(1)
    use_snapshot(spec.get("code_dir"))
    result: dict[str, Any] = {k: spec[k] for k in ("key", "env", "source", "seed", "steps", "git")}
    for key in ("eval_interval", "curve_episodes"):
        if key in spec:
            result[key] = spec[key]
    start = time.perf_counter()
    try:
        from dynsac.config import load_config
        from dynsac.training import SACTrainer
        import dynsac

        result["dynsac_version"] = getattr(dynsac, "__version__", None)
        result["code_from"] = str(Path(dynsac.__file__).parent)

        log_dir = Path(spec["log_dir"])
        if log_dir.exists():  # metrics.jsonl is appended to: start the folder afresh
            shutil.rmtree(log_dir)
        config = load_config(spec["config_path"], spec["overrides"])
        result["config"] = config.model_dump(mode="json")
        trainer = SACTrainer(config)
        train = trainer.train()
        result["train_wall_s"] = time.perf_counter() - start  # includes the trainer's final eval
        result["train_steps"] = int(train.steps)
        result["interrupted"] = bool(train.interrupted)
        result["device"] = str(trainer.device)
        eval_start = time.perf_counter()
        for split in SPLITS:
            ev = trainer.evaluate(spec["eval_episodes"], {"split": split})
            result[split] = {
                "returns": [float(r) for r in ev.returns],
                "mean": ev.mean,
                "std": ev.std,
                "optimal_returns": None if ev.optimal_returns is None else [float(r) for r in ev.optimal_returns],
                "optimal_mean": ev.optimal_mean,
                "optimality_ratio": ev.optimality_ratio,
            }
        result["eval_wall_s"] = time.perf_counter() - eval_start
        trainer.env.close()
        if trainer.rollout.eval_env is not None:
            trainer.rollout.eval_env.close()
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the benchmark
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
    result["wall_s"] = time.perf_counter() - start
    return result


def is_complete(run: dict[str, Any] | None, steps: int) -> bool:
    return bool(run) and "error" not in run and not run.get("interrupted") and run.get("steps") == steps \
        and run.get("train_steps") == steps and all(split in run for split in SPLITS)


def can_skip(run: dict[str, Any] | None, steps: int, args: argparse.Namespace, log_dir: Path) -> bool:
    """--resume-results: a run the JSON holds complete, with the same learning-curve settings (runs
    from before --eval-interval existed logged none: 0) and its run folder still there."""
    return is_complete(run, steps) and run.get("eval_interval", 0) == args.eval_interval \
        and (args.eval_interval == 0 or run.get("curve_episodes") == args.curve_episodes) \
        and (log_dir / "summary.json").is_file()


# ----------------------------------------------------------------------------- statistics
def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(runs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per env x source: seeds found and mean/std over seeds of each metric."""
    summary: dict[str, Any] = {}
    for env in args.envs:
        steps = steps_for(args, env)
        for source in args.sources:
            done = [runs[k] for k in (run_key(env, source, s) for s in args.seeds) if is_complete(runs.get(k), steps)]
            if not done:
                continue
            entry: dict[str, Any] = {"seeds": [r["seed"] for r in done], "steps": steps}
            for split in SPLITS:
                entry[f"{split}_return"] = _mean_std([r[split]["mean"] for r in done])
                if done[0][split]["optimality_ratio"] is not None:
                    entry[f"{split}_ratio"] = _mean_std([r[split]["optimality_ratio"] for r in done])
                    entry[f"{split}_optimal_return"] = _mean_std([r[split]["optimal_mean"] for r in done])
            summary[f"{env}/{source}"] = entry
    return summary


def steps_for(args: argparse.Namespace, env: str) -> int:
    return getattr(args, f"{env}_steps")


def _fmt(x: float) -> str:
    return f"{x:.3e}" if abs(x) >= 1e5 else f"{x:.1f}"


def _ms(pair: tuple[float, float] | None, ratio: bool = False) -> str:
    if pair is None:
        return "-"
    mean, std = pair
    return f"{mean:.3f} ± {std:.3f}" if ratio else f"{_fmt(mean)} ± {_fmt(std)}"


def format_table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    header = ["env", "source", "seeds", "train return", "test return", "train opt. ratio", "test opt. ratio"]
    rows = []
    for env in args.envs:
        optimal_row = None
        for source in args.sources:
            entry = summary.get(f"{env}/{source}")
            if entry is None:
                rows.append([env, source, "0", "(no finished run)", "", "", ""])
                continue
            rows.append([
                env, source, str(len(entry["seeds"])),
                _ms(entry["train_return"]), _ms(entry["test_return"]),
                _ms(entry.get("train_ratio"), ratio=True), _ms(entry.get("test_ratio"), ratio=True),
            ])
            if "train_optimal_return" in entry and optimal_row is None:
                optimal_row = [env, "(LQR optimum)", "", _ms(entry["train_optimal_return"]),
                               _ms(entry["test_optimal_return"]), "1.000", "1.000"]
        if optimal_row is not None:
            rows.append(optimal_row)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def verdict(summary: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The three targets, each with status PASS / FAIL / N/A and the numbers behind it."""
    checks: list[dict[str, Any]] = []

    # (1) RandomLinear learned: train-range optimality ratio >= 0.9.
    name = f"(1) RandomLinear learned: optimality ratio on train-range dynamics >= {LINEAR_TRAIN_RATIO_TARGET}"
    entry = summary.get("linear/learned")
    if entry is None or "train_ratio" not in entry:
        checks.append({"target": name, "status": "N/A", "detail": ["no finished linear/learned run"]})
    else:
        mean, std = entry["train_ratio"]
        checks.append({"target": name, "status": "PASS" if mean >= LINEAR_TRAIN_RATIO_TARGET else "FAIL",
                       "detail": [f"linear: train ratio {mean:.3f} ± {std:.3f} over {len(entry['seeds'])} seed(s)"]})

    # (2) learned beats none on test by more than the spread, on every env.
    name = "(2) learned beats none on test-range dynamics by more than std(none) + std(learned), every env"
    details, statuses = [], []
    for env in args.envs:
        none, learned = summary.get(f"{env}/none"), summary.get(f"{env}/learned")
        if none is None or learned is None:
            details.append(f"{env}: missing none or learned runs")
            statuses.append("N/A")
            continue
        (mn, sn), (ml, sl) = none["test_return"], learned["test_return"]
        diff, spread = ml - mn, sn + sl
        ok = diff > spread
        statuses.append("PASS" if ok else "FAIL")
        few = min(len(none["seeds"]), len(learned["seeds"])) < 2
        details.append(f"{env}: learned - none = {_fmt(ml)} - ({_fmt(mn)}) = {_fmt(diff)} "
                       f"{'>' if ok else '<='} spread {_fmt(sn)} + {_fmt(sl)} = {_fmt(spread)}  -> {statuses[-1]}"
                       + ("  (one seed: no spread estimate)" if few else ""))
    checks.append({"target": name, "status": _combine(statuses), "detail": details})

    # (3) learned closes >= half of the none -> env gap on test, on every env.
    name = f"(3) learned closes >= {GAP_CLOSED_TARGET:.0%} of the none -> env gap on test-range dynamics, every env"
    details, statuses = [], []
    for env in args.envs:
        none, learned, oracle = (summary.get(f"{env}/{s}") for s in ("none", "learned", "env"))
        if none is None or learned is None or oracle is None:
            details.append(f"{env}: missing none, learned or env runs")
            statuses.append("N/A")
            continue
        mn, ml, me = none["test_return"][0], learned["test_return"][0], oracle["test_return"][0]
        gap = me - mn
        if gap <= 0:
            statuses.append("FAIL")
            details.append(f"{env}: undefined, the oracle does not beat none on test (env - none = {_fmt(gap)}); "
                           f"learned - none = {_fmt(ml - mn)}  -> FAIL")
            continue
        frac = (ml - mn) / gap
        ok = frac >= GAP_CLOSED_TARGET
        statuses.append("PASS" if ok else "FAIL")
        details.append(f"{env}: (learned - none) / (env - none) = {_fmt(ml - mn)} / {_fmt(gap)} = {frac:.2f}  -> {statuses[-1]}")
    checks.append({"target": name, "status": _combine(statuses), "detail": details})
    return checks


def _combine(statuses: list[str]) -> str:
    if "FAIL" in statuses:
        return "FAIL"
    if "N/A" in statuses or not statuses:
        return "N/A"
    return "PASS"


def format_verdict(checks: list[dict[str, Any]]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check['status']:4}  {check['target']}")
        lines += [f"        {d}" for d in check["detail"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- results file
def build_report(runs: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any], wall_s: float,
                 earlier_wall_s: float, finished: bool) -> dict[str, Any]:
    summary = summarize(runs, args)
    expected = [(run_key(e, so, se), steps_for(args, e)) for e in args.envs for so in args.sources for se in args.seeds]
    complete = [k for k, steps in expected if is_complete(runs.get(k), steps)]
    return {
        **meta,
        "finished": finished and len(complete) == len(expected),
        "runs_expected": len(expected),
        "runs_complete": len(complete),
        "wall_time_s": wall_s,  # this invocation
        "wall_time_total_s": earlier_wall_s + wall_s,  # including the invocations --resume-results continued
        "sum_of_run_wall_s": float(sum(runs[k].get("wall_s", 0.0) for k in complete)),
        "summary": summary,
        "verdict": verdict(summary, args),
        "runs": runs,
    }


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    summary = summarize(report["runs"], args)
    print()
    print("=" * 100)
    print(f"Context benefit: SAC with context.source in {args.sources}, seeds {args.seeds}, "
          f"{args.eval_episodes} eval episodes per split (deterministic policy)")
    budgets = ", ".join(f"{ENV_IDS[e]} {steps_for(args, e):,} steps" for e in args.envs)
    print(f"Step budgets: {budgets}")
    for env in args.envs:
        path, overrides = report["base_configs"][env]["path"], report["base_configs"][env]["overrides"]
        print(f"Base config {env}: {path}" + (f" + {overrides}" if overrides else ""))
    print(f"Returns: mean ± std over seeds (std: sample std, ddof=1) of each run's mean eval return; "
          f"higher is better.\nOptimality ratio (RandomLinear): optimal (LQR) return / agent return, 1.0 = optimal.")
    if args.set:
        print(f"Extra overrides (--set): {args.set}")
    curves = (f"eval/return_mean every {args.eval_interval:,} steps over {args.curve_episodes} episode(s)"
              if args.eval_interval else "final evaluation only (--eval-interval 0)")
    print(f"Learning curves: {curves}, in {args.runs_dir} (draw them: dynsac plot {args.runs_dir})")
    print(f"Runs complete: {report['runs_complete']}/{report['runs_expected']}"
          + ("" if report["finished"] else "  (PARTIAL RESULTS)"))
    errors = {k: r["error"] for k, r in report["runs"].items() if "error" in r}
    for key, error in errors.items():
        print(f"  run {key} FAILED: {error}")
    print()
    print(format_table(summary, args))
    print()
    print("Verdict:")
    print(format_verdict(report["verdict"]))
    print()
    wall, total = report["wall_time_s"], report["wall_time_total_s"]
    print(f"Total wall time: {total:.0f} s ({total / 60:.1f} min) with --jobs {args.jobs}"
          + (f" (this invocation {wall:.0f} s; the rest from the resumed results)" if total - wall > 1 else "")
          + f"; sum of the runs' own wall times: {report['sum_of_run_wall_s']:.0f} s")
    print(f"Results: {args.out}")
    print("=" * 100)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    configs = {env: base_config(env) for env in args.envs}
    meta = {
        "benchmark": "context_benefit",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jobs": args.jobs,
        "seeds": args.seeds,
        "sources": args.sources,
        "envs": args.envs,
        "env_ids": {e: ENV_IDS[e] for e in args.envs},
        "steps": {e: steps_for(args, e) for e in args.envs},
        "eval_episodes": args.eval_episodes,
        "eval_interval": args.eval_interval,
        "curve_episodes": args.curve_episodes,
        "extra_overrides": args.set,
        "base_configs": {e: {"path": str(p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p),
                             "overrides": o} for e, (p, o) in configs.items()},
        "runs_dir": str(args.runs_dir),
    }

    runs: dict[str, Any] = {}
    earlier_wall = 0.0
    if args.resume_results:
        runs, earlier_wall = read_previous_runs(args.out)

    if args.set:  # a bad --set fails here, once, not in every run
        from dynsac.config import load_config

        try:
            for path, extra in configs.values():
                load_config(path, extra + args.set)
        except ValueError as err:
            print(f"[context_benefit] error: --set {args.set}: {err}", file=sys.stderr)
            return 2

    snapshot, copies = snapshot_source("context_benefit_src_", [path for path, _ in configs.values()])
    snap_configs = {env: (copies[path], extra + args.set) for env, (path, extra) in configs.items()}

    specs = []
    # Seed-major order: if the benchmark is cut short, every env x source has its first seeds.
    for seed in args.seeds:
        for env in args.envs:
            for source in args.sources:
                key, steps = run_key(env, source, seed), steps_for(args, env)
                log_dir = args.runs_dir / key
                if can_skip(runs.get(key), steps, args, log_dir):
                    continue
                runs.pop(key, None)  # rerun: an outdated result must not count as done if this one fails
                path, extra = snap_configs[env]
                overrides = [
                    *extra,
                    f"training.seed={seed}",
                    f"training.total_steps={steps}",
                    f"context.source={source}",
                    "training.checkpoint_interval=0",
                    f"training.eval_interval={args.eval_interval}",
                    f"training.eval_episodes={args.curve_episodes}",
                    f"logging.dir={log_dir}",
                    "logging.progress=off",
                    "training.torch_threads=1",
                ]
                specs.append({"key": key, "env": env, "source": source, "seed": seed, "steps": steps,
                              "config_path": str(path), "overrides": overrides, "log_dir": str(log_dir),
                              "eval_episodes": args.eval_episodes, "eval_interval": args.eval_interval,
                              "curve_episodes": args.curve_episodes, "code_dir": str(snapshot), "git": meta["git"]})
    total = len(args.envs) * len(args.sources) * len(args.seeds)
    print(f"[context_benefit] {len(specs)} run(s) to do ({total - len(specs)} already in {args.out}), "
          f"{args.jobs} worker(s); steps: {meta['steps']}; configs: "
          + "; ".join(f"{e}: {c['path']} {c['overrides'] or ''}".strip() for e, c in meta["base_configs"].items()),
          flush=True)

    def save(finished: bool) -> dict[str, Any]:
        report = build_report(runs, args, meta, time.monotonic() - start, earlier_wall, finished)
        write_json(args.out, report)
        return report

    interrupted = False
    if specs:
        save(False)
        try:
            for done, result in enumerate(run_pool(run_one, specs, args.jobs), 1):
                runs[result["key"]] = result
                save(False)
                elapsed = time.monotonic() - start
                if "error" in result:
                    status = f"FAILED: {result['error']}"
                else:
                    status = (f"train {_fmt(result['train']['mean'])}, test {_fmt(result['test']['mean'])}"
                              + (f", ratio train {result['train']['optimality_ratio']:.3f} "
                                 f"test {result['test']['optimality_ratio']:.3f}"
                                 if result["train"]["optimality_ratio"] is not None else ""))
                print(f"[context_benefit] {done}/{len(specs)} {result['key']} ({result['wall_s']:.0f} s): {status}  "
                      f"[elapsed {elapsed / 60:.1f} min]", flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("\n[context_benefit] interrupted: workers stopped; finished runs are saved "
                  f"(continue with --resume-results)", flush=True)
    shutil.rmtree(snapshot, ignore_errors=True)

    report = save(not interrupted)
    print_report(report, args)
    return 130 if interrupted else (0 if report["finished"] else 1)


if __name__ == "__main__":
    sys.exit(main())
