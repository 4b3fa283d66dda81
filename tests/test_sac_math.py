"""SAC losses and the policy's log-prob against hand computation."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from dynsac.sac import losses
from dynsac.sac.agent import SACAgent, clipped_grad_norm
from dynsac.sac.networks import CriticEnsemble, GaussianPolicy, soft_clamp, tanh_gaussian
from dynsac.sac.replay import ReplayBuffer


def test_soft_q_target_by_hand():
    reward = torch.tensor([1.0, -2.0])
    terminated = torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[3.0, 5.0], [4.0, 1.0]])  # (critics, batch)
    next_log_prob = torch.tensor([-0.5, 0.25])
    alpha, gamma = torch.tensor(0.2), 0.9
    target = losses.soft_q_target(reward, terminated, next_q, next_log_prob, alpha, gamma)
    # row 0: min(3, 4) = 3; soft value 3 - 0.2 * -0.5 = 3.1; 1 + 0.9 * 3.1 = 3.79
    # row 1: terminated, so just the reward
    assert target.tolist() == pytest.approx([3.79, -2.0])


def test_critic_loss_by_hand():
    q_pred = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    q_target = torch.tensor([2.0, 2.0])
    # critic 0: ((1-2)^2 + 0) / 2 = 0.5; critic 1: (4 + 4) / 2 = 4; 0.5 * (0.5 + 4) = 2.25
    assert losses.critic_loss(q_pred, q_target).item() == pytest.approx(2.25)


def test_actor_and_alpha_loss_by_hand():
    q_pi = torch.tensor([[1.0, -1.0], [2.0, -3.0]])
    log_prob = torch.tensor([-1.0, 0.5])
    alpha = torch.tensor(0.1)
    # min over critics: [1, -3]; (0.1*-1 - 1 + 0.1*0.5 + 3) / 2 = 0.975
    assert losses.actor_loss(q_pi, log_prob, alpha).item() == pytest.approx(0.975)
    log_alpha = torch.tensor(math.log(0.1))
    # -(log 0.1 * ((-1 - 2) + (0.5 - 2))) / 2 with target entropy -2
    expected = -(math.log(0.1) * ((-1 + -2) + (0.5 + -2))) / 2
    assert losses.alpha_loss(log_alpha, log_prob, -2.0).item() == pytest.approx(expected)


def test_tanh_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    policy = GaussianPolicy(3, 2, (16,))
    obs = torch.randn(64, 3)
    torch.manual_seed(1)
    action, log_prob = policy.sample(obs)
    mu, log_std = policy(obs)
    reference = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()])
    expected = reference.log_prob(action.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    assert torch.allclose(log_prob, expected, atol=1e-3)


def test_tanh_correction_is_finite_when_saturated():
    mu = torch.tensor([[30.0, -30.0, 100.0]])
    log_std, noise = torch.zeros(1, 3), torch.zeros(1, 3)
    _, log_prob, _ = tanh_gaussian(mu, log_std, noise)
    assert torch.isfinite(log_prob).all()
    # log(1 - tanh(u)^2) ~ log 4 - 2|u| for large |u|; the Gaussian part at noise 0 is -3 log sqrt(2 pi)
    expected = -3 * 0.5 * math.log(2 * math.pi) - (3 * math.log(4) - 2 * 160)
    assert log_prob.item() == pytest.approx(expected, rel=1e-5)


def test_log_std_bounds_are_smooth():
    policy = GaussianPolicy(2, 1, (8,), log_std_min=-5, log_std_max=2)
    for bias in (1e4, -1e4):
        with torch.no_grad():
            policy.net[-1].bias.fill_(bias)
        _, log_std = policy(torch.zeros(1, 2))
        # softplus(7) exceeds 7 by log(1 + e^-7): the bounds hold to within 1e-3
        assert -5.0 <= log_std.min().item() and log_std.max().item() <= 2.0 + 1e-3
    raw = torch.tensor([-8.0, -1.0, 0.0, 1.0, 1.9], requires_grad=True)
    bounded = soft_clamp(raw, -5.0, 2.0)
    assert bounded[2].item() == pytest.approx(0.0, abs=0.15)  # a fresh policy starts near std 1
    assert abs(bounded[1].item() - -1.0) < 0.06 and abs(bounded[3].item() - 1.0) < 0.35
    bounded.sum().backward()
    assert (raw.grad > 0).all()  # gradients stay alive even beyond the bounds


def test_actions_rescaled_to_env_bounds():
    policy = GaussianPolicy(2, 2, (8,), action_low=[-2.0, 0.0], action_high=[2.0, 10.0])
    env_action = policy.to_env_action(torch.tensor([[1.0, -1.0], [0.0, 0.5]]))
    assert env_action.tolist() == [[2.0, 0.0], [0.0, 7.5]]


def test_critic_ensemble_matches_independent_mlps():
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, (5, 4), num_critics=2)
    obs, action = torch.randn(7, 3), torch.randn(7, 2)
    q = critic(obs, action)
    assert q.shape == (2, 7)
    x = torch.cat([obs, action], -1)
    for e in range(2):
        h = x
        for i, (w, b) in enumerate(zip(critic.weights, critic.biases)):
            h = h @ w[e] + b[e, 0]
            if i < 2:
                h = torch.relu(h)
        assert torch.allclose(q[e], h.squeeze(-1), atol=1e-6)


def test_actor_loss_leaves_critic_gradients_alone():
    agent = SACAgent(3, 1, actor_hidden_sizes=(8,), critic_hidden_sizes=(8,))
    obs = torch.randn(4, 3)
    action, _ = agent.policy.sample(obs)
    agent.critic(obs, action, detach_params=True).sum().backward()
    assert all(p.grad is None for p in agent.critic.parameters())
    assert any(p.grad is not None for p in agent.policy.parameters())


def test_grad_norm_is_exact_and_does_not_overflow_float32():
    weight = torch.nn.Parameter(torch.zeros(4))
    weight.grad = torch.full((4,), 1e19)  # norm 2e19: its float32 square overflows
    norm, finite, _ = clipped_grad_norm([weight], max_norm=1.0)
    assert finite and math.isfinite(norm.item()) and norm.item() == pytest.approx(2e19, rel=1e-6)
    assert torch.linalg.vector_norm(weight.grad.double()).item() == pytest.approx(1.0, rel=1e-5)


def _reference_clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """The clipping formula applied unconditionally (what clipped_grad_norm did before it skipped
    the no-op multiply)."""
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return [g * scale for g in grads]


@pytest.mark.parametrize("norm", [0.5, 4.99, 4.9999, 5.0, 5.0001, 5.01, 50.0])
def test_clipping_is_bit_exact_inside_at_and_beyond_the_limit(norm):
    """Inside the limit the gradients are left untouched (the scale is exactly 1); at and beyond
    it they are the unconditional formula's, bit for bit."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.zeros(7)), torch.nn.Parameter(torch.zeros(3, 2))]
    raw = [torch.randn(7), torch.randn(3, 2)]
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in raw]))
    for weight, grad in zip(weights, raw):
        weight.grad = grad * (norm / total)
    expected = _reference_clip([w.grad.clone() for w in weights], 5.0)
    before = [w.grad.clone() for w in weights]
    returned, finite, _ = clipped_grad_norm(weights, max_norm=5.0)
    assert finite and returned.item() == pytest.approx(norm, rel=1e-5)
    for weight, want in zip(weights, expected):
        assert torch.equal(weight.grad, want)
    if norm < 4.999:
        assert all(torch.equal(w.grad, b) for w, b in zip(weights, before))


