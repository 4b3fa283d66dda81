"""Fault injection: the run never dies of NaN, says where it came from, and recovers."""

import json

import numpy as np
import pytest
import torch

from dynsac import SACTrainer
from dynsac.config import load_config
from dynsac.safety import RecoveryManager, find_nonfinite
from dynsac.sac.replay import ReplayBuffer
from dynsac.training import load_checkpoint
from dynsac.training.logger import RunLogger, read_metrics

from conftest import tiny_overrides


def events(tmp_path, kind):
    return [r for r in read_metrics(tmp_path / "run") if r.get("event") == kind]


def all_checkpoints_load(tmp_path):
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        payload = load_checkpoint(path)
        assert not find_nonfinite((k, v) for k, v in payload["agent"]["modules"].items()), path


def test_check_for_nans_names_parameter_counts_and_statistics(tiny_config):
    trainer = SACTrainer(tiny_config())
    assert trainer.supervisor.nonfinite_state() == []
    with torch.no_grad():
        weight = trainer.agent.critic.weights[1]
        weight[0, 0, :3] = float("nan")
        weight[1, 2, 5] = float("inf")
    (report,) = trainer.supervisor.nonfinite_state()
    assert report.name == "critic.weights.1"
    assert (report.nan_count, report.inf_count, report.numel) == (3, 1, weight.numel())
    finite = weight[torch.isfinite(weight)].double()
    assert report.finite_max == pytest.approx(finite.max().item()) and report.finite_std == pytest.approx(finite.std().item())
    assert "critic.weights.1: 3 NaN, 1 Inf of 2048" in report.describe()


def test_optimizer_state_is_checked_too(tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.learning_starts": 40, "training.batch_size": 8}))
    for _ in range(45):
        trainer.collect_step()
    trainer.update()
    state = trainer.agent.critic_optimizer.state[trainer.agent.critic.weights[0]]
    state["exp_avg_sq"][0, 0, 0] = float("inf")
    names = [r.name for r in trainer.supervisor.nonfinite_state()]
    assert names == ["optimizer.critic[critic.weights.0].exp_avg_sq"]


def test_weight_set_to_nan_mid_run_rolls_back_and_finishes(tmp_path, tiny_config, capsys):
    trainer = SACTrainer(tiny_config(**{"safety.snapshot_interval": 50}))
    trainer.train(250)
    with torch.no_grad():
        trainer.agent.critic.weights[1][0, 0, 0] = float("nan")
    result = trainer.train(400)
    assert result.steps == 400 and result.stop_reason is None
    assert trainer.supervisor.nonfinite_state() == []
    assert trainer.rollbacks >= 1
    (nonfinite, *_) = events(tmp_path, "nonfinite")
    assert "critic.weights.1" in nonfinite["message"] and nonfinite["step"] == 251
    rollback = events(tmp_path, "rollback")[0]
    assert "rolled back to the state of step" in rollback["message"]
    assert rollback["learning_rates"]["critic"] == pytest.approx(5e-4 * 0.5)  # the default critic rate, halved
    assert np.isfinite(result.final_eval.mean)
    all_checkpoints_load(tmp_path)


def test_suggested_rates_scale_every_rate_the_config_sets():
    """The resume suggestion lowers each configured rate alike: learning_rate (which the critics
    follow at 5/3 unless pinned), and a pinned critic or actor rate beside it."""
    from dynsac.safety.diagnosis import suggestions

    config = load_config(None, ["training.critic_learning_rate=1e-3"])
    first_event = suggestions(config, {"actor": 3e-4, "critic": 1e-3}, rollbacks=0, history=[])
    assert first_event["overrides"] == ["training.learning_rate=0.00015", "training.critic_learning_rate=0.0005"]
    after_two = suggestions(load_config(None), {"actor": 3e-4 / 4, "critic": 5e-4 / 4}, rollbacks=2, history=[])
    assert after_two["overrides"] == ["training.learning_rate=7.5e-05"]
    assert "2 rollback(s) lowered them to" in after_two["reasons"][0]


def test_stop_policy_writes_emergency_checkpoint_and_diagnosis(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"safety.on_nonfinite": "stop", "safety.snapshot_interval": 50}))
    trainer.train(250)
    with torch.no_grad():
        trainer.agent.policy.net[2].weight[0, 0] = float("inf")
    result = trainer.train(400)
    assert result.stop_reason is not None and result.steps == 251
    emergency = tmp_path / "checkpoints" / "sac_step_251_emergency.pt"
    assert str(emergency) in result.stop_reason
    payload = load_checkpoint(emergency)
    assert not find_nonfinite(payload["agent"]["modules"].items())
    diagnosis = json.loads((tmp_path / "run" / "diagnosis.json").read_text())
    assert diagnosis["nonfinite_tensors"][0]["name"].startswith("policy.net.2.weight")
    assert diagnosis["emergency_checkpoint"] == str(emergency)
    assert diagnosis["last_good_checkpoint"].endswith("sac_step_250.pt")
    assert diagnosis["recent_metrics"] and "train/q_max_abs" in diagnosis["recent_metrics"][-1]
    assert diagnosis["resume_command"].endswith("--set training.learning_rate=0.00015")  # 3e-4 x 0.5
    text = (tmp_path / "run" / "diagnosis.txt").read_text()
    assert "What went non-finite first:" in text and "policy.net.2.weight" in text
    assert "Metric trends" in text and "train/q_max_abs" in text and diagnosis["resume_command"] in text
    assert "suggestion: training.learning_rate=0.00015" in result.stop_reason
    all_checkpoints_load(tmp_path)


