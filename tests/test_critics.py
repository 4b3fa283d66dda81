"""Critic options: categorical critics (HL-Gauss, two-hot), REDQ ensembles, DroQ dropout, AdamW."""

import math

import numpy as np
import pytest
import torch

from dynsac.sac import SACAgent
from dynsac.sac.agent import UpdateSettings
from dynsac.sac.optim import LeanAdam
from dynsac.sac.replay import Batch
from dynsac.sac.value import CategoricalValue, ScalarValue, symexp, symlog
from dynsac.training import SACTrainer
from dynsac.training.logger import read_metrics

# Five atoms at symlog -2, -1, 0, 1, 2: a support whose half-width is symlog(bound) = 2.
BOUND = math.expm1(2.0)


def normal_cdf(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_hl_gauss_projection_matches_a_hand_computation():
    head = CategoricalValue("hl_gauss", bins=5, bound=BOUND, sigma_ratio=0.75)
    target = math.expm1(0.3)  # symlog 0.3
    edges = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]
    cdf = [normal_cdf((edge - 0.3) / 0.75) for edge in edges]
    expected = [(cdf[i + 1] - cdf[i]) / (cdf[-1] - cdf[0]) for i in range(5)]
    probabilities = head.target_probabilities(torch.tensor([target], dtype=torch.float64))[0]
    assert probabilities.tolist() == pytest.approx(expected, abs=1e-12)


def test_two_hot_projection_splits_the_target_between_its_neighbours_and_clips_beyond_the_support():
    head = CategoricalValue("two_hot", bins=5, bound=BOUND)
    probabilities = head.target_probabilities(torch.tensor([math.expm1(0.3), -1e9, 1e9], dtype=torch.float64))
    assert probabilities[0].tolist() == pytest.approx([0, 0, 0.7, 0.3, 0], abs=1e-12)
    assert probabilities[1].tolist() == [1, 0, 0, 0, 0] and probabilities[2].tolist() == [0, 0, 0, 0, 1]
    # The value of the projected target is the target (symexp of its mean in symlog space).
    logits = probabilities[0].clamp(min=1e-300).log().reshape(1, 1, 5)
    assert head.value(logits).item() == pytest.approx(math.expm1(0.3), rel=1e-9)


