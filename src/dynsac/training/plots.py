"""Learning curves and summary tables from run folders (`dynsac plot`, `dynsac summary`).

A run folder is a training run's `logging.dir`: `metrics.jsonl` (scalars and events, one JSON
object a line), `config.yaml` (the resolved config) and, once the run has finished, `summary.json`.
A folder without `metrics.jsonl` stands for the run folders below it (a benchmark's results, a sweep).

Runs whose configs differ only in the seed (and where they write: `logging.*`,
`training.checkpoint_dir`, ...; see IGNORED_CONFIG_KEYS) form one group, drawn as the mean over
its seeds with the min-max band shaded. matplotlib is imported only when a figure is drawn, and
never through pyplot: no window, no global backend switch (the figure renders with Agg).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from dynsac.training.logger import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_METRIC = "eval/return_mean"
OPTIMUM_METRIC = "eval/optimal_return_mean"

# Config keys that say where a run writes or how it reports, not what it learns: ignored when
# deciding whether two runs differ only by seed.
IGNORED_CONFIG_KEYS = frozenset({
    "training.seed", "training.checkpoint_dir", "training.checkpoint_interval", "training.save_replay_buffer",
    "training.device", "training.torch_threads",
    "logging.dir", "logging.log_interval", "logging.tensorboard", "logging.progress", "logging.progress_interval_s",
})

METRIC_LABELS = {
    "eval/return_mean": "eval return (sum of rewards per episode)",
    "eval/return_std": "eval return std over episodes (sum of rewards)",
    "eval/episode_length": "eval episode length (steps)",
    "eval/optimal_return_mean": "optimal return (sum of rewards per episode)",
    "eval/optimality_ratio": "optimality ratio (optimal / agent return; 1 = optimal)",
    "train/episode_return": "training episode return (sum of rewards per episode)",
    "train/episode_length": "training episode length (steps)",
    "perf/steps_per_sec": "throughput (environment steps per second)",
    "perf/updates_per_sec": "throughput (updates per second)",
}

# How the env computes its optimum, for the legend.
OPTIMUM_SOURCES = {"dynsac/RandomLinear-v0": "LQR"}

# Events marked on the step axis: category -> (legend name, colour, line style).
EVENT_STYLES = {
    "warning": ("early warning", "tab:orange", ":"),
    "rollback": ("rollback", "tab:red", "--"),
    "stopped": ("safety stop", "black", "-"),
    "repair": ("skipped update / repaired input", "tab:gray", None),  # short ticks at the bottom
    "resume": ("resume", "tab:green", (0, (1, 3))),
    "rewind": ("rewind", "tab:purple", "-."),
}
_REPAIR_EVENTS = {"skipped_update", "sanitized_observation", "sanitized_reward", "context_fallback",
                  "nonfinite_action"}


class PlotError(ValueError):
    """Run folders or options that cannot be read; the message names the folder or file and what is valid."""


# ----------------------------------------------------------------------------- reading runs
@dataclass
class RunData:
    """One run folder, read: scalar records, events, config and summary (None where absent)."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None

    @property
    def env_id(self) -> str | None:
        return _get(self.config, "env", "id")

    @property
    def seed(self) -> int | None:
        return _get(self.config, "training", "seed")

    def metric_names(self) -> set[str]:
        return {key for record in self.records for key in record if key not in ("step", "time")}

    def series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric; the last value wins where a step was logged twice."""
        points = {record["step"]: record[metric] for record in self.records if metric in record}
        steps = sorted(points)
        return np.asarray(steps, dtype=float), np.asarray([_to_float(points[s]) for s in steps], dtype=float)


def _get(mapping: Mapping[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _to_float(value: Any) -> float:
    """Metric values: numbers, or "nan"/"inf"/"-inf" strings (JSON has no non-finite numbers)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def expand_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders: each path that holds metrics.jsonl, or else every run folder below it (sorted).
    A path to a metrics.jsonl file stands for its folder. Duplicates are dropped, order kept."""
    found: list[Path] = []
    paths = list(paths)
    if not paths:
        raise PlotError("no run folders given: pass one or more run folders (a run's logging.dir, "
                        f"holding {METRICS_FILE}) or folders that hold run folders")
    for given in paths:
        path = Path(given)
        if path.is_file() and path.name == METRICS_FILE:
            path = path.parent
        if not path.exists():
            raise PlotError(f"{given}: no such folder; expected a run folder (a run's logging.dir, holding "
                            f"{METRICS_FILE}) or a folder that holds run folders")
        if not path.is_dir():
            raise PlotError(f"{given}: not a folder; expected a run folder (a run's logging.dir, holding "
                            f"{METRICS_FILE}) or a folder that holds run folders")
        if (path / METRICS_FILE).is_file():
            found.append(path)
            continue
        below = sorted(metrics.parent for metrics in path.rglob(METRICS_FILE) if metrics.is_file())
        if not below:
            raise PlotError(f"{given}: no {METRICS_FILE} in this folder or any folder below it; expected a "
                            "run folder (a run's logging.dir, written by `dynsac train`) or a folder that holds "
                            "run folders")
        found.extend(below)
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path, None)
    return list(unique)


def load_run(run_dir: str | Path) -> RunData:
    """Read one run folder. A truncated last line of metrics.jsonl (a run killed mid-write) is skipped."""
    run = RunData(Path(run_dir))
    metrics_path = run.path / METRICS_FILE
    if not metrics_path.is_file():
        raise PlotError(f"{run_dir}: no {METRICS_FILE}; not a run folder (a run's logging.dir)")
    lines = metrics_path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                continue  # the half-written last line of a killed run
            raise PlotError(f"{metrics_path} line {number}: not valid JSON ({err.msg}); each line must be one "
                            "JSON object") from None
        if not isinstance(record, dict) or "step" not in record:
            raise PlotError(f"{metrics_path} line {number}: expected a JSON object with a \"step\" key")
        (run.events if "event" in record else run.records).append(record)
    config_path = run.path / CONFIG_FILE
    if config_path.is_file():
        try:
            run.config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as err:
            raise PlotError(f"{config_path}: not valid YAML ({err})") from None
    summary_path = run.path / SUMMARY_FILE
    if summary_path.is_file():
        try:
            run.summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            raise PlotError(f"{summary_path}: not valid JSON ({err.msg})") from None
    return run


def load_runs(run_dirs: Iterable[str | Path]) -> list[RunData]:
    return [load_run(path) for path in expand_run_dirs(run_dirs)]


# ----------------------------------------------------------------------------- grouping
def flatten_config(config: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """{"training": {"seed": 0}} -> {"training.seed": 0}; lists become tuples (hashable)."""
    flat: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = _hashable(value)
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


@dataclass
class RunGroup:
    """Runs that differ only by seed. `label`: the config keys that set this group apart from the others."""

    runs: list[RunData]
    config: dict[str, Any]  # flattened, without IGNORED_CONFIG_KEYS
    label: str = ""

    @property
    def env_id(self) -> str | None:
        return self.runs[0].env_id


def group_runs(runs: Sequence[RunData], max_label_keys: int = 4) -> list[RunGroup]:
    """Group runs whose configs match except for IGNORED_CONFIG_KEYS (order of first appearance);
    label each group by the keys whose values differ between groups (the env id if none do).
    A run without config.yaml is a group of its own, labelled by its folder name."""
    groups: list[RunGroup] = []
    by_key: dict[Any, RunGroup] = {}
    for run in runs:
        if run.config is None:
            groups.append(RunGroup([run], {}, label=f"{run.path.name} (no {CONFIG_FILE})"))
            continue
        config = {k: v for k, v in flatten_config(run.config).items() if k not in IGNORED_CONFIG_KEYS}
        key = tuple(sorted(config.items(), key=lambda item: item[0]))
        if key in by_key:
            by_key[key].runs.append(run)
        else:
            by_key[key] = RunGroup([run], config)
            groups.append(by_key[key])
    with_config = [g for g in groups if not g.label]
    missing = object()
    keys = sorted({k for g in with_config for k in g.config})
    differing = [k for k in keys if len({repr(g.config.get(k, missing)) for g in with_config}) > 1]
    for group in with_config:
        if differing:
            parts = [f"{k}={_format_value(group.config.get(k))}" for k in differing[:max_label_keys]]
            if len(differing) > max_label_keys:
                parts.append(f"+{len(differing) - max_label_keys} more keys")
            group.label = ", ".join(parts)
        else:
            group.label = group.env_id or "run"
    return groups


def _format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def seed_band(runs: Sequence[RunData], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over the runs at every step any of them logged the metric; at a step
    only some runs reached (an interrupted seed), over those. Non-finite values are left out."""
    series = [run.series(metric) for run in runs]
    steps = np.unique(np.concatenate([s for s, _ in series])) if series else np.empty(0)
    table = np.full((len(series), len(steps)), np.nan)
    for row, (run_steps, values) in enumerate(series):
        table[row, np.searchsorted(steps, run_steps)] = np.where(np.isfinite(values), values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
        return steps, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def run_optimum(run: RunData) -> float | None:
    """The run's logged optimal eval return (mean over its evaluations), where the env knows it."""
    _, values = run.series(OPTIMUM_METRIC)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _event_category(kind: str) -> str | None:
    if kind.startswith("warning/"):
        return "warning"
    if kind in ("rollback", "stopped", "resume", "rewind"):
        return kind
    if kind in _REPAIR_EVENTS:
        return "repair"
    return None  # nonfinite (always followed by a rollback or a stop), warning_summary (end of run)


# ----------------------------------------------------------------------------- the figure
def plot_runs(
    run_dirs: Sequence[str | Path],
    metric: str = DEFAULT_METRIC,
    out: str | Path | None = None,
    *,
    yscale: str = "linear",
    title: str | None = None,
) -> Figure:
    """Learning curves of `metric` against environment steps, one line per group of runs that differ
    only by seed (mean over seeds, min-max band shaded); safety events as vertical markers; the
    env's optimum as a dashed line where it is known. Saved to `out` (format from its suffix) if given.
    `run_dirs`: run folders, or folders holding run folders (see expand_run_dirs)."""
    _check_plot_options(out, yscale)
    return plot_loaded_runs(load_runs(run_dirs), metric, out, yscale=yscale, title=title)


def _check_plot_options(out: str | Path | None, yscale: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if out is not None:
        supported = FigureCanvasAgg.get_supported_filetypes()
        suffix = Path(out).suffix.lstrip(".").lower()
        if suffix not in supported:
            raise PlotError(f"--out {out}: unknown image format {suffix or '(no suffix)'!r}; use one of "
                            + ", ".join(f".{s}" for s in sorted(supported)))
    if yscale not in ("linear", "log", "symlog"):
        raise PlotError(f"yscale {yscale!r}: use linear, log or symlog")


def plot_loaded_runs(
    runs: Sequence[RunData],
    metric: str = DEFAULT_METRIC,
    out: str | Path | None = None,
    *,
    yscale: str = "linear",
    title: str | None = None,
) -> Figure:
    """plot_runs for runs already read (load_runs). Runs of several envs get one panel per env
    (returns of different envs share no scale), stacked in the order the envs first appear."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_plot_options(out, yscale)
    if not runs:
        raise PlotError("no runs to plot")
    logged = set().union(*(run.metric_names() for run in runs))
    if metric not in logged:
        names = ", ".join(sorted(logged)) or "(none yet: no scalar records)"
        raise PlotError(f"--metric {metric}: not logged by the {len(runs)} run(s) in "
                        f"{', '.join(str(r.path) for r in runs[:3])}{' ...' if len(runs) > 3 else ''}; "
                        f"they log: {names}")
    by_env = split_by_env(runs)
    fig = Figure(figsize=(9.5, 5.5 if len(by_env) == 1 else 4.2 * len(by_env)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(by_env), 1, squeeze=False)[:, 0]
    any_band = False
    for ax, (env_id, env_runs) in zip(axes, by_env.items()):
        any_band |= _draw_panel(ax, env_runs, metric, yscale)
        groups = len(group_runs(env_runs))
        ax.set_title(f"{env_id}: {metric}{f', {groups} configs' if groups > 1 else ''} "
                     f"({len(env_runs)} run{'s' if len(env_runs) != 1 else ''})", fontsize="medium")
    note = "line: mean over seeds; shaded: min-max over seeds"
    if title is not None:
        axes[0].set_title(title, fontsize="medium")
    elif any_band and len(by_env) == 1:
        axes[0].set_title(axes[0].get_title() + "\n" + note, fontsize="medium")
    elif any_band:
        fig.suptitle(note, fontsize="medium")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    return fig


def split_by_env(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Runs by env id (in order of first appearance; "?" for runs without config.yaml)."""
    by_env: dict[str, list[RunData]] = {}
    for run in runs:
        by_env.setdefault(run.env_id or "?", []).append(run)
    return by_env


def _draw_panel(ax, runs: Sequence[RunData], metric: str, yscale: str) -> bool:
    """One env's groups, optimum and events on `ax`; True if some group has a seed band."""
    import matplotlib
    from matplotlib.ticker import EngFormatter

    colors = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    any_band = False
    for index, group in enumerate(group_runs(runs)):
        color = colors[index % len(colors)]
        with_metric = [run for run in group.runs if metric in run.metric_names()]
        if not with_metric:
            continue
        steps, mean, low, high = seed_band(with_metric, metric)
        marker = "o" if len(steps) <= 40 else None
        if len(with_metric) > 1:
            any_band = True
            label = f"{group.label} (mean of {len(with_metric)} seeds)"
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0, gid=f"band:{group.label}")
        else:
            seed = with_metric[0].seed
            label = group.label + (f" (seed {seed})" if seed is not None else "")
        ax.plot(steps, mean, color=color, marker=marker, markersize=3.5, linewidth=1.8, label=label,
                gid=f"curve:{group.label}")
    _draw_optimum(ax, runs, metric)
    _draw_events(ax, runs)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_yscale(yscale)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.9)
    return any_band