def test_cli_exit_status_3_on_safety_stop(tmp_path, subprocess_env):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    config = tmp_path / "c.yaml"
    config.write_text("")
    # A learning rate of 1.0 with rewards of 1e30, un-normalised and unclipped: scalar critics overflow
    # within a few updates (categorical ones clip such targets to their support and survive it).
    overrides = tiny_overrides(tmp_path, **{"training.learning_rate": 1.0, "training.reward_scale": 1e30,
                                            "training.critic_loss": "mse", "training.max_grad_norm": "null",
                                            "safety.on_nonfinite": "stop", "safety.skip_nonfinite_gradients": False,
                                            "safety.reward_normalization": "none"})
    command = [sys.executable, str(REPO_ROOT / "training" / "train_sac.py"), "--config", str(config),
               *sum((["--set", o] for o in overrides), [])]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "non-finite values after the update" in result.stdout and "resume with: dynsac resume" in result.stdout


def test_inf_gradient_is_skipped_never_applied(tiny_config):
    trainer = SACTrainer(tiny_config())
    agent = trainer.agent
    buffer = ReplayBuffer(10, 3, 1, trainer.device)
    for _ in range(4):
        buffer.add(np.zeros(3), np.zeros(1), float("inf"), np.zeros(3), False, False, 0)
    critic_before = [p.clone() for p in agent.critic.parameters()]
    metrics = agent.update(buffer.sample(4))
    assert not torch.isfinite(metrics["q_grad_norm"])
    assert agent.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(critic_before, agent.critic.parameters()))
    assert not find_nonfinite(agent.named_parameters())


def test_non_finite_rewards_are_replaced_and_reported(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"env.id": "faulty_envs:BadRewardsEnv", "training.total_steps": 300}))
    result = trainer.train()
    assert result.steps == 300 and trainer.rollbacks == 0
    assert torch.isfinite(trainer.buffer.reward[:300]).all()
    assert len(events(tmp_path, "sanitized_reward")) == 7 + 3  # step 280 is an Inf one
    all_checkpoints_load(tmp_path)


