"""Command line: `dynsac train | resume | rewind | eval | export | plot | summary | sweep`.

Exit status: 0 done, 2 bad input (config, checkpoint, env), 3 stopped by the safety policy
(emergency checkpoint and diagnosis written), 130 interrupted (checkpoint saved); `dynsac sweep`:
1 when a trial failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_SAFETY_STOP = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynsac", description="Soft Actor-Critic with a dynamics map.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a config (or continue with --resume)")
    add_train_arguments(train)

    resume = commands.add_parser("resume", help="continue a run from a checkpoint, with its saved config")
    resume.add_argument("checkpoint", help="a sac_step_N.pt file")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a saved config field, e.g. training.total_steps=200000 (repeatable)")
    add_no_rewind(resume)

    rewind = commands.add_parser("rewind", help="resume a run from the checkpoint nearest its best eval (or a step)")
    rewind.add_argument("run_dir", metavar="RUN_DIR", help="the run's logging.dir (holding config.yaml, metrics.jsonl)")
    rewind.add_argument("--to", required=True, metavar="best|STEP",
                        help="best: the checkpoint nearest the best eval/return_mean; STEP: the one nearest that step")
    rewind.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a saved config field from there on, e.g. training.learning_rate=1e-4")

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint's (or an exported controller's) policy")
    evaluate.add_argument("checkpoint", help="a sac_step_N.pt file, or a controller written by dynsac export "
                                             "(.onnx, .pt2)")
    evaluate.add_argument("--episodes", type=int, default=None, help="episodes (default: training.eval_episodes)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a saved config field, e.g. env.eval_kwargs.split=test (repeatable)")
    export = commands.add_parser("export", help="write a checkpoint's controller as one ONNX graph or torch program")
    export.add_argument("checkpoint", help="a sac_step_N.pt file")
    export.add_argument("--out", required=True, metavar="FILE.onnx|FILE.pt2",
                        help="the file to write (its spec also goes to FILE.json)")
    export.add_argument("--batch-size", default="dynamic", metavar="N|dynamic",
                        help="rows per call: a fixed N, or dynamic (any N; default)")
    add_plot_commands(commands)
    add_sweep_arguments(commands.add_parser("sweep", help="a grid of configs x seeds on Ray Tune (resumable)"))
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, action="append",
                        help="YAML config file; repeated, each merged over the ones before "
                             "(e.g. --config training/config_dynamics_map.yaml --config configs/sac_classic.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. training.learning_rate=1e-5 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="continue from this checkpoint; the config's tunables apply from there on")
    add_no_rewind(parser)


def add_no_rewind(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-rewind", action="store_true",
                        help="refuse to resume from a checkpoint older than the run's newest (default: the later "
                             "checkpoints move to checkpoint_dir/rewound_from_step_N_TIME/)")


def main(argv: Sequence[str] | None = None) -> int:
    from dynsac.cpu_load import open_start_window

    open_start_window()  # torch_threads auto's first window: the start-up's imports count towards it
    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "resume": run_resume, "rewind": run_rewind, "eval": run_eval, "export": run_export,
                "sweep": run_sweep, "plot": run_plot, "summary": run_summary}
    return run_guarded(lambda: handlers[args.command](args))


def run_guarded(action) -> int:
    """Bad input is reported in one clear message and exit status 2, without a traceback."""
    from dynsac.config import ConfigError
    from dynsac.context import ContextError
    from dynsac.envs.factory import EnvError
    from dynsac.export.files import ExportError
    from dynsac.training.checkpoint import CheckpointError
    from dynsac.training.plots import PlotError

    try:
        return action()
    except (ConfigError, CheckpointError, ContextError, EnvError, ExportError, PlotError) as err:
        print(f"dynsac: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run_train(args: argparse.Namespace) -> int:
    from dynsac.config import load_config
    from dynsac.training import SACTrainer

    config = load_config(args.config, [*args.overrides, *no_rewind(args)])
    trainer = SACTrainer.from_checkpoint(args.resume, config) if args.resume else SACTrainer(config)
    return report(trainer.train())


def no_rewind(args: argparse.Namespace) -> list[str]:
    return ["training.rewind=false"] if getattr(args, "no_rewind", False) else []


def run_resume(args: argparse.Namespace) -> int:
    from dynsac.training import SACTrainer

    trainer = SACTrainer.from_checkpoint(args.checkpoint, overrides=[*args.overrides, *no_rewind(args)])
    return report(trainer.train())


def run_rewind(args: argparse.Namespace) -> int:
    from dynsac.training import SACTrainer
    from dynsac.training.lineage import rewind_target

    checkpoint, why = rewind_target(args.run_dir, args.to)
    print(f"[dynsac] rewinding to {checkpoint} ({why})")
    return report(SACTrainer.from_checkpoint(checkpoint, overrides=args.overrides).train())


def report(result) -> int:
    if result.final_eval is not None:
        print(f"[dynsac] done: {result.steps:,} steps in {result.wall_time_s:,.0f} s; "
              f"eval return {result.final_eval.mean:,.2f} +/- {result.final_eval.std:,.2f}")
    if result.last_checkpoint is not None:
        print(f"[dynsac] last checkpoint: {result.last_checkpoint}")
    if result.stop_reason is not None:
        return EXIT_SAFETY_STOP
    return EXIT_INTERRUPTED if result.interrupted else 0


def run_eval(args: argparse.Namespace) -> int:
    from dynsac.envs.factory import accepts_kwarg

    if args.episodes is not None and args.episodes < 1:
        print(f"dynsac: error: --episodes = {args.episodes}: must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    exported = Path(args.checkpoint).suffix != ".pt"  # load_controller names the suffixes it knows
    step, config, env, evaluate = (exported_evaluation if exported else checkpoint_evaluation)(args)
    env_cfg = config.env
    if accepts_kwarg(env, "split") and "split" not in env_cfg.eval_kwargs:
        splits = {"train": {**env_cfg.eval_kwargs, "split": "train"}, "test": {**env_cfg.eval_kwargs, "split": "test"}}
    else:
        splits = {"eval": None}
    episodes = args.episodes or config.training.eval_episodes
    results = {name: evaluate(episodes, kwargs) for name, kwargs in splits.items()}
    print(f"{Path(args.checkpoint).name}: {env_cfg.id}, step {step:,}, deterministic policy, "
          f"{episodes} episodes per split")
    print(format_eval_table(results))
    return 0


def checkpoint_evaluation(args: argparse.Namespace):
    """(step, config, an env, evaluate(episodes, env_kwargs)) of a checkpoint's trainer."""
    from dynsac.training import SACTrainer

    trainer = SACTrainer.from_checkpoint(args.checkpoint, overrides=args.overrides)
    return trainer.step, trainer.config, trainer.env, trainer.evaluate


