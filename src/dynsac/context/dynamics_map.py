"""The learned dynamics map: an encoder from a transition-history window to a context vector,
trained by predicting the dynamics (in the manner of CaDM, Lee et al. 2020).

Forward loss: predict s' - s from (s, a, context). Backward loss: predict s from (s', a, context),
weighted by `backward_weight`. Both on normalised quantities, so the loss does not depend on the
env's units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dynsac.context.window import feature_dim, transition_features
from dynsac.nn import mlp


class RunningNormalizer(nn.Module):
    """Running mean and variance (Chan et al. parallel update, float64), stored as buffers so they
    travel in checkpoints."""

    def __init__(self, dim: int, epsilon: float = 1e-6) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("sum_squares", torch.zeros(dim, dtype=torch.float64))
        # (mean, std) cast to the dtype/device `normalize` is asked for, computed once per change of
        # the statistics (they change once per env step; they are read ~5 times per update and
        # once per acting step, and each recomputation is ~10 small float64 ops).
        self._cast_cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # load_state_dict, rollbacks
        self._cast_cache = {}
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(): the cached casts would be stale
        self._cast_cache = {}
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def update(self, values: Tensor) -> None:
        self._cast_cache = {}
        values = values.reshape(-1, self.mean.shape[0]).to(self.mean)
        count = values.shape[0]
        batch_mean = values.mean(0)
        delta = batch_mean - self.mean
        total = self.count + count
        self.mean += delta * count / total
        self.sum_squares += ((values - batch_mean) ** 2).sum(0) + delta**2 * self.count * count / total
        self.count.copy_(total)

    @property
    def std(self) -> Tensor:
        variance = self.sum_squares / self.count.clamp(min=1.0)
        return (variance + self.epsilon).sqrt()

    def normalize(self, values: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Normalise `values` with the statistics of dims [start, stop)."""
        key = (values.dtype, values.device)
        if key not in self._cast_cache:
            self._cast_cache[key] = (self.mean.to(values.dtype), self.std.to(values.dtype))
        mean, std = self._cast_cache[key]
        return (values - mean[start:stop]) / std[start:stop]


class DynamicsMap(nn.Module):
    """Encoder + forward and backward dynamics predictors + feature normaliser."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        context_dim: int = 10,
        history_length: int = 10,
        encoder_hidden_sizes: Sequence[int] = (256, 128, 64),
        model_hidden_sizes: Sequence[int] = (200, 200),
        backward_weight: float = 0.5,
        bounded: bool = True,
    ) -> None:
        super().__init__()
        self.bounded = bounded
        self.obs_dim, self.action_dim, self.context_dim = obs_dim, action_dim, context_dim
        self.history_length, self.backward_weight = history_length, backward_weight
        self.feature_dim = feature_dim(obs_dim, action_dim)
        self.normalizer = RunningNormalizer(self.feature_dim)
        # Input: the flattened window of normalised features plus its mask.
        self.encoder = mlp(history_length * (self.feature_dim + 1), encoder_hidden_sizes, context_dim)
        self.forward_model = mlp(obs_dim + action_dim + context_dim, model_hidden_sizes, obs_dim)
        self.backward_model = mlp(obs_dim + action_dim + context_dim, model_hidden_sizes, obs_dim)

    def encode(self, window: Tensor, mask: Tensor) -> Tensor:
        """(B, K, F) raw features and (B, K) mask -> (B, context_dim)."""
        normalized = self.normalizer.normalize(window) * mask.unsqueeze(-1)
        context = self.encoder(torch.cat([normalized.flatten(1), mask], dim=-1))
        # Bounded: the policy and critics see inputs of a stable scale while the encoder keeps learning.
        return torch.tanh(context) if self.bounded else context

    def prediction_loss(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, context: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        obs_dim = self.obs_dim
        norm_obs = self.normalizer.normalize(obs, 0, obs_dim)
        norm_next_obs = self.normalizer.normalize(next_obs, 0, obs_dim)
        norm_delta = self.normalizer.normalize(next_obs - obs, obs_dim + self.action_dim)
        forward_pred = self.forward_model(torch.cat([norm_obs, action, context], dim=-1))
        backward_pred = self.backward_model(torch.cat([norm_next_obs, action, context], dim=-1))
        forward_loss = (forward_pred - norm_delta).square().mean()
        backward_loss = (backward_pred - norm_obs).square().mean()
        loss = forward_loss + self.backward_weight * backward_loss
        return loss, {"forward_loss": forward_loss.detach(), "backward_loss": backward_loss.detach()}

    def observe(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> None:
        """Update the feature statistics with newly collected transitions."""
        self.normalizer.update(transition_features(obs, action, next_obs))
