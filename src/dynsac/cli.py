"""Command line: `dynsac train | resume | eval`.

Exit status: 0 done, 2 bad input (config, checkpoint, env), 3 stopped by the safety policy
(emergency checkpoint and diagnosis written), 130 interrupted (checkpoint saved).
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

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint's deterministic policy")
    evaluate.add_argument("checkpoint", help="a sac_step_N.pt file")
    evaluate.add_argument("--episodes", type=int, default=None, help="episodes (default: training.eval_episodes)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a saved config field, e.g. env.eval_kwargs.split=test (repeatable)")
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. training.learning_rate=1e-5 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="continue from this checkpoint; the config's tunables apply from there on")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "resume": run_resume, "eval": run_eval}
    return run_guarded(lambda: handlers[args.command](args))


def run_guarded(action) -> int:
    """Bad input is reported in one clear message and exit status 2, without a traceback."""
    from dynsac.config import ConfigError
    from dynsac.envs.factory import EnvError
    from dynsac.training.checkpoint import CheckpointError

    try:
        return action()
    except (ConfigError, CheckpointError, EnvError) as err:
        print(f"dynsac: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run_train(args: argparse.Namespace) -> int:
    from dynsac.config import load_config
    from dynsac.training import SACTrainer

    config = load_config(args.config, args.overrides)
    trainer = SACTrainer.from_checkpoint(args.resume, config) if args.resume else SACTrainer(config)
    return report(trainer.train())


def run_resume(args: argparse.Namespace) -> int:
    from dynsac.training import SACTrainer

    trainer = SACTrainer.from_checkpoint(args.checkpoint, overrides=args.overrides)
    return report(trainer.train())


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
    from dynsac.training import SACTrainer

    if args.episodes is not None and args.episodes < 1:
        print(f"dynsac: error: --episodes = {args.episodes}: must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    trainer = SACTrainer.from_checkpoint(args.checkpoint, overrides=args.overrides)
    env_cfg = trainer.config.env
    if accepts_kwarg(trainer.env, "split") and "split" not in env_cfg.eval_kwargs:
        splits = {"train": {**env_cfg.eval_kwargs, "split": "train"}, "test": {**env_cfg.eval_kwargs, "split": "test"}}
    else:
        splits = {"eval": None}
    results = {name: trainer.evaluate(args.episodes, kwargs) for name, kwargs in splits.items()}
    episodes = len(next(iter(results.values())).returns)
    print(f"{Path(args.checkpoint).name}: {env_cfg.id}, step {trainer.step:,}, deterministic policy, "
          f"{episodes} episodes per split")
    print(format_eval_table(results))
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


if __name__ == "__main__":
    sys.exit(main())
