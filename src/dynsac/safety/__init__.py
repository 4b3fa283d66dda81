"""Numerical safety: finite-value guards, non-finite reports, rollback to the last good state."""

from dynsac.safety.guards import sanitize_observation, sanitize_reward
from dynsac.safety.nonfinite import NonFiniteReport, all_finite, find_nonfinite, named_state_tensors
from dynsac.safety.recovery import RecoveryManager
from dynsac.safety.warnings import EarlyWarning, EarlyWarningMonitor

__all__ = [
    "EarlyWarning",
    "EarlyWarningMonitor",
    "NonFiniteReport",
    "RecoveryManager",
    "all_finite",
    "find_nonfinite",
    "named_state_tensors",
    "sanitize_observation",
    "sanitize_reward",
]
