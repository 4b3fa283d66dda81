"""Typed, validated configuration.

Every field has a default, so a config written for an older dynsac (which omits newer fields)
keeps working. Unknown keys are errors: a misspelt key must never be silently ignored.

Every field is bounded by what the trainer can honour: counts and sizes have upper limits,
floats must be finite (NaN and Inf are refused everywhere), layer lists are short lists of
positive widths, paths fit the file system's limits. What depends on the machine (whether the
replay buffer and the networks fit in memory) is checked when the trainer is built
(`dynsac.training.resources`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_LAYER_SIZE = 65_536  # units in one hidden layer
MAX_LAYERS = 16  # hidden layers in one network
MAX_STEPS = 10**12  # env steps, intervals and step counts
MAX_SEED = 2**32 - 1  # numpy's global seed is a 32-bit unsigned integer
MAX_FACTOR = 1e6  # multipliers of a loss or of the entropy term
MAX_PATH_LENGTH = 4096  # Linux PATH_MAX
MAX_NAME_LENGTH = 255  # bytes in one path component (NAME_MAX of common file systems)


class _Section(BaseModel):
    # NaN and Inf are refused in every float field: none of them has a use for a non-finite value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def check_layer_sizes(sizes: list[int] | None) -> list[int] | None:
    """Hidden layer widths: 1 to MAX_LAYERS layers, each of 1 to MAX_LAYER_SIZE units."""
    if sizes is None:
        return None
    if any(size < 1 or size > MAX_LAYER_SIZE for size in sizes):
        raise ValueError(f"every layer size must be >= 1 and <= {MAX_LAYER_SIZE}, got {sizes}")
    return sizes


def check_path(path: str) -> str:
    """A folder name the file system can create: not blank, no NUL byte, within PATH_MAX and NAME_MAX."""
    if not path.strip():
        raise ValueError("must name a folder, e.g. 'runs/my_run'")
    if "\0" in path:
        raise ValueError("must not contain a NUL character")
    if len(path.encode()) > MAX_PATH_LENGTH:
        raise ValueError(f"is {len(path.encode())} bytes long; paths may have at most {MAX_PATH_LENGTH}")
    longest = max(path.split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > MAX_NAME_LENGTH:
        raise ValueError(f"has a component of {len(longest.encode())} bytes ({longest[:20]!r}...); file systems "
                         f"allow at most {MAX_NAME_LENGTH}")
    return path


class EnvConfig(_Section):
    """Which environment to train on."""

    id: str = Field(
        "Pendulum-v1", max_length=1000,
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
        None, ge=1, le=10_000_000,
        description="Time limit (at most 10,000,000 steps); null keeps the environment's registered limit.",
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
    dim: int = Field(
        4, ge=1, le=4096, description="Size of the learned context vector (`learned` only; at most 4096). 4 is "
        "above the 2-3 parameters that vary in the measured families (docs/critics.md)."
    )
    history_length: int = Field(
        10, ge=1, le=10_000, description="Transitions K in the encoder's window (`learned` only; at most 10,000)."
    )
    encoder_hidden_sizes: list[int] = Field(
        [128, 64], min_length=1, max_length=MAX_LAYERS,
        description="Encoder layers (1 to 16 layers of 1 to 65536 units, as every layer list).",
    )
    model_hidden_sizes: list[int] = Field(
        [128, 128], min_length=1, max_length=MAX_LAYERS,
        description="Layers of the forward and backward dynamics predictors.",
    )
    backward_weight: float = Field(
        0.5, ge=0, le=MAX_FACTOR,
        description="Weight of the backward prediction loss; 0 builds no backward predictor (a forward-only map).",
    )
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of encoder and predictors.")
    bounded: bool = Field(True, description="Squash the learned context with tanh into (-1, 1).")
    critic_gradient: bool = Field(
        False, description="Let the critic loss train the encoder too (PEARL-style)."
    )
    detach_policy: bool = Field(True, description="The policy sees a detached context (no actor gradient).")

    @field_validator("encoder_hidden_sizes", "model_hidden_sizes")
    @classmethod
    def _layer_sizes(cls, sizes: list[int]) -> list[int]:
        return check_layer_sizes(sizes)


# The critics' rate relative to learning_rate unless set: 5e-4 at the default 3e-4, chosen by
# measurement (docs/critics.md). A ratio, not a second fixed rate, so that lowering learning_rate
# (the users' first remedy, and the rewind's) still slows every network.
CRITIC_LEARNING_RATE_RATIO = 5 / 3


class TrainingParams(_Section):
    """What users tune: the SAC algorithm, its schedule and where checkpoints go."""

    total_steps: int = Field(100_000, ge=1, le=MAX_STEPS, description="Environment steps to train for (at most 10^12).")
    learning_starts: int = Field(
        5_000, ge=0, le=MAX_STEPS, description="Steps of uniformly random actions before updates start."
    )
    learning_rate: float = Field(
        3e-4, gt=0, le=1, description="Adam learning rate of the policy; the critics' is 5/3 of it unless "
        "critic_learning_rate is set.",
    )
    actor_learning_rate: float | None = Field(None, gt=0, le=1, description="Overrides learning_rate for the policy.")
    critic_learning_rate: float | None = Field(
        None, gt=0, le=1, description="Adam learning rate of the critics; null: 5/3 of learning_rate (5e-4 at "
        "the default 3e-4; docs/critics.md).",
    )
    alpha_learning_rate: float | None = Field(
        3e-3, gt=0, le=1, description="Adam learning rate of log-alpha; null: learning_rate. 3e-3 lets alpha "
        "fall to the normalised reward's scale within a few thousand steps."
    )
    gamma: float = Field(0.99, ge=0, lt=1, description="Discount factor, in [0, 1).")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak coefficient of the target critics, in (0, 1].")
    reward_scale: float = Field(
        1.0, gt=0, le=1e30, description="Rewards are multiplied by this before storage (at most 1e30: they are "
        "stored as float32, which ends at ~3.4e38)."
    )
    max_grad_norm: float | None = Field(
        5.0, gt=0, description="Clip each network's gradient to this global norm; null: no clipping."
    )
    batch_size: int = Field(
        256, ge=1, le=10_000_000, description="Transitions per gradient update (at most buffer_size, and 10,000,000)."
    )
    buffer_size: int = Field(
        1_000_000, ge=1, le=MAX_STEPS, description="Replay buffer capacity (transitions), preallocated: a buffer "
        "that does not fit in the memory available is refused when the trainer is built, with the largest that fits."
    )
    updates_per_step: int = Field(1, ge=1, le=1000, description="Gradient updates per environment step (at most 1000).")
    n_step: int = Field(
        1, ge=1, le=1000, description="TD targets over n-step returns: the discounted rewards of up to n transitions "
        "of the same episode, bootstrapping gamma^m after the m-th (stopping at its end or the newest transition "
        "stored); 1 is SAC's 1-step target. The buffer stores 1-step transitions either way."
    )
    hidden_sizes: list[int] = Field(
        [256, 256], min_length=1, max_length=MAX_LAYERS,
        description="Hidden layers of policy and critics (1 to 16 layers of 1 to 65536 units, as every layer list).",
    )
    actor_hidden_sizes: list[int] | None = Field(
        None, min_length=1, max_length=MAX_LAYERS, description="Overrides hidden_sizes for the policy."
    )
    critic_hidden_sizes: list[int] | None = Field(
        None, min_length=1, max_length=MAX_LAYERS, description="Overrides hidden_sizes for the critics."
    )
    critic_layer_norm: bool = Field(False, description="LayerNorm after each hidden layer of the critics.")
    critic_loss: Literal["mse", "huber", "hl_gauss", "two_hot"] = Field(
        "hl_gauss", description="TD loss: a categorical critic over `critic_bins` atoms of a symlog support (no "
        "per-task value range), scored by cross-entropy: `hl_gauss` (the default: the target spread as a Gaussian "
        "over the atoms) or `two_hot` (on its two nearest atoms); or a scalar critic: `mse` (classic SAC; "
        "`--config configs/sac_classic.yaml`), `huber` (quadratic below huber_delta, linear beyond)."
    )
    huber_delta: float = Field(1.0, gt=0, description="Where the Huber TD loss turns linear.")
    critic_bins: int = Field(
        101, ge=3, le=10_001, description="Atoms of the categorical critics' support (`critic_loss: hl_gauss` or "
        "`two_hot`), evenly spaced in symlog space up to |Q| = critic_reward_bound / (1 - gamma)."
    )
    critic_reward_bound: float = Field(
        100.0, gt=0, le=1e30, description="The normalised reward magnitude the categorical critics' support "
        "covers: its end atoms sit at |Q| = critic_reward_bound / (1 - gamma), and targets beyond are clipped "
        "to them. Rewards are normalised to unit std (`safety.reward_normalization`), so no per-task range."
    )
    num_critics: int = Field(2, ge=1, le=100, description="Critics in the ensemble (REDQ uses 10).")
    critic_subset: int | None = Field(
        None, ge=1, le=100, description="REDQ: the TD target's min over this many critics drawn at random each "
        "update, and the actor's loss on the critics' mean; null: the min over all (SAC's twin critics)."
    )
    critic_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="DroQ: fraction of each critic hidden layer's units dropped (with "
        "`critic_layer_norm: true` as in DroQ); 0 is none."
    )
    network: Literal["mlp", "simba"] = Field(
        "mlp", description="Policy and critic networks: `mlp` (ReLU layers of hidden_sizes), or `simba` (SimBa: a "
        "linear embedding, one residual pre-LayerNorm block per hidden size, all equal, inner width 4x, a final "
        "LayerNorm; pair it with `obs_normalization: true`). Not combined with crossq, critic_dropout or "
        "critic_layer_norm."
    )
    crossq: bool = Field(
        False, description="CrossQ critics: batch renormalisation of every critic layer's input, no target "
        "network (tau unused), (s, a) and (s', a') through the critics in one batch; the actor's pass uses the "
        "running statistics. CrossQ's paper pairs it with `adam_beta1: 0.5`, `policy_delay: 3` and wide critics."
    )
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam's first-moment decay, every optimizer.")
    obs_normalization: bool = Field(
        False, description="Normalise the observations every network sees by their running mean and std over "
        "all collected steps (clipped to +-10; saved in checkpoints and exported with the policy)."
    )
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0, description="AdamW's decoupled weight decay of the policy and critics (0: Adam)."
    )
    alpha: float | Literal["auto"] = Field(
        "auto", description="Entropy coefficient: a positive number (fixed, at most 1e6) or `auto` (tuned)."
    )
    init_alpha: float = Field(
        0.05, gt=0, le=MAX_FACTOR, description="Starting alpha when `alpha: auto` (at most 1e6). Alpha 1 would "
        "make the entropy bonus outweigh the normalised reward at first (10x with 10 action dims)."
    )
    target_entropy: float | Literal["auto"] = Field(
        "auto", description="Entropy target of automatic tuning, between -1e6 and 1e6; `auto` = -action_dim."
    )
    log_std_min: float = Field(
        -5.0, ge=-20, le=20, description="Lower bound of the policy's log standard deviation (within [-20, 20])."
    )
    log_std_max: float = Field(
        2.0, ge=-20, le=20, description="Upper bound of the policy's log standard deviation (within [-20, 20])."
    )
    eval_interval: int = Field(5_000, ge=0, le=MAX_STEPS, description="Evaluate every this many steps; 0 disables.")
    eval_episodes: int = Field(
        10, ge=1, le=100_000, description="Episodes per evaluation (deterministic policy; at most 100,000)."
    )
    checkpoint_interval: int = Field(
        10_000, ge=0, le=MAX_STEPS, description="Checkpoint every this many steps; 0 disables."
    )
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
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seeds python, numpy, torch and the environments (0 to 2^32 - 1)."
    )
    num_envs: int = Field(
        1, ge=1, le=1024, description="Environments stepped side by side (at most 1024), each with its own episode "
        "and dynamics-map history; one batched policy forward acts for all. Steps count every env's transitions, "
        "and updates_per_step applies per env step."
    )
    policy_delay: int = Field(
        1, ge=1, le=1_000_000, description="Update the policy and alpha once every this many critic updates "
        "(TD3/CleanRL style; changes the algorithm: 1 is standard SAC)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="Where the update multiplies in bfloat16 (weights, gradients, optimizer state, losses "
        "and safety checks stay float32). `bf16`: everywhere (bf16 weight copies on the hand-derived path, "
        "autocast on autograd's). `auto`: on the CPU, with the hand-derived update, when the CPU multiplies bf16 "
        "natively (AVX512-BF16 or AMX) and every hidden layer has >= 256 units (0.68x the float32 update time at "
        "[256, 256] on 1 thread, 1.14x the env steps/s as `dynsac train` runs); float32 elsewhere. `fp32`: nowhere. bf16 changes the numerics."
    )
    compile: bool = Field(
        False, description="torch.compile the update's arithmetic (the hand-derived SAC update and the dynamics "
        "map's prediction step; optimizer steps and safety checks stay eager). Same math, rounding may differ; "
        "~10-30 s of compiling before the first update, and a C++ compiler on CPU. Falls back to running "
        "uncompiled, with a warning, where compiling fails."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` picks cuda when available.")
    torch_threads: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] | None = Field(
        "auto", description="torch intra-op threads (at most 1024). `auto`: all cores while the "
        "machine is otherwise idle, fewer while other processes keep cores busy (re-measured every log interval); "
        "null keeps torch's default."
    )

    @field_validator("checkpoint_dir")
    @classmethod
    def _folder(cls, path: str) -> str:
        return check_path(path)

    @field_validator("hidden_sizes", "actor_hidden_sizes", "critic_hidden_sizes")
    @classmethod
    def _positive_layers(cls, sizes: list[int] | None) -> list[int] | None:
        return check_layer_sizes(sizes)

    @field_validator("alpha")
    @classmethod
    def _alpha_positive(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 < value <= MAX_FACTOR:
            raise ValueError(f"must be 'auto' or a number > 0 and <= {MAX_FACTOR:g}, got {value}")
        return value

    @field_validator("target_entropy")
    @classmethod
    def _target_entropy_bounded(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not abs(value) <= MAX_FACTOR:
            raise ValueError(f"must be 'auto' or a number between {-MAX_FACTOR:g} and {MAX_FACTOR:g}, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainingParams:
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed buffer_size ({self.buffer_size}): lower "
                f"training.batch_size or raise training.buffer_size"
            )
        if self.network == "simba":
            clashes = [key for key in ("crossq", "critic_dropout", "critic_layer_norm") if getattr(self, key)]
            if clashes:
                raise ValueError(f"network: simba does not combine with {', '.join(clashes)}: set training.network "
                                 f"to mlp or turn off training.{clashes[0]}")
            for key in ("actor_layers", "critic_layers"):
                if len(set(getattr(self, key))) != 1:
                    raise ValueError(f"network: simba needs equal hidden sizes (one residual block each), got "
                                     f"{getattr(self, key)} for training.{key.split('_')[0]}_hidden_sizes")
        if self.critic_subset is not None and self.critic_subset > self.num_critics:
            raise ValueError(
                f"critic_subset ({self.critic_subset}) must not exceed num_critics ({self.num_critics}): lower "
                f"training.critic_subset or raise training.num_critics"
            )
        if self.log_std_min >= self.log_std_max:
            raise ValueError(
                f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max}): lower "
                f"training.log_std_min or raise training.log_std_max"
            )
        return self

    @property
    def actor_lr(self) -> float:
        return self.actor_learning_rate or self.learning_rate

    @property
    def critic_lr(self) -> float:
        return self.critic_learning_rate or self.learning_rate * CRITIC_LEARNING_RATE_RATIO

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
        1e4, gt=0, le=1e30,
        description="A context with NaN/Inf or any |entry| above this falls back to zeros (counted, warned).",
    )
    reward_normalization: Literal["none", "fixed", "running"] = Field(
        "fixed",
        description="Scale sampled rewards by 1/std (or 1/RMS: `reward_statistic`): `fixed` from warm-up statistics (frozen at the first "
        "update), `running` from all rewards so far; `none` uses them as stored.",
    )
    reward_statistic: Literal["std", "rms"] = Field(
        "std", description="What `reward_normalization` divides by: the rewards' standard deviation (`std`) or "
        "their root mean square (`rms`, the offset included: a nearly constant reward is not blown up).",
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
    snapshot_interval: int = Field(
        1000, ge=1, le=MAX_STEPS, description="Updates between in-memory snapshots of the last good state."
    )
    state_check_interval: int = Field(
        100, ge=1, le=MAX_STEPS, description="Updates between full NaN/Inf scans of parameters, targets and optimizer "
        "states; a scan also runs after any update with a non-finite or float32-overflowing gradient and before each "
        "snapshot. 1: after every update.",
    )
    rollback_lr_factor: float = Field(0.5, gt=0, le=1, description="Learning rates are multiplied by this at each rollback.")
    max_rollbacks: int = Field(
        5, ge=0, le=1_000_000, description="More rollbacks than this within `rollback_window` steps: stop."
    )
    rollback_window: int = Field(10_000, ge=1, le=MAX_STEPS, description="Env steps over which rollbacks are counted.")


class LoggingConfig(_Section):
    """Where and how often metrics are written."""

    dir: str = Field("runs/dynsac", description="Run folder: TensorBoard events and metrics.jsonl.")
    log_interval: int = Field(1_000, ge=1, le=MAX_STEPS, description="Write training metrics every this many steps.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    progress: Literal["auto", "bar", "lines", "off"] = Field(
        "auto", description="Console progress: a bar on a terminal, periodic lines otherwise."
    )
    progress_interval_s: float = Field(
        10.0, gt=0, le=86_400, description="Seconds between plain progress lines (at most a day)."
    )

    @field_validator("dir")
    @classmethod
    def _folder(cls, path: str) -> str:
        return check_path(path)


class Config(_Section):
    """A whole dynsac run."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    training: TrainingParams = Field(default_factory=TrainingParams)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
