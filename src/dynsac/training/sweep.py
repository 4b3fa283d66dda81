"""`dynsac sweep`: every combination of grid values x seeds is one Ray Tune trial, each a normal
dynsac run with its own run folder and checkpoints.

Layout of a sweep folder `DIR/NAME/`:

    sweep.json                      what was asked (config, grid, seeds, --set) and the trial names
    lr=0.0003,tau=0.005,seed=0/
        run/                        the trial's logging.dir: metrics.jsonl, config.yaml, summary.json, events
        checkpoints/                its training.checkpoint_dir: sac_step_N.pt
    summary.txt                     the table printed at the end
    eval_return.png                 eval return per config, spread over seeds
    .tune/                          Ray Tune's own files for the latest attempt

Resuming needs no Tune state: what each trial does is decided from its own folder, by the driver
(which trials to schedule) and again by the trial itself (what to run):
  - `run/summary.json` of a run that was not interrupted and reached total_steps (or was stopped by
    the safety policy): done, never rerun;
  - otherwise a `sac_step_N.pt` in `checkpoints/`: continue from the newest one;
  - otherwise: start afresh (a partial run folder of an attempt killed before its first checkpoint
    is cleared first).
So running the same command again after a crash, Ctrl-C or `kill -9` continues the sweep.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynsac.config import Config, ConfigError, load_config, validate_config
from dynsac.config.loader import parse_yaml
from dynsac.training.checkpoint import list_checkpoints
from dynsac.training.logger import METRICS_FILE, SUMMARY_FILE, CONFIG_FILE, read_metrics

# The knobs users try first when a run is unstable (exploding Q values, NaN rollbacks, collapsing
# returns). 2 x 2 x 2 x 2 = 16 configs; narrow any key with --grid, e.g. --grid training.tau=[0.001].
PRESETS: dict[str, dict[str, list[Any]]] = {
    "stability": {
        "safety.reward_normalization": ["fixed", "running"],  # reward scale from warm-up, or tracked
        "training.learning_rate": [3e-4, 1e-4],   # the SAC default and a 3x slower one
        "training.tau": [0.005, 0.001],           # slower-moving target critics
        "training.max_grad_norm": [10.0, 1.0],    # gradient clipping: loose and tight
    },
}

# Keys the sweep sets for every trial: not for --grid.
RESERVED_KEYS = {
    "training.seed": "use --seeds",
    "logging.dir": "every trial gets DIR/NAME/<trial>/run",
    "training.checkpoint_dir": "every trial gets DIR/NAME/<trial>/checkpoints",
}
# A trial folder may be continued with these changed (e.g. more steps); anything else is another setup.
CONTINUABLE_KEYS = {"training.total_steps", "logging.progress", "logging.progress_interval_s", "training.device"}
SHORT_NAMES = {"learning_rate": "lr"}
SWEEP_FILE = "sweep.json"
TUNE_FOLDER = ".tune"
PLOT_FILE = "eval_return.png"
TABLE_FILE = "summary.txt"
GRID_FORM = "expected KEY.PATH=[V1,V2,...], e.g. --grid training.learning_rate=[3e-4,1e-3]"


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[Any, ...]


@dataclass
class Trial:
    name: str
    params: dict[str, Any]  # grid key -> value
    seed: int
    config: Config
    folder: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def checkpoint_dir(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def group(self) -> str:
        """The trial name without its seed: trials of one config over several seeds share it."""
        return self.name.rsplit(",seed=", 1)[0] if self.params else "(base config)"


@dataclass
class SweepPlan:
    name: str
    folder: Path
    config_path: str
    grid: list[GridAxis]
    seeds: list[int]
    sets: list[str]
    preset: str | None
    trials: list[Trial] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "config": self.config_path, "preset": self.preset,
            "grid": {axis.key: list(axis.values) for axis in self.grid}, "seeds": self.seeds, "set": self.sets,
            "trials": [trial.name for trial in self.trials],
        }


def parse_grid(entries: Iterable[str]) -> list[GridAxis]:
    """`key.path=[v1,v2]` strings (values are YAML scalars or lists) into axes; repeated keys are errors."""
    axes: dict[str, GridAxis] = {}
    for entry in entries:
        key, sep, text = entry.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not all(key.split(".")) or not (text.startswith("[") and text.endswith("]")):
            raise ConfigError(f"--grid {entry!r}: {GRID_FORM}")
        try:
            values = parse_yaml(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--grid {entry!r}: the values are not a valid YAML list ({GRID_FORM}): "
                              f"{str(err).splitlines()[0]}") from None
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {entry!r}: give at least one value; {GRID_FORM}")
        if any(isinstance(value, dict) for value in values):
            raise ConfigError(f"--grid {entry!r}: values must be scalars or lists, not mappings; {GRID_FORM}")
        labels = [format_value(value) for value in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--grid {entry!r}: a value is listed twice")
        if key in RESERVED_KEYS:
            raise ConfigError(f"--grid {entry!r}: {key} is set by the sweep ({RESERVED_KEYS[key]})")
        if key in axes:
            raise ConfigError(f"--grid {entry!r}: {key} already has a --grid; give all its values in one list")
        axes[key] = GridAxis(key, tuple(values))
    return list(axes.values())


def parse_seeds(text: str | None, default: int) -> list[int]:
    """`0,1,2` (or a range `0-4`) into distinct non-negative seeds; None gives the config's seed."""
    if text is None:
        return [default]
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            low, dash, high = part.partition("-")
            if dash and low:
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated non-negative integers, e.g. 0,1,2 "
                          f"(or a range, 0-4)") from None
    if any(seed < 0 for seed in seeds):
        raise ConfigError(f"--seeds {text!r}: seeds must be >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is listed twice")
    return seeds