def test_acting_sample_is_the_sample_s_action_from_the_same_draw():
    policy = GaussianPolicy(3, 2, hidden_sizes=(8,))
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    action, _ = policy.sample(obs)
    torch.manual_seed(1)
    assert torch.equal(policy.sample_action(obs), action)
    torch.manual_seed(1)
    assert torch.equal(policy.act(obs), policy.to_env_action(action))


def test_time_limit_truncation_bootstraps_termination_does_not():
    """Two identical transitions except that one terminated and the other was truncated."""
    torch.manual_seed(0)
    agent = SACAgent(2, 1, actor_hidden_sizes=(8,), critic_hidden_sizes=(8,), gamma=0.5)
    buffer = ReplayBuffer(4, 2, 1)
    obs, next_obs = np.array([0.1, 0.2]), np.array([0.3, 0.4])
    buffer.add(obs, np.array([0.5]), 1.0, next_obs, terminated=True, truncated=False, episode_id=0)
    buffer.add(obs, np.array([0.5]), 1.0, next_obs, terminated=False, truncated=True, episode_id=1)
    index = torch.tensor([0, 1])
    with torch.no_grad():
        next_action, next_log_prob = agent.policy.sample(buffer.next_obs[index])
        next_q = agent.critic_target(buffer.next_obs[index], next_action)
        target = losses.soft_q_target(buffer.reward[index], buffer.terminated[index], next_q, next_log_prob,
                                      agent.log_alpha.exp(), agent.settings.gamma)
    soft_value = next_q.min(0).values[1] - next_log_prob[1]  # alpha = 1 at start
    assert target[0].item() == pytest.approx(1.0)
    assert target[1].item() == pytest.approx(1.0 + 0.5 * soft_value.item(), rel=1e-5)
    assert buffer.truncated[index].tolist() == [False, True]


