"""The hand-derived passes (dynsac.nn's MLP backward passes, the losses' gradients, the tanh-Gaussian
head's backward, SACAgent's by-hand update) against autograd on the layer-by-layer reference, in
float64 so that any mistake shows far above rounding."""

from __future__ import annotations

import dataclasses

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dynsac import SACTrainer
from dynsac.config import load_config
from dynsac.context.dynamics_map import DynamicsMap
from dynsac.nn import MLP, ensemble_backward, ensemble_forward, relu_mlp_backward, relu_mlp_forward
from dynsac.sac import losses
from dynsac.sac.agent import SACAgent
from dynsac.sac.networks import CriticEnsemble, soft_clamp, tanh_gaussian, tanh_gaussian_backward
from dynsac.sac.replay import Batch
from dynsac.sac.value import CategoricalValue

from conftest import tiny_overrides

TIGHT = dict(rtol=1e-10, atol=1e-12)


def _grads(tensors):
    return [t.grad.clone() for t in tensors]


def test_relu_mlp_backward_matches_autograd():
    torch.manual_seed(0)
    net = MLP(5, (20, 40), 3).double()
    x = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(30, 3, dtype=torch.float64)
    net.fused = False
    net(x).backward(grad_out)
    reference = [x.grad.clone(), *_grads(net.parameters())]

    weights, biases = [net[i].weight for i in (0, 2, 4)], [net[i].bias for i in (0, 2, 4)]
    with torch.no_grad():
        out, inputs = relu_mlp_forward(x, weights, biases)
        grad_x, weight_grads, bias_grads = relu_mlp_backward(grad_out, inputs, weights, input_grad=True)
    assert torch.allclose(out, net(x), **TIGHT)
    by_hand = [grad_x] + [g for pair in zip(weight_grads, bias_grads) for g in pair]
    for expected, got in zip(reference, by_hand):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, **TIGHT)

    # The module's own fused autograd node gives the same gradients.
    net.fused = True
    x.grad = None
    net.zero_grad()
    net(x).backward(grad_out)
    for expected, got in zip(reference, [x.grad, *_grads(net.parameters())]):
        assert torch.allclose(got, expected, **TIGHT)


@pytest.mark.parametrize("detach_params", [False, True])
def test_ensemble_backward_matches_autograd(detach_params):
    torch.manual_seed(1)
    critic = CriticEnsemble(3, 2, (24, 16), context_dim=1).double()
    obs = torch.randn(40, 3, dtype=torch.float64)
    action = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    weights_of_q = torch.randn(2, 40, dtype=torch.float64)
    results = {}
    for fused in (False, True):
        critic.fused = fused
        critic.zero_grad(set_to_none=True)
        action.grad = None
        q = critic(obs, action, torch.ones(40, 1, dtype=torch.float64), detach_params=detach_params)
        (q * weights_of_q).sum().backward()
        params = [torch.zeros(()) if p.grad is None else p.grad.clone() for p in critic.parameters()]
        results[fused] = [q.detach(), action.grad.clone(), *params]
    for expected, got in zip(results[False], results[True]):
        assert torch.allclose(got, expected, **TIGHT)
    if detach_params:
        assert all(p.grad is None for p in critic.parameters())

    # And the plain functions, with the input gradient summed over the critics.
    x = torch.cat([obs, action.detach(), torch.ones(40, 1, dtype=torch.float64)], dim=-1)
    with torch.no_grad():
        q, inputs = ensemble_forward(x, list(critic.weights), list(critic.biases))
        grad_x, _, _ = ensemble_backward(weights_of_q.unsqueeze(-1), inputs, list(critic.weights), False, True)
    assert torch.allclose(q.squeeze(-1), results[False][0], **TIGHT)
    assert torch.allclose(grad_x[:, 3:5], results[False][1], **TIGHT)