def exported_evaluation(args: argparse.Namespace):
    """The same for an exported controller: its spec's config (with --set applied) picks the env and seeds."""
    from dynsac.config import apply_override, validate_config
    from dynsac.export import load_controller
    from dynsac.export.evaluate import controller_env, evaluate_controller

    controller = load_controller(args.checkpoint)
    raw = controller.spec["config"]
    for override in args.overrides:
        apply_override(raw, override)
    config = validate_config(raw, source=f"{args.checkpoint} (its spec's config)")
    controller.spec["config"] = config.model_dump(mode="json")
    return (controller.spec["checkpoint_step"], config, controller_env(controller),
            lambda episodes, env_kwargs: evaluate_controller(controller, episodes, env_kwargs))


def run_export(args: argparse.Namespace) -> int:
    from dynsac.export import export_controller

    out = export_controller(args.checkpoint, args.out, args.batch_size)
    size = out.stat().st_size
    print(f"[dynsac] wrote {out} ({size / 1024:,.0f} KiB) and its spec {out.with_suffix('.json')}")
    return 0


def format_eval_table(results) -> str:
    """One row per episode and a mean row per split; optimum and ratio where the env knows them."""
    with_optimum = any(r.optimal_returns is not None for r in results.values())
    header = f"{'split':<6} {'episode':>7} {'return':>16} {'length':>7}"
    if with_optimum:
        header += f" {'optimal':>16} {'ratio':>7}"
    lines = [header]
    for split, result in results.items():
        optimal = result.optimal_returns or [None] * len(result.returns)
        for index, (ret, length, best) in enumerate(zip(result.returns, result.lengths, optimal)):
            line = f"{split:<6} {index:>7} {ret:>16,.2f} {length:>7}"
            if best is not None:
                line += f" {best:>16,.2f} {best / ret:>7.3f}"
            lines.append(line)
        line = f"{split:<6} {'mean':>7} {result.mean:>16,.2f} {sum(result.lengths) / len(result.lengths):>7.1f}"
        if result.optimal_returns is not None:
            line += f" {result.optimal_mean:>16,.2f} {result.optimality_ratio:>7.3f}"
        lines.append(line + f"   (std {result.std:,.2f})")
    if with_optimum:
        lines.append("ratio = optimal return / agent return (costs): 1.000 is optimal")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- dynsac plot | summary
