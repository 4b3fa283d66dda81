"""The training loop, checkpoints, logging and evaluation."""

from dynsac.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dynsac.training.trainer import EvalResult, SACTrainer, TrainResult

__all__ = ["CheckpointError", "EvalResult", "SACTrainer", "TrainResult", "load_checkpoint", "save_checkpoint"]