def test_categorical_loss_is_smallest_at_the_projected_target_with_zero_gradient():
    head = CategoricalValue("hl_gauss", bins=51, bound=1e3)
    q_target = torch.tensor([-0.02, -3.0, 40.0], dtype=torch.float64)
    logits = head.target_probabilities(q_target).clamp(min=1e-300).log().unsqueeze(0).requires_grad_(True)
    loss = head.loss(logits, q_target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().max().item() < 1e-12
    assert head.value(logits.detach())[0].tolist() == pytest.approx(q_target.tolist(), rel=1e-3)
    assert head.loss(logits.detach() + torch.randn_like(logits), q_target) > loss


def test_symlog_and_symexp_are_inverse():
    x = torch.tensor([-1e6, -3.0, -1e-4, 0.0, 2e-3, 7.0, 1e8], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12)


def batch_for(agent, rows=16, generator=None):
    generator = generator or torch.Generator().manual_seed(0)
    obs_dim, action_dim = agent.policy.obs_dim, agent.policy.action_dim

    def draw(*shape):
        return torch.randn(*shape, generator=generator)

    return Batch(obs=draw(rows, obs_dim), action=draw(rows, action_dim).tanh(), reward=draw(rows),
                 next_obs=draw(rows, obs_dim), terminated=torch.zeros(rows), index=torch.arange(rows))


def test_categorical_agent_updates_by_hand_and_learns_a_constant_reward():
    torch.manual_seed(0)
    agent = SACAgent(3, 2, actor_hidden_sizes=(32,), critic_hidden_sizes=(32,), gamma=0.5, critic_lr=3e-3,
                     value_head=CategoricalValue("hl_gauss", bins=51, bound=100.0))
    assert agent.backend.name == "by-hand"
    batch = batch_for(agent)
    batch.reward = torch.full_like(batch.reward, -2.0)
    for _ in range(400):
        metrics = agent.update(batch)
    # Q = r + gamma (Q - alpha log pi): about -4 plus the entropy bonus's share.
    assert agent.critic(batch.obs, batch.action).shape == (2, 16, 51)
    assert math.isfinite(metrics["critic_loss"].item()) and -8 < metrics["q_mean"].item() < -2


def test_redq_target_takes_the_min_over_a_fresh_random_subset():
    agent = SACAgent(3, 2, actor_hidden_sizes=(8,), critic_hidden_sizes=(8,), num_critics=5, critic_subset=2)
    assert agent.actor_reduction == "mean" and agent.backend.name == "autograd"
    next_q = torch.arange(5.0).reshape(5, 1).expand(5, 4)
    torch.manual_seed(3)
    chosen = agent.target_critics(next_q)
    torch.manual_seed(3)
    expected = torch.randperm(5)[:2]
    assert chosen.shape == (2, 4) and chosen[:, 0].tolist() == expected.double().tolist()
    counts = torch.zeros(5)
    for _ in range(2000):
        counts[agent.target_critics(next_q)[:, 0].long()] += 1
    assert (counts / 4000 - 0.2).abs().max() < 0.03  # every critic drawn alike
    plain = SACAgent(3, 2, actor_hidden_sizes=(8,), critic_hidden_sizes=(8,))
    assert plain.actor_reduction == "min" and plain.target_critics(next_q[:2]) is not None


def test_a_subset_larger_than_the_ensemble_is_refused():
    with pytest.raises(ValueError, match="critic_subset 3"):
        SACAgent(3, 2, actor_hidden_sizes=(8,), critic_hidden_sizes=(8,), num_critics=2, critic_subset=3)


def test_critic_dropout_drops_that_share_of_units_in_every_pass(monkeypatch):
    torch.manual_seed(0)
    agent = SACAgent(3, 2, critic_hidden_sizes=(256, 256), critic_dropout=0.25, critic_layer_norm=True)
    dropout, kept = torch.nn.functional.dropout, []

    def spy(hidden, p, training):
        out = dropout(hidden, p, training)
        kept.append((out != 0).double().mean().item())
        return out

    monkeypatch.setattr(torch.nn.functional, "dropout", spy)
    obs, action = torch.randn(64, 3), torch.randn(64, 2)
    assert not torch.equal(agent.critic(obs, action), agent.critic(obs, action))
    assert len(kept) == 4 and all(0.7 < share < 0.8 for share in kept)  # two hidden layers, two passes
    assert agent.backend.name == "autograd"


def test_adamw_fast_path_matches_torch_adamw_bit_for_bit():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(4))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    lean = LeanAdam(weights, lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW(copies, lr=1e-2, weight_decay=0.1, fused=True)
    for step in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for param, other, grad in zip(weights, copies, grads):
            param.grad, other.grad = grad.clone(), grad.clone()
        lean.fast_step()
        reference.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, copies))


def test_weight_decay_is_a_tunable_that_reaches_the_actor_and_critic_optimizers():
    agent = SACAgent(3, 2, actor_hidden_sizes=(8,), critic_hidden_sizes=(8,))
    agent.configure(UpdateSettings(weight_decay=0.01))
    decays = {name: opt.param_groups[0]["weight_decay"] for name, opt in agent.optimizers.items()}
    assert decays == {"actor": 0.01, "critic": 0.01, "alpha": 0.0}


def test_scalar_head_follows_the_huber_setting():
    agent = SACAgent(3, 2, actor_hidden_sizes=(8,), critic_hidden_sizes=(8,))
    agent.configure(UpdateSettings(huber_delta=2.0))
    assert isinstance(agent.value_head, ScalarValue) and agent.value_head.huber_delta == 2.0


NEW_CRITICS = {"training.critic_loss": "hl_gauss", "training.critic_bins": 51, "training.num_critics": 4,
               "training.critic_subset": 2, "training.critic_dropout": 0.01, "training.critic_layer_norm": True,
               "training.weight_decay": 0.01}


