"""Fingerprints of short fixed-seed CPU runs: a hash of every tensor in the final checkpoint.

Recorded before the architecture change (`python tests/fingerprints.py --record`) into
`tests/fixtures/fingerprints.json`; `test_fingerprints.py` reruns the same runs and requires every
recorded tensor hash to be there again, so a restructuring that changes any number is caught.
Hashes are name-agnostic (a multiset), so the checkpoint layout may change; tensors a new layout
adds are allowed. The bits depend on the CPU's kernels too: a canary (the hash of a few fixed
float32 products) is recorded alongside, and on a machine whose kernels round differently the test
skips instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "fingerprints.json"


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    header = f"{array.dtype}{array.shape}".encode()
    return hashlib.sha256(header + array.tobytes()).hexdigest()[:16]


def tensor_hashes(state: Any) -> list[str]:
    """Sorted hashes of every tensor and numpy array in a (nested) checkpoint payload."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append(_digest(value.detach().cpu().contiguous().numpy()
                                 if value.dtype != torch.bfloat16 else value.float().cpu().numpy()))
        elif isinstance(value, np.ndarray):
            found.append(_digest(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(state)
    return sorted(found)


def canary() -> str:
    """The bits of a few fixed float32 kernels this machine's fingerprints depend on."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 37, generator=generator), torch.randn(37, 256, generator=generator)
    c = torch.randn(2, 64, 37, generator=generator)
    parts = [a @ b, torch.addmm(torch.ones(256), a, b), torch.bmm(c, b.expand(2, 37, 256)), torch.tanh(a).exp().log1p()]
    return hashlib.sha256(b"".join(p.numpy().tobytes() for p in parts)).hexdigest()[:16]


BASE = [
    "env.id=Pendulum-v1", "training.total_steps=300", "training.learning_starts=100",
    "training.batch_size=32", "training.buffer_size=2000", "training.hidden_sizes=[32, 32]",
    "training.eval_interval=0", "training.eval_episodes=1", "training.checkpoint_interval=0",
    "logging.log_interval=100", "logging.progress=off", "logging.tensorboard=false",
    "safety.snapshot_interval=50", "training.torch_threads=1",
    # The defaults the fingerprints were recorded with (changed since, by measurement: docs/critics.md).
    "training.critic_loss=mse", "training.init_alpha=1.0", "training.alpha_learning_rate=null",
    "training.max_grad_norm=null", "context.dim=10", "training.critic_learning_rate=3e-4",
]
PENDULUM_CONTEXT = ["env.id=dynsac/RandomPendulum-v0", "context.encoder_hidden_sizes=[16]",
                    "context.model_hidden_sizes=[16]", "context.history_length=3"]


def _plain(trainer) -> None:
    trainer.train()


def _nan_then_rollback(trainer) -> None:
    trainer.train(200)
    with torch.no_grad():
        trainer.agent.critic.weights[1][0, 0, 0] = float("nan")
    trainer.train()
    assert trainer.rollbacks >= 1, "the injected NaN did not cause a rollback"


RUNS: dict[str, tuple[list[str], Callable]] = {
    "none": ([], _plain),
    "env": ([*PENDULUM_CONTEXT, "context.source=env"], _plain),
    "learned": ([*PENDULUM_CONTEXT, "context.source=learned"], _plain),
    "two_envs": (["training.num_envs=2"], _plain),
    "policy_delay_2": (["training.policy_delay=2"], _plain),
    "rollback": ([], _nan_then_rollback),
    "resume": (["context.source=learned", *PENDULUM_CONTEXT], None),  # trained to 200, saved, resumed to 300
}


def run_fingerprint(name: str, folder: Path) -> dict[str, Any]:
    from dynsac import SACTrainer
    from dynsac.config import load_config

    overrides, procedure = RUNS[name]
    paths = [f"logging.dir={folder / 'run'}", f"training.checkpoint_dir={folder / 'checkpoints'}"]
    config = load_config(None, [*BASE, *overrides, *paths])
    torch.set_num_threads(1)
    if procedure is not None:
        trainer = SACTrainer(config)
        procedure(trainer)
    else:
        first = SACTrainer(config)
        first.train(200)
        saved = first.save_checkpoint(folder / "checkpoints" / "sac_step_200.pt")
        trainer = SACTrainer.from_checkpoint(saved)
        trainer.train()
    state = trainer.state_dict()
    return {"step": trainer.step, "num_updates": trainer.num_updates, "tensors": tensor_hashes(state)}


def missing_hashes(recorded: list[str], now: list[str]) -> int:
    """How many recorded hashes (counted with multiplicity) the new run lacks."""
    return sum((Counter(recorded) - Counter(now)).values())


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/fingerprints.py --record  (only before an intended behaviour change)")
    results: dict[str, Any] = {"canary": canary(), "runs": {}}
    for run in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            results["runs"][run] = run_fingerprint(run, Path(tmp))
        print(run, results["runs"][run]["step"], len(results["runs"][run]["tensors"]), "tensors")
    FIXTURE.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