def _draw_optimum(ax, runs: Sequence[RunData], metric: str) -> None:
    """The env's optimum, mean over the runs' logged optima (one env per panel)."""
    if metric == "eval/optimality_ratio":
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2, label="optimum (ratio 1)", gid="optimum")
        return
    if metric != DEFAULT_METRIC:
        return
    optima = [optimum for optimum in map(run_optimum, runs) if optimum is not None]
    if not optima:
        return
    source = OPTIMUM_SOURCES.get(runs[0].env_id or "")
    label = f"optimum ({source})" if source else "optimum (known to the env)"
    if len(optima) > 1:
        label += f", mean of {len(optima)} runs"
    ax.axhline(float(np.mean(optima)), color="black", linestyle="--", linewidth=1.2, label=label, gid="optimum")


def _draw_events(ax, runs: Sequence[RunData]) -> None:
    steps: dict[str, set[float]] = {category: set() for category in EVENT_STYLES}
    counts = dict.fromkeys(EVENT_STYLES, 0)
    for run in runs:
        for event in run.events:
            category = _event_category(str(event.get("event")))
            if category is not None:
                steps[category].add(float(event["step"]))
                counts[category] += 1
    axis_coords = ax.get_xaxis_transform()  # x in data units (steps), y in axes units (0 bottom, 1 top)
    for category, (name, color, style) in EVENT_STYLES.items():
        if not steps[category]:
            continue
        xs = sorted(steps[category])
        label = f"{name} ({counts[category]})"
        if style is None:
            ax.plot(xs, [0.015] * len(xs), linestyle="none", marker="|", markersize=10, color=color,
                    transform=axis_coords, label=label, gid=f"event:{category}")
        else:
            ax.vlines(xs, 0, 1, transform=axis_coords, colors=color, linestyles=style, linewidth=1.2,
                      alpha=0.8, label=label, gid=f"event:{category}")