def test_config_builds_the_critic_options(tiny_config):
    trainer = SACTrainer(tiny_config(**NEW_CRITICS, **{"training.total_steps": 150}))
    agent = trainer.agent
    assert isinstance(agent.value_head, CategoricalValue) and agent.value_head.bins == 51
    assert agent.critic.num_critics == 4 and agent.settings.critic_subset == 2 and agent.critic.dropout == 0.01
    assert trainer.train().steps == 150


def test_the_support_ends_at_the_reward_bound_over_one_minus_gamma(tiny_config):
    default = SACTrainer(tiny_config()).agent.value_head
    assert default.bound == pytest.approx(100.0 / (1 - 0.99))  # |Q| = 1e4 normalised units
    tight = SACTrainer(tiny_config(**{"training.critic_reward_bound": 10, "training.gamma": 0.95})).agent.value_head
    assert tight.bound == pytest.approx(10.0 / 0.05)
    ends = symexp(tight.atoms(torch.zeros(1))[[0, -1]])
    assert ends.tolist() == pytest.approx([-200.0, 200.0], rel=1e-5)
    # A target beyond the bound is projected as the bound itself; one inside is kept.
    beyond, at_bound, inside = tight.target_probabilities(torch.tensor([1e6, 200.0, 150.0]))
    assert torch.equal(beyond, at_bound)
    assert tight.value(inside.log()).item() == pytest.approx(150.0, rel=1e-4)


def test_config_refuses_a_subset_beyond_the_ensemble(tiny_config):
    with pytest.raises(Exception, match="critic_subset"):
        tiny_config(**{"training.num_critics": 2, "training.critic_subset": 3})


def test_observation_statistics_are_those_of_every_collected_observation(tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.obs_normalization": True, "training.total_steps": 250}))
    trainer.train()
    agent, stored = trainer.agent, trainer.buffer.state_dict()
    observed = stored["obs"][:250].double()
    stats = agent.obs_statistics
    assert stats.count.item() == 250
    assert torch.allclose(stats.mean, observed.mean(0), atol=1e-9)
    assert torch.allclose(stats.sum_squares / stats.count, observed.var(0, unbiased=False), atol=1e-9)
    shift, scale = stats.mean, (stats.sum_squares / stats.count + 1e-8).rsqrt()
    for network in (agent.policy, agent.critic, agent.critic_target):
        assert torch.equal(network.obs_normalizer.shift, shift.float())
        assert torch.allclose(network.obs_normalizer.scale, scale.float(), rtol=1e-6)
    assert agent.backend.name == "by-hand"  # normalised inputs, then the hand-derived passes
    obs = observed[:5].float()
    mu, _ = agent.policy(obs)
    expected, _ = agent.policy.distribution(agent.policy.net(((obs - shift.float()) * scale.float()).clamp(-10, 10)))[:2]
    assert torch.allclose(mu, expected)


def test_batch_renorm_uses_batch_statistics_in_training_and_running_ones_at_evaluation():
    from dynsac.sac.networks import EnsembleBatchRenorm

    torch.manual_seed(0)
    renorm = EnsembleBatchRenorm(2, 3, momentum=0.1, warmup_steps=2)
    x = torch.randn(2, 64, 3) * 4.0 + 7.0
    out = renorm(x, batch_statistics=True)
    var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
    assert torch.allclose(out, (x - mean) / (var + 1e-3).sqrt(), atol=1e-5)  # warm-up: plain batch norm
    assert torch.allclose(renorm.running_mean, 0.1 * mean) and torch.allclose(renorm.running_var, 0.9 + 0.1 * var)
    before = (renorm.running_mean.clone(), renorm.running_var.clone())
    evaluated = renorm(x, batch_statistics=False)
    assert torch.equal(renorm.running_mean, before[0]) and renorm.steps.item() == 1  # evaluation moves nothing
    assert torch.allclose(evaluated, (x - before[0]) / (before[1] + 1e-3).sqrt())
    renorm(x, batch_statistics=True)
    running_std = (renorm.running_var + 1e-3).sqrt()
    r = ((var + 1e-3).sqrt() / running_std).clamp(1 / 3, 3)
    d = ((mean - renorm.running_mean) / running_std).clamp(-5, 5)
    after_warmup = renorm(x, batch_statistics=True)  # step 3: renormalised towards the running statistics
    assert torch.allclose(after_warmup, (x - mean) / (var + 1e-3).sqrt() * r + d, atol=1e-5)


def test_crossq_agent_has_no_target_network_and_one_joint_critic_batch(monkeypatch):
    torch.manual_seed(0)
    agent = SACAgent(3, 2, actor_hidden_sizes=(16,), critic_hidden_sizes=(16, 16), crossq=True, adam_beta1=0.5)
    assert agent.critic_target is None and "CrossQ" in agent.backend_description
    assert agent.critic_optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    calls = []
    forward = type(agent.critic).forward

    def spy(self, obs, action, context=None, detach_params=False, batch_statistics=True):
        calls.append((obs.shape[0], batch_statistics))
        return forward(self, obs, action, context, detach_params, batch_statistics)

    monkeypatch.setattr(type(agent.critic), "forward", spy)
    metrics = agent.update(batch_for(agent))
    assert calls == [(32, True), (16, False)]  # (s, a) and (s', a') together; the actor's pass on running statistics
    assert agent.critic.batch_renorms[0].steps.item() == 1 and math.isfinite(metrics["critic_loss"].item())


def test_crossq_trains_from_the_config(tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.crossq": True, "training.adam_beta1": 0.5,
                                        "training.policy_delay": 3, "training.total_steps": 200}))
    assert trainer.train().steps == 200 and trainer.agent.critic_target is None


