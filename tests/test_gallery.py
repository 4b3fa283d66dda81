"""benchmarks/context_benefit.py logs learning curves that `dynsac plot` draws, and benchmarks/gallery.py
turns them into the README's small PNGs: the tiniest real runs (one subprocess), then the figure's
content checked from its matplotlib objects against the run folders' metrics."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from dynsac.training.logger import read_metrics
from dynsac.training.plots import plot_runs

from conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOURCES = ("none", "learned", "env")
SEEDS = (0, 1)
STEPS, EVAL_INTERVAL = 120, 60
TINY = ["--set", "training.hidden_sizes=[16,16]", "--set", "context.encoder_hidden_sizes=[16]",
        "--set", "training.learning_starts=40", "--set", "training.batch_size=16",
        "--set", "logging.tensorboard=false"]


def artists(fig, prefix):
    return [a for a in fig.axes[0].get_children() if (a.get_gid() or "").startswith(prefix)]


def band_limits(band):
    limits: dict[float, list[float]] = {}
    for x, y in band.get_paths()[0].vertices:
        limits.setdefault(round(float(x), 6), []).append(float(y))
    return {x: (min(ys), max(ys)) for x, ys in limits.items()}


def series(run_dir, metric="eval/return_mean"):
    return {r["step"]: r[metric] for r in read_metrics(run_dir) if metric in r}


def load_gallery(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # gallery imports context_benefit and common from there
    spec = importlib.util.spec_from_file_location("gallery_under_test", BENCHMARKS / "gallery.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_context_benefit_curves_plot_and_gallery(tmp_path, subprocess_env, monkeypatch, capsys):
    runs_dir, out = tmp_path / "runs", tmp_path / "cb.json"
    command = [sys.executable, str(BENCHMARKS / "context_benefit.py"), "--envs", "linear",
               "--linear-steps", str(STEPS), "--seeds", ",".join(map(str, SEEDS)),
               "--eval-interval", str(EVAL_INTERVAL), "--curve-episodes", "1", "--eval-episodes", "1",
               "--jobs", "2", "--runs-dir", str(runs_dir), "--out", str(out), *TINY]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["runs_complete"] == 6 and report["eval_interval"] == EVAL_INTERVAL
    assert report["extra_overrides"] == TINY[1::2]

    # ---- every run logged a learning curve: evaluations at 60 and 120 steps, the LQR optimum with them
    folders = {(source, seed): runs_dir / f"linear_{source}_seed{seed}" for source in SOURCES for seed in SEEDS}
    returns = {key: series(folder) for key, folder in folders.items()}
    assert all(sorted(r) == [EVAL_INTERVAL, STEPS] for r in returns.values())

    # ---- dynsac plot on the runs folder: one curve and one seed band per context source
    fig = plot_runs([runs_dir])
    curves = {c.get_label(): c for c in artists(fig, "curve:")}
    assert sorted(curves) == sorted(f"context.source={s} (mean of 2 seeds)" for s in SOURCES)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert set(curves) <= set(legend)
    bands = {b.get_gid(): b for b in artists(fig, "band:")}
    assert sorted(bands) == sorted(f"band:context.source={s}" for s in SOURCES)
    for source in SOURCES:
        per_seed = [returns[source, seed] for seed in SEEDS]
        curve = curves[f"context.source={source} (mean of 2 seeds)"]
        assert list(curve.get_xdata()) == [EVAL_INTERVAL, STEPS]
        means = [np.mean([r[step] for r in per_seed]) for step in (EVAL_INTERVAL, STEPS)]
        np.testing.assert_allclose(curve.get_ydata(), means)
        limits = band_limits(bands[f"band:context.source={source}"])
        for step in (EVAL_INTERVAL, STEPS):
            assert limits[step] == pytest.approx((min(r[step] for r in per_seed), max(r[step] for r in per_seed)))

    [optimum] = artists(fig, "optimum")
    per_run = [np.mean(list(series(folder, "eval/optimal_return_mean").values())) for folder in folders.values()]
    assert optimum.get_ydata()[0] == pytest.approx(np.mean(per_run))
    assert optimum.get_label() == "optimum (LQR), mean of 6 runs" and optimum.get_label() in legend
    ax = fig.axes[0]
    assert ax.get_xlabel() == "environment steps"
    assert ax.get_ylabel() == "eval return (sum of rewards per episode)"

    # ---- gallery.py --plot-only: the same figure, titled with the budget, saved small
    gallery = load_gallery(monkeypatch)
    images = tmp_path / "gallery"
    monkeypatch.setattr(gallery.subprocess, "run", lambda *a, **k: pytest.fail("--plot-only must not train"))
    assert gallery.main(["--plot-only", "--families", "linear", "--runs-dir", str(runs_dir),
                         "--out-dir", str(images)]) == 0
    png = images / "random_linear.png"
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) < gallery.SIZE_BUDGET
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert (width, height) == (round(gallery.FIGSIZE[0] * gallery.DPI), round(gallery.FIGSIZE[1] * gallery.DPI))
    printed = capsys.readouterr().out
    assert "120 steps, 2 seeds" in printed and str(png) in printed

    fig = gallery.draw_family(gallery.FAMILIES["linear"], sorted(folders.values()), tmp_path / "again.png")
    title = fig.axes[0].get_title()
    assert title.startswith("dynsac/RandomLinear-v0") and "120 steps, 2 seeds" in title and "min-max" in title
    assert len(artists(fig, "curve:")) == 3 and len(artists(fig, "band:")) == 3 and artists(fig, "optimum")

    # ---- without --plot-only: complete runs are not retrained; a new budget calls context_benefit.py
    budget = ["--families", "linear", "--seeds", "0,1", "--eval-interval", str(EVAL_INTERVAL), "--curve-episodes", "1",
              "--runs-dir", str(runs_dir), "--out-dir", str(images)]
    assert gallery.main([*budget, "--linear-steps", str(STEPS)]) == 0
    assert "all 6 runs complete" in capsys.readouterr().out
    calls = []
    monkeypatch.setattr(gallery.subprocess, "run",
                        lambda command, **kwargs: calls.append(command) or subprocess.CompletedProcess(command, 0))
    assert gallery.main([*budget, "--linear-steps", "240"]) == 0  # nothing trained (stub): draws the 120-step runs
    [command] = calls
    assert command[1] == str(BENCHMARKS / "context_benefit.py")
    text = " ".join(command)
    for part in ("--envs linear", "--linear-steps 240", "--seeds 0,1", "--sources none,learned,env",
                 f"--eval-interval {EVAL_INTERVAL}", "--curve-episodes 1", f"--runs-dir {runs_dir}",
                 "--resume-results"):
        assert part in text
