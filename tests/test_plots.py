"""`dynsac plot` and `dynsac summary`: run folders read, seeds grouped, the figure's content checked
from its matplotlib objects, the summary's numbers against the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dynsac.cli import EXIT_BAD_INPUT, main
from dynsac.config import load_config
from dynsac.training import SACTrainer
from dynsac.training.logger import read_metrics
from dynsac.training.plots import (
    PlotError,
    expand_run_dirs,
    format_summary,
    group_runs,
    load_runs,
    plot_runs,
    summarize_runs,
)

from conftest import tiny_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- helpers
def artists(fig, prefix):
    """The axes' artists whose gid starts with prefix (curve:, band:, optimum, event:)."""
    ax = fig.axes[0]
    return [a for a in ax.get_children() if (a.get_gid() or "").startswith(prefix)]


def legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def band_limits(band):
    """(x -> (low, high)) of a fill_between PolyCollection: the polygon's vertices per x."""
    limits: dict[float, list[float]] = {}
    for x, y in band.get_paths()[0].vertices:
        limits.setdefault(round(float(x), 6), []).append(float(y))
    return {x: (min(ys), max(ys)) for x, ys in limits.items()}


def eval_series(run_dir, metric="eval/return_mean"):
    return {r["step"]: r[metric] for r in read_metrics(run_dir) if metric in r}


