"""The learned dynamics map: an encoder from a transition-history window to a context vector,
trained by predicting the dynamics (in the manner of CaDM, Lee et al. 2020).

Forward loss: predict s' - s from (s, a, context). Backward loss: predict s from (s', a, context),
weighted by `backward_weight`. Both on normalised quantities, so the loss does not depend on the
env's units. With `backward_weight` 0 the map has no backward predictor at all: it would cost as
much as the forward one and learn nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dynsac.context.window import feature_dim, transition_features
from dynsac.nn import compiled_or_eager, fusable, mlp, relu_mlp_backward, relu_mlp_forward, set_grads

Layers = tuple[Sequence[Tensor], Sequence[Tensor]]  # an MLP's weights and biases


def normalized(values: Tensor, mean: Tensor, std: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
    """`values` normalised with the statistics of feature dims [start, stop)."""
    return (values - mean[start:stop]) / std[start:stop]


def encoder_input(window: Tensor, mask: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """The encoder's input: the flattened window of normalised features (zeros where masked) and the mask."""
    normalized_window = normalized(window, mean, std) * mask.unsqueeze(-1)
    return torch.cat([normalized_window.flatten(1), mask], dim=-1)


def predictor_inputs(
    obs: Tensor, action: Tensor, next_obs: Tensor, context: Tensor, mean: Tensor, std: Tensor, backward: bool = True
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Inputs of the forward and (with `backward`) backward predictors, and their targets
    (normalised s' - s and s)."""
    obs_dim, action_dim = obs.shape[-1], action.shape[-1]
    norm_obs = normalized(obs, mean, std, 0, obs_dim)
    norm_delta = normalized(next_obs - obs, mean, std, obs_dim + action_dim)
    forward_input = torch.cat([norm_obs, action, context], dim=-1)
    if not backward:
        return forward_input, None, norm_delta, norm_obs
    backward_input = torch.cat([normalized(next_obs, mean, std, 0, obs_dim), action, context], dim=-1)
    return forward_input, backward_input, norm_delta, norm_obs


def prediction_losses(
    forward_pred: Tensor, backward_pred: Tensor | None, norm_delta: Tensor, norm_obs: Tensor, backward_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """forward MSE + backward_weight x backward MSE, and the two (detached) as metrics; the forward
    MSE alone without a backward predictor."""
    forward_loss = (forward_pred - norm_delta).square().mean()
    if backward_pred is None:
        return forward_loss, {"forward_loss": forward_loss.detach()}
    backward_loss = (backward_pred - norm_obs).square().mean()
    loss = forward_loss + backward_weight * backward_loss
    return loss, {"forward_loss": forward_loss.detach(), "backward_loss": backward_loss.detach()}


def prediction_gradients(
    window: Tensor, mask: Tensor, next_window: Tensor, next_mask: Tensor, obs: Tensor, action: Tensor,
    next_obs: Tensor, mean: Tensor, std: Tensor, encoder: Layers, forward_model: Layers, backward_model: Layers | None,
    bounded: bool, backward_weight: float,
) -> tuple[Tensor, Tensor, dict[str, Tensor], list[tuple[list[Tensor], list[Tensor]]]]:
    """`DynamicsMap.encode` of both windows (in one pass) + `prediction_loss` + its backward pass,
    written out: the contexts of s and s', the loss metrics, and the (weight, bias) gradients of
    the encoder, forward and (if any) backward models. Pure, so `training.compile` can compile it."""
    batch = window.shape[0]
    both = torch.cat([encoder_input(window, mask, mean, std), encoder_input(next_window, next_mask, mean, std)])
    raw_contexts, encoder_inputs = relu_mlp_forward(both, *encoder)
    contexts = torch.tanh(raw_contexts) if bounded else raw_contexts
    context, next_context = contexts[:batch], contexts[batch:]
    encoder_inputs = [layer_input[:batch] for layer_input in encoder_inputs]  # s' only feeds the TD target
    forward_input, backward_input, norm_delta, norm_obs = predictor_inputs(obs, action, next_obs, context, mean, std,
                                                                           backward_model is not None)
    context_dim = context.shape[-1]
    forward_pred, forward_inputs = relu_mlp_forward(forward_input, *forward_model)
    backward_pred = None
    if backward_model is not None:
        backward_pred, backward_inputs = relu_mlp_forward(backward_input, *backward_model)
    _, metrics = prediction_losses(forward_pred, backward_pred, norm_delta, norm_obs, backward_weight)
    # d mean((pred - target)^2) / d pred = 2 (pred - target) / numel
    grad_forward = (forward_pred - norm_delta).mul_(2.0 / forward_pred.numel())
    grad_forward_input, *forward_grads = relu_mlp_backward(grad_forward, forward_inputs, forward_model[0],
                                                           input_grad=True)
    grad_context = grad_forward_input[:, -context_dim:]
    model_grads = [forward_grads]
    if backward_pred is not None:
        grad_backward = (backward_pred - norm_obs).mul_(2.0 * backward_weight / backward_pred.numel())
        grad_backward_input, *backward_grads = relu_mlp_backward(grad_backward, backward_inputs, backward_model[0],
                                                                 input_grad=True)
        grad_context = grad_context + grad_backward_input[:, -context_dim:]
        model_grads.append(backward_grads)
    if bounded:
        grad_context = grad_context * (1.0 - context.square())
    _, *encoder_grads = relu_mlp_backward(grad_context, encoder_inputs, encoder[0])
    return context, next_context, metrics, [tuple(grads) for grads in (encoder_grads, *model_grads)]


@functools.cache
def compiled_prediction_gradients() -> Callable[..., tuple]:
    """`prediction_gradients` through `torch.compile` (built once per process)."""
    return compiled_or_eager(prediction_gradients)


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
    def update(self, values: Tensor | np.ndarray) -> None:
        """Fold the rows of `values` (..., dim) into the statistics."""
        self._cast_cache = {}
        if self.mean.device.type == "cpu":
            # The same arithmetic on NumPy views of the buffers: once per env step, ~15 float64 ops
            # on a few numbers each, where torch's per-op dispatch costs ~10x the work.
            self._update(np.asarray(values).reshape(-1, self.mean.shape[0]).astype(np.float64),
                         self.mean.numpy(), self.sum_squares.numpy(), self.count.numpy())
            return
        self._update(torch.as_tensor(values).reshape(-1, self.mean.shape[0]).to(self.mean), self.mean,
                     self.sum_squares, self.count)

    @staticmethod
    def _update(values, mean, sum_squares, count) -> None:  # NumPy arrays or tensors, updated in place
        rows = values.shape[0]
        batch_mean = values.mean(0)
        delta = batch_mean - mean
        total = count + rows
        mean += delta * rows / total
        sum_squares += ((values - batch_mean) ** 2).sum(0) + delta**2 * count * rows / total
        count[...] = total

    @property
    def std(self) -> Tensor:
        variance = self.sum_squares / self.count.clamp(min=1.0)
        return (variance + self.epsilon).sqrt()

    def statistics(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """(mean, std) in `dtype` on `device`, cast once per change of the statistics."""
        key = (dtype, device)
        if key not in self._cast_cache:
            self._cast_cache[key] = (self.mean.to(device, dtype), self.std.to(device, dtype))
        return self._cast_cache[key]

    def normalize(self, values: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Normalise `values` with the statistics of dims [start, stop)."""
        return normalized(values, *self.statistics(values.dtype, values.device), start, stop)


class DynamicsMap(nn.Module):
    """Encoder + forward and (with `backward_weight` > 0) backward dynamics predictors + feature
    normaliser."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        context_dim: int = 4,
        history_length: int = 10,
        encoder_hidden_sizes: Sequence[int] = (128, 64),
        model_hidden_sizes: Sequence[int] = (128, 128),
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
        self.backward_model = (
            mlp(obs_dim + action_dim + context_dim, model_hidden_sizes, obs_dim) if backward_weight > 0 else None
        )

    def _networks(self) -> list[nn.Module]:
        return [net for net in (self.encoder, self.forward_model, self.backward_model) if net is not None]

    def encode(self, window: Tensor, mask: Tensor) -> Tensor:
        """(B, K, F) raw features and (B, K) mask -> (B, context_dim)."""
        mean, std = self.normalizer.statistics(window.dtype, window.device)
        context = self.encoder(encoder_input(window, mask, mean, std))
        # Bounded: the policy and critics see inputs of a stable scale while the encoder keeps learning.
        return torch.tanh(context) if self.bounded else context

    def prediction_loss(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, context: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """CaDM's loss: forward + backward_weight x backward prediction MSE, and both as metrics."""
        mean, std = self.normalizer.statistics(obs.dtype, obs.device)
        forward_input, backward_input, norm_delta, norm_obs = predictor_inputs(
            obs, action, next_obs, context, mean, std, self.backward_model is not None
        )
        backward_pred = None if self.backward_model is None else self.backward_model(backward_input)
        return prediction_losses(self.forward_model(forward_input), backward_pred, norm_delta, norm_obs,
                                 self.backward_weight)

    def by_hand_applies(self, x: Tensor) -> bool:
        """Whether `learn_by_hand` applies: its three MLPs take their hand-written passes."""
        return all(
            net.fused and fusable(x, net.linear_parameters()[0][0], [self, net, *net._modules.values()])
            for net in self._networks()
        )

    @torch.no_grad()
    def learn_by_hand(
        self, window: Tensor, mask: Tensor, next_window: Tensor, next_mask: Tensor, obs: Tensor, action: Tensor,
        next_obs: Tensor, compiled: bool = False,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """`prediction_gradients` on this map (through torch.compile with `compiled`): sets the
        gradients of the map's parameters and returns the (detached) contexts of s and s' and the
        loss metrics."""
        layers = [net.linear_parameters() for net in self._networks()]
        mean, std = self.normalizer.statistics(obs.dtype, obs.device)
        gradients = compiled_prediction_gradients() if compiled else prediction_gradients
        encoder, forward_model, *backward_model = layers
        context, next_context, metrics, grads = gradients(
            window, mask, next_window, next_mask, obs, action, next_obs, mean, std, encoder, forward_model,
            backward_model[0] if backward_model else None, self.bounded, self.backward_weight,
        )
        for (weights, biases), (weight_grads, bias_grads) in zip(layers, grads):
            set_grads([*weights, *biases], [*weight_grads, *bias_grads])
        return context, next_context, metrics

    def observe(self, obs: Tensor | np.ndarray, action: Tensor | np.ndarray, next_obs: Tensor | np.ndarray) -> None:
        """Update the feature statistics with newly collected transitions (tensors, or NumPy
        arrays: a CPU run's collected transitions need no round trip through torch)."""
        if isinstance(obs, np.ndarray):
            # The same float32 arithmetic as `transition_features`, without ~5 torch dispatches.
            self.normalizer.update(np.concatenate([obs, action, next_obs - obs], axis=-1))
            return
        self.normalizer.update(transition_features(obs, action, next_obs))
