"""Numerical safety: finite-value guards on what enters the learner."""

from dynsac.safety.guards import sanitize_observation

__all__ = ["sanitize_observation"]