# ----------------------------------------------------------------------------- the summary table
SUMMARY_COLUMNS = ("run", "env", "seed", "status", "steps", "final_eval_return", "best_eval_return",
                   "optimality_ratio", "wall_s", "segments", "rewinds", "steps_per_sec", "warnings", "rollbacks")


def summarize_run(run: RunData) -> dict[str, Any]:
    """One row: the facts of summary.json where the run wrote one, else derived from metrics.jsonl.

    final/best eval return: the last (NaN if it was)/highest finite `eval/return_mean` in metrics.jsonl
    (its whole history, also across resumes), else summary.json's. wall_s: summary.json's total over the
    run's segments (resumes; `wall_s` alone, the last segment's, for runs from before segments were recorded),
    else the time from the first to the last record. segments, rewinds: summary.json's, else counted from the
    resume and rewind events. steps_per_sec: environment steps
    per second from the logged `perf/steps_per_sec` (time-weighted over the logging intervals, eval
    time included), else steps / wall_s."""
    summary = run.summary or {}
    eval_steps, eval_returns = run.series(DEFAULT_METRIC)
    finite = eval_returns[np.isfinite(eval_returns)]
    _, ratios = run.series("eval/optimality_ratio")
    record_steps = [r["step"] for r in run.records + run.events]
    steps = summary.get("steps")
    if steps is None and record_steps:
        steps = max(record_steps)
    wall_s = summary.get("wall_s_total", summary.get("wall_s"))
    times = [r["time"] for r in run.records + run.events if isinstance(r.get("time"), (int, float))]
    if wall_s is None and len(times) > 1:
        wall_s = max(times) - min(times)
    if summary.get("warnings") is not None:
        warnings_by_kind = {str(k): int(v) for k, v in summary["warnings"].items()}
    else:
        warnings_by_kind = {}
        for event in run.events:
            kind = str(event.get("event"))
            if kind.startswith("warning/"):
                name = kind.split("/", 1)[1]
                warnings_by_kind[name] = warnings_by_kind.get(name, 0) + 1
    rollbacks = summary.get("rollbacks")
    if rollbacks is None:
        rollbacks = sum(1 for event in run.events if event.get("event") == "rollback")
    ratio = summary.get("optimality_ratio")
    if ratio is None and len(ratios):
        ratio = float(ratios[-1])
    return {
        "run": str(run.path),
        "env": run.env_id,
        "seed": run.seed,
        "status": _status(run),
        "steps": steps,
        "final_eval_return": (float(eval_returns[-1]) if len(eval_returns)
                              else _float_or_none(summary.get("final_eval_return"))),
        "best_eval_return": float(finite.max()) if len(finite) else _float_or_none(summary.get("best_eval_return")),
        "optimality_ratio": _float_or_none(ratio),
        "wall_s": _float_or_none(wall_s),
        "segments": summary.get("segments", 1 + _count_events(run, "resume")),
        "rewinds": summary.get("rewinds", _count_events(run, "rewind")),
        "steps_per_sec": _throughput(run, steps, wall_s),
        "warnings": sum(warnings_by_kind.values()),
        "rollbacks": int(rollbacks),
        "warnings_by_kind": warnings_by_kind,
        "evals": int(len(eval_steps)),
    }