def test_learning_rate_of_one_finishes_its_steps(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.learning_rate": 1.0}))
    result = trainer.train()
    assert result.steps == 400 and result.stop_reason is None
    assert trainer.supervisor.nonfinite_state() == []
    all_checkpoints_load(tmp_path)


def test_recovery_stops_after_too_many_rollbacks(tiny_config):
    trainer = SACTrainer(tiny_config())
    manager = RecoveryManager(snapshot_interval=10, lr_factor=0.5, max_rollbacks=2, window_steps=100)
    manager.take_snapshot(trainer.agent, step=0)
    for step in (10, 20, 30):
        manager.rollback(trainer.agent, step)
    assert manager.should_stop(30)
    assert not manager.should_stop(125)  # the window has moved past the first two
    assert trainer.agent.learning_rates()["actor"] == pytest.approx(3e-4 / 8)


def interval(**values):
    return {f"train/{k}" if not k.startswith("context") else k.replace("_", "/", 1): v for k, v in values.items()}


HEALTHY = dict(q_grad_clipped=0.1, policy_grad_clipped=0.0, policy_grad_norm=0.5, actor_loss=3.0, alpha=0.2,
               log_std_at_bound=0.0, log_std_mean=-1.0, q_max_abs=50.0, q_std=10.0)


@pytest.mark.parametrize(
    "change, kind",
    [
        (dict(q_grad_clipped=0.95), "critic_grad_at_clip_limit"),
        (dict(policy_grad_clipped=1.0), "policy_grad_at_clip_limit"),
        (dict(policy_grad_norm=0.0), "actor_gradient_zero"),
        (dict(log_std_at_bound=1.0, log_std_mean=2.0), "log_std_pinned"),
        (dict(alpha=5e3), "alpha_runaway"),
        (dict(alpha=15.0), "alpha_runaway"),  # above 10 and 75x the alpha of 5 intervals ago
        (dict(action_saturated=0.74, entropy=-16.0), "policy_saturated"),  # target -1: far below it
        (dict(alpha=1e-8), "alpha_collapse"),
        (dict(q_max_abs=5e4), "q_growth"),
        (dict(q_std=5e3), "q_std_explosion"),
        (dict(context_abs_max=80.0), "context_jump"),
    ],
)
def test_early_warning_signs(change, kind):
    from dynsac.safety import EarlyWarningMonitor

    monitor = EarlyWarningMonitor(target_entropy=-1.0)
    for step in range(1000, 8000, 1000):
        assert monitor.check(step, interval(**HEALTHY, context_abs_max=3.0)) == []
    warnings = monitor.check(8000, interval(**{**HEALTHY, "context_abs_max": 3.0, **change}))
    assert [w.kind for w in warnings] == [kind]
    # the same sign is not repeated every interval
    repeated = monitor.check(9000, interval(**{**HEALTHY, "context_abs_max": 3.0, **change}))
    assert kind not in [w.kind for w in repeated]
    assert f"{kind} x1 (first at step 8,000)" in monitor.summary()


def test_bang_bang_policy_at_its_entropy_target_is_not_saturation():
    from dynsac.safety import EarlyWarningMonitor

    monitor = EarlyWarningMonitor(target_entropy=-1.0)
    assert monitor.check(1000, interval(**HEALTHY, action_saturated=0.8, entropy=-1.2)) == []


def test_q_growth_while_the_critic_first_learns_is_not_a_warning():
    from dynsac.safety import EarlyWarningMonitor

    monitor = EarlyWarningMonitor()
    for step, q in zip(range(1000, 8000, 1000), (0.5, 400.0, 420.0, 430.0, 425.0, 440.0, 430.0)):
        assert monitor.check(step, interval(**{**HEALTHY, "q_max_abs": q, "q_std": q / 10})) == []


def test_saturated_policy_is_reported_during_a_run(tmp_path, tiny_config, capsys):
    """A policy pushed into saturation: the actor gradient vanishes and the warning names it."""
    trainer = SACTrainer(tiny_config(**{"training.total_steps": 300, "training.learning_rate": 1e-12}))
    trainer.train(150)
    with torch.no_grad():
        trainer.agent.policy.net[-1].bias[0] = 1e4   # mu = 1e4: tanh(mu) == 1 exactly in float32
        trainer.agent.policy.net[-1].bias[1] = 1e4   # log_std at its upper bound
    trainer.train(300)
    out = capsys.readouterr().out
    # steps 200 and 300 are logging points; the interval ending at 300 is entirely saturated
    assert "early warning at step 300" in out and "log-std entries sit at a bound" in out
    kinds = {r["event"] for r in read_metrics(tmp_path / "run") if "event" in r}
    assert "warning/log_std_pinned" in kinds and "warning/policy_saturated" in kinds and "warning_summary" in kinds


def test_forensics_names_the_planted_nan_layer(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"safety.snapshot_interval": 50}))
    trainer.train(250)
    with torch.no_grad():
        trainer.agent.critic.weights[1][0, 3, 7] = float("nan")
    trainer.train(300)
    (nonfinite, *_) = events(tmp_path, "nonfinite")
    assert "forensics: first non-finite output: critic ensemble layer 1 bmm" in nonfinite["message"]


