"""Adam with a lean step: the same fused kernel as `torch.optim.Adam(fused=True)`, bit for bit,
without the generic bookkeeping of `Optimizer.step`.

`torch.optim.Adam.step` regroups parameters, gradients and states by device and dtype, and walks
the optimizer state, on every call: ~60-250 us of Python per step on CPU, more than the fused
kernel itself for SAC-sized networks, paid three times per SAC update (actor, critics, alpha).
`LeanAdam` builds those lists once and reuses them until the optimizer state changes (first
step, `load_state_dict`). State dicts are those of `torch.optim.Adam`, so checkpoints do not
change.

It also keeps `torch._dynamo` unimported: torch wraps `Optimizer.add_param_group`, `zero_grad`,
`state_dict`, `load_state_dict` and `Adam.step` so that the compiler skips them, and the wrapper's
first call imports the compiler, ~1 s of every process's start-up on this machine. `LeanAdam`
calls the undecorated methods (outside `torch.compile`) and creates the state of its first step
itself, as `Adam` would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import _device_dtype_check_for_fused, _global_optimizer_post_hooks, _global_optimizer_pre_hooks


def _undecorated(name: str) -> Any:
    """`torch.optim.Optimizer.<name>` without its `torch._disable_dynamo` wrapper (the wrapper
    itself where this torch has none)."""
    method = getattr(torch.optim.Optimizer, name)
    return getattr(method, "__wrapped__", method)


_RAW = {name: _undecorated(name) for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")}


class LeanAdam(torch.optim.Adam):
    """`torch.optim.Adam(params, lr, fused=True)` with a cached fast path in `step()`.

    The fast path needs one param group with plain Adam options (no amsgrad or maximize; weight
    decay only decoupled, AdamW's) and every parameter with a gradient, all on one device and
    dtype (the first such step creates the state as Adam would); anything else goes through
    `torch.optim.Adam.step` unchanged. `weight_decay` is AdamW's decoupled decay (0: plain Adam).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, fused=True, weight_decay=weight_decay, decoupled_weight_decay=True)
        self._cache: tuple[Any, list[Tensor], list[Tensor], list[Tensor], list[Tensor]] | None = None

    def _lists(self) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] | None:
        """(params, exp_avgs, exp_avg_sqs, steps) of the single group, or None off the fast path."""
        if self._cache is not None and self._cache[0] is self.state:
            return self._cache[1:]
        if len(self.param_groups) != 1:
            return None
        group = self.param_groups[0]
        if group["amsgrad"] or group["maximize"] or (group["weight_decay"] and not group["decoupled_weight_decay"]):
            return None
        params = group["params"]
        kinds = {(param.device, param.dtype) for param in params}
        if not params or len(kinds) != 1:
            return None
        states = [self.state.get(param) for param in params]
        missing = [not state for state in states]
        if any(missing):  # the first step: its state, as Adam would create it
            if not all(missing) or any(param.grad is None for param in params):
                return None  # a partial state, or a parameter without gradient: Adam's own step
            states = [self._initial_state(param) for param in params]
        self._cache = (
            self.state,
            list(params),
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            [state["step"] for state in states],
        )
        return self._cache[1:]

    def _initial_state(self, param: Tensor) -> dict[str, Tensor]:
        """The state `torch.optim.Adam(fused=True)` creates at a parameter's first step."""
        _device_dtype_check_for_fused(param)
        state = self.state[param]
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if torch.compiler.is_compiling():
            return super().add_param_group(param_group)
        return _RAW["add_param_group"](self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if torch.compiler.is_compiling():
            return super().zero_grad(set_to_none)
        return _RAW["zero_grad"](self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        if torch.compiler.is_compiling():
            return super().state_dict()
        return _RAW["state_dict"](self)

    def __setstate__(self, state: dict[str, Any]) -> None:  # copies and unpickling keep no cache
        super().__setstate__(state)
        self._cache = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adam's `load_state_dict`, then this optimizer's own settings: a state saved by a plain
        (unfused) Adam, as older checkpoints hold, keeps its step counts on the CPU, where the fused
        kernel on a GPU cannot read them, and its group would send later steps to the unfused kernel."""
        if torch.compiler.is_compiling():
            super().load_state_dict(state_dict)
        else:
            _RAW["load_state_dict"](self, state_dict)
        for group in self.param_groups:
            group["fused"] = True
            for param in group["params"]:
                state = self.state.get(param)
                if state and "step" in state:  # float32 on the parameter's device, as fused Adam creates it
                    state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(param.device)
        self._cache = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        return self._lean_step(closure)

    def fast_step(self) -> None:
        """`step()` without the wrapper torch puts around every optimizer's `step` (a profiler
        range and the step-hook loops: ~11 us per call on CPU, a quarter of the whole step for
        SAC-sized networks) when no step hook is registered; with a hook, `step()` itself."""
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks):
            self.step()
            return
        with torch.no_grad():
            self._lean_step(None)

    def _lean_step(self, closure: Any) -> Any:
        lists = None if closure is not None else self._lists()
        if lists is None:
            return super().step(closure)
        params, exp_avgs, exp_avg_sqs, steps = lists
        grads = [param.grad for param in params]
        if any(grad is None for grad in grads):
            return super().step(closure)
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        decay = group["weight_decay"]
        kernel = torch._fused_adamw_ if decay else torch._fused_adam_
        kernel(
            params, grads, exp_avgs, exp_avg_sqs, [], steps,
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=decay, eps=group["eps"],
            maximize=False, grad_scale=None, found_inf=None,
        )
        return None
