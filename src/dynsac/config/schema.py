"""Typed, validated configuration.

Every field has a default, so a config written for an older dynsac (which omits newer fields)
keeps working. Unknown keys are errors: a misspelt key must never be silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EnvConfig(_Section):
    """Which environment to train on."""

    id: str = Field(
        "Pendulum-v1",
        description="A Gymnasium id (`Pendulum-v1`, `dynsac/RandomLinear-v0`) or `package.module:Class`.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the environment constructor."
    )
    eval_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of `kwargs` for the evaluation environment (e.g. held-out dynamics).",
    )
    max_episode_steps: int | None = Field(
        None, ge=1, description="Time limit; null keeps the environment's registered limit."
    )

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name an environment, e.g. 'Pendulum-v1' or 'my_pkg.envs:MyEnv'")
        return value


class ContextConfig(_Section):
    """The dynamics map fed to the policy and critics."""

    source: Literal["none", "env", "learned"] = Field(
        "none",
        description="`none`: plain SAC; `env`: the env's `info['context']` or Dict observation "
        "`{obs, context}`; `learned`: the dynamics-map encoder over the last transitions.",
    )
    dim: int = Field(10, ge=1, description="Size of the learned context vector (`learned` only).")
    history_length: int = Field(10, ge=1, description="Transitions K in the encoder's window (`learned` only).")
    encoder_hidden_sizes: list[int] = Field([256, 128, 64], min_length=1, description="Encoder layers.")
    model_hidden_sizes: list[int] = Field(
        [200, 200], min_length=1, description="Layers of the forward and backward dynamics predictors."
    )
    backward_weight: float = Field(0.5, ge=0, description="Weight of the backward prediction loss.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of encoder and predictors.")
    bounded: bool = Field(True, description="Squash the learned context with tanh into (-1, 1).")
    critic_gradient: bool = Field(
        False, description="Let the critic loss train the encoder too (PEARL-style)."
    )
    detach_policy: bool = Field(True, description="The policy sees a detached context (no actor gradient).")


class TrainingParams(_Section):
    """What users tune: the SAC algorithm, its schedule and where checkpoints go."""

    total_steps: int = Field(100_000, ge=1, description="Environment steps to train for.")
    learning_starts: int = Field(
        5_000, ge=0, description="Steps of uniformly random actions before updates start."
    )
    learning_rate: float = Field(3e-4, gt=0, le=1, description="Adam learning rate of every network.")
    actor_learning_rate: float | None = Field(None, gt=0, le=1, description="Overrides learning_rate for the policy.")
    critic_learning_rate: float | None = Field(None, gt=0, le=1, description="Overrides learning_rate for the critics.")
    alpha_learning_rate: float | None = Field(None, gt=0, le=1, description="Overrides learning_rate for log-alpha.")
    gamma: float = Field(0.99, ge=0, lt=1, description="Discount factor, in [0, 1).")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak coefficient of the target critics, in (0, 1].")
    reward_scale: float = Field(1.0, gt=0, description="Rewards are multiplied by this before storage.")
    max_grad_norm: float | None = Field(
        None, gt=0, description="Clip each network's gradient to this global norm; null: no clipping."
    )
    batch_size: int = Field(256, ge=1, description="Transitions per gradient update.")
    buffer_size: int = Field(1_000_000, ge=1, description="Replay buffer capacity (transitions).")
    updates_per_step: int = Field(1, ge=1, description="Gradient updates per environment step.")
    hidden_sizes: list[int] = Field([256, 256], min_length=1, description="Hidden layers of policy and critics.")
    actor_hidden_sizes: list[int] | None = Field(None, min_length=1, description="Overrides hidden_sizes for the policy.")
    critic_hidden_sizes: list[int] | None = Field(None, min_length=1, description="Overrides hidden_sizes for the critics.")
    critic_layer_norm: bool = Field(False, description="LayerNorm after each hidden layer of the critics.")
    critic_loss: Literal["mse", "huber"] = Field(
        "mse", description="TD loss: `mse`, or `huber` (quadratic below huber_delta, linear beyond)."
    )
    huber_delta: float = Field(1.0, gt=0, description="Where the Huber TD loss turns linear.")
    alpha: float | Literal["auto"] = Field(
        "auto", description="Entropy coefficient: a positive number (fixed) or `auto` (tuned)."
    )
    init_alpha: float = Field(1.0, gt=0, description="Starting alpha when `alpha: auto`.")
    target_entropy: float | Literal["auto"] = Field(
        "auto", description="Entropy target of automatic tuning; `auto` = -action_dim."
    )
    log_std_min: float = Field(-5.0, description="Lower bound of the policy's log standard deviation.")
    log_std_max: float = Field(2.0, description="Upper bound of the policy's log standard deviation.")
    eval_interval: int = Field(5_000, ge=0, description="Evaluate every this many steps; 0 disables.")
    eval_episodes: int = Field(10, ge=1, description="Episodes per evaluation (deterministic policy).")
    checkpoint_interval: int = Field(10_000, ge=0, description="Checkpoint every this many steps; 0 disables.")
    checkpoint_dir: str = Field("checkpoints", description="Folder of `sac_step_{N}.pt` checkpoints.")
    save_replay_buffer: bool = Field(True, description="Store the replay buffer in checkpoints (exact resume).")
    rewind: bool = Field(
        True, description="Resuming from a checkpoint older than the newest of the same run moves the later "
        "checkpoints (and a copy of metrics.jsonl) into `checkpoint_dir/rewound_from_step_N_TIME/` and goes ahead; "
        "false refuses instead (CLI: --no-rewind)."
    )
    keep_best_checkpoint: bool = Field(
        False, description="Keep the checkpoint of the best evaluation so far as `checkpoint_dir/sac_best.pt`."
    )
    stop_at: float | None = Field(
        None, description="Stop once an evaluation's `stop_metric` reaches this value (checkpoint saved, exit 0, "
        "the reason in summary.json as `early_stop`); null never stops early."
    )
    stop_metric: Literal["eval/return_mean", "eval/optimality_ratio"] = Field(
        "eval/return_mean", description="What `stop_at` compares: the mean eval return, or the optimality ratio "
        "(envs that know their optimum)."
    )
    seed: int = Field(0, ge=0, description="Seeds python, numpy, torch and the environments.")
    num_envs: int = Field(
        1, ge=1, description="Environments stepped side by side, each with its own episode and dynamics-map "
        "history; one batched policy forward acts for all. Steps count every env's transitions, and "
        "updates_per_step applies per env step."
    )
    policy_delay: int = Field(
        1, ge=1, description="Update the policy and alpha once every this many critic updates (TD3/CleanRL "
        "style; changes the algorithm: 1 is standard SAC)."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="`bf16`: forward matmuls under bfloat16 autocast, losses, gradients and weights in "
        "fp32 (changes the numerics; the safety checks watch it as usual)."
    )
    compile: bool = Field(
        False, description="torch.compile the update's arithmetic (the hand-derived SAC update and the dynamics "
        "map's prediction step; optimizer steps and safety checks stay eager). Same math, rounding may differ; "
        "~10-30 s of compiling before the first update, and a C++ compiler on CPU. Falls back to running "
        "uncompiled, with a warning, where compiling fails."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` picks cuda when available.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; null keeps torch's default.")

    @field_validator("hidden_sizes", "actor_hidden_sizes", "critic_hidden_sizes")
    @classmethod
    def _positive_layers(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None and any(size < 1 for size in sizes):
            raise ValueError(f"every layer size must be >= 1, got {sizes}")
        return sizes

    @field_validator("alpha")
    @classmethod
    def _alpha_positive(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and value <= 0:
            raise ValueError(f"must be 'auto' or a number > 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainingParams:
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed buffer_size ({self.buffer_size})"
            )
        if self.log_std_min >= self.log_std_max:
            raise ValueError(
                f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})"
            )
        return self

    @property
    def actor_lr(self) -> float:
        return self.actor_learning_rate or self.learning_rate

    @property
    def critic_lr(self) -> float:
        return self.critic_learning_rate or self.learning_rate

    @property
    def alpha_lr(self) -> float:
        return self.alpha_learning_rate or self.learning_rate

    @property
    def actor_layers(self) -> list[int]:
        return self.actor_hidden_sizes or self.hidden_sizes

    @property
    def critic_layers(self) -> list[int]:
        return self.critic_hidden_sizes or self.hidden_sizes


class SafetyConfig(_Section):
    """Numerical safety."""

    sanitize_inputs: bool = Field(
        True, description="Replace non-finite observations and rewards from the env by zeros (counted and logged)."
    )
    context_bound: float = Field(
        1e4, gt=0, description="A context with NaN/Inf or any |entry| above this falls back to zeros (counted, warned)."
    )
    reward_normalization: Literal["none", "fixed", "running"] = Field(
        "fixed",
        description="Scale sampled rewards by 1/std: `fixed` from warm-up statistics (frozen at the first "
        "update), `running` from all rewards so far; `none` uses them as stored.",
    )
    skip_nonfinite_gradients: bool = Field(
        True, description="Never apply an optimizer step whose gradient norm is NaN/Inf (counted)."
    )
    on_nonfinite: Literal["rollback", "stop"] = Field(
        "rollback",
        description="After an update leaves NaN/Inf in parameters or optimizer state: restore the last "
        "good state and continue (`rollback`), or stop with an emergency checkpoint and diagnosis (`stop`).",
    )
    forensics: bool = Field(
        True, description="Keep each update's starting parameters and, when an update goes non-finite, replay it "
        "to name the first module and batch rows involved.",
    )
    snapshot_interval: int = Field(1000, ge=1, description="Updates between in-memory snapshots of the last good state.")
    state_check_interval: int = Field(
        100, ge=1, description="Updates between full NaN/Inf scans of parameters, targets and optimizer states; a scan "
        "also runs after any update with a non-finite or float32-overflowing gradient and before each snapshot. "
        "1: after every update.",
    )
    rollback_lr_factor: float = Field(0.5, gt=0, le=1, description="Learning rates are multiplied by this at each rollback.")
    max_rollbacks: int = Field(5, ge=0, description="More rollbacks than this within `rollback_window` steps: stop.")
    rollback_window: int = Field(10_000, ge=1, description="Env steps over which rollbacks are counted.")


class LoggingConfig(_Section):
    """Where and how often metrics are written."""

    dir: str = Field("runs/dynsac", description="Run folder: TensorBoard events and metrics.jsonl.")
    log_interval: int = Field(1_000, ge=1, description="Write training metrics every this many steps.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    progress: Literal["auto", "bar", "lines", "off"] = Field(
        "auto", description="Console progress: a bar on a terminal, periodic lines otherwise."
    )
    progress_interval_s: float = Field(10.0, gt=0, description="Seconds between plain progress lines.")


class Config(_Section):
    """A whole dynsac run."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    training: TrainingParams = Field(default_factory=TrainingParams)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
