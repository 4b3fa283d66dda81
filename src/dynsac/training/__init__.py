"""The training loop, checkpoints, logging and evaluation."""

from dynsac.training.callbacks import Callback, KeepBestCheckpoint, StopAtTarget
from dynsac.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dynsac.training.trainer import EvalResult, SACTrainer, TrainResult

__all__ = ["Callback", "CheckpointError", "EvalResult", "KeepBestCheckpoint", "SACTrainer", "StopAtTarget",
           "TrainResult", "load_checkpoint", "save_checkpoint"]