def test_forensics_names_the_poisoned_transition(tmp_path, tiny_config):
    """A non-finite reward planted in one stored transition, past the input guards."""
    trainer = SACTrainer(tiny_config())
    trainer.train(250)
    trainer.buffer.reward[123] = float("-inf")
    trainer.train(400)
    skipped = events(tmp_path, "skipped_update")
    assert skipped and trainer.agent.skipped_steps >= 1
    assert "(buffer index 123): reward = -inf" in skipped[0]["message"]
    assert "backward: Function" in skipped[0]["message"]
    assert "repaired non-finite values in stored transitions [123]" in skipped[0]["message"]
    assert len(skipped) == 1 and trainer.buffer.reward[123].item() == 0.0  # not resampled again
    assert trainer.supervisor.nonfinite_state() == []


def test_context_encoder_forced_to_emit_nan_falls_back_to_zero(tmp_path, tiny_config):
    config = tiny_config(**{"env.id": "dynsac/RandomPendulum-v0", "context.source": "learned",
                            "context.encoder_hidden_sizes": "[16]", "context.model_hidden_sizes": "[16]",
                            "context.history_length": 3})
    trainer = SACTrainer(config)
    trainer.train(200)
    last = trainer.agent.dynamics_map.encoder[-1]
    last.register_forward_hook(lambda _m, _i, out: torch.full_like(out, float("nan")))
    trainer.agent.use_backend("autograd")  # the update's encoder runs through the module (and its hook) too
    result = trainer.train(400)
    assert result.steps == 400 and result.stop_reason is None
    assert trainer.rollout.counters.context_fallbacks > 0 and int(trainer.agent.context_fallbacks) > 0
    assert trainer.supervisor.nonfinite_state() == []
    warnings = events(tmp_path, "context_fallback")
    assert any("acting with a zero context" in w["message"] for w in warnings)
    assert any("batch context rows" in w["message"] for w in warnings)
    assert [r["safety/context_fallbacks"] for r in read_metrics(tmp_path / "run") if "safety/context_fallbacks" in r][-1] > 0
    all_checkpoints_load(tmp_path)


def test_extreme_env_context_beyond_the_bound_falls_back(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"env.id": "dynsac/RandomPendulum-v0", "context.source": "env",
                                        "safety.context_bound": 0.5, "training.total_steps": 150}))
    trainer.train()  # masses and lengths are 0.75..1.25: every context is beyond 0.5
    assert trainer.rollout.counters.context_fallbacks >= 150 - 100  # the policy acts after 100 warm-up steps (+ eval)
    assert int(trainer.agent.context_fallbacks) == 2 * 32 * 51  # 51 updates (steps 100..150), both windows


@pytest.mark.parametrize("mode, statistic", [("fixed", "std"), ("running", "std"), ("fixed", "rms")])
def test_reward_normalization_makes_batches_scale_invariant(tmp_path, mode, statistic):
    """The same run with rewards x1 and x1e6 feeds identical normalised rewards to the learner."""
    seen = {}
    for multiplier in (1.0, 1e6):
        config = load_config(None, tiny_overrides(tmp_path / str(multiplier), **{
            "training.reward_scale": multiplier, "safety.reward_normalization": mode, "training.total_steps": 150,
            "safety.reward_statistic": statistic}))
        trainer = SACTrainer(config)
        for _ in range(150):
            trainer.collect_step()
        torch.manual_seed(0)
        batch = trainer.buffer.sample(64)
        seen[multiplier] = batch.reward * trainer.reward_normalizer.scale
    torch.testing.assert_close(seen[1.0], seen[1e6], rtol=1e-5, atol=1e-6)
    size = seen[1.0].std() if statistic == "std" else seen[1.0].square().mean().sqrt()
    assert size.item() == pytest.approx(1.0, rel=0.5)


