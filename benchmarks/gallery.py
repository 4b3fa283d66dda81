"""The README's gallery: learning curves of SAC with no context, the learned dynamics map and the
oracle context, one PNG per built-in env family.

    docs/gallery/random_linear.png       dynsac/RandomLinear-v0: none / learned / env, LQR optimum line
    docs/gallery/random_pendulum.png     dynsac/RandomPendulum-v0: none / learned / env
    docs/gallery/random_halfcheetah.png  dynsac/RandomHalfCheetah-v0: learned / env (only if MuJoCo is installed)

The runs are short runs of benchmarks/context_benefit.py (run as a subprocess, one invocation per
family, `--resume-results`), logged to benchmarks/results/gallery_runs/{env}_{source}_seed{seed}
with `eval/return_mean` every `--eval-interval` steps; each figure is `dynsac plot`'s (plot_runs:
mean over seeds, min-max band shaded), resized and saved small for committing. A family whose runs
are all complete (summary.json with the same step budget and learning-curve settings) is not
retrained, so a rerun only redraws; `--plot-only` never trains.

    PYTHONPATH=src python benchmarks/gallery.py                  # train what is missing, draw all
    PYTHONPATH=src python benchmarks/gallery.py --plot-only      # redraw from the runs there are
    PYTHONPATH=src python benchmarks/gallery.py --families linear --linear-steps 2000 --seeds 0

Defaults: RandomLinear and RandomPendulum 5,000 steps, seeds 0,1; RandomHalfCheetah 3,000 steps,
seed 0; evaluations every 500 steps over 5 episodes; `--jobs 2`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from common import REPO_ROOT
from context_benefit import ENV_IDS, SOURCES, run_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONTEXT_BENEFIT = Path(__file__).resolve().parent / "context_benefit.py"
RUNS_DIR = REPO_ROOT / "benchmarks" / "results" / "gallery_runs"
OUT_DIR = REPO_ROOT / "docs" / "gallery"

FIGSIZE = (7.0, 4.2)  # inches
DPI = 90
SIZE_BUDGET = 80_000  # bytes per PNG, for committing


@dataclass(frozen=True)
class Family:
    env: str  # context_benefit's name: linear, pendulum, halfcheetah
    name: str
    image: str
    sources: tuple[str, ...]
    yscale: str = "linear"
    needs_mujoco: bool = False


FAMILIES = {
    # RandomLinear's returns span -1e6 (random policy) to -4e3 (LQR): symlog keeps both ends readable.
    "linear": Family("linear", "RandomLinear", "random_linear.png", SOURCES, yscale="symlog"),
    "pendulum": Family("pendulum", "RandomPendulum", "random_pendulum.png", SOURCES),
    "halfcheetah": Family("halfcheetah", "RandomHalfCheetah", "random_halfcheetah.png", ("learned", "env"),
                          needs_mujoco=True),
}


# ----------------------------------------------------------------------------- command line
def _seeds(text: str) -> list[int]:
    try:
        seeds = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1") from None
    if not seeds or seeds[0] < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one seed, each >= 0")
    return seeds


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train short context_benefit runs and draw the README's gallery "
                                     "(docs/gallery/*.png).")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated: linear, pendulum, halfcheetah (default all; halfcheetah is skipped "
                        "without MuJoCo)")
    parser.add_argument("--linear-steps", type=_positive, default=5_000,
                        help="steps per RandomLinear run (default 5000)")
    parser.add_argument("--pendulum-steps", type=_positive, default=5_000,
                        help="steps per RandomPendulum run (default 5000)")
    parser.add_argument("--halfcheetah-steps", type=_positive, default=3_000,
                        help="steps per RandomHalfCheetah run (default 3000)")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1],
                        help="seeds of RandomLinear and RandomPendulum (default 0,1)")
    parser.add_argument("--halfcheetah-seeds", type=_seeds, default=[0], help="seeds of RandomHalfCheetah (default 0)")
    parser.add_argument("--eval-interval", type=_positive, default=500,
                        help="steps between the evaluations the curves are drawn from (default 500)")
    parser.add_argument("--curve-episodes", type=_positive, default=5, help="episodes per evaluation (default 5)")
    parser.add_argument("--eval-episodes", type=_positive, default=5,
                        help="context_benefit's final per-split evaluation episodes (its table; default 5)")
    parser.add_argument("--jobs", type=_positive, default=2, help="parallel training runs (default 2)")
    parser.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run, passed to context_benefit.py (repeatable)")
    parser.add_argument("--plot-only", action="store_true", help="never train: draw from the runs in --runs-dir")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                        help="run folders (default benchmarks/results/gallery_runs)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the PNGs go (default docs/gallery)")
    args = parser.parse_args(argv)
    chosen = [part.strip().lower() for part in args.families.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in FAMILIES]
    if unknown or not chosen:
        parser.error(f"--families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
    args.families = [name for name in FAMILIES if name in chosen]
    return args


def steps_of(args: argparse.Namespace, family: Family) -> int:
    return getattr(args, f"{family.env}_steps")


def seeds_of(args: argparse.Namespace, family: Family) -> list[int]:
    return args.halfcheetah_seeds if family.env == "halfcheetah" else args.seeds


def run_dirs(args: argparse.Namespace, family: Family) -> list[Path]:
    """The family's run folders, in legend order (sources, then seeds)."""
    return [args.runs_dir / run_key(family.env, source, seed) for source in family.sources
            for seed in seeds_of(args, family)]