def merge_preset(preset: str | None, axes: list[GridAxis]) -> list[GridAxis]:
    """The preset's axes, each replaced by a --grid entry of the same key; further --grid keys follow."""
    if preset is None:
        return axes
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: unknown preset; available: {', '.join(sorted(PRESETS))}")
    given = {axis.key: axis for axis in axes}
    merged = [given.pop(key, GridAxis(key, tuple(values))) for key, values in PRESETS[preset].items()]
    return merged + list(given.values())


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def trial_name(params: dict[str, Any], seed: int) -> str:
    """`lr=0.0003,tau=0.005,seed=0`: the last part of each key (learning_rate as lr), the full key
    where two keys would read the same."""
    leaves = [key.rsplit(".", 1)[-1] for key in params]
    parts = []
    for key, leaf in zip(params, leaves):
        label = SHORT_NAMES.get(leaf, leaf) if leaves.count(leaf) == 1 else key
        parts.append(f"{label}={format_value(params[key])}")
    name = ",".join(parts + [f"seed={seed}"])
    return name.replace("/", "_").replace(" ", "").replace(os.sep, "_")


def plan_sweep(
    config_path: str,
    grid: Sequence[str] = (),
    seeds: str | None = None,
    sets: Sequence[str] = (),
    preset: str | None = None,
    name: str | None = None,
    directory: str = "runs/sweeps",
) -> SweepPlan:
    """Validate everything and build every trial's config up front: a mistake stops the sweep before
    anything starts, with a message naming the key and value at fault."""
    base = load_config(config_path, sets)  # a bad config or --set is reported as such, not per trial
    axes = merge_preset(preset, parse_grid(grid))
    seed_list = parse_seeds(seeds, base.training.seed)
    name = name or Path(config_path).stem
    if not name or name in {".", ".."} or "/" in name:
        raise ConfigError(f"--name {name!r}: must be a plain folder name")
    folder = Path(directory).expanduser().resolve() / name
    plan = SweepPlan(name, folder, str(config_path), axes, seed_list, list(sets), preset)
    combos = list(itertools.product(*(axis.values for axis in axes)))
    for combo in combos:
        params = {axis.key: value for axis, value in zip(axes, combo)}
        for seed in seed_list:
            tname = trial_name(params, seed)
            trial_folder = folder / tname
            overrides = [*sets, *(f"{key}={json.dumps(value)}" for key, value in params.items()),
                         f"training.seed={seed}", f"logging.dir={json.dumps(str(trial_folder / 'run'))}",
                         f"training.checkpoint_dir={json.dumps(str(trial_folder / 'checkpoints'))}",
                         "training.torch_threads=1"]
            try:
                config = load_config(config_path, overrides)
            except ConfigError as err:
                values = ", ".join(f"{key}={format_value(value)}" for key, value in params.items())
                raise ConfigError(f"sweep trial with {values or 'the base config'}: {err}") from None
            plan.trials.append(Trial(tname, params, seed, config, trial_folder))
    names = [trial.name for trial in plan.trials]
    if len(set(names)) != len(names):
        raise ConfigError("two grid values give the same trial folder name; make the values distinct")
    for trial in plan.trials:
        check_trial_folder(trial)
    check_envs(plan.trials)
    return plan


