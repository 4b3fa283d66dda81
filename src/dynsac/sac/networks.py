"""SAC networks: a tanh-squashed Gaussian policy and a batched ensemble of Q critics.

Every network takes an optional context vector (the dynamics map), concatenated to its input;
`context_dim=0` is plain SAC.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dynsac.nn import ensemble_forward, fusable, mlp, relu_ensemble

LOG_2 = math.log(2.0)
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def with_context(x: Tensor, context: Tensor | None) -> Tensor:
    return x if context is None or context.shape[-1] == 0 else torch.cat([x, context], dim=-1)


def critic_input(obs: Tensor, action: Tensor, context: Tensor | None) -> Tensor:
    """What the critics read: [obs, action, context]."""
    return with_context(torch.cat([obs, action], dim=-1), context)


def soft_clamp(x: Tensor, low: float, high: float) -> Tensor:
    """Identity well inside [low, high], smooth near the bounds, never beyond them (to within
    log(1 + exp(low - high)), 1e-3 for the default bounds).

    Unlike a hard clamp, gradients stay alive at the limits; unlike a tanh rescaling, a freshly
    initialised policy starts at log_std ~ 0 (std ~ 1), the usual SAC starting exploration.
    """
    x = high - nn.functional.softplus(high - x)
    return low + nn.functional.softplus(x - low)


def tanh_gaussian(mu: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """tanh(mu + noise * std) (the reparameterised action), its log-probability (tanh correction
    included), and std.

    The tanh correction log(1 - tanh(u)^2) is computed as 2 (log 2 - u - softplus(-2u)): finite
    for any |u|, without the `+ 1e-6` epsilon that inflates log-probs of saturated actions and
    misleads automatic entropy tuning.
    """
    std = log_std.exp()
    pre_tanh = torch.addcmul(mu, noise, std)
    # Per dimension: -(0.5 noise^2 + log_std + log sqrt(2 pi)) - 2 (log 2 - u - softplus(-2u)),
    # the Gaussian term and the tanh correction, gathered into few ops (this runs per update).
    per_dim = torch.addcmul(log_std, noise, noise, value=0.5)
    per_dim = per_dim.sub_(pre_tanh + nn.functional.softplus(-2.0 * pre_tanh), alpha=2.0)
    constant = mu.shape[-1] * (LOG_SQRT_2PI + 2.0 * LOG_2)
    return torch.tanh(pre_tanh), per_dim.sum(-1).neg_().sub_(constant), std


def tanh_gaussian_backward(
    grad_action: Tensor,
    grad_log_prob: Tensor,
    action: Tensor,
    noise: Tensor,
    std: Tensor,
    raw_log_std: Tensor,
    low: float,
    high: float,
) -> Tensor:
    """Gradient of the policy network's output [mu, raw log-std] from those of `tanh_gaussian`'s
    action and log-probability (noise held fixed), through `soft_clamp(raw_log_std, low, high)`.

    With u = mu + noise * std: d action/du = 1 - action^2; d log_prob/du = 2 action (the tanh
    correction's derivative, -d log(1 - tanh(u)^2)/du); d log_prob/d log_std = -1 directly and
    noise * std through u; soft_clamp'(x) = sigmoid(high - x) * sigmoid(inner - low), with inner
    its first softplus stage.
    """
    grad_log_prob = grad_log_prob.unsqueeze(-1)
    grad_pre_tanh = torch.addcmul(grad_action * (1.0 - action.square()), action, grad_log_prob, value=2.0)
    grad_log_std = grad_pre_tanh * noise * std - grad_log_prob
    inner = high - nn.functional.softplus(high - raw_log_std)
    grad_raw = grad_log_std * torch.sigmoid(high - raw_log_std) * torch.sigmoid(inner - low)
    return torch.cat([grad_pre_tanh, grad_raw], dim=-1)


class GaussianPolicy(nn.Module):
    """Tanh-squashed diagonal Gaussian policy.

    Actions live in [-1, 1] inside dynsac (replay buffer, losses, log-probs, so that entropy tuning
    does not depend on the env's units); `to_env_action` maps them to the env's bounds.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256),
        context_dim: int = 0,
        action_low: Sequence[float] | Tensor | None = None,
        action_high: Sequence[float] | Tensor | None = None,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        network: str = "mlp",
    ) -> None:
        """`network`: "mlp" (ReLU layers) or "simba" (`dynsac.sac.simba`, residual LayerNorm blocks)."""
        super().__init__()
        self.obs_dim, self.action_dim, self.context_dim = obs_dim, action_dim, context_dim
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.network = network
        if network == "simba":
            from dynsac.sac.simba import SimbaMLP  # simba builds on this module

            self.net: nn.Module = SimbaMLP(obs_dim + context_dim, hidden_sizes, 2 * action_dim)
        else:
            self.net = mlp(obs_dim + context_dim, hidden_sizes, 2 * action_dim)
        self.obs_normalizer: ObservationNormalizer | None = None  # set by the agent (training.obs_normalization)
        # Computed on the CPU, then moved to the default device: on the meta device (the resource
        # estimate builds the networks there) this arithmetic would import torch's compiler (~1 s).
        low = torch.as_tensor(-1.0 if action_low is None else action_low, dtype=torch.float32, device="cpu")
        high = torch.as_tensor(1.0 if action_high is None else action_high, dtype=torch.float32, device="cpu")
        device = torch.get_default_device()
        self.register_buffer("action_center", ((high + low) / 2).expand(action_dim).clone().to(device))
        self.register_buffer("action_half_range", ((high - low) / 2).expand(action_dim).clone().to(device))

    def forward(self, obs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log standard deviation of the pre-tanh Gaussian."""
        if self.obs_normalizer is not None:
            obs = self.obs_normalizer(obs)
        mu, log_std, _ = self.distribution(self.net(with_context(obs, context)))
        return mu, log_std

    def distribution(self, output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, log standard deviation and raw (unclamped) log-std from the network's output."""
        mu, raw_log_std = output.chunk(2, dim=-1)
        return mu, soft_clamp(raw_log_std, self.log_std_min, self.log_std_max), raw_log_std

    def sample(self, obs: Tensor, context: Tensor | None = None, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised action in [-1, 1] and its log-probability (tanh correction included).
        `noise`: the standard normal draws (B, action_dim) to use; drawn here when None."""
        action, log_prob, _ = self.sample_with_log_std(obs, context, noise)
        return action, log_prob

    def sample_with_log_std(
        self, obs: Tensor, context: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`sample`, plus the log standard deviations it used (for monitoring)."""
        mu, log_std = self(obs, context)
        action, log_prob, _ = tanh_gaussian(mu, log_std, torch.randn_like(mu) if noise is None else noise)
        return action, log_prob, log_std

    def sample_action(self, obs: Tensor, context: Tensor | None = None) -> Tensor:
        """`sample`'s action alone, the same numbers from the same draw, without the log-probability
        (acting needs no log-probability: ~8 fewer ops per env step)."""
        mu, log_std = self(obs, context)
        return torch.tanh(torch.addcmul(mu, torch.randn_like(mu), log_std.exp()))

    def deterministic(self, obs: Tensor, context: Tensor | None = None) -> Tensor:
        """The mode's action in [-1, 1] (tanh of the mean)."""
        return torch.tanh(self(obs, context)[0])

    def to_env_action(self, action: Tensor) -> Tensor:
        """Map [-1, 1] actions to the env's bounds."""
        return self.action_center + action * self.action_half_range

    @torch.no_grad()
    def act(self, obs: Tensor, context: Tensor | None = None, deterministic: bool = False) -> Tensor:
        """Env-scaled action(s) for acting, without autograd bookkeeping."""
        action = self.deterministic(obs, context) if deterministic else self.sample_action(obs, context)
        return self.to_env_action(action)


def _ensemble_layer(hidden: Tensor, weight: Tensor, first: bool) -> tuple[Tensor, str]:
    """`hidden @ weight` for stacked (E, in, out) weights, and the name of the op used.

    The first layer's input is shared by all critics: broadcast instead of copying it. A layer with
    one output (the Q head) is a multiply-and-sum: as a batched matrix-vector product CPU BLAS
    takes a path ~4x slower (fwd+bwd 257 against 97 us at (2, 256, 256) x (2, 256, 1)).
    """
    if first:
        return torch.matmul(hidden, weight), "matmul"
    if weight.shape[-1] == 1 and hidden.dtype == weight.dtype:
        return (hidden * weight.transpose(1, 2)).sum(-1, keepdim=True), "mul-sum"
    return torch.bmm(hidden, weight), "bmm"


class EnsembleBatchRenorm(nn.Module):
    """Batch renormalisation (Ioffe, 2017) of (E, B, F) activations, per critic and feature: what
    CrossQ puts after each critic layer.

    With batch statistics (training): the batch's mean and std, corrected towards the running ones
    by r = std / running_std and d = (mean - running_mean) / running_std (clipped to `r_max` and
    `d_max`, and only after `warmup_steps` updates: before, plain batch normalisation), and the
    running statistics move by `momentum`. With running statistics (the actor's pass, acting): the
    running ones alone.
    """

    def __init__(self, num_critics: int, features: int, momentum: float = 0.01, warmup_steps: int = 100_000,
                 r_max: float = 3.0, d_max: float = 5.0, epsilon: float = 1e-3) -> None:
        super().__init__()
        self.momentum, self.warmup_steps, self.epsilon = momentum, warmup_steps, epsilon
        self.r_max, self.d_max = r_max, d_max
        self.weight = nn.Parameter(torch.ones(num_critics, 1, features))
        self.bias = nn.Parameter(torch.zeros(num_critics, 1, features))
        self.register_buffer("running_mean", torch.zeros(num_critics, 1, features))
        self.register_buffer("running_var", torch.ones(num_critics, 1, features))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor, batch_statistics: bool, detach_params: bool = False) -> Tensor:
        running_std = (self.running_var + self.epsilon).sqrt()
        if batch_statistics:
            var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
            std = (var + self.epsilon).sqrt()
            normalized = (x - mean) / std
            if self.steps >= self.warmup_steps:
                r = (std.detach() / running_std).clamp(1.0 / self.r_max, self.r_max)
                d = ((mean.detach() - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
                normalized = normalized * r + d
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
                self.steps += 1
        else:
            normalized = (x - self.running_mean) / running_std
        weight, bias = (self.weight.detach(), self.bias.detach()) if detach_params else (self.weight, self.bias)
        return normalized * weight + bias


class CriticEnsemble(nn.Module):
    """`num_critics` Q networks evaluated in one batched forward pass.

    Layer weights are stacked as (num_critics, in, out), so each layer is one batched matmul for
    all critics. `forward` returns Q-values of shape (num_critics, batch), or with `num_outputs`
    > 1 (a categorical critic's logits, `dynsac.sac.value`) (num_critics, batch, num_outputs).
    `dropout` (DroQ): that fraction of each hidden layer's units dropped, before its LayerNorm.
    `batch_renorm` (CrossQ): `EnsembleBatchRenorm` of the input and of every hidden layer.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256),
        context_dim: int = 0,
        num_critics: int = 2,
        layer_norm: bool = False,
        num_outputs: int = 1,
        dropout: float = 0.0,
        batch_renorm: bool = False,
    ) -> None:
        super().__init__()
        self.num_critics, self.layer_norm = num_critics, layer_norm
        self.num_outputs, self.dropout = num_outputs, dropout
        self.trace: Callable[[str, Tensor], None] | None = None  # set by forensics to inspect each layer
        self.fused = True  # the hand-written passes of dynsac.nn when they apply; False: layer by layer
        self.obs_normalizer: ObservationNormalizer | None = None  # set by the agent (training.obs_normalization)
        sizes = [obs_dim + action_dim + context_dim, *hidden_sizes, num_outputs]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            # Same distribution as nn.Linear's default init, drawn independently per critic.
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(num_critics, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_critics, 1, fan_out).uniform_(-bound, bound)))
        # Per-critic LayerNorm gains and offsets after every hidden layer (option).
        hidden = sizes[1:-1] if layer_norm else []
        self.norm_weights = nn.ParameterList([nn.Parameter(torch.ones(num_critics, 1, size)) for size in hidden])
        self.norm_biases = nn.ParameterList([nn.Parameter(torch.zeros(num_critics, 1, size)) for size in hidden])
        renormed = sizes[:-1] if batch_renorm else []
        self.batch_renorms = nn.ModuleList([EnsembleBatchRenorm(num_critics, size) for size in renormed])

    def flat_parameters(self) -> list[nn.Parameter]:
        """`list(self.parameters())`, same order, without walking the submodules."""
        lists = (self.weights, self.biases, self.norm_weights, self.norm_biases)
        renorms = [param for renorm in self.batch_renorms for param in (renorm.weight, renorm.bias)]
        return [param for plist in lists for param in plist._parameters.values()] + renorms

    def layer_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The stacked weights and biases, layer by layer (read from the ParameterLists' storage:
        iterating a ParameterList costs ~3 us, and this runs several times per update)."""
        return list(self.weights._parameters.values()), list(self.biases._parameters.values())

    def forward(
        self,
        obs: Tensor,
        action: Tensor,
        context: Tensor | None = None,
        detach_params: bool = False,
        batch_statistics: bool = True,
    ) -> Tensor:
        """Q-values (num_critics, batch). `detach_params` lets the actor loss backpropagate into
        the action without computing gradients for the critics' weights. `batch_statistics`
        (batch renormalisation only): normalise with this batch's statistics and update the
        running ones; False: the running ones (CrossQ's actor pass)."""
        if self.obs_normalizer is not None:
            obs = self.obs_normalizer(obs)
        hidden = critic_input(obs, action, context)
        weights, biases = self.layer_parameters()
        plain = not self.layer_norm and not self.dropout and not self.batch_renorms
        if self.fused and plain and self.trace is None and fusable(hidden, weights[0]):
            if detach_params:
                weights, biases = [w.detach() for w in weights], [b.detach() for b in biases]
            if not torch.is_grad_enabled():
                return ensemble_forward(hidden, weights, biases)[0].squeeze(-1)
            return relu_ensemble(hidden, weights, biases).squeeze(-1)
        last = len(self.weights) - 1
        if self.batch_renorms:  # per-critic statistics: each critic normalises its own copy of the input
            hidden = hidden.expand(self.num_critics, *hidden.shape)
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if detach_params:
                weight, bias = weight.detach(), bias.detach()
            if self.batch_renorms:
                hidden = self.batch_renorms[index](hidden, batch_statistics, detach_params)
            hidden, kind = _ensemble_layer(hidden, weight, first=index == 0 and not self.batch_renorms)
            # Bias added separately, not with baddbmm: with a broadcast bias, baddbmm takes a path
            # ~2x slower on CPU. In place where the dtypes agree (the product is fresh, and its
            # backward needs only its inputs): one pass over memory fewer per layer. Under bf16
            # autocast the out-of-place add keeps the fp32 bias's precision.
            hidden = hidden.add_(bias) if hidden.dtype == bias.dtype else hidden + bias
            if self.trace is not None:
                self.trace(f"layer {index} {kind}", hidden)
            if index < last:
                if self.dropout:
                    hidden = nn.functional.dropout(hidden, self.dropout, training=True)
                if self.layer_norm:
                    gain, offset = self.norm_weights[index], self.norm_biases[index]
                    if detach_params:
                        gain, offset = gain.detach(), offset.detach()
                    hidden = nn.functional.layer_norm(hidden, hidden.shape[-1:]) * gain + offset
                hidden = torch.relu_(hidden)
        return hidden.squeeze(-1)


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std, clipped to +-`clip`: the first layer of a network whose inputs are
    normalised. Its shift and scale are buffers (saved with the network, exported with the policy),
    set from the agent's running statistics (`SACAgent.observe`)."""

    def __init__(self, obs_dim: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("shift", torch.zeros(obs_dim))
        self.register_buffer("scale", torch.ones(obs_dim))

    def forward(self, obs: Tensor) -> Tensor:
        return ((obs - self.shift) * self.scale).clamp(-self.clip, self.clip)
