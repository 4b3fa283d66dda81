"""Small neural-network building blocks shared by the context and SAC layers.

ReLU MLPs, single ones and stacked ensembles, with their forward and backward passes written out:
`SACAgent`'s by-hand update and the dynamics map's call them directly (no autograd graph at all),
and the modules run through them as one autograd node per MLP instead of one per layer. Every
matrix product is taken in the orientation CPU BLAS is fast at, and no ReLU mask is materialised.
Same math as the layer-by-layer modules, which stay the reference (and the path for bf16
autocast, forward hooks and the critics' LayerNorm option). Also `compiled_or_eager`, the
`torch.compile` wrapper behind `training.compile`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

# Below this many output columns, MKL's GEMM is 2-4x slower than computing the transposed product
# (a (256, 256) x (256, 3) product: 45 us against 20 us for (3, 256) x (256, 256), 2 threads).
_THIN = 16
_relu_backward = torch.ops.aten.threshold_backward  # grad where the ReLU output is > 0, else 0


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """`a @ b` for 2-D or batched 3-D operands, as `(b^T a^T)^T` when the result is tall and thin."""
    if b.shape[-1] < _THIN <= a.shape[-2]:
        return _matmul(b.transpose(-1, -2), a.transpose(-1, -2)).transpose(-1, -2)
    return _matmul(a, b)


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    return torch.mm(a, b) if a.dim() == 2 else torch.bmm(a, b)


def fusable(x: Tensor, weight: Tensor, modules: Sequence[nn.Module] = ()) -> bool:
    """Whether the hand-written passes apply: one float32 (or float64) dtype, no autocast, no
    forward hooks (forensics traces layers with them)."""
    if x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_autocast_enabled(x.device.type):
        return False
    return not any(module._forward_hooks or module._forward_pre_hooks for module in modules)


class _Layout(NamedTuple):
    """How one layer computes and differentiates, for a weight layout."""

    layer: Callable[[Tensor, Tensor, Tensor], Tensor]  # (input, weight, bias) -> pre-activation
    weight_grad: Callable[[Tensor, Tensor], Tensor]  # (grad of the output, input) -> grad of the weight
    bias_grad: Callable[[Tensor], Tensor]  # grad of the output -> grad of the bias
    input_grad: Callable[[Tensor, Tensor], Tensor]  # (grad of the output, weight) -> grad of the input


def _ensemble_layer(hidden: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    if weight.shape[-1] == 1:  # a one-output head: multiply-and-sum beats a batched GEMV
        return (hidden * weight.transpose(1, 2)).sum(-1, keepdim=True).add_(bias)
    return torch.baddbmm(bias, hidden, weight)


def _sum(grad: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """A bias gradient: bf16 gradients summed in float32."""
    return grad.sum(dim, keepdim=keepdim, dtype=torch.promote_types(grad.dtype, torch.float32))


# nn.Linear: weights (out, in), biases (out,), inputs (B, in).
_LINEAR = _Layout(
    layer=lambda hidden, weight, bias: torch.addmm(bias, hidden, weight.t()),
    weight_grad=lambda grad, hidden: matmul(grad.t(), hidden),
    bias_grad=lambda grad: _sum(grad, 0),
    input_grad=lambda grad, weight: matmul(grad, weight),
)
# E stacked MLPs: weights (E, in, out), biases (E, 1, out), inputs (E, B, in).
_ENSEMBLE = _Layout(
    layer=_ensemble_layer,
    weight_grad=lambda grad, hidden: matmul(hidden.transpose(1, 2), grad),
    bias_grad=lambda grad: _sum(grad, 1, keepdim=True),
    input_grad=lambda grad, weight: matmul(grad, weight.transpose(1, 2)),
)


def _forward(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], layout: _Layout
             ) -> tuple[Tensor, list[Tensor]]:
    # bfloat16 weights and biases (the caller's copies of float32 ones): every product in bf16 with
    # float32 accumulation, the activations kept in bf16, the output returned in x's dtype.
    out_dtype = x.dtype
    hidden = x.to(weights[0].dtype)
    inputs = [hidden]  # each layer's input: x, then the ReLU outputs
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        hidden = layout.layer(hidden, weight, bias)
        if index < len(weights) - 1:
            hidden = hidden.relu_()
            inputs.append(hidden)
    return hidden.to(out_dtype), inputs


def _backward(
    grad: Tensor, inputs: Sequence[Tensor], weights: Sequence[Tensor], layout: _Layout, param_grads: bool,
    input_grad: bool,
) -> tuple[Tensor | None, list[Tensor], list[Tensor]]:
    weight_grads: list[Tensor] = []
    bias_grads: list[Tensor] = []
    input_gradient = None
    out_dtype = grad.dtype  # the gradients come back in it (bf16 weights: computed in bf16)
    grad = grad.to(weights[0].dtype)
    for index in reversed(range(len(weights))):
        if param_grads:
            weight_grads.insert(0, layout.weight_grad(grad, inputs[index]).to(out_dtype))
            bias_grads.insert(0, layout.bias_grad(grad))
        if index > 0:
            grad = _relu_backward(layout.input_grad(grad, weights[index]), inputs[index], 0)
        elif input_grad:
            input_gradient = layout.input_grad(grad, weights[0]).to(out_dtype)
    return input_gradient, weight_grads, bias_grads


def relu_mlp_forward(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Output of the ReLU MLP with nn.Linear layouts (weights (out, in), biases (out,)), and each
    layer's input (x, then the ReLU outputs), which `relu_mlp_backward` needs."""
    return _forward(x, weights, biases, _LINEAR)


