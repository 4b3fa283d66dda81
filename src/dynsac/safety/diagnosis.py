"""What a safety stop leaves behind: the diagnosis (JSON and text), the suggestions computed from
the run, and the command that resumes it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dynsac.config import Config
from dynsac.safety.nonfinite import NonFiniteReport


def resume_command(checkpoint: Path | str) -> str:
    return f"dynsac resume {checkpoint}"


def suggestions(config: Config, learning_rates: dict[str, float], rollbacks: int,
                history: list[dict[str, float]]) -> dict[str, list[str]]:
    """Concrete changes computed from the run: config overrides for the resume command, and why."""
    overrides, reasons = [], []
    # Every configured rate, scaled as far as the rollbacks lowered the critics' (or, stopped at the
    # first event, by rollback_lr_factor): learning_rate, and the rates a config pins beside it.
    training = config.training
    scale = learning_rates["critic"] / training.critic_lr
    if not rollbacks:  # stopped at the first event: step more gently than the update that diverged
        scale *= config.safety.rollback_lr_factor
    why = (f"the rates {rollbacks} rollback(s) lowered them to" if rollbacks
           else f"the current rates times safety.rollback_lr_factor ({config.safety.rollback_lr_factor:g})")
    for key in ("learning_rate", "actor_learning_rate", "critic_learning_rate"):
        if getattr(training, key) is not None:
            override = f"training.{key}={getattr(training, key) * scale:.3g}"
            overrides.append(override)
            reasons.append(f"{override}: {why}")
    q_max = max((h.get("train/q_max_abs", 0.0) for h in history), default=0.0)
    if config.safety.reward_normalization == "none":
        overrides.append("safety.reward_normalization=fixed")
        reasons.append("safety.reward_normalization=fixed: scale rewards by 1/std of the warm-up rewards "
                       "(the default), so that any reward magnitude trains alike")
        if q_max > 100:
            scale = config.training.reward_scale / q_max
            reasons.append(f"or, keeping normalisation off, training.reward_scale={scale:.3g}: |Q| reached "
                           f"{q_max:.3g}, and this scale would bring it near 1")
    return {"overrides": overrides, "reasons": reasons}


def build_diagnosis(config: Config, *, step: int, update: int, message: str, reports: list[NonFiniteReport],
                    last_good_state_step: int, emergency: Path, last_good_checkpoint: Path | None, rollbacks: int,
                    learning_rates: dict[str, float], history: list[dict[str, float]],
                    warning_counts: dict[str, int]) -> dict[str, Any]:
    """The facts of a safety stop as a JSON-ready dict (what `diagnosis.json` holds)."""
    advice = suggestions(config, learning_rates, rollbacks, history)
    return {
        "step": step,
        "update": update,
        "message": message,
        "nonfinite_tensors": [asdict(report) for report in reports],
        "last_good_state_step": last_good_state_step,
        "emergency_checkpoint": str(emergency),
        "last_good_checkpoint": None if last_good_checkpoint is None else str(last_good_checkpoint),
        "rollbacks": rollbacks,
        "learning_rates": learning_rates,
        "recent_metrics": history,  # the last logged intervals, oldest first
        "early_warnings": warning_counts,
        "suggestions": advice["reasons"],
        "resume_command": resume_command(emergency) + "".join(f" --set {s}" for s in advice["overrides"]),
    }


def write_diagnosis(run_dir: Path | str, diagnosis: dict[str, Any]) -> Path:
    """`diagnosis.json` and its human-readable twin `diagnosis.txt` in `run_dir`; returns the latter."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "diagnosis.json").write_text(json.dumps(diagnosis, indent=2, default=str))
    text = run_dir / "diagnosis.txt"
    text.write_text(format_diagnosis(diagnosis))
    return text


def stop_reason(config: Config, diagnosis: dict[str, Any], text: Path) -> str:
    """The console's and summary.json's account of a safety stop."""
    return (
        f"{diagnosis['message']}\nstopped (safety.on_nonfinite = {config.safety.on_nonfinite!r}, "
        f"{diagnosis['rollbacks']} rollbacks); last good state saved to {diagnosis['emergency_checkpoint']}\n"
        + "".join(f"suggestion: {reason}\n" for reason in diagnosis["suggestions"])
        + f"resume with: {diagnosis['resume_command']}\ndiagnosis: {text}"
    )


TREND_METRICS = ("train/q_max_abs", "train/q_std", "train/q_grad_norm", "train/policy_grad_norm", "train/alpha",
                 "train/entropy", "train/action_saturated", "context/abs_max")


def format_diagnosis(diagnosis: dict[str, Any]) -> str:
    """The human-readable twin of diagnosis.json."""
    lines = [
        f"dynsac stopped at step {diagnosis['step']:,} (update {diagnosis['update']:,}) after "
        f"{diagnosis['rollbacks']} rollback(s).",
        "",
        "What went non-finite first:",
        f"  {diagnosis['message']}",
        "",
        f"Last good state (step {diagnosis['last_good_state_step']:,}): {diagnosis['emergency_checkpoint']}",
        f"Last good checkpoint on disk: {diagnosis['last_good_checkpoint'] or 'none'}",
        "Learning rates now: " + ", ".join(f"{k} {v:.3g}" for k, v in diagnosis["learning_rates"].items()),
    ]
    if diagnosis["early_warnings"]:
        lines.append("Early warnings before it: " + ", ".join(f"{k} x{n}" for k, n in diagnosis["early_warnings"].items()))
    history = diagnosis["recent_metrics"]
    if history:
        lines += ["", "Metric trends over the last logged intervals (oldest -> newest):"]
        for name in TREND_METRICS:
            values = [h.get(name) for h in history]
            if any(v is not None for v in values):
                lines.append(f"  {name:<24} " + " -> ".join("-" if v is None else f"{v:.3g}" for v in values))
    lines += ["", "Suggestions:", *[f"  - {reason}" for reason in diagnosis["suggestions"]], "",
              "Resume with:", f"  {diagnosis['resume_command']}", ""]
    return "\n".join(lines)
