"""Command line: `dynsac train | resume | eval`.

Exit status: 0 done, 2 bad input (config, checkpoint, env), 130 interrupted (checkpoint saved).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2
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
    return EXIT_INTERRUPTED if result.interrupted else 0


def run_eval(args: argparse.Namespace) -> int:
    from dynsac.training import SACTrainer

    if args.episodes is not None and args.episodes < 1:
        print(f"dynsac: error: --episodes = {args.episodes}: must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    trainer = SACTrainer.from_checkpoint(args.checkpoint, overrides=args.overrides)
    result = trainer.evaluate(args.episodes)
    print(f"{Path(args.checkpoint).name}: {trainer.config.env.id}, step {trainer.step:,}, deterministic policy")
    print(f"{'episode':>8} {'return':>16} {'length':>8}")
    for index, (episode_return, length) in enumerate(zip(result.returns, result.lengths)):
        print(f"{index:>8} {episode_return:>16,.2f} {length:>8}")
    print(f"{'mean':>8} {result.mean:>16,.2f}   (std {result.std:,.2f}, {len(result.returns)} episodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