def results_json(args: argparse.Namespace, family: Family) -> Path:
    """context_benefit's JSON for the family, beside the runs folder (its table of final returns)."""
    return args.runs_dir.parent / f"{args.runs_dir.name}_{family.env}.json"


def has_mujoco() -> bool:
    return importlib.util.find_spec("mujoco") is not None


# ----------------------------------------------------------------------------- training
def run_is_complete(run_dir: Path, steps: int, eval_interval: int, curve_episodes: int) -> bool:
    """A run of this budget that finished (or met a safety stop: rerunning it would stop again) and
    logged the learning curve these settings ask for."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return False
    training = config.get("training") or {}
    finished = summary.get("steps") == steps and not summary.get("interrupted")
    return (summary.get("total_steps") == steps and (finished or bool(summary.get("stop_reason")))
            and training.get("eval_interval") == eval_interval and training.get("eval_episodes") == curve_episodes)


def train_family(args: argparse.Namespace, family: Family) -> int:
    """Run context_benefit.py for the family's missing runs; its exit code (0 when nothing was missing)."""
    start = time.monotonic()
    steps = steps_of(args, family)
    missing = [d.name for d in run_dirs(args, family)
               if not run_is_complete(d, steps, args.eval_interval, args.curve_episodes)]
    if not missing:
        print(f"[gallery] {family.name}: all {len(run_dirs(args, family))} runs complete in {args.runs_dir}; "
              "not retrained", flush=True)
        return 0
    command = [
        sys.executable, str(CONTEXT_BENEFIT), "--envs", family.env, f"--{family.env}-steps", str(steps),
        "--seeds", ",".join(map(str, seeds_of(args, family))), "--sources", ",".join(family.sources),
        "--eval-interval", str(args.eval_interval), "--curve-episodes", str(args.curve_episodes),
        "--eval-episodes", str(args.eval_episodes), "--jobs", str(args.jobs),
        "--runs-dir", str(args.runs_dir), "--out", str(results_json(args, family)),
        "--resume-results", *(f"--set={override}" for override in args.set),
    ]
    print(f"[gallery] {family.name}: {len(missing)} run(s) to train ({', '.join(missing)}):\n  "
          + " ".join(command), flush=True)
    code = subprocess.run(command, cwd=REPO_ROOT).returncode
    print(f"[gallery] {family.name}: training took {time.monotonic() - start:.0f} s", flush=True)
    return code


# ----------------------------------------------------------------------------- drawing
def _budget(runs: list[Any]) -> tuple[str, str]:
    """(title budget, detail line) from the runs' own configs, so a redraw says what it draws."""

    def values(*keys: str) -> list[Any]:
        found = []
        for run in runs:
            value: Any = run.config or {}
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value not in found:
                found.append(value)
        return found

    def one_or_range(items: list[Any], fmt: str = "{:,}") -> str:
        items = [i for i in items if i is not None]
        if not items:
            return "?"
        return fmt.format(items[0]) if len(items) == 1 else "/".join(fmt.format(i) for i in sorted(items))

    steps = one_or_range(values("training", "total_steps"))
    seeds = [s for s in values("training", "seed") if s is not None]
    seed_text = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    splits = {(((run.config or {}).get("env") or {}).get("eval_kwargs") or {}).get("split", "train") for run in runs}
    split = "/".join(sorted(splits))
    episodes = one_or_range(values("training", "eval_episodes"), "{}")
    detail = (f"eval every {one_or_range(values('training', 'eval_interval'))} steps, "
              f"{episodes} episode{'s' if episodes != '1' else ''}, {split}-range dynamics")
    return f"{steps} steps, {seed_text}", detail


