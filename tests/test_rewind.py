"""Rewinding: resuming from an older checkpoint of the same run moves the later files aside (never
deletes them), refuses another run's, survives a kill mid-move; the run's records stay whole."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynsac import SACTrainer
from dynsac.cli import main
from dynsac.config import load_config
from dynsac.training.checkpoint import CheckpointError, load_checkpoint
from dynsac.training.lineage import REWIND_MARKER, rewind_target
from dynsac.training.logger import read_metrics

from conftest import REPO_ROOT, tiny_overrides

CONFIG = REPO_ROOT / "training" / "config_dynamics_map.yaml"


def small(tmp_path: Path, **extra: object) -> list[str]:
    values = {"env.id": "dynsac/RandomLinear-v0", "context.encoder_hidden_sizes": "[16]",
              "context.model_hidden_sizes": "[16]", "context.history_length": 3, "training.checkpoint_interval": 300,
              "training.eval_interval": 300, "logging.tensorboard": "false", **extra}
    return tiny_overrides(tmp_path, **values)


def cli(*args: str) -> int:
    return main([*args])


def train(tmp_path: Path, *extra: str, resume: Path | None = None, **values: object) -> int:
    flags = [f"--set={o}" for o in small(tmp_path, **values)]
    command = ["train", "--config", str(CONFIG), *flags, *extra]
    return cli(*command, *(["--resume", str(resume)] if resume else []))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resuming_an_older_checkpoint_moves_the_later_ones_aside(tmp_path, capsys):
    """The issue's walk-through: 600 steps (checkpoints at 300 and 600), then resume at 300 to 900."""
    ckpt = tmp_path / "checkpoints"
    assert train(tmp_path, **{"training.total_steps": 600}) == 0
    later = {name: digest(ckpt / name) for name in ("sac_step_600.pt",)}
    metrics_before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert train(tmp_path, resume=ckpt / "sac_step_300.pt", **{"training.total_steps": 900}) == 0
    out = capsys.readouterr().out
    (moved,) = [p for p in ckpt.iterdir() if p.name.startswith("rewound_from_step_600_")]
    assert f"rewound to step 300: moved sac_step_600.pt and a copy of metrics.jsonl to {moved}/" in out
    assert f"go back to that branch with: dynsac resume {moved / 'sac_step_600.pt'}" in out
    assert {name: digest(moved / name) for name in later} == later  # byte-identical in their new place
    assert (moved / "metrics.jsonl").read_bytes() == metrics_before
    assert sorted(p.name for p in ckpt.glob("*.pt")) == ["sac_step_300.pt", "sac_step_600.pt", "sac_step_900.pt"]
    final = load_checkpoint(ckpt / "sac_step_900.pt")
    assert final["step"] == 900
    lineage = final["lineage"]
    assert lineage["run_id"] == load_checkpoint(moved / "sac_step_600.pt")["lineage"]["run_id"]
    assert lineage["resumed_from"]["step"] == 300 and lineage["rewinds"][0]["from_step"] == 600
    records = read_metrics(tmp_path / "run")
    assert [r["event"] for r in records if r.get("event") in ("resume", "rewind")] == ["resume", "rewind"]
    assert all(r["step"] <= 300 for r in records[:records.index(next(r for r in records if r.get("event") == "resume"))])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rewinds"] == 1 and summary["segments"] == 2 and summary["steps"] == 900