RUN_DIRS_HELP = ("run folders (a run's logging.dir, holding metrics.jsonl); a folder without metrics.jsonl "
                 "stands for every run folder below it")


def add_plot_commands(commands) -> None:
    plot = commands.add_parser("plot", help="learning curves of run folders (seeds of one config averaged)")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=RUN_DIRS_HELP)
    plot.add_argument("--metric", default="eval/return_mean",
                      help="the metric to plot against environment steps (default: eval/return_mean)")
    plot.add_argument("--out", default="plot.png", metavar="FILE",
                      help="image to write, format from the suffix: .png, .pdf, .svg (default: plot.png "
                           "in the current folder)")
    plot.add_argument("--yscale", default="linear", choices=("linear", "log", "symlog"),
                      help="y axis scale (symlog: returns spanning orders of magnitude; default: linear)")

    summary = commands.add_parser("summary", help="a table of run folders: returns, wall time, warnings, rollbacks")
    summary.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=RUN_DIRS_HELP)
    summary.add_argument("--json", default=None, metavar="FILE", help="also write the rows to this JSON file")


def run_plot(args: argparse.Namespace) -> int:
    from dynsac.training.plots import group_runs, load_runs, plot_loaded_runs, split_by_env

    runs = load_runs(args.run_dirs)
    plot_loaded_runs(runs, args.metric, args.out, yscale=args.yscale)
    print(f"[dynsac] wrote {args.out}: {args.metric} of {len(runs)} run(s)")
    for env_id, env_runs in split_by_env(runs).items():
        for group in group_runs(env_runs):
            print(f"  {env_id} | {group.label}: {', '.join(str(run.path) for run in group.runs)}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from dynsac.training.plots import format_summary, summarize_runs, write_summary_json

    rows = summarize_runs(args.run_dirs)
    print(format_summary(rows))
    if args.json:
        print(f"[dynsac] wrote {write_summary_json(rows, args.json)}")
    return 0


# ----------------------------------------------------------------------------- dynsac sweep
def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file, the base of every trial")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2]",
                        help="values of a config field to sweep, e.g. training.learning_rate=[3e-4,1e-3] (repeatable)")
    parser.add_argument("--seeds", default=None, metavar="0,1,2",
                        help="seeds of every grid combination (default: the config's training.seed)")
    parser.add_argument("--preset", default=None, choices=["stability"],
                        help="a built-in grid; --grid entries replace its keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field in every trial (repeatable)")
    parser.add_argument("--name", default=None, help="sweep folder name (default: the config file's name)")
    parser.add_argument("--dir", default="runs/sweeps", help="parent folder of sweeps (default: runs/sweeps)")
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="an existing Ray cluster (default: a local Ray instance, one trial per core)")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N", help="at most N trials at once")


def run_sweep(args: argparse.Namespace) -> int:
    from dynsac.training.sweep import plan_sweep, run_sweep as run_planned_sweep

    plan = plan_sweep(args.config, args.grid, args.seeds, args.overrides, args.preset, args.name, args.dir)
    return run_planned_sweep(plan, address=args.address, max_concurrent=args.max_concurrent)


if __name__ == "__main__":
    sys.exit(main())
