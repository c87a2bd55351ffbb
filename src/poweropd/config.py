"""Validated, frozen configuration for a training run.

A run's configuration has six sections — ``model``, ``rollout``, ``reward``, ``optim``, ``eval``, ``run`` —
each a frozen dataclass that checks its own fields in ``__post_init__`` with messages that name the field and
the allowed values. A YAML preset (``configs/*.yaml``) holds the same sections; CLI flags override it.
The resolved configuration is written to ``DIR/config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, require
from .rewards import REWARDS

# Every training method: the sampled-token rewards of the registry, plus the full-vocabulary reverse KL.
METHODS = (*REWARDS, "full_kl")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    student: str = ""
    """Student: a Hugging Face model id, a local folder, or an alias such as smollm2-135m-instruct."""
    teacher: str = ""
    """Teacher: same forms as the student; its tokenizer must match the student's."""
    dtype: str = "float32"
    """Compute dtype. With bfloat16 the teacher is held in bf16 and the student keeps float32 master weights
    under bf16 autocast (a 5e-7 update is below bf16's resolution for most weights)."""
    device: str = "cpu"
    """Device of the student (and of the teacher unless teacher_device is set): cpu or cuda."""
    teacher_device: str | None = None
    """Device of the teacher, e.g. cuda:1; default: the student's device."""

    def __post_init__(self):
        require(bool(self.student), "model.student (--student)", "a model id, folder or alias", self.student)
        require(bool(self.teacher), "model.teacher (--teacher)", "a model id, folder or alias", self.teacher)
        require(self.dtype in DTYPES, "model.dtype (--dtype)", f"one of {', '.join(DTYPES)}", self.dtype)
        require(
            self.device in DEVICES, "model.device (--device)", f"one of {', '.join(DEVICES)}", self.device
        )


@dataclass(frozen=True)
class RolloutConfig:
    max_new_tokens: int = 1024
    """Longest rollout; a rollout that reaches it without a stop token is truncated and keeps all tokens."""
    temperature: float = 1.0
    """Sampling temperature; rewards and losses use the same tempered distribution (1.0 in the paper)."""
    top_p: float = 1.0
    """Nucleus sampling; 1.0 samples from the whole distribution, as on-policy training assumes."""
    top_k: int = 0
    """0 disables top-k (set explicitly: a generation_config may carry top_k=50)."""
    include_stop_token: bool = False
    """Train on the final stop token too (the paper leaves it out)."""
    engine: str = "generate"
    """Sampler: generate (transformers' model.generate) or loop (a plain decode loop over the KV cache: the
    same samples for a seed, without generate's per-step machinery; rollout.py)."""

    def __post_init__(self):
        from .rollout import SAMPLERS

        require(
            self.max_new_tokens >= 1,
            "rollout.max_new_tokens (--max-new-tokens)",
            "an integer ≥ 1",
            self.max_new_tokens,
        )
        require(self.temperature > 0, "rollout.temperature (--temperature)", "a number > 0", self.temperature)
        require(0 < self.top_p <= 1, "rollout.top_p", "a number in (0, 1]", self.top_p)
        require(self.top_k >= 0, "rollout.top_k", "an integer ≥ 0", self.top_k)
        require(
            self.engine in SAMPLERS,
            "rollout.engine (--rollout-engine)",
            f"one of {', '.join(SAMPLERS)}",
            self.engine,
        )