def _count_events(run: RunData, kind: str) -> int:
    return sum(1 for event in run.events if event.get("event") == kind)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else _to_float(value)


def _status(run: RunData) -> str:
    if run.summary is None:
        return "incomplete"  # still running, or killed before it could write summary.json
    if run.summary.get("stop_reason"):
        return "safety stop"
    if run.summary.get("interrupted"):
        return "interrupted"
    return "finished"


def _throughput(run: RunData, steps: int | None, wall_s: float | None) -> float | None:
    previous, total_steps, total_time = 0, 0.0, 0.0
    for record in run.records:
        if "perf/steps_per_sec" not in record:
            continue
        rate, step = _to_float(record["perf/steps_per_sec"]), record["step"]
        if math.isfinite(rate) and rate > 0 and step > previous:
            total_steps += step - previous
            total_time += (step - previous) / rate
        previous = step
    if total_time > 0:
        return total_steps / total_time
    if steps and wall_s:
        return steps / wall_s
    return None


def summarize_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per run folder (parent folders expanded), keys SUMMARY_COLUMNS plus warnings_by_kind and evals."""
    return [summarize_run(run) for run in load_runs(run_dirs)]


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of summarize_runs' rows; run folders relative to their common parent."""
    if not rows:
        return "(no runs)"
    names = [str(row["run"]) for row in rows]
    header_line = ""
    if len(rows) > 1:
        try:
            common = os.path.commonpath(names)
        except ValueError:
            common = ""
        if common and common not in names:
            names = [os.path.relpath(name, common) for name in names]
            header_line = f"run folders in {common}{os.sep}"
    with_ratio = any(row.get("optimality_ratio") is not None for row in rows)
    columns: list[tuple[str, str, Any]] = [  # (title, alignment, cell)
        ("run", "<", lambda row, i: names[i]),
        ("env", "<", lambda row, i: row.get("env") or "-"),
        ("seed", ">", lambda row, i: _cell(row.get("seed"), "{}")),
        ("status", "<", lambda row, i: row.get("status") or "-"),
        ("steps", ">", lambda row, i: _cell(row.get("steps"), "{:,}")),
        ("final eval", ">", lambda row, i: _cell(row.get("final_eval_return"), "{:,.2f}")),
        ("best eval", ">", lambda row, i: _cell(row.get("best_eval_return"), "{:,.2f}")),
    ]
    if with_ratio:
        columns.append(("opt. ratio", ">", lambda row, i: _cell(row.get("optimality_ratio"), "{:.3f}")))
    columns += [
        ("wall", ">", lambda row, i: format_duration(row.get("wall_s"))),
        ("segments", ">", lambda row, i: _cell(row.get("segments"), "{}")),
        ("rewinds", ">", lambda row, i: _cell(row.get("rewinds"), "{}")),
        ("steps/s", ">", lambda row, i: _cell(row.get("steps_per_sec"), "{:,.1f}")),
        ("warnings", ">", lambda row, i: _cell(row.get("warnings"), "{}")),
        ("rollbacks", ">", lambda row, i: _cell(row.get("rollbacks"), "{}")),
    ]
    cells = [[cell(row, i) for _, _, cell in columns] for i, row in enumerate(rows)]
    widths = [max(len(title), *(len(r[c]) for r in cells)) for c, (title, _, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(f"{v:{align}{w}}" for v, (_, align, _), w in zip(values, columns, widths)).rstrip()

    lines = [header_line] if header_line else []
    lines.append(line([title for title, _, _ in columns]))
    lines.extend(line(r) for r in cells)
    notes = ["eval = deterministic policy's return (sum of rewards per episode); final = last evaluation"]
    if with_ratio:
        notes.append("opt. ratio = optimal / agent return (costs): 1.000 is optimal")
    return "\n".join(lines + notes)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def write_summary_json(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The rows as a JSON list (non-finite numbers as "nan"/"inf" strings, as in metrics.jsonl)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        return value

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([clean(dict(row)) for row in rows], indent=2) + "\n")
    return path