def test_simba_critic_is_residual_layer_norm_blocks_computed_per_critic():
    from dynsac.sac.simba import SimbaCriticEnsemble

    torch.manual_seed(0)
    critic = SimbaCriticEnsemble(3, 2, (8, 8), num_critics=2).double()
    obs, action = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    q = critic(obs, action)
    blocks = list(critic.blocks)
    for e in range(2):
        x = torch.cat([obs, action], -1) @ critic.embed_weight[e] + critic.embed_bias[e]
        for b in range(2):
            gain, offset, w1, b1, w2, b2 = (p[e] for p in blocks[6 * b: 6 * b + 6])
            normed = torch.nn.functional.layer_norm(x, (8,)) * gain + offset
            x = x + torch.relu(normed @ w1 + b1) @ w2 + b2
        x = torch.nn.functional.layer_norm(x, (8,)) * critic.norm_weight[e] + critic.norm_bias[e]
        assert torch.allclose(q[e], (x @ critic.head_weight[e] + critic.head_bias[e]).squeeze(-1))


def test_simba_networks_train_from_the_config_and_refuse_what_they_do_not_combine_with(tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.network": "simba", "training.obs_normalization": True,
                                        "training.total_steps": 150}))
    assert trainer.train().steps == 150 and "SimBa" in trainer.agent.backend_description
    with pytest.raises(Exception, match="simba does not combine with crossq"):
        tiny_config(**{"training.network": "simba", "training.crossq": True})
    with pytest.raises(Exception, match="equal hidden sizes"):
        tiny_config(**{"training.network": "simba", "training.hidden_sizes": "[32, 64]"})


OPTION_SETS = {
    "hl_gauss": {"training.critic_loss": "hl_gauss", "training.critic_bins": 21},
    "crossq": {"training.crossq": True, "training.adam_beta1": 0.5},
    "simba": {"training.network": "simba", "training.obs_normalization": True},
    "redq_droq_adamw": {"training.num_critics": 4, "training.critic_subset": 2, "training.critic_dropout": 0.01,
                        "training.critic_layer_norm": True, "training.weight_decay": 0.01},
    "n_step": {"training.n_step": 3},
}
CONTEXTS = {
    "none": {},
    "env": {"env.id": "dynsac/RandomPendulum-v0", "context.source": "env"},
    "learned": {"env.id": "dynsac/RandomPendulum-v0", "context.source": "learned", "context.history_length": 4,
                "context.encoder_hidden_sizes": "[16]", "context.model_hidden_sizes": "[16]"},
}