@dataclass(frozen=True)
class RewardConfig:
    name: str = "power"
    """Training method: log_ratio, clip, tanh, zscore, power (sampled-token rewards) or full_kl."""
    alpha: float = 1.0
    """Exponent α of the power reward π_T^α − π_S^α; the paper sweeps 0.1 … 500."""
    clip_low: float = -1.0
    """Lower bound of the clip reward."""
    clip_high: float = 1.0
    """Upper bound of the clip reward."""
    tanh_tau: float = 1.0
    """Temperature of the tanh reward: tanh(log_ratio / tau)."""

    def __post_init__(self):
        require(self.name in METHODS, "reward.name (--reward)", f"one of {', '.join(METHODS)}", self.name)
        require(self.alpha > 0, "reward.alpha (--alpha)", "a number > 0", self.alpha)
        require(
            self.clip_low < self.clip_high,
            "reward.clip_low/clip_high (--clip-low/--clip-high)",
            "low < high",
            (self.clip_low, self.clip_high),
        )
        require(self.tanh_tau > 0, "reward.tanh_tau (--tanh-tau)", "a number > 0", self.tanh_tau)

    @property
    def hparams(self) -> dict[str, float]:
        """Keyword arguments of the registry function for this reward."""
        return {
            "power": {"alpha": self.alpha},
            "clip": {"low": self.clip_low, "high": self.clip_high},
            "tanh": {"tau": self.tanh_tau},
        }.get(self.name, {})

    @property
    def label(self) -> str:
        """Short method id used in reports, e.g. power@10 or log_ratio."""
        return f"power@{self.alpha:g}" if self.name == "power" else self.name


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-7
    """AdamW learning rate (the paper: 5e-7)."""
    warmup_ratio: float = 0.05
    """Linear warmup over this fraction of max_steps, then constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient norm clip; the pre-clip norm is logged as grad/norm."""
    beta1: float = 0.9
    beta2: float = 0.999

    def __post_init__(self):
        require(self.lr > 0, "optim.lr (--lr)", "a number > 0", self.lr)
        require(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", "a number in [0, 1)", self.warmup_ratio)
        require(self.weight_decay >= 0, "optim.weight_decay", "a number ≥ 0", self.weight_decay)
        require(self.max_grad_norm > 0, "optim.max_grad_norm", "a number > 0", self.max_grad_norm)
        require(
            0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
            "optim.beta1/beta2",
            "numbers in [0, 1)",
            (self.beta1, self.beta2),
        )


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0
    """Evaluate every K optimizer steps (and after the last); 0 = never."""
    benchmarks: str = "gsm8k"
    """Comma-separated benchmark names (see `poweropd eval`)."""
    data_dir: str | None = None
    """Folder of benchmark JSONL files; default: the Hugging Face hub."""
    limit: int | None = 50
    """Problems per benchmark."""
    n: int = 4
    """Samples per problem (Avg@n, Pass@n)."""
    max_new_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    batch_size: int = 64
    """Sequences per generate call while evaluating."""

    def __post_init__(self):
        require(self.every >= 0, "eval.every (--eval-every)", "an integer ≥ 0", self.every)
        require(self.n >= 1, "eval.n (--eval-n)", "an integer ≥ 1", self.n)
        require(
            self.limit is None or self.limit >= 1, "eval.limit (--eval-limit)", "an integer ≥ 1", self.limit
        )
        require(self.max_new_tokens >= 1, "eval.max_new_tokens", "an integer ≥ 1", self.max_new_tokens)


@dataclass(frozen=True)
class RunConfig:
    data: str = ""
    """Prompts: a JSONL file whose rows have `problem` (and optionally `answer`)."""
    output_dir: str = ""
    """Run directory: metrics.jsonl, positions.jsonl, config.yaml, checkpoints/, final/, tb/."""
    max_steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 32
    """Rollouts (one per prompt) per optimizer step, over all processes."""
    micro_batch_size: int | None = None
    """Rollouts per forward/backward pass (gradient accumulation); default: the whole per-process batch."""
    seed: int = 0
    """Seeds the data order and each step's sampling."""
    save_every: int = 100
    """Checkpoint every K steps (and after the last); 0 = only the final model."""
    positions_every: int = 10
    """Write per-position reward statistics to positions.jsonl every K steps (and at step 1)."""
    chunk_size: int = 1024
    """Positions per output-layer chunk in the memory-light log-prob and KL computations."""

    def __post_init__(self):
        require(bool(self.data), "run.data (--data)", "a JSONL file of prompts", self.data)
        require(bool(self.output_dir), "run.output_dir (--output-dir)", "a folder", self.output_dir)
        require(self.max_steps >= 1, "run.max_steps (--max-steps)", "an integer ≥ 1", self.max_steps)
        require(self.batch_size >= 1, "run.batch_size (--batch-size)", "an integer ≥ 1", self.batch_size)
        mb = self.micro_batch_size
        require(
            mb is None or (mb >= 1 and self.batch_size % mb == 0),
            "run.micro_batch_size (--micro-batch-size)",
            f"a divisor of batch_size {self.batch_size}",
            mb,
        )
        require(self.save_every >= 0, "run.save_every (--save-every)", "an integer ≥ 0", self.save_every)
        require(self.positions_every >= 1, "run.positions_every", "an integer ≥ 1", self.positions_every)
        require(self.chunk_size >= 1, "run.chunk_size", "an integer ≥ 1", self.chunk_size)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, sections: dict[str, dict[str, Any]], *, source: str = "config") -> TrainConfig:
        """Build from ``{section: {field: value}}``; unknown sections or keys are errors naming them."""
        known = {f.name: f.type for f in fields(cls)}
        classes = {
            "model": ModelConfig,
            "rollout": RolloutConfig,
            "reward": RewardConfig,
            "optim": OptimConfig,
            "eval": EvalConfig,
            "run": RunConfig,
        }
        built = {}
        for name, values in sections.items():
            if name not in known:
                raise UserError(f"{source}: unknown section '{name}' (expected one of {', '.join(classes)})")
            if not isinstance(values, dict):
                raise UserError(f"{source}: section '{name}' must be a mapping of field: value")
            allowed = [f.name for f in fields(classes[name])]
            for key in values:
                if key not in allowed:
                    raise UserError(
                        f"{source}: unknown key '{name}.{key}' (expected one of {', '.join(allowed)})"
                    )
            try:
                built[name] = classes[name](**values)
            except TypeError as err:
                raise UserError(f"{source}: section '{name}': {err}") from None
        if "model" not in built:
            built["model"] = ModelConfig()  # raises: student/teacher are required
        return cls(**built)


def read_preset(path: str | Path) -> dict[str, dict[str, Any]]:
    """The sections of a YAML preset, unvalidated (flags may still fill required fields)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found (expected a YAML preset, see configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: expected valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(
            f"--config {path}: expected a mapping of sections (model, rollout, reward, optim, eval, run)"
        )
    return data


def write_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