def draw_family(family: Family, dirs: list[Path], out: Path, *, figsize: tuple[float, float] = FIGSIZE,
                dpi: int = DPI) -> Figure:
    """plot_runs' figure of the family's runs, titled with their budget, saved small to `out`."""
    from dynsac.training.plots import load_runs, plot_loaded_runs

    runs = load_runs(dirs)
    budget, detail = _budget(runs)
    several_seeds = len({(r.config or {}).get("training", {}).get("seed") for r in runs}) > 1
    shading = "line: mean over seeds, shaded: min-max; " if several_seeds else ""
    scale = f"; y: {family.yscale}" if family.yscale != "linear" else ""
    title = f"{ENV_IDS[family.env]}: eval return while training ({budget})\n{shading}{detail}{scale}"
    fig = plot_loaded_runs(runs, yscale=family.yscale, title=title)
    fig.set_size_inches(*figsize)
    ax = fig.axes[0]
    if family.yscale == "symlog":
        _trim_symlog(ax)
    ax.title.set_fontsize("small")
    ax.xaxis.label.set_fontsize("small")
    ax.yaxis.label.set_fontsize("small")
    ax.tick_params(labelsize="small")
    legend = ax.get_legend()
    if legend is not None:
        for text in legend.get_texts():
            text.set_fontsize("x-small")
    save_png(fig, out, dpi)
    return fig


def _trim_symlog(ax: Any) -> None:
    """Returns all below zero (costs): end the axis just above the highest curve or optimum, not at +1e4."""
    import numpy as np

    tops = []
    for line in ax.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith("curve:") or gid == "optimum":
            y = np.asarray(line.get_ydata(), dtype=float)
            y = y[np.isfinite(y)]
            if y.size:
                tops.append(float(y.max()))
    if tops and max(tops) < 0:
        ax.set_ylim(top=max(tops) / 2)  # half the cost: a factor of 2 of headroom on the log axis


def save_png(fig: Figure, out: Path, dpi: int) -> None:
    """PNG at `dpi`; through Pillow (256-colour palette, optimize) when it is there: a few tens of KB."""
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    try:
        from PIL import Image
    except ImportError:
        out.write_bytes(buffer.getvalue())
        return
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(out, format="PNG", optimize=True)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    status = 0
    written: list[tuple[Path, str]] = []
    for name in args.families:
        family = FAMILIES[name]
        if family.needs_mujoco and not has_mujoco():
            print(f"[gallery] {family.name}: skipped, MuJoCo is not installed (pip install -e '.[mujoco]')", flush=True)
            continue
        if not args.plot_only:
            code = train_family(args, family)
            if code == 130:
                print("[gallery] interrupted; finished runs are kept, rerun to continue", flush=True)
                return 130
            if code != 0:
                print(f"[gallery] {family.name}: context_benefit.py exited with {code} (some run failed?); "
                      "drawing the runs there are", flush=True)
                status = 1
        present = [d for d in run_dirs(args, family) if (d / "metrics.jsonl").is_file()]
        absent = [d.name for d in run_dirs(args, family) if d not in present]
        if not present:
            print(f"[gallery] {family.name}: no runs in {args.runs_dir}"
                  + (" (run without --plot-only to train them)" if args.plot_only else ""), flush=True)
            status = 1
            continue
        if absent:
            print(f"[gallery] {family.name}: missing runs {', '.join(absent)}; drawing the others", flush=True)
            status = 1
        out = args.out_dir / family.image
        from dynsac.training.plots import PlotError, load_runs

        try:
            draw_family(family, present, out)
        except PlotError as err:
            print(f"[gallery] {family.name}: cannot draw: {err}", flush=True)
            status = 1
            continue
        written.append((out, _budget(load_runs(present))[0]))
        print(f"[gallery] {family.name}: wrote {out} ({out.stat().st_size / 1000:.0f} KB)", flush=True)

    print()
    print(f"[gallery] wall time {time.monotonic() - start:.0f} s" + (" (plot only)" if args.plot_only else ""))
    for out, budget in written:
        try:
            shown = out.resolve().relative_to(REPO_ROOT)
        except ValueError:
            shown = out
        size = out.stat().st_size
        print(f"  {shown}  ({budget}; {size / 1000:.0f} KB{'' if size <= SIZE_BUDGET else ', over the 80 KB aim'})")
    return status


if __name__ == "__main__":
    sys.exit(main())