def test_reward_normalizer_by_hand_and_fixed_freezes():
    from dynsac.safety.reward_scale import RewardNormalizer

    normalizer = RewardNormalizer("fixed")
    for reward in (-2.0, 0.0, 2.0, 4.0):
        normalizer.observe(reward)
    assert normalizer.scale == pytest.approx(1 / np.std([-2.0, 0.0, 2.0, 4.0]))
    normalizer.observe(1e6)  # after freezing, nothing moves the scale
    assert normalizer.scale == pytest.approx(1 / np.std([-2.0, 0.0, 2.0, 4.0]))
    running = RewardNormalizer("running")
    for reward in (-2.0, 0.0, 2.0, 4.0, 1e6):
        running.observe(reward)
    assert running.scale == pytest.approx(1 / np.std([-2.0, 0.0, 2.0, 4.0, 1e6]))
    assert RewardNormalizer("none").scale == 1.0
    restored = RewardNormalizer("fixed")
    restored.load_state_dict(normalizer.state_dict())
    assert restored.scale == normalizer.scale


def test_reward_normalizer_rms_statistic_by_hand():
    """`rms` divides by sqrt(mean^2 + variance): a nearly constant reward keeps its size, where 1/std
    would multiply it by ~100."""
    from dynsac.safety.reward_scale import RewardNormalizer

    hanging = [-9.80, -9.85, -9.75, -9.90, -9.70]
    by_rms, by_std = RewardNormalizer("fixed", statistic="rms"), RewardNormalizer("fixed")
    for reward in hanging:
        by_rms.observe(reward)
        by_std.observe(reward)
    assert by_rms.scale == pytest.approx(1 / np.sqrt(np.mean(np.square(hanging))), rel=1e-12)
    assert by_std.scale == pytest.approx(1 / np.std(hanging), rel=1e-9)
    assert max(abs(r * by_rms.scale) for r in hanging) < 1.02
    assert max(abs(r * by_std.scale) for r in hanging) > 100
    with pytest.raises(ValueError, match="reward statistic 'mad'"):
        RewardNormalizer("fixed", statistic="mad")


def test_nonfinite_action_never_reaches_the_env_and_is_traced(tmp_path, tiny_config):
    """A NaN planted in the policy's output layer (between two after-update checks): the action is
    replaced, counted, and the report names the layer and row where NaN first appears."""
    trainer = SACTrainer(tiny_config(**{"training.learning_starts": 10}))
    trainer.train(20)
    with torch.no_grad():
        trainer.agent.policy.net[-1].weight[0, 0] = float("nan")
    seen = []
    original_step = trainer.env.step
    trainer.env.step = lambda action: seen.append(np.array(action)) or original_step(action)
    trainer.logger = RunLogger(tmp_path / "acting")
    trainer.collect_step()
    trainer.logger.close()
    assert np.isfinite(seen[-1]).all() and trainer.rollout.counters.nonfinite_actions == 1
    (event,) = [r for r in read_metrics(tmp_path / "acting") if r.get("event") == "nonfinite_action"]
    assert "policy.net.4 (Linear) output is non-finite in batch rows [0]" in event["message"]
    assert f"step {trainer.step - 1}" in event["message"]


def test_safety_state_survives_a_checkpoint(tmp_path, tiny_config):
    """Rollback counters, the lowered learning rates and the early-warning history resume as they were."""
    trainer = SACTrainer(tiny_config(**{"safety.snapshot_interval": 50}))
    trainer.train(250)
    with torch.no_grad():
        trainer.agent.critic.weights[1][0, 0, 0] = float("nan")
    trainer.train(300)
    assert trainer.rollbacks == 1
    path = trainer.save_checkpoint()
    resumed = SACTrainer.from_checkpoint(path)
    assert resumed.rollbacks == 1 and resumed.supervisor.recovery.lr_scale == pytest.approx(0.5)
    assert resumed.agent.learning_rates() == pytest.approx(trainer.agent.learning_rates())
    assert resumed.early_warnings.state_dict() == trainer.early_warnings.state_dict()
    assert len(resumed.early_warnings.monitor.history) == len(trainer.early_warnings.monitor.history) > 0