def test_tanh_gaussian_backward_matches_autograd():
    torch.manual_seed(2)
    low, high = -5.0, 2.0
    mu = (torch.randn(64, 3, dtype=torch.float64) * 4).requires_grad_()  # saturated actions included
    raw = (torch.randn(64, 3, dtype=torch.float64) * 6).requires_grad_()  # beyond both bounds too
    noise = torch.randn(64, 3, dtype=torch.float64)
    action, log_prob, std = tanh_gaussian(mu, soft_clamp(raw, low, high), noise)
    grad_action, grad_log_prob = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    torch.autograd.backward([action, log_prob], [grad_action, grad_log_prob])
    got = tanh_gaussian_backward(grad_action, grad_log_prob, action.detach(), noise, std.detach(), raw.detach(), low, high)
    # Saturated actions (|a| -> 1) cost a few digits on both sides: 1 - a^2 cancels.
    assert torch.allclose(got, torch.cat([mu.grad, raw.grad], dim=-1), rtol=1e-7, atol=1e-10)


def test_loss_gradients_match_autograd():
    torch.manual_seed(3)
    q_pred = torch.randn(2, 50, dtype=torch.float64, requires_grad=True)
    q_target = torch.randn(50, dtype=torch.float64) * 2
    for huber in (None, 0.7):
        q_pred.grad = None
        loss = losses.critic_loss(q_pred, q_target, huber)
        loss.backward()
        by_hand_loss, grad = losses.critic_loss_and_grad(q_pred.detach(), q_target, huber)
        assert torch.allclose(by_hand_loss, loss, **TIGHT) and torch.allclose(grad, q_pred.grad, **TIGHT)

    q_pi = torch.randn(2, 50, dtype=torch.float64, requires_grad=True)
    log_prob = torch.randn(50, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.3, dtype=torch.float64)
    loss = losses.actor_loss(q_pi, log_prob, alpha)
    loss.backward()
    by_hand_loss, grad_q, grad_log_prob = losses.actor_loss_and_grads(q_pi.detach(), log_prob.detach(), alpha)
    assert torch.allclose(by_hand_loss, loss, **TIGHT)
    assert torch.allclose(grad_q, q_pi.grad, **TIGHT) and torch.allclose(grad_log_prob, log_prob.grad, **TIGHT)

    log_alpha = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    loss = losses.alpha_loss(log_alpha, log_prob, -3.0)
    loss.backward()
    by_hand_loss, grad = losses.alpha_loss_and_grad(log_alpha, log_prob, -3.0)
    assert torch.allclose(by_hand_loss, loss, **TIGHT) and torch.allclose(grad, log_alpha.grad, **TIGHT)


def _batch(context_dim: int = 0, size: int = 48) -> Batch:
    generator = torch.Generator().manual_seed(7)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    context = draw(size, context_dim) if context_dim else None
    return Batch(obs=draw(size, 3), action=torch.tanh(draw(size, 2)), reward=draw(size) * 10, next_obs=draw(size, 3),
                 terminated=(draw(size) > 1.0).double(), index=torch.arange(size),
                 context=context, next_context=None if context is None else draw(size, context_dim))