@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("option", list(OPTION_SETS))
def test_every_option_trains_with_every_context_source(tiny_config, option, context):
    trainer = SACTrainer(tiny_config(**OPTION_SETS[option], **CONTEXTS[context],
                                     **{"training.total_steps": 160, "training.checkpoint_interval": 0}))
    result = trainer.train()
    assert result.steps == 160 and np.isfinite(result.final_eval.mean) and trainer.num_updates == 61


@pytest.mark.parametrize("option", list(OPTION_SETS))
def test_a_nan_planted_in_a_critic_is_found_rolled_back_and_the_run_finishes(tmp_path, tiny_config, option):
    trainer = SACTrainer(tiny_config(**OPTION_SETS[option], **CONTEXTS["learned"],
                                     **{"safety.snapshot_interval": 50, "training.total_steps": 300}))
    trainer.train(200)
    first = trainer.agent.critic.flat_parameters()[0]
    with torch.no_grad():
        first.view(-1)[3] = float("nan")
    result = trainer.train()
    assert result.steps == 300 and result.stop_reason is None and trainer.rollbacks >= 1
    assert trainer.supervisor.nonfinite_state() == []
    nonfinite = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "nonfinite"]
    assert nonfinite and "critic." in nonfinite[0]["message"] and "forensics" in nonfinite[0]["message"]


@pytest.mark.parametrize("kind", CategoricalValue.KINDS)
def test_a_non_finite_target_is_not_clipped_into_the_support(kind):
    """Clipping would hide it from the safety layer: its projection is NaN, so are loss and gradient."""
    head = CategoricalValue(kind, bins=5, bound=BOUND)
    probabilities = head.target_probabilities(torch.tensor([float("inf"), float("nan"), 1e30]))
    assert torch.isnan(probabilities[:2]).all() and probabilities[2].argmax().item() == 4  # the end atom
    logits = torch.zeros(1, 2, 5, requires_grad=True)
    head.loss(logits, torch.tensor([-float("inf"), 0.0])).backward()
    assert torch.isnan(logits.grad[0, 0]).all() and torch.isfinite(logits.grad[0, 1]).all()


@pytest.mark.parametrize("kind", CategoricalValue.KINDS)
def test_hand_derived_categorical_loss_gradient_and_value_match_autograd(kind):
    """The hand-derived update's one-softmax loss, gradient, value and value backward are those
    autograd finds from the definitions, also for logits far from zero."""
    head = CategoricalValue(kind, bins=11, bound=1e3)
    generator = torch.Generator().manual_seed(3)
    logits = (30.0 * torch.randn(2, 6, 11, generator=generator, dtype=torch.float64)).requires_grad_(True)
    q_target = torch.tensor([-900.0, -2.5, -0.01, 0.0, 7.0, 5e4], dtype=torch.float64)

    loss, grad, value = head.loss_and_grad(logits.detach(), q_target)
    reference_loss = head.loss(logits, q_target)
    (reference_grad,) = torch.autograd.grad(reference_loss, logits)
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-12)
    assert torch.allclose(grad, reference_grad, rtol=1e-10, atol=1e-14)
    assert torch.allclose(value, head.value(logits.detach()), rtol=1e-12)

    grad_q = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    value, backward = head.value_and_backward(logits.detach())
    (reference_grad,) = torch.autograd.grad((head.value(logits) * grad_q).sum(), logits)
    assert torch.allclose(value, head.value(logits.detach()), rtol=1e-12)
    assert (backward(grad_q) - reference_grad).abs().max() < 1e-12 * reference_grad.abs().max()

    loss, grad, _ = head.loss_and_grad(logits.detach(), torch.tensor([float("nan"), 0.0, 1.0, 2.0, 3.0, 4.0],
                                                                     dtype=torch.float64))
    assert not torch.isfinite(loss) and torch.isnan(grad[:, 0]).all() and torch.isfinite(grad[:, 1:]).all()