def test_rewinding_twice_and_going_back_to_the_abandoned_branch(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    assert train(tmp_path, **{"training.total_steps": 900}) == 0
    first_900 = digest(ckpt / "sac_step_900.pt")
    assert train(tmp_path, resume=ckpt / "sac_step_600.pt", **{"training.total_steps": 900}) == 0  # rewind 1
    assert train(tmp_path, resume=ckpt / "sac_step_300.pt", **{"training.total_steps": 600}) == 0  # rewind 2
    folders = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    assert len(folders) == 2 and folders[0].startswith("rewound_from_step_900_")
    first = ckpt / folders[0]
    assert digest(first / "sac_step_900.pt") == first_900
    capsys.readouterr()
    # Back to the very first branch, by the command its REWOUND.txt prints.
    command = (first / "REWOUND.txt").read_text().splitlines()[-1].split()
    assert command[:2] == ["dynsac", "resume"] and Path(command[2]) == first / "sac_step_900.pt"
    assert cli("resume", command[2], "--set", "training.total_steps=1200") == 0
    assert load_checkpoint(ckpt / "sac_step_1200.pt")["step"] == 1200
    records = read_metrics(tmp_path / "run")
    evals = [r["step"] for r in records if "eval/return_mean" in r]
    assert evals == [300, 600, 900, 1200]  # the first branch's own record, continued
    assert len([p for p in ckpt.iterdir() if p.is_dir()]) == 3  # the branch it left is kept too


def test_another_runs_later_checkpoint_is_refused_truthfully(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    assert train(tmp_path, **{"training.total_steps": 600}) == 0
    other = tmp_path / "other"
    assert train(other, **{"training.total_steps": 600, "training.seed": 7}) == 0
    os.replace(other / "checkpoints" / "sac_step_600.pt", ckpt / "sac_step_600.pt")
    intruder = digest(ckpt / "sac_step_600.pt")
    assert train(tmp_path, resume=ckpt / "sac_step_300.pt", **{"training.total_steps": 900}) == 2
    err = capsys.readouterr().err
    assert "holds sac_step_600.pt of another run (run id " in err and "would mix the two" in err
    assert digest(ckpt / "sac_step_600.pt") == intruder and not any(p.is_dir() for p in ckpt.iterdir())


def test_no_rewind_keeps_the_refusal(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    assert train(tmp_path, **{"training.total_steps": 600}) == 0
    assert train(tmp_path, "--no-rewind", resume=ckpt / "sac_step_300.pt", **{"training.total_steps": 900}) == 2
    err = capsys.readouterr().err
    assert "holds 1 later checkpoint(s) of this run, up to sac_step_600.pt" in err and "--no-rewind" in err
    assert cli("resume", str(ckpt / "sac_step_300.pt"), "--no-rewind") == 2
    assert sorted(p.name for p in ckpt.iterdir()) == ["sac_step_300.pt", "sac_step_600.pt"]


KILLED_MID_MOVE = """
import os, signal, sys
import dynsac.training.lineage as lineage
from dynsac.cli import main
real_replace, moves = os.replace, []
def replace_then_die(src, dst):
    real_replace(src, dst)
    if str(src).endswith(".pt"):
        moves.append(src)
        if len(moves) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
lineage.os.replace = replace_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_during_the_move_loses_nothing_and_the_next_start_completes_it(tmp_path, subprocess_env):
    ckpt = tmp_path / "checkpoints"
    assert train(tmp_path, **{"training.total_steps": 1200}) == 0
    later = {name: digest(ckpt / name) for name in ("sac_step_600.pt", "sac_step_900.pt", "sac_step_1200.pt")}
    flags = [f"--set={o}" for o in small(tmp_path, **{"training.total_steps": 900})]
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_MOVE, "train", "--config", str(CONFIG), *flags,
                             "--resume", str(ckpt / "sac_step_300.pt")], env=subprocess_env, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    (moved,) = [p for p in ckpt.iterdir() if p.is_dir()]
    assert (ckpt / REWIND_MARKER).is_file()
    for name, expected in later.items():  # each file in one place or the other, intact
        (where,) = [p for p in (ckpt / name, moved / name) if p.is_file()]
        assert digest(where) == expected
    # Any next start completes the move first; this one also trains the rewound run to 900.
    assert train(tmp_path, resume=ckpt / "sac_step_300.pt", **{"training.total_steps": 900}) == 0
    assert not (ckpt / REWIND_MARKER).exists()
    assert {name: digest(moved / name) for name in later} == later


def test_summary_counts_the_wall_time_of_three_segments(tmp_path, capsys):
    ckpt, run = tmp_path / "checkpoints", tmp_path / "run"
    walls = []
    assert train(tmp_path, **{"training.total_steps": 300}) == 0
    walls.append(json.loads((run / "summary.json").read_text())["wall_s"])
    for total, start in ((600, 300), (900, 600)):
        assert cli("resume", str(ckpt / f"sac_step_{start}.pt"), "--set", f"training.total_steps={total}") == 0
        walls.append(json.loads((run / "summary.json").read_text())["wall_s"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["segments"] == 3 and summary["rewinds"] == 0
    assert summary["wall_s_total"] == pytest.approx(sum(walls), rel=0.05, abs=0.3)
    assert summary["wall_s_total"] > 1.5 * walls[-1]
    capsys.readouterr()
    assert cli("summary", str(run)) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert f"{summary['wall_s_total']:.1f} s" in row and "  3  " in row


def test_rewind_command_picks_the_checkpoint_nearest_the_best_eval(tmp_path):
    run, ckpt = tmp_path / "run", tmp_path / "ckpt"
    run.mkdir()
    ckpt.mkdir()
    (run / "config.yaml").write_text(f"training:\n  checkpoint_dir: {ckpt}\n")
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "eval/return_mean": r})
                                                 for s, r in ((5000, -900.0), (10000, -150.0), (15000, -700.0))))
    for step in (4000, 8000, 12000, 16000):
        (ckpt / f"sac_step_{step}.pt").write_bytes(b"")
    path, why = rewind_target(run, "best")
    assert path == ckpt / "sac_step_8000.pt" and "best eval/return_mean, -150, was at step 10,000" in why
    assert rewind_target(run, "14500")[0] == ckpt / "sac_step_16000.pt"
    with pytest.raises(CheckpointError, match="expected 'best' or a step number"):
        rewind_target(run, "last")
    with pytest.raises(CheckpointError, match="no config.yaml there"):
        rewind_target(tmp_path / "nowhere", "best")


def test_checkpoints_from_before_run_ids_rewind_by_their_config(tmp_path):
    """A format-7 run has no run id: its checkpoints count as one run when their configs match."""
    ckpt = tmp_path / "checkpoints"
    config = load_config(CONFIG, small(tmp_path, **{"training.total_steps": 600}))
    trainer = SACTrainer(config)
    trainer.train()
    for step in (300, 600):
        path = ckpt / f"sac_step_{step}.pt"
        payload = load_checkpoint(path)
        del payload["lineage"]
        payload["format_version"] = 7
        import torch
        torch.save(payload, path)
    resumed = SACTrainer.from_checkpoint(ckpt / "sac_step_300.pt", overrides=["training.total_steps=900"])
    assert resumed.lineage.run_id.startswith("cfg-")
    assert resumed.train().steps == 900
    assert [p.name for p in ckpt.iterdir() if p.is_dir()][0].startswith("rewound_from_step_600_")


def test_training_on_in_the_same_process_is_no_rewind(tmp_path):
    """A trainer's second train() finds its own checkpoint at its current step: nothing moves."""
    ckpt = tmp_path / "checkpoints"
    assert train(tmp_path, **{"training.total_steps": 300}) == 0
    trainer = SACTrainer.from_checkpoint(ckpt / "sac_step_300.pt", overrides=["training.total_steps=600"])
    trainer.train()
    trainer.train(900)
    assert sorted(p.name for p in ckpt.iterdir()) == ["sac_step_300.pt", "sac_step_600.pt", "sac_step_900.pt"]