def assert_same_updates(agent: SACAgent, reference: SACAgent, batch: Batch, steps: int) -> None:
    """`steps` updates of each agent on `batch`, with the same noise draws, agree in every metric
    and, at the end, in every state-dict entry (1e-8: in float64, saturated actions, where
    1 - tanh^2 cancels, amplify rounding to ~1e-9)."""
    for step in range(steps):
        torch.manual_seed(step)
        metrics = agent.update(batch)
        torch.manual_seed(step)
        expected = reference.update(batch)
        assert metrics.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.allclose(metrics[name].double(), value.double(), rtol=1e-8, atol=1e-10), (step, name)
    for (name, value), expected in zip(agent.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(value.double(), expected.double(), rtol=1e-8, atol=1e-10), name


def _assert_same_updates(by_hand: SACAgent, reference: SACAgent, batch: Batch, steps: int) -> None:
    """`assert_same_updates` of an agent on the hand-derived path against one on autograd."""
    assert by_hand.backend.name == "by-hand" and reference.backend.name == "autograd"
    assert_same_updates(by_hand, reference, batch, steps)


@pytest.mark.parametrize("options", [
    {},
    {"context_dim": 2},
    {"policy_delay": 2},
    {"huber_delta": 0.5, "max_grad_norm": 0.05},
    {"alpha": 0.2},
    {"value_head": CategoricalValue("hl_gauss", bins=21, bound=100.0)},
    {"value_head": CategoricalValue("two_hot", bins=21, bound=100.0), "context_dim": 2},
    {"obs_normalization": True, "context_dim": 2},
])
def test_by_hand_update_matches_autograd_update(options):
    torch.manual_seed(4)
    by_hand = SACAgent(3, 2, actor_hidden_sizes=(32, 32), critic_hidden_sizes=(32, 32), **options).double()
    if by_hand.obs_statistics is not None:  # statistics far from the identity's
        by_hand.observe(torch.randn(50, 3, dtype=torch.float64) * 3 + 1, None, None)
    reference = copy.deepcopy(by_hand)
    reference.use_backend("autograd")
    batch = _batch(options.get("context_dim", 0))
    _assert_same_updates(by_hand, reference, batch, steps=6)


def _n_step_batch(context_dim: int = 0) -> Batch:
    batch = _batch(context_dim)
    steps = torch.arange(batch.obs.shape[0]) % 3 + 1
    batch.discount, batch.step_next_obs = 0.99 ** steps.double(), batch.next_obs.flip(0)
    return batch


@pytest.mark.parametrize("options", [{}, {"value_head": CategoricalValue("hl_gauss", bins=21, bound=100.0),
                                         "context_dim": 2}])
def test_by_hand_update_matches_autograd_on_an_n_step_batch(options):
    torch.manual_seed(4)
    by_hand = SACAgent(3, 2, actor_hidden_sizes=(32, 32), critic_hidden_sizes=(32, 32), **options).double()
    reference = copy.deepcopy(by_hand)
    reference.use_backend("autograd")
    _assert_same_updates(by_hand, reference, _n_step_batch(options.get("context_dim", 0)), steps=4)


@pytest.mark.parametrize("backend", ["by_hand", "autograd"])
def test_an_n_step_batch_discounts_each_row_by_its_own_power_of_gamma(backend):
    """discount = gamma in every row is the 1-step update, bit for bit; gamma^m changes the target."""
    torch.manual_seed(4)
    one_step = SACAgent(3, 2, actor_hidden_sizes=(16,), critic_hidden_sizes=(16,), gamma=0.9).double()
    one_step.use_backend(backend)
    same, other = copy.deepcopy(one_step), copy.deepcopy(one_step)
    batch = _batch()
    torch.manual_seed(0)
    expected = one_step.update(batch)
    torch.manual_seed(0)
    got = same.update(dataclasses.replace(batch, discount=torch.full_like(batch.reward, 0.9)))
    assert all(torch.equal(got[name], value) for name, value in expected.items())
    torch.manual_seed(0)
    squared = other.update(dataclasses.replace(batch, discount=torch.full_like(batch.reward, 0.81)))
    assert not torch.equal(squared["q_target_mean"], expected["q_target_mean"])


def test_backend_is_chosen_once_with_its_reason():
    def agent(**options):
        return SACAgent(3, 2, actor_hidden_sizes=(16,), critic_hidden_sizes=(16,), **options)

    assert agent().backend_description == "by-hand (plain ReLU networks in float32/float64)"
    assert agent(compile_update=True).backend.name == "by-hand, compiled"
    assert agent(precision="bf16").backend_description == "by-hand (plain ReLU networks in float32/float64; bf16 products)"
    layer_norm = agent(critic_layer_norm=True)
    assert layer_norm.backend_description == "autograd (critic LayerNorm is on)"
    with pytest.raises(ValueError, match="critic LayerNorm is on"):
        layer_norm.use_backend("by_hand")
    with pytest.raises(ValueError, match="expected 'auto', 'autograd' or 'by_hand'"):
        agent().use_backend("fast")


def test_forward_hooks_see_the_update_with_the_autograd_backend():
    """The hand-derived gradients bypass the modules' forward calls; asking for autograd (as
    forensics does) puts every layer's hooks back on the update's path."""
    hooked = SACAgent(3, 2, actor_hidden_sizes=(16,), critic_hidden_sizes=(16,)).double()
    seen = []
    hooked.policy.net[2].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    hooked.critic.register_forward_hook(lambda module, args, output: seen.append("critic"))
    batch = _batch()
    hooked.update(batch)
    assert seen == []
    hooked.use_backend("autograd")
    hooked.update(batch)
    assert "critic" in seen and torch.Size([48, 4]) in seen
    seen.clear()
    hooked.policy(torch.randn(4, 3, dtype=torch.float64))  # acting always runs through the modules
    assert seen == [torch.Size([4, 4])]


def test_mlp_keeps_sequential_behaviour():
    net = MLP(3, (8,), 2)
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    head = net[1:]
    assert isinstance(head, nn.Sequential) and len(head) == 2
    x = torch.randn(5, 3)
    with torch.no_grad():
        net.fused = False
        reference = net(x)
        net.fused = True
        assert torch.allclose(net(x), reference, atol=1e-6)
        assert torch.allclose(net(x.double().float()), head(net[0](x)), atol=1e-6)


def on_device(batch: Batch, device: torch.device | str) -> Batch:
    return dataclasses.replace(batch, **{
        field.name: getattr(batch, field.name).to(device)
        for field in dataclasses.fields(batch) if isinstance(getattr(batch, field.name), torch.Tensor)
    })


def learned_map_case(bounded: bool = True, device: torch.device | str = "cpu", backward_weight: float = 0.5
                     ) -> tuple[SACAgent, Batch]:
    """A float64 agent with a small learned dynamics map (its normaliser fed 100 transitions), and
    a batch with windows, some of their slots masked."""
    torch.manual_seed(5)
    history, context_dim = 4, 3
    dynamics_map = DynamicsMap(3, 2, context_dim, history, (16, 8), (12,), backward_weight=backward_weight,
                               bounded=bounded)
    agent = SACAgent(3, 2, actor_hidden_sizes=(16,), critic_hidden_sizes=(16,), context_dim=context_dim,
                     dynamics_map=dynamics_map).double()
    generator = torch.Generator().manual_seed(9)
    draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    agent.dynamics_map.observe(draw(100, 3), torch.tanh(draw(100, 2)), draw(100, 3))
    batch = _batch()
    features = agent.dynamics_map.feature_dim
    mask = (torch.rand(48, history, generator=generator) > 0.3).double()
    batch.window, batch.window_mask = draw(48, history, features), mask
    batch.next_window, batch.next_window_mask = draw(48, history, features), torch.ones(48, history, dtype=torch.float64)
    return agent.to(device), on_device(batch, device)


@pytest.mark.parametrize("bounded, backward_weight", [(True, 0.5), (False, 0.5), (True, 0.0)])
def test_by_hand_dynamics_map_matches_autograd(bounded, backward_weight):
    by_hand, batch = learned_map_case(bounded, backward_weight=backward_weight)
    assert (by_hand.dynamics_map.backward_model is None) == (backward_weight == 0)
    reference = copy.deepcopy(by_hand)
    reference.use_backend("autograd")
    _assert_same_updates(by_hand, reference, batch, steps=4)
    # With the critic's gradient flowing into the map, only autograd knows the way.
    by_hand.critic_gradient_to_map = True
    assert by_hand.use_backend("auto") == "autograd (loss gradients flow into the learned context)"


@pytest.mark.parametrize("config_file", [
    "training/config_dynamics_map.yaml", "configs/pendulum.yaml", "configs/random_pendulum.yaml",
    "configs/random_pendulum_oracle.yaml", "configs/conservative.yaml", "configs/random_linear_no_context.yaml",
])
def test_shipped_configs_update_by_hand(tmp_path, config_file):
    """The presets run on the fast path (a setting that silently sent them to autograd would
    show only as lost speed)."""
    root = Path(__file__).resolve().parents[1]
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("env.id=")]
    trainer = SACTrainer(load_config(root / config_file, overrides))
    while trainer.step < 64:
        trainer.collect_step()
    batch = trainer.buffer.sample(8, trainer.config.context.history_length
                                  if trainer.config.context.source == "learned" else 0)
    assert trainer.agent.backend.name == "by-hand", trainer.agent.backend_description
    assert all(torch.isfinite(value).all() for value in trainer.agent.update(batch).values())
    trainer.env.close()


def test_flat_parameters_follow_parameters_order():
    critic = CriticEnsemble(3, 2, (8, 8), layer_norm=True)
    assert [id(p) for p in critic.flat_parameters()] == [id(p) for p in critic.parameters()]