def write_run(folder: Path, config: dict | None, records: list[dict], summary: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def linear_config(seed: int, run_dir: Path) -> dict:
    return {"env": {"id": "dynsac/RandomLinear-v0", "kwargs": {}},
            "training": {"seed": seed, "learning_rate": 1e-3, "checkpoint_dir": f"ck{seed}"},
            "logging": {"dir": str(run_dir)}}


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Three tiny real runs under one parent: two seeds of one config and one run at another learning rate."""
    root = tmp_path_factory.mktemp("runs")
    specs = {"lr1e-3_seed0": {"training.seed": 0}, "lr1e-3_seed1": {"training.seed": 1},
             "lr3e-4_seed0": {"training.seed": 0, "training.learning_rate": 3e-4}}
    for name, extra in specs.items():
        overrides = tiny_overrides(root / "work", **{
            "training.total_steps": 300, "training.eval_interval": 100, "training.checkpoint_interval": 0,
            "training.learning_rate": 1e-3, "logging.tensorboard": "false",
            "training.checkpoint_dir": str(root / "checkpoints" / name), "logging.dir": str(root / "all" / name),
            **extra})
        SACTrainer(load_config(None, overrides)).train()
    return root / "all"


@pytest.fixture
def synthetic_runs(tmp_path):
    """Two seeds of a RandomLinear config (seed 1 stopped early, with a NaN eval) with planted safety
    events and a logged LQR optimum; no summary.json for seed 1."""
    root = tmp_path / "linear"
    seed0 = [
        {"step": 100, "time": 1000.0, "perf/steps_per_sec": 50.0, "safety/rollbacks": 0.0},
        {"step": 200, "time": 1002.0, "eval/return_mean": -400.0, "eval/optimal_return_mean": -100.0,
         "eval/optimality_ratio": 0.25},
        {"step": 200, "time": 1002.5, "perf/steps_per_sec": 25.0},
        {"step": 300, "time": 1003.0, "event": "warning/q_growth", "message": "|Q| grew 100x"},
        {"step": 400, "time": 1010.0, "eval/return_mean": -200.0, "eval/optimal_return_mean": -100.0,
         "eval/optimality_ratio": 0.5},
        {"step": 450, "time": 1011.0, "event": "skipped_update", "message": "non-finite gradient"},
        {"step": 500, "time": 1012.0, "event": "nonfinite", "message": "NaN in critic"},
        {"step": 500, "time": 1012.0, "event": "rollback", "message": "rolled back"},
        {"step": 600, "time": 1020.0, "eval/return_mean": -150.0, "eval/optimal_return_mean": -100.0,
         "eval/optimality_ratio": 0.6667},
    ]
    seed1 = [
        {"step": 100, "time": 2000.0, "perf/steps_per_sec": 40.0},
        {"step": 200, "time": 2004.0, "eval/return_mean": -300.0, "eval/optimal_return_mean": -120.0,
         "eval/optimality_ratio": 0.4},
        {"step": 300, "time": 2005.0, "event": "warning/alpha_runaway", "message": "alpha grew"},
        {"step": 300, "time": 2005.5, "event": "warning/q_growth", "message": "|Q| grew 100x"},
        {"step": 400, "time": 2009.0, "eval/return_mean": "nan", "eval/optimal_return_mean": -120.0,
         "eval/optimality_ratio": "nan"},
        {"step": 700, "time": 2030.0, "event": "stopped", "message": "too many rollbacks"},
    ]
    summary0 = {"steps": 600, "total_steps": 600, "updates": 500, "wall_s": 21.5, "interrupted": False,
                "stop_reason": None, "final_eval_return": -150.0, "best_eval_return": -150.0,
                "optimal_return": -100.0, "optimality_ratio": 0.6667, "warnings": {"q_growth": 1},
                "rollbacks": 1, "last_checkpoint": None}
    write_run(root / "seed0", linear_config(0, root / "seed0"), seed0, summary0)
    write_run(root / "seed1", linear_config(1, root / "seed1"), seed1)
    return root


# ----------------------------------------------------------------------------- the figure
def test_seed_groups_mean_band_labels_and_png(real_runs, tmp_path):
    out = tmp_path / "figures" / "curves.png"
    fig = plot_runs([real_runs], "eval/return_mean", out)

    curves = artists(fig, "curve:")
    assert len(curves) == 2  # two configs: one line each
    seeds = [eval_series(real_runs / name) for name in ("lr1e-3_seed0", "lr1e-3_seed1")]
    single = eval_series(real_runs / "lr3e-4_seed0")
    steps = sorted(seeds[0])
    assert steps == [100, 200, 300] and sorted(seeds[1]) == steps
    by_label = {c.get_label(): c for c in curves}
    group = by_label["training.learning_rate=0.001 (mean of 2 seeds)"]
    assert list(group.get_xdata()) == steps
    np.testing.assert_allclose(group.get_ydata(), [(seeds[0][s] + seeds[1][s]) / 2 for s in steps])
    alone = by_label["training.learning_rate=0.0003 (seed 0)"]
    np.testing.assert_allclose(alone.get_ydata(), [single[s] for s in steps])

    bands = artists(fig, "band:")
    assert len(bands) == 1 and type(bands[0]).__name__.endswith("PolyCollection")  # only the seed group
    limits = band_limits(bands[0])
    assert sorted(limits) == steps
    for step in steps:
        low, high = sorted((seeds[0][step], seeds[1][step]))
        assert limits[step] == pytest.approx((low, high))

    ax = fig.axes[0]
    assert ax.get_xlabel() == "environment steps"
    assert ax.get_ylabel() == "eval return (sum of rewards per episode)"
    assert "Pendulum-v1" in ax.get_title() and "min-max over seeds" in ax.get_title()
    texts = legend_texts(fig)
    assert sorted(texts) == sorted(by_label)  # only the differing key, no seed, folder or other config
    assert not artists(fig, "optimum") and not artists(fig, "event:")  # Pendulum-v1 knows no optimum

    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 800 and height > 450


def test_events_optimum_and_interrupted_seed(synthetic_runs):
    fig = plot_runs([synthetic_runs / "seed0", synthetic_runs / "seed1"])
    [curve] = artists(fig, "curve:")
    # All runs share the config but the seed: labelled by env id.
    assert curve.get_label() == "dynsac/RandomLinear-v0 (mean of 2 seeds)"
    assert list(curve.get_xdata()) == [200, 400, 600]
    # step 400: seed 1 logged NaN, left out; step 600: only seed 0 got there.
    np.testing.assert_allclose(curve.get_ydata(), [-350.0, -200.0, -150.0])
    [band] = artists(fig, "band:")
    assert band_limits(band) == {200: (-400.0, -300.0), 400: (-200.0, -200.0), 600: (-150.0, -150.0)}

    [optimum] = artists(fig, "optimum")
    assert list(optimum.get_ydata()) == [-110.0, -110.0]  # mean of the runs' optima (-100, -120)
    assert optimum.get_linestyle() == "--"
    assert optimum.get_label() == "optimum (LQR), mean of 2 runs"

    def xs(category):
        [marks] = artists(fig, f"event:{category}")
        if hasattr(marks, "get_segments"):  # vertical lines
            return sorted({float(segment[0][0]) for segment in marks.get_segments()})
        return sorted(float(x) for x in marks.get_xdata())

    assert xs("warning") == [300.0]  # three warnings, all at step 300
    assert xs("rollback") == [500.0]
    assert xs("stopped") == [700.0]
    assert xs("repair") == [450.0]
    texts = legend_texts(fig)
    assert {"early warning (3)", "rollback (1)", "safety stop (1)", "skipped update / repaired input (1)",
            "optimum (LQR), mean of 2 runs"} <= set(texts)
    styles = {a.get_gid(): a.get_linestyle()[0] for a in artists(fig, "event:") if hasattr(a, "get_segments")}
    assert len(set(map(str, styles.values()))) == 3  # one line style per kind


def test_optimality_ratio_metric_has_the_optimum_at_one(synthetic_runs):
    fig = plot_runs([synthetic_runs], "eval/optimality_ratio")
    [optimum] = artists(fig, "optimum")
    assert list(optimum.get_ydata()) == [1.0, 1.0]
    assert fig.axes[0].get_ylabel().startswith("optimality ratio")


def test_runs_of_several_envs_get_one_panel_each(synthetic_runs, tmp_path):
    config = {"env": {"id": "Pendulum-v1"}, "training": {"seed": 0}, "logging": {"dir": "x"}}
    write_run(tmp_path / "pendulum", config, [{"step": 100, "time": 1.0, "eval/return_mean": -900.0}])
    fig = plot_runs([synthetic_runs, tmp_path / "pendulum"])
    linear, pendulum = fig.axes
    assert linear.get_title().startswith("dynsac/RandomLinear-v0") and pendulum.get_title().startswith("Pendulum-v1")
    assert [line.get_label() for line in pendulum.get_lines() if (line.get_gid() or "").startswith("curve:")] == [
        "Pendulum-v1 (seed 0)"]  # labels compare configs within a panel only
    assert [a.get_gid() for a in pendulum.get_children() if (a.get_gid() or "").startswith(("optimum", "event:"))] == []
    assert len([a for a in linear.get_children() if a.get_gid() == "optimum"]) == 1
    assert "min-max over seeds" in fig.get_suptitle()


# ----------------------------------------------------------------------------- the summary
def test_summary_rows_match_the_files(real_runs, synthetic_runs):
    rows = {Path(row["run"]).name: row for row in summarize_runs([real_runs, synthetic_runs])}
    assert len(rows) == 5

    for name in ("lr1e-3_seed0", "lr1e-3_seed1", "lr3e-4_seed0"):
        row, folder = rows[name], real_runs / name
        summary = json.loads((folder / "summary.json").read_text())
        returns = eval_series(folder)
        assert row["env"] == "Pendulum-v1" and row["status"] == "finished"
        assert row["seed"] == (1 if name.endswith("seed1") else 0)
        assert row["steps"] == summary["steps"] == 300
        assert row["final_eval_return"] == pytest.approx(returns[300]) == summary["final_eval_return"]
        assert row["best_eval_return"] == pytest.approx(max(returns.values()))
        assert row["best_eval_return"] == pytest.approx(summary["best_eval_return"])
        assert row["wall_s"] == summary["wall_s_total"] and row["segments"] == summary["segments"] == 1
        assert row["optimality_ratio"] is None and row["warnings"] == 0 and row["rollbacks"] == 0
        rates = [(r["step"], r["perf/steps_per_sec"]) for r in read_metrics(folder) if "perf/steps_per_sec" in r]
        assert [s for s, _ in rates] == [100, 200, 300]
        assert row["steps_per_sec"] == pytest.approx(300 / sum(100 / rate for _, rate in rates))

    seed0, seed1 = rows["seed0"], rows["seed1"]
    # From summary.json (finished run).
    assert seed0["status"] == "finished" and seed0["steps"] == 600 and seed0["wall_s"] == 21.5
    assert seed0["warnings"] == 1 and seed0["rollbacks"] == 1 and seed0["optimality_ratio"] == 0.6667
    assert seed0["final_eval_return"] == -150.0 and seed0["best_eval_return"] == -150.0
    assert seed0["steps_per_sec"] == pytest.approx(200 / (100 / 50 + 100 / 25))
    # No summary.json: derived from metrics.jsonl.
    assert seed1["status"] == "incomplete" and seed1["seed"] == 1 and seed1["env"] == "dynsac/RandomLinear-v0"
    assert seed1["steps"] == 700  # the last record (the stop event)
    assert seed1["wall_s"] == pytest.approx(30.0)  # first to last record
    assert np.isnan(seed1["final_eval_return"]) and seed1["best_eval_return"] == -300.0  # best: finite only
    assert seed1["warnings"] == 2 and seed1["warnings_by_kind"] == {"alpha_runaway": 1, "q_growth": 1}
    assert seed1["rollbacks"] == 0
    assert np.isnan(seed1["optimality_ratio"])  # the last logged ratio
    assert seed1["steps_per_sec"] == pytest.approx(40.0)

    table = format_summary(list(rows.values()))
    lines = table.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["run", "env"])
    for title in ("env", "seed", "steps", "final eval", "best eval", "opt. ratio", "wall", "steps/s",
                  "warnings", "rollbacks"):
        assert title in header
    seed0_line = next(line for line in lines if line.split()[0].endswith("seed0") and "RandomLinear" in line)
    assert "-150.00" in seed0_line and "0.667" in seed0_line and "21.5 s" in seed0_line
    assert "opt. ratio" not in format_summary([rows["lr1e-3_seed0"]])  # only when some run has one


def test_summary_cli_prints_and_writes_json(synthetic_runs, tmp_path, capsys):
    out = tmp_path / "out" / "summary.json"
    assert main(["summary", str(synthetic_runs), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed0" in printed and "seed1" in printed and "incomplete" in printed
    written = json.loads(out.read_text())
    assert [Path(row["run"]).name for row in written] == ["seed0", "seed1"]
    assert written[1]["optimality_ratio"] == "nan"  # valid JSON: non-finite numbers as strings
    assert written[0] == summarize_runs([synthetic_runs / "seed0"])[0]


def test_plot_cli_writes_the_image(synthetic_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(synthetic_runs)]) == 0
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)  # default: plot.png here
    assert "wrote plot.png" in capsys.readouterr().out
    assert main(["plot", str(synthetic_runs / "seed0"), "--metric", "perf/steps_per_sec", "--out", "p.svg"]) == 0
    assert (tmp_path / "p.svg").read_text().lstrip().startswith("<?xml")


# ----------------------------------------------------------------------------- finding runs, bad input
def test_parent_folders_expand_to_the_run_folders_below(synthetic_runs, tmp_path):
    nested = tmp_path / "sweep" / "trial_3" / "run"
    write_run(nested, linear_config(3, nested), [{"step": 100, "time": 1.0, "eval/return_mean": -1.0}])
    found = expand_run_dirs([synthetic_runs, synthetic_runs / "seed0" / "metrics.jsonl", tmp_path / "sweep"])
    assert found == [synthetic_runs / "seed0", synthetic_runs / "seed1", nested]  # sorted, no duplicates
    groups = group_runs(load_runs(found))
    assert [len(g.runs) for g in groups] == [3]  # seeds only differ


def test_group_labels_name_only_the_differing_keys(tmp_path):
    records = [{"step": 100, "time": 1.0, "eval/return_mean": -5.0}]
    for name, source, seed in (("none0", "none", 0), ("none1", "none", 1), ("learned0", "learned", 0)):
        config = linear_config(seed, tmp_path / name)
        config["context"] = {"source": source, "dim": 8}
        write_run(tmp_path / "runs" / name, config, records)
    write_run(tmp_path / "runs" / "old", None, records)  # no config.yaml: a group of its own
    groups = group_runs(load_runs([tmp_path / "runs"]))
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("context.source=learned", 1), ("context.source=none", 2), ("old (no config.yaml)", 1)]


@pytest.mark.parametrize("case", ["missing", "no_metrics", "file", "bad_json", "bad_metric", "bad_out"])
def test_bad_input_exits_2_naming_the_folder(case, synthetic_runs, tmp_path, capsys):
    args, expected = {
        "missing": (["plot", str(tmp_path / "nowhere")], [str(tmp_path / "nowhere"), "no such folder"]),
        "no_metrics": (["summary", str(tmp_path / "empty")], [str(tmp_path / "empty"), "no metrics.jsonl"]),
        "file": (["summary", str(tmp_path / "notes.txt")], ["notes.txt", "not a folder"]),
        "bad_json": (["summary", str(tmp_path / "broken")], [str(tmp_path / "broken" / "metrics.jsonl"), "line 1"]),
        "bad_metric": (["plot", str(synthetic_runs), "--metric", "eval/retrun_mean"],
                       ["eval/retrun_mean", "eval/return_mean", "eval/optimality_ratio", "perf/steps_per_sec"]),
        "bad_out": (["plot", str(synthetic_runs), "--out", str(tmp_path / "plot.xyz")], ["'xyz'", ".png", ".svg"]),
    }[case]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("not a run")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text('{"step": 1\n{"step": 2, "time": 1.0}\n')
    assert main(args) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith("dynsac: error: ") and "Traceback" not in error
    for text in expected:
        assert text in error
    assert not (tmp_path / "plot.xyz").exists()


def test_truncated_last_line_of_a_killed_run_is_skipped(tmp_path):
    run = write_run(tmp_path / "killed", linear_config(0, tmp_path / "killed"),
                    [{"step": 100, "time": 1.0, "eval/return_mean": -3.0}])
    with (run / "metrics.jsonl").open("a") as file:
        file.write('{"step": 200, "time": 2.0, "eval/ret')
    [row] = summarize_runs([run])
    assert row["steps"] == 100 and row["final_eval_return"] == -3.0
    with pytest.raises(PlotError, match="no such folder"):
        summarize_runs([tmp_path / "missing"])
