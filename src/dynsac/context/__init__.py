"""The dynamics map: transition-history windows, the context encoder and its prediction loss."""

from dynsac.context.dynamics_map import DynamicsMap, RunningNormalizer
from dynsac.context.tracker import ContextError, ContextTracker, split_observation
from dynsac.context.window import HistoryWindow, transition_features, window_indices

__all__ = [
    "ContextError",
    "ContextTracker",
    "DynamicsMap",
    "HistoryWindow",
    "RunningNormalizer",
    "split_observation",
    "transition_features",
    "window_indices",
]