def test_huge_but_finite_state_is_not_mistaken_for_nonfinite(tiny_config):
    """Adam second moments of 1e30 square to Inf in the fast L2 check; the exact check clears
    them, so the run neither rolls back nor reports NaN."""
    from dynsac.safety import all_finite

    trainer = SACTrainer(tiny_config())
    trainer.train(150)
    for state in trainer.agent.critic_optimizer.state.values():
        state["exp_avg_sq"].fill_(1e30)
    assert not bool(all_finite(trainer.supervisor.state_tensors()))  # the fast check is conservative
    trainer.update()
    assert trainer.rollbacks == 0 and trainer.supervisor.nonfinite_state() == []
    assert bool(all_finite([torch.ones(3)])) and not bool(all_finite([torch.tensor([0.0, float("nan")])]))


def test_silent_inf_in_adam_second_moment_is_caught_by_the_periodic_scan(tmp_path, tiny_config):
    """An Inf second moment makes no NaN anywhere (Adam's step for that entry is 0): only the
    full state scan sees it, and it runs within `state_check_interval` updates."""
    trainer = SACTrainer(tiny_config(**{"safety.snapshot_interval": 50, "safety.state_check_interval": 10}))
    trainer.train(250)
    state = next(iter(trainer.agent.critic_optimizer.state.values()))
    state["exp_avg_sq"].view(-1)[0] = float("inf")
    trainer.train(260)  # one update per step: 10 more updates
    assert trainer.rollbacks == 1 and trainer.supervisor.nonfinite_state() == []
    (nonfinite,) = events(tmp_path, "nonfinite")
    assert "exp_avg_sq: 0 NaN, 1 Inf" in nonfinite["message"] and 250 < nonfinite["step"] <= 260
    assert "found by the scheduled state scan: no gradient since update" in nonfinite["message"]


def test_full_state_scan_runs_on_its_cadence_and_after_a_suspect_gradient(tiny_config, monkeypatch):
    import dynsac.safety.supervisor as trainer_module

    scans: list[int] = []
    real_all_finite = trainer_module.all_finite

    def counting_all_finite(tensors):
        scans.append(trainer.num_updates + 1)  # the update being checked (the trainer counts it after)
        return real_all_finite(tensors)

    monkeypatch.setattr(trainer_module, "all_finite", counting_all_finite)
    trainer = SACTrainer(tiny_config(**{"safety.snapshot_interval": 50, "safety.state_check_interval": 20}))
    trainer.train(trainer.config.training.learning_starts + 99)  # updates start at step learning_starts
    assert trainer.num_updates == 100
    assert scans == [1, 20, 40, 50, 60, 80, 100]  # first update, every 20, before each snapshot

    scans.clear()
    real_update = trainer.agent.update

    def update_with_overflowing_gradient(batch):
        metrics = real_update(batch)
        trainer.agent.suspect_steps += 1  # what a float32-overflowing gradient norm records
        return metrics

    monkeypatch.setattr(trainer.agent, "update", update_with_overflowing_gradient)
    trainer.update()
    assert scans == [101]


def test_float32_overflowing_gradient_norm_is_flagged_and_still_exact():
    from dynsac.sac.agent import clipped_grad_norm

    weight = torch.nn.Parameter(torch.zeros(4))
    weight.grad = torch.tensor([3e19, 4e19, 0.0, 0.0])  # finite entries whose float32 norm is Inf
    norm, finite, widened = clipped_grad_norm([weight], max_norm=1.0)
    assert finite and widened and norm.item() == pytest.approx(5e19)
    assert torch.linalg.vector_norm(weight.grad).item() == pytest.approx(1.0, rel=1e-5)
    weight.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert clipped_grad_norm([weight], max_norm=None)[1:] == (True, False)


def test_policy_trace_sees_negative_inf_before_the_in_place_relu_zeroes_it():
    from dynsac.safety.guards import trace_policy_nonfinite
    from dynsac.sac.networks import GaussianPolicy

    torch.manual_seed(0)
    policy = GaussianPolicy(3, 2, (8, 8))
    policy.net[2].register_forward_hook(lambda _m, _i, out: out.index_fill(0, torch.tensor([1]), float("-inf")))
    message = trace_policy_nonfinite(policy, torch.randn(3, 3), None)
    assert message.startswith("policy.net.2 (Linear) output is non-finite in batch rows [1]")
    assert "0 NaN, 8 Inf" in message