def relu_mlp_backward(
    grad: Tensor, inputs: Sequence[Tensor], weights: Sequence[Tensor], param_grads: bool = True,
    input_grad: bool = False,
) -> tuple[Tensor | None, list[Tensor], list[Tensor]]:
    """Gradients of the input, weights and biases from that of the output (each list empty when
    not asked for)."""
    return _backward(grad, inputs, weights, _LINEAR, param_grads, input_grad)


def ensemble_forward(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """E stacked ReLU MLPs on a shared input x (B, in), weights (E, in, out), biases (E, 1, out):
    the output (E, B, out) and each layer's input, for `ensemble_backward`."""
    output, inputs = _forward(x.to(weights[0].dtype).expand(weights[0].shape[0], *x.shape), weights, biases, _ENSEMBLE)
    return output.to(x.dtype), inputs


def ensemble_backward(
    grad: Tensor, inputs: Sequence[Tensor], weights: Sequence[Tensor], param_grads: bool = True,
    input_grad: bool = False,
) -> tuple[Tensor | None, list[Tensor], list[Tensor]]:
    """`relu_mlp_backward` for `ensemble_forward`; the input's gradient is summed over the E MLPs."""
    input_gradient, weight_grads, bias_grads = _backward(grad, inputs, weights, _ENSEMBLE, param_grads, input_grad)
    return None if input_gradient is None else input_gradient.sum(0), weight_grads, bias_grads


def set_grads(parameters: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> None:
    """Hand-computed gradients into `.grad`, contiguous (the fused Adam kernel walks gradient and
    parameter alike, and a thin product's gradient comes back transposed)."""
    for parameter, grad in zip(parameters, grads):
        parameter.grad = grad.contiguous()


class _ReluMLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backward_pass, forward_pass, x: Tensor, *params: Tensor) -> Tensor:
        weights = params[0::2]
        output, inputs = forward_pass(x, weights, params[1::2])
        ctx.backward_pass = backward_pass
        ctx.save_for_backward(*inputs, *weights)
        return output

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        depth = len(saved) // 2
        param_grads = any(ctx.needs_input_grad[3:])
        input_grad, weight_grads, bias_grads = ctx.backward_pass(
            grad, saved[:depth], saved[depth:], param_grads, ctx.needs_input_grad[2]
        )
        params = [g for pair in zip(weight_grads, bias_grads) for g in pair] if param_grads else [None] * (2 * depth)
        return None, None, input_grad, *params


def relu_mlp(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """The ReLU MLP of `relu_mlp_forward` as one autograd node."""
    params = [param for pair in zip(weights, biases) for param in pair]
    return _ReluMLPFunction.apply(relu_mlp_backward, relu_mlp_forward, x, *params)


def relu_ensemble(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """The stacked ReLU MLPs of `ensemble_forward` as one autograd node."""
    params = [param for pair in zip(weights, biases) for param in pair]
    return _ReluMLPFunction.apply(ensemble_backward, ensemble_forward, x, *params)


class MLP(nn.Sequential):
    """Linear/ReLU stack (an nn.Sequential: same state-dict keys); no activation after the last
    layer. Runs through the hand-written passes when `fusable`, else layer by layer, where the
    ReLUs work in place on the Linear outputs (which nothing else keeps: Linear's backward needs
    only its input)."""

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int) -> None:
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [nn.Linear(in_dim, size), nn.ReLU(inplace=True)]
            in_dim = size
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
        self.fused = True  # False forces the layer-by-layer reference path

    def linear_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Weights and biases of the Linear layers, in order."""
        # Through `_parameters` directly: attribute access on a Module is a slow __getattr__ call,
        # and this runs several times per update.
        params = [linear._parameters for linear in list(self._modules.values())[0::2]]
        return [p["weight"] for p in params], [p["bias"] for p in params]

    def __getitem__(self, index: int | slice) -> nn.Module:
        if isinstance(index, slice):  # a plain Sequential: a slice need not be Linear/ReLU pairs
            return nn.Sequential(*list(self._modules.values())[index])
        return super().__getitem__(index)

    def forward(self, x: Tensor) -> Tensor:
        weights, biases = self.linear_parameters()
        if not (self.fused and x.dim() == 2 and fusable(x, weights[0], list(self._modules.values()))):
            return super().forward(x)
        if torch.is_grad_enabled() and (x.requires_grad or weights[0].requires_grad):
            return relu_mlp(x, weights, biases)
        return relu_mlp_forward(x, weights, biases)[0]


def mlp(in_dim: int, hidden_sizes: Sequence[int], out_dim: int) -> MLP:
    """A Linear/ReLU `MLP`."""
    return MLP(in_dim, hidden_sizes, out_dim)


def compiled_or_eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.compile(fn)`, which runs `fn` itself from the first call that fails to compile on
    (no C++ compiler, an unsupported torch build...), after one warning that says why. `fn` must
    be pure: a failed call is simply run again."""
    compiled_fn = torch.compile(fn, dynamic=False)
    failure: list[str] = []

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        if not failure:
            try:
                return compiled_fn(*args)
            except Exception as err:  # noqa: BLE001 - any compile failure: the eager function is the same math
                reason = (str(err).strip().splitlines() or [""])[0][:300]
                failure.append(f"{type(err).__name__}: {reason}")
                warnings.warn(f"training.compile: torch.compile of {fn.__name__} failed ({failure[0]}); it runs "
                              "uncompiled from here on (set training.compile: false to skip compiling)",
                              RuntimeWarning, stacklevel=2)
        return fn(*args)

    call.compile_failure = failure  # type: ignore[attr-defined]
    return call