def test_one_update_changes_everything_and_moves_targets_by_tau():
    torch.manual_seed(0)
    agent = SACAgent(3, 2, actor_hidden_sizes=(16,), critic_hidden_sizes=(16,), tau=0.1)
    buffer = ReplayBuffer(100, 3, 2)
    for i in range(50):
        buffer.add(np.random.randn(3), np.random.uniform(-1, 1, 2), -1.0, np.random.randn(3), False, False, 0)
    target_before = [p.clone() for p in agent.critic_target.parameters()]
    metrics = agent.update(buffer.sample(16))
    for before, target, online in zip(target_before, agent.critic_target.parameters(), agent.critic.parameters()):
        assert torch.allclose(target, 0.9 * before + 0.1 * online, atol=1e-6)
    for name in ("critic_loss", "actor_loss", "alpha_loss", "q_grad_norm", "policy_grad_norm", "q_mean", "q_std",
                 "alpha", "entropy"):
        assert torch.isfinite(metrics[name]), name
    assert metrics["alpha"].item() != 1.0


def test_huber_critic_loss_by_hand():
    q_pred = torch.tensor([[1.0, 5.0], [2.0, -1.0]])
    q_target = torch.tensor([1.5, 2.0])
    # errors: critic 0 [-0.5, 3], critic 1 [0.5, -3]; huber(delta=1): 0.125 and 1*(3-0.5)=2.5
    expected = (0.125 + 2.5) / 2 * 2
    assert losses.critic_loss(q_pred, q_target, huber_delta=1.0).item() == pytest.approx(expected)
    small = torch.tensor([[0.1, -0.2]]), torch.tensor([0.0, 0.0])
    assert losses.critic_loss(*small, huber_delta=1.0).item() == pytest.approx(losses.critic_loss(*small).item())


def test_critic_layer_norm_matches_per_critic_layer_norm():
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 1, (6, 5), layer_norm=True)
    with torch.no_grad():
        critic.norm_weights[0].uniform_(0.5, 2.0)
        critic.norm_biases[1].uniform_(-1.0, 1.0)
    obs, action = torch.randn(4, 3), torch.randn(4, 1)
    q = critic(obs, action)
    x = torch.cat([obs, action], -1)
    for e in range(2):
        h = x
        for i in range(3):
            h = h @ critic.weights[i][e] + critic.biases[i][e, 0]
            if i < 2:
                h = torch.nn.functional.layer_norm(h, (h.shape[-1],)) * critic.norm_weights[i][e, 0] + critic.norm_biases[i][e, 0]
                h = torch.relu(h)
        assert torch.allclose(q[e], h.squeeze(-1), atol=1e-5)