def check_envs(trials: Sequence[Trial]) -> None:
    """Build, reset and step each distinct environment once: a wrong env id or kwarg stops the sweep
    here (EnvError, exit 2), not in every trial after Ray has started."""
    seen = set()
    for trial in trials:
        env = trial.config.env
        key = json.dumps([env.id, env.kwargs, env.eval_kwargs, env.max_episode_steps], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            _try_env(env.id, env.kwargs, env.max_episode_steps)
            if env.eval_kwargs:
                _try_env(env.id, {**env.kwargs, **env.eval_kwargs}, env.max_episode_steps)


def _try_env(env_id: str, kwargs: dict[str, Any], max_episode_steps: int | None) -> None:
    from dynsac.envs.factory import EnvError, make_env

    env = make_env(env_id, kwargs, max_episode_steps)
    try:
        env.action_space.seed(0)
        env.reset(seed=0)
        env.step(env.action_space.sample())
    except Exception as err:  # noqa: BLE001 - any failure of a first step is the env's config at fault
        raise EnvError(f"env.id = {env_id!r} with env.kwargs = {kwargs!r}: the first step failed: "
                       f"{type(err).__name__}: {err}") from None
    finally:
        env.close()


def check_trial_folder(trial: Trial) -> None:
    """A trial folder from an earlier attempt must hold the same setup, or continuing it would mix two."""
    saved = trial.run_dir / CONFIG_FILE
    if not saved.is_file():
        return
    try:
        old = validate_config(yaml.safe_load(saved.read_text()) or {}).model_dump(mode="json")
    except (ConfigError, yaml.YAMLError):
        return
    new = trial.config.model_dump(mode="json")
    changed = [key for key in sorted(set(_flatten(old)) | set(_flatten(new)))
               if key not in CONTINUABLE_KEYS and _flatten(old).get(key) != _flatten(new).get(key)]
    if changed:
        shown = ", ".join(f"{key}: {_flatten(old).get(key)!r} -> {_flatten(new).get(key)!r}" for key in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise ConfigError(
            f"{trial.folder} was run with a different config ({shown}{more}); continuing it would mix two "
            f"setups. Use another --name or --dir, or delete that trial folder to rerun it."
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("kwargs", "eval_kwargs"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------- one trial's state
@dataclass
class TrialState:
    kind: str  # "done" | "stopped" (by the safety policy) | "resume" | "fresh"
    summary: dict[str, Any] | None = None
    checkpoint: Path | None = None
    step: int = 0


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def inspect_trial(config: Config) -> TrialState:
    """What a trial needs, from its own files (see the module docstring)."""
    summary = read_summary(config.logging.dir)
    total = config.training.total_steps
    if summary is not None and not summary.get("interrupted"):
        if summary.get("stop_reason"):
            return TrialState("stopped", summary)
        if isinstance(summary.get("steps"), int) and summary["steps"] >= total:
            return TrialState("done", summary)
    checkpoints = list_checkpoints(config.training.checkpoint_dir)
    if checkpoints:
        step, path = checkpoints[-1]
        return TrialState("resume", summary, path, step)
    return TrialState("fresh", summary)


# ----------------------------------------------------------------------------- inside a Ray worker
def _tune_report(metrics: dict[str, Any]) -> None:
    from ray import tune

    report = getattr(tune, "report", None)
    if report is None:  # Ray < 2.?: the function API reports through ray.train
        from ray import train

        report = train.report
    report(metrics)


def _tune_reporter():
    from dynsac.training.callbacks import Callback

    class TuneReporter(Callback):
        """Reports every evaluation to Tune as it happens."""

        def on_eval(self, trainer, step, result):
            _tune_report({"step": step, "eval_return": result.mean, "eval_return_std": result.std})

    return TuneReporter()


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """One trial, in a Ray worker: finish, continue or start the dynsac run in its folder."""
    os.environ["OMP_NUM_THREADS"] = "1"
    cwd = spec.get("cwd")
    if cwd and os.path.isdir(cwd):  # env ids like `my_pkg.envs:MyEnv` and relative paths, as on the driver
        os.chdir(cwd)
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
    config = validate_config(spec["config"], source=f"sweep trial {spec['name']}")
    state = inspect_trial(config)
    if state.kind in ("done", "stopped"):
        summary = state.summary
    elif state.kind == "resume" and state.step >= config.training.total_steps:
        summary = _summary_from_metrics(config, state)  # killed between its last checkpoint and summary.json
    else:
        from dynsac.training.trainer import SACTrainer

        callbacks = [_tune_reporter()]
        if state.kind == "resume":
            print(f"[dynsac sweep] {spec['name']}: continuing from {state.checkpoint}", flush=True)
            trainer = SACTrainer.from_checkpoint(state.checkpoint, config, callbacks=callbacks)
        else:
            shutil.rmtree(config.logging.dir, ignore_errors=True)  # a partial attempt without a checkpoint
            trainer = SACTrainer(config, callbacks=callbacks)
        trainer.train()
        summary = read_summary(config.logging.dir) or {}
    final = {
        "step": summary.get("steps"), "eval_return": summary.get("final_eval_return"),
        "best_eval_return": summary.get("best_eval_return"),
        "status": "stopped" if summary.get("stop_reason") else "done",
    }
    _tune_report({k: v for k, v in final.items() if v is not None})
    return final


def _summary_from_metrics(config: Config, state: TrialState) -> dict[str, Any]:
    """summary.json for a run whose final checkpoint was written but its summary not: its final
    evaluation (logged before that checkpoint) is in metrics.jsonl."""
    from dynsac.training.logger import RunLogger

    evals = [(r["step"], r["eval/return_mean"]) for r in read_metrics(config.logging.dir)
             if isinstance(r.get("eval/return_mean"), (int, float)) and r["step"] <= state.step]
    summary = {
        "steps": state.step, "total_steps": config.training.total_steps, "interrupted": False, "stop_reason": None,
        "final_eval_return": evals[-1][1] if evals else None,
        "best_eval_return": max((value for _, value in evals), default=None),
        "last_checkpoint": str(state.checkpoint), "note": "written by dynsac sweep from metrics.jsonl",
    }
    logger = RunLogger(config.logging.dir, tensorboard=False, resume_step=state.step)
    logger.write_summary(summary)
    logger.close()
    return summary


# ----------------------------------------------------------------------------- the driver
def run_sweep(plan: SweepPlan, address: str | None = None, max_concurrent: int | None = None,
              num_cpus: int | None = None) -> int:
    """Run the plan's unfinished trials on Ray Tune, then print the table and write the plot.
    Returns 0 when every trial is done (or stopped by the safety policy), 1 when a trial failed,
    130 when the sweep was interrupted (run the same command again to continue)."""
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent = {max_concurrent}: must be >= 1")
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("dynsac sweep needs Ray Tune: pip install 'dynsac[sweep]'") from None

    states = {trial.name: inspect_trial(trial.config) for trial in plan.trials}
    pending = [trial for trial in plan.trials if states[trial.name].kind in ("resume", "fresh")]
    _announce(plan, states)
    plan.folder.mkdir(parents=True, exist_ok=True)
    (plan.folder / SWEEP_FILE).write_text(json.dumps(plan.describe(), indent=2) + "\n")
    if any(trial.config.training.checkpoint_interval == 0 for trial in pending):
        print("[dynsac sweep] note: training.checkpoint_interval = 0: an interrupted trial restarts from scratch")

    errors: dict[str, str] = {}
    if pending:
        errors = _fit(ray, tune, plan, pending, address, max_concurrent, num_cpus)

    states = {trial.name: inspect_trial(trial.config) for trial in plan.trials}
    rows = trial_rows(plan, states, errors)
    report = format_report(plan, rows)
    print("\n" + report)
    (plan.folder / TABLE_FILE).write_text(report + "\n")
    plot = plot_sweep(plan)
    print(f"[dynsac sweep] table: {plan.folder / TABLE_FILE}" + (f"; plot: {plot}" if plot else ""))
    unfinished = [row["trial"] for row in rows if row["status"] not in ("done", "stopped", "error")]
    if errors:
        print(f"[dynsac sweep] {len(errors)} trial(s) failed; their Ray Tune logs are under "
              f"{plan.folder / TUNE_FOLDER}. Fix the cause and run the same command again: finished trials "
              f"are kept.", file=sys.stderr)
        return 1
    if unfinished:
        print(f"[dynsac sweep] interrupted with {len(unfinished)} trial(s) unfinished; run the same command "
              f"again to continue them from their last checkpoints.", file=sys.stderr)
        return 130
    return 0


def _announce(plan: SweepPlan, states: dict[str, TrialState]) -> None:
    kinds = [state.kind for state in states.values()]
    configs = len(plan.trials) // max(len(plan.seeds), 1)
    print(f"[dynsac sweep] {plan.name}: {len(plan.trials)} trials ({configs} configs x {len(plan.seeds)} seeds) "
          f"in {plan.folder}")
    finished = kinds.count("done") + kinds.count("stopped")
    print(f"[dynsac sweep] {finished} already finished, {kinds.count('resume')} to continue from a checkpoint, "
          f"{kinds.count('fresh')} to start")
    for trial in plan.trials:
        state = states[trial.name]
        if state.kind == "resume":
            print(f"[dynsac sweep]   {trial.name}: resuming from step {state.step}")


def _fit(ray, tune, plan: SweepPlan, pending: list[Trial], address: str | None, max_concurrent: int | None,
         num_cpus: int | None) -> dict[str, str]:
    """Run the pending trials as one Tune experiment; returns {trial name: error} for failed ones."""
    try:
        from ray.tune import RunConfig
    except ImportError:  # Ray < 2.?: RunConfig lives in ray.train
        from ray.train import RunConfig

    specs = {trial.name: {"name": trial.name, "config": trial.config.model_dump(mode="json"), "cwd": os.getcwd()}
             for trial in pending}
    tune_folder = plan.folder / TUNE_FOLDER
    shutil.rmtree(tune_folder, ignore_errors=True)  # Tune's files of an earlier attempt; trials keep their own
    env_vars = {"OMP_NUM_THREADS": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    owned = not ray.is_initialized()  # called from a program that already set Ray up: use its instance
    if owned and address:
        ray.init(address=address, runtime_env={"env_vars": env_vars})
    elif owned:  # "local": a new instance even where RAY_ADDRESS points at a cluster
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 runtime_env={"env_vars": env_vars})
    try:
        trainable = tune.with_resources(tune.with_parameters(_tune_trainable, specs=specs), {"cpu": 1})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([trial.name for trial in pending])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent,
                reuse_actors=True,  # one worker process runs trial after trial: no torch import per trial
                trial_name_creator=_tune_trial_name, trial_dirname_creator=_tune_trial_name,
            ),
            run_config=RunConfig(name=TUNE_FOLDER, storage_path=str(plan.folder), verbose=1),
        )
        results = tuner.fit()
        errors = {}
        for result in results:
            if result.error is not None:
                name = (result.config or {}).get("trial", "?")
                errors[name] = _first_line(result.error)
        return errors
    finally:
        if owned:
            ray.shutdown()


def _tune_trainable(tune_config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    run_trial(specs[tune_config["trial"]])


def _tune_trial_name(trial) -> str:
    return str(trial.config["trial"])


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray wraps the trial's exception: its last line is the original "Type: message".
    return lines[-1] if lines else type(error).__name__


# ----------------------------------------------------------------------------- results
def trial_rows(plan: SweepPlan, states: dict[str, TrialState], errors: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for trial in plan.trials:
        state = states[trial.name]
        summary = state.summary or {}
        status = {"done": "done", "stopped": "stopped", "resume": f"unfinished (checkpoint at step {state.step})",
                  "fresh": "not started" if not trial.run_dir.exists() else "unfinished (no checkpoint)"}[state.kind]
        if trial.name in errors:
            status = "error"
        steps = summary.get("steps", state.step) if state.kind in ("done", "stopped") else state.step
        rows.append({
            "trial": trial.name, "group": trial.group, "seed": trial.seed, "status": status, "steps": steps,
            "total_steps": trial.config.training.total_steps,
            "final_eval_return": _number(summary.get("final_eval_return")) if status in ("done", "stopped") else None,
            "best_eval_return": _number(summary.get("best_eval_return")) if status in ("done", "stopped") else None,
            "run_dir": str(trial.run_dir), "error": errors.get(trial.name),
        })
    return rows


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_report(plan: SweepPlan, rows: list[dict[str, Any]]) -> str:
    """The per-trial table (the plots module's, over the trials' run folders), the mean final eval
    return of each config over its seeds (best first), and the trials that did not finish."""
    run_dirs = [trial.run_dir for trial in plan.trials if (trial.run_dir / METRICS_FILE).is_file()]
    per_trial = None
    if run_dirs:
        try:
            from dynsac.training.plots import format_summary, summarize_runs

            per_trial = format_summary(summarize_runs(run_dirs))
        except Exception as err:  # noqa: BLE001 - a table must never fail a finished sweep
            print(f"[dynsac sweep] warning: plots module summary failed ({type(err).__name__}: {err})",
                  file=sys.stderr)
    parts = [per_trial or format_trial_table(rows)]
    groups = format_group_table(rows)
    if groups:
        parts.append(groups)
    problems = [f"  {row['trial']}: {row['status']}" + (f": {row['error']}" if row["error"] else "")
                for row in rows if row["status"] not in ("done", "stopped")]
    if problems:
        parts.append("not finished:\n" + "\n".join(problems))
    return "\n\n".join(parts)


def format_trial_table(rows: list[dict[str, Any]]) -> str:
    """One row per trial."""
    width = max([len("trial")] + [len(row["trial"]) for row in rows])
    swidth = max([len("status")] + [len(row["status"]) for row in rows])
    lines = [f"{'trial':<{width}}  {'status':<{swidth}} {'steps':>12} {'final eval':>12} {'best eval':>12}"]
    for row in rows:
        steps = f"{row['steps']:,}/{row['total_steps']:,}"
        lines.append(f"{row['trial']:<{width}}  {row['status']:<{swidth}} {steps:>12} "
                     f"{_cell(row['final_eval_return']):>12} {_cell(row['best_eval_return']):>12}")
    return "\n".join(lines)


def format_group_table(rows: list[dict[str, Any]]) -> str:
    """Mean and spread of the final eval return of each config over its seeds, best first ('' for one run)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if row["final_eval_return"] is not None:
            groups.setdefault(row["group"], []).append(row["final_eval_return"])
    if not groups or (len(groups) == 1 and all(len(values) == 1 for values in groups.values())):
        return ""
    width = max(len("config"), *(len(group) for group in groups))
    lines = [f"{'config':<{width}}  {'seeds':>5} {'final eval mean':>16} {'std':>10} {'min':>10}"]
    for group, values in sorted(groups.items(), key=lambda item: -statistics.fmean(item[1])):
        spread = f"{statistics.pstdev(values):,.2f}" if len(values) > 1 else "-"
        lines.append(f"{group:<{width}}  {len(values):>5} {statistics.fmean(values):>16,.2f} {spread:>10} "
                     f"{min(values):>10,.2f}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def plot_sweep(plan: SweepPlan) -> Path | None:
    """Eval return against steps, one line per config (mean over its seeds, band over seeds), by the
    plots module; None when there is nothing to plot or plotting failed (a warning says why)."""
    run_dirs = [trial.run_dir for trial in plan.trials if (trial.run_dir / METRICS_FILE).is_file()]
    if not run_dirs:
        return None
    out = plan.folder / PLOT_FILE
    try:
        from dynsac.training.plots import plot_runs

        figure = plot_runs(run_dirs, metric="eval/return_mean", out=out, title=f"sweep {plan.name}")
        del figure
    except Exception as err:  # noqa: BLE001 - a plot must never fail a finished sweep
        print(f"[dynsac sweep] warning: could not plot the sweep: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    return out
