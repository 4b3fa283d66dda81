"""bfloat16 products on the hand-derived path (`training.precision`): the passes against a bf16
autograd reference and against float32, the agent's update, and what `auto` chooses."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dynsac.nn import MLP, ensemble_backward, ensemble_forward, relu_mlp_backward, relu_mlp_forward
from dynsac.sac import backends
from dynsac.sac.agent import SACAgent
from dynsac.sac.networks import CriticEnsemble
from dynsac.sac.replay import Batch
from dynsac.sac.value import CategoricalValue

BF16 = torch.bfloat16


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_bf16_mlp_passes_match_autograd_on_a_bf16_copy():
    """bf16 copies of the weights with a float32 input: the products of a bf16 network (the same
    roundings as nn.Linear in bf16 under autograd), with float32 output and gradients."""
    torch.manual_seed(0)
    net = MLP(5, (64, 64), 3)
    x, grad_out = torch.randn(40, 5), torch.randn(40, 3)
    reference = copy.deepcopy(net).bfloat16()
    reference.fused = False
    x_ref = x.to(BF16).requires_grad_()
    out_ref = reference(x_ref)
    out_ref.backward(grad_out.to(BF16))

    weights = [net[i].weight.detach().to(BF16) for i in (0, 2, 4)]
    biases = [net[i].bias.detach().to(BF16) for i in (0, 2, 4)]
    out, inputs = relu_mlp_forward(x, weights, biases)
    grad_x, weight_grads, bias_grads = relu_mlp_backward(grad_out, inputs, weights, input_grad=True)
    assert out.dtype == grad_x.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in weight_grads + bias_grads)
    assert all(h.dtype == BF16 for h in inputs)  # activations kept in bf16
    assert torch.allclose(out, out_ref.float(), rtol=1e-2, atol=1e-2)
    expected = [x_ref.grad] + [p.grad for p in reference.parameters()]
    got = [grad_x] + [g for pair in zip(weight_grads, bias_grads) for g in pair]
    for e, g in zip(expected, got):
        assert g.shape == e.shape and _relative(g, e.float()) < 2e-2


@pytest.mark.parametrize("bins", [1, 101])
def test_bf16_ensemble_passes_stay_close_to_float32(bins):
    """Against the float32 passes: the output within bf16's rounding, the gradients pointing the
    same way (a flipped ReLU mask near zero is the only larger difference)."""
    torch.manual_seed(1)
    critic = CriticEnsemble(3, 2, (256, 256), 0, 2, num_outputs=bins)
    weights, biases = [w.detach() for w in critic.layer_parameters()[0]], [b.detach() for b in critic.layer_parameters()[1]]
    x = torch.randn(256, 5)
    out, inputs = ensemble_forward(x, weights, biases)
    grad_out = torch.randn_like(out)
    grads = ensemble_backward(grad_out, inputs, weights, input_grad=True)
    weights16, biases16 = [w.to(BF16) for w in weights], [b.to(BF16) for b in biases]
    out16, inputs16 = ensemble_forward(x, weights16, biases16)
    grads16 = ensemble_backward(grad_out, inputs16, weights16, input_grad=True)
    assert out16.dtype == torch.float32 and _relative(out16, out) < 1e-2
    assert grads16[0].dtype == torch.float32 and _cosine(grads16[0], grads[0]) > 0.99
    for fp32, bf16 in zip(grads[1] + grads[2], grads16[1] + grads16[2]):
        assert bf16.dtype == torch.float32 and _cosine(bf16, fp32) > 0.99


def _batch(n: int = 64) -> Batch:
    generator = torch.Generator().manual_seed(3)
    obs = torch.randn(n, 3, generator=generator)
    return Batch(obs=obs, action=torch.rand(n, 2, generator=generator) * 2 - 1,
                 reward=torch.randn(n, generator=generator), next_obs=obs + 0.1 * torch.randn(n, 3, generator=generator),
                 terminated=torch.zeros(n), index=torch.arange(n))


def test_a_bf16_update_stays_close_to_float32_and_keeps_float32_state():
    torch.manual_seed(4)
    head = CategoricalValue("hl_gauss", bins=101, bound=100.0)
    fp32 = SACAgent(3, 2, actor_hidden_sizes=(256, 256), critic_hidden_sizes=(256, 256), value_head=head)
    bf16 = copy.deepcopy(fp32)
    assert "bf16 products" in bf16.configure(dataclasses.replace(bf16.settings, precision="bf16"))
    batch = _batch()
    for _ in range(3):
        torch.manual_seed(0)
        expected = fp32.update(batch)
        torch.manual_seed(0)
        got = bf16.update(batch)
    for name in ("critic_loss", "actor_loss", "q_mean", "q_target_mean"):
        assert abs(float(got[name]) - float(expected[name])) < 2e-2 * (abs(float(expected[name])) + 1e-3), name
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(torch.isfinite(p).all() for p in bf16.parameters())
    differs = any(not torch.equal(a, b) for a, b in zip(bf16.parameters(), fp32.parameters()))
    assert differs, "precision bf16 left the update in float32"


def test_a_nonfinite_value_survives_the_bf16_products():
    """NaN and inf go through the bf16 casts unchanged, so the safety checks see them."""
    torch.manual_seed(0)
    net = MLP(3, (16,), 2)
    weights = [net[i].weight.detach().to(BF16) for i in (0, 2)]
    biases = [net[i].bias.detach().to(BF16) for i in (0, 2)]
    x = torch.randn(4, 3)
    x[1, 0], x[2, 1] = float("nan"), float("inf")
    out, inputs = relu_mlp_forward(x, weights, biases)
    assert torch.isfinite(out[[0, 3]]).all() and not torch.isfinite(out[1]).all() and not torch.isfinite(out[2]).all()
    grad = torch.ones_like(out)
    grad[3, 0] = float("nan")
    _, weight_grads, _ = relu_mlp_backward(grad, inputs, weights)
    assert not all(torch.isfinite(g).all() for g in weight_grads)


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_multiplies_in_bf16_only_where_it_is_faster(monkeypatch, native):
    monkeypatch.setattr(backends, "native_bf16", lambda: native)

    def agent(hidden, **options):
        return SACAgent(3, 2, actor_hidden_sizes=hidden, critic_hidden_sizes=hidden, precision="auto", **options)

    wide = agent((256, 256))
    assert wide.bf16_devices == (frozenset({"cpu"}) if native else frozenset())
    assert ("bf16 products on the CPU" in wide.backend_description) == native
    assert agent((64, 64)).bf16_devices == frozenset()  # the casts cost more than the products save
    assert agent((256, 128)).bf16_devices == frozenset()
    layer_norm = agent((256, 256), critic_layer_norm=True)  # autograd: auto never turns autocast on
    assert layer_norm.backend.name == "autograd" and layer_norm.bf16_devices == frozenset()
    assert SACAgent(3, 2, precision="bf16", critic_layer_norm=True).bf16_devices == frozenset({"cpu", "cuda"})
    with pytest.raises(ValueError, match="expected 'auto', 'fp32' or 'bf16'"):
        wide.configure(dataclasses.replace(wide.settings, precision="fp16"))
