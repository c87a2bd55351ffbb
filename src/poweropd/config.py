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

DEVICES = ("cpu", "cuda")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    student: str = ""
    """Student: a Hugging Face model id, a local folder, or an alias such as smollm2-135m-instruct."""
    teacher: str = ""
    """Teacher: same forms as the student, or the URL of an OpenAI-compatible vLLM server
    (http://HOST:PORT/v1, served.py); its tokenizer must match the student's. Several teachers: ``teachers``."""
    teachers: tuple[str, ...] = ()
    """Several teachers as NAME=SPEC (SPEC: a folder, hub id, alias or server URL); each prompt row names its
    teacher in the column ``run.teacher_field`` (multi-teacher OPD). Instead of ``teacher``."""
    teacher_timeout_s: float = 120.0
    """Served teachers: seconds one request may take before it counts as failed."""
    teacher_retries: int = 4
    """Served teachers: tries after the first (backoff 1, 2, 4, … s) before the run stops."""
    dtype: str = "float32"
    """Compute dtype. With bfloat16 the teacher is held in bf16 and the student keeps float32 master weights
    under bf16 autocast (a 5e-7 update is below bf16's resolution for most weights)."""
    device: str = field(default_factory=lambda: default_device())
    """Device of the student (and of the teacher unless teacher_device is set): cpu or cuda; default cuda
    where a GPU is visible, so that a GPU user does not train on the CPU by accident."""
    teacher_device: str | None = None
    """Device of the teacher, e.g. cuda:1; default: the student's device."""
    trust_remote_code: bool = False
    """Run Python code that ships with a model (transformers' trust_remote_code); off unless asked."""
    gradient_checkpointing: bool = False
    """Recompute the student's decoder layers in the backward pass instead of keeping their activations."""
    lora_rank: int = 0
    """LoRA rank through peft (adapters.py); 0 = full fine-tune."""
    lora_alpha: float | None = None
    """LoRA scaling α (the update is α/r · BA); default: the rank."""
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    """peft target modules: all-linear (every linear layer but the output layer) or a comma list."""
    merge_lora: bool = False
    """Also write final-merged/: the base model with the adapter merged in."""
    fsdp: bool = False
    """Shard the student (weights, gradients, AdamW state) and the teacher over the processes with FSDP2
    (sharding.py); needs 2 or more processes (accelerate launch or torchrun)."""

    @property
    def teacher_specs(self) -> dict[str, str]:
        """{name: spec}; the single teacher of ``teacher`` has the name ""."""
        if not self.teachers:
            return {"": self.teacher}
        return dict(t.split("=", 1) for t in self.teachers)

    @property
    def server_options(self):
        from .served import ServerOptions

        return ServerOptions(timeout_s=self.teacher_timeout_s, retries=self.teacher_retries)

    def __post_init__(self):
        import re

        if isinstance(self.teachers, str | list):
            object.__setattr__(self, "teachers", (self.teachers,) if isinstance(self.teachers, str) else tuple(self.teachers))
        require(bool(self.student), "model.student (--student)", "a model id, folder or alias", self.student)
        require(bool(self.teacher) != bool(self.teachers), "model.teacher (--teacher)",
                "one teacher (a model id, folder, alias or server URL) or several NAME=SPEC", self.teacher or self.teachers)  # fmt: skip
        for entry in self.teachers:
            require(re.fullmatch(r"[A-Za-z0-9_.-]+=.+", entry) is not None, "model.teachers (--teacher NAME=SPEC)",
                    "NAME=SPEC with NAME of letters, digits, _ . -", entry)  # fmt: skip
        names = [t.split("=", 1)[0] for t in self.teachers]
        require(len(set(names)) == len(names), "model.teachers (--teacher NAME=SPEC)", "distinct names", names)
        _ = self.server_options  # ServerOptions checks its own fields
        require(self.dtype in DTYPES, "model.dtype (--dtype)", f"one of {', '.join(DTYPES)}", self.dtype)
        require(
            self.device in DEVICES, "model.device (--device)", f"one of {', '.join(DEVICES)}", self.device
        )
        require(self.lora_rank >= 0, "model.lora_rank (--lora-rank)", "an integer ≥ 0", self.lora_rank)
        require(
            0 <= self.lora_dropout < 1,
            "model.lora_dropout (--lora-dropout)",
            "a number in [0, 1)",
            self.lora_dropout,
        )
        require(not self.merge_lora or self.lora_rank > 0, "model.merge_lora (--merge-lora)", "--lora-rank > 0",
                self.lora_rank)  # fmt: skip
        require(not (self.fsdp and self.lora_rank), "model.lora_rank (--lora-rank) with --fsdp",
                "0 (LoRA under FSDP is not supported)", self.lora_rank)  # fmt: skip


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
    """Sampler (engines.ENGINES): generate, loop (the same samples for a seed), continuous, vllm or auto."""
    vllm_kv_cache_gb: float | None = None
    """vllm on CPU: GiB of KV cache (vllm_engine.VLLMOptions; default: what a step needs, at most 2)."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm on CUDA: fraction of the GPU the engine may take; the trainer holds the rest."""
    vllm_enforce_eager: bool | None = None
    """vllm: no torch.compile / CUDA graphs; default: eager on CPU, graphs on CUDA."""
    vllm_sleep: bool = False
    """vllm on CUDA: free the engine's weights and KV cache between rollouts (sleep mode)."""
    vllm_max_model_len: int | None = None
    """vllm: longest prompt + response the engine accepts (default: the first step's need, at least 2048)."""

    @property
    def vllm(self):
        """The vLLM engine's settings (speed and memory only, never the samples)."""
        from .vllm_engine import VLLMOptions

        return VLLMOptions(
            kv_cache_gb=self.vllm_kv_cache_gb, gpu_memory_utilization=self.vllm_gpu_memory_utilization,
            enforce_eager=self.vllm_enforce_eager, sleep=self.vllm_sleep, max_model_len=self.vllm_max_model_len,
        )  # fmt: skip

    def __post_init__(self):
        from .engines import ENGINES

        _ = self.vllm  # VLLMOptions checks its own fields
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
            self.engine in ENGINES,
            "rollout.engine (--rollout-engine)",
            f"one of {', '.join(ENGINES)}",
            self.engine,
        )


def methods() -> tuple[str, ...]:
    """Every training method: the registry's sampled-token rewards (read now: a registered reward counts),
    plus the full-vocabulary reverse KL."""
    return (*REWARDS, "full_kl")


TOKEN_SELECTORS = ("entropy",)


@dataclass(frozen=True)
class RewardConfig:
    name: str = "power"
    """Training method: a reward of poweropd.rewards.REWARDS (log_ratio, clip, tanh, zscore, power, proximal)
    or full_kl."""
    alpha: float = 1.0
    """α of the power reward π_T^α − π_S^α (the paper sweeps 0.1 … 500) or of the proximal reward (0, 1]."""
    alpha_end: float | None = None
    """α at the last step (--alpha-schedule A0:A1): α moves geometrically from ``alpha`` to it over training."""
    clip_low: float = -1.0
    """Lower bound of the clip reward."""
    clip_high: float = 1.0
    """Upper bound of the clip reward."""
    tanh_tau: float = 1.0
    """Temperature of the tanh reward: tanh(log_ratio / tau)."""
    token_select: str | None = None
    """Train on a fraction of the tokens only: ``entropy:K`` keeps the fraction K of each micro-batch's valid
    tokens with the highest student entropy (TIP: token importance in OPD); None keeps every token."""

    def __post_init__(self):
        names = methods()
        require(self.name in names, "reward.name (--reward)", f"one of {', '.join(names)}", self.name)
        record = REWARDS.get(self.name)
        for key, value in (("alpha", self.alpha), ("alpha_end", self.alpha_end)):
            flag = "--alpha-schedule" if key == "alpha_end" else "--alpha"
            if value is not None and record is not None and "alpha" in record.hparams:
                require(record.accepts_alpha(value), f"reward.{key} ({flag})", record.alpha_expected(), value)
            elif value is not None:
                require(value > 0, f"reward.{key} ({flag})", "a number > 0", value)
        require(
            self.alpha_end is None or (record is not None and "alpha" in record.hparams),
            "reward.alpha_end (--alpha-schedule)",
            "a reward that takes --alpha (power, proximal)",
            self.name,
        )
        require(
            self.clip_low < self.clip_high,
            "reward.clip_low/clip_high (--clip-low/--clip-high)",
            "low < high",
            (self.clip_low, self.clip_high),
        )
        require(self.tanh_tau > 0, "reward.tanh_tau (--tanh-tau)", "a number > 0", self.tanh_tau)
        if self.token_select is not None:
            kind, _, fraction = self.token_select.partition(":")
            ok = kind in TOKEN_SELECTORS and _is_fraction(fraction) and self.name != "full_kl"
            require(
                ok,
                "reward.token_select (--token-select)",
                "entropy:K with K in (0, 1], for a sampled-token reward",
                self.token_select,
            )

    @property
    def record(self):
        """The reward's registry record (None for full_kl)."""
        return REWARDS.get(self.name)

    def hparams_at(self, progress: float = 0.0) -> dict[str, float]:
        """Keyword arguments of the registry function, with α at ``progress`` ∈ [0, 1] of the run."""
        if self.record is None:
            return {}
        values = {field_name: getattr(self, field_name) for field_name in self.record.hparams.values()}
        if self.alpha_end is not None:  # geometric: equal ratios per step, as α spans decades
            values["alpha"] = self.alpha * (self.alpha_end / self.alpha) ** min(max(progress, 0.0), 1.0)
        return {kw: values[field_name] for kw, field_name in self.record.hparams.items()}

    @property
    def hparams(self) -> dict[str, float]:
        return self.hparams_at(0.0)

    @property
    def select_fraction(self) -> float | None:
        return float(self.token_select.partition(":")[2]) if self.token_select else None

    @property
    def label(self) -> str:
        """Method id in reports and ``poweropd demo --methods``: power@10, power@1:10, power@10+entropy:0.5."""
        if self.record is None:
            return self.name
        label = self.record.label(self.hparams)
        if self.alpha_end is not None:
            label += f":{self.alpha_end:g}"
        return label + (f"+{self.token_select}" if self.token_select else "")

    @classmethod
    def from_label(cls, label: str) -> RewardConfig:
        """The inverse of ``label``: "power@1:10+entropy:0.5" -> RewardConfig(power, alpha=1, alpha_end=10, ...)."""
        body, _, select = label.partition("+")
        name, _, alphas = body.partition("@")
        fields_ = {"name": name, "token_select": select or None}
        if alphas:
            first, _, last = alphas.partition(":")
            try:
                fields_["alpha"] = float(first)
                fields_["alpha_end"] = float(last) if last else None
            except ValueError:
                raise UserError(f"method {label}: expected name@alpha[:alpha_end][+entropy:K]") from None
        return cls(**fields_)


def _is_fraction(text: str) -> bool:
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


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
    """Evaluation: `poweropd eval`, and the ``eval`` section of a training run (``--eval-*`` flags)."""

    every: int = 0
    """Training only: evaluate every K optimizer steps (and after the last); 0 = never."""
    benchmarks: tuple[str, ...] = ("gsm8k",)
    """Benchmark names (see `poweropd eval`; a comma-separated string is accepted); the demo evaluates its
    own task."""
    data_dir: str | None = None
    """Folder of benchmark JSONL files; default: the Hugging Face hub."""
    limit: int | None = 50
    """Problems per benchmark (None = all)."""
    n: int = 4
    """Samples per problem (Avg@n, Pass@n; the paper: 8)."""
    max_new_tokens: int = 1024
    """Response length cap; a response that reaches it counts as truncated."""
    temperature: float = 0.6
    """Sampling temperature; 0 = greedy (then all n samples are identical)."""
    top_p: float = 0.95
    """Nucleus sampling mass in (0, 1]."""
    batch_size: int = 64
    """Sequences per sampler call (problems × samples are flattened and cut into batches)."""
    seed: int = 0
    """Sampling seed, reset before each benchmark so a benchmark's results do not depend on the others."""
    engine: str = "generate"
    """Sampler (engines.ENGINES): generate, loop (the same samples for a seed), continuous, vllm or auto. A
    streaming engine (continuous, vllm) takes every problem × n of a benchmark in one call; batch_size then does
    not apply."""

    def __post_init__(self):
        from .engines import ENGINES

        if isinstance(self.benchmarks, str):
            object.__setattr__(
                self, "benchmarks", tuple(b.strip() for b in self.benchmarks.split(",") if b.strip())
            )
        require(self.every >= 0, "eval.every (--eval-every)", "an integer ≥ 0", self.every)
        require(len(self.benchmarks) > 0 and all(self.benchmarks), "eval.benchmarks (--benchmarks)",
                "at least one benchmark name", self.benchmarks)  # fmt: skip
        require(self.n >= 1, "eval.n (--n, --eval-n)", "an integer ≥ 1", self.n)
        require(
            self.limit is None or self.limit >= 1,
            "eval.limit (--limit, --eval-limit)",
            "an integer ≥ 1",
            self.limit,
        )
        require(
            self.max_new_tokens >= 1,
            "eval.max_new_tokens (--max-new-tokens)",
            "an integer ≥ 1",
            self.max_new_tokens,
        )
        require(self.temperature >= 0, "eval.temperature (--temperature)", "a number ≥ 0", self.temperature)
        require(0 < self.top_p <= 1, "eval.top_p (--top-p)", "a number in (0, 1]", self.top_p)
        require(self.batch_size >= 1, "eval.batch_size (--batch-size)", "an integer ≥ 1", self.batch_size)
        require(
            self.engine in ENGINES,
            "eval.engine (--rollout-engine)",
            f"one of {', '.join(ENGINES)}",
            self.engine,
        )

    def sampling(self, stop_ids: list[int], vocab_size: int | None = None):
        from .rollout import SamplingConfig

        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=0,  # explicit: a model's generation_config may carry top_k=50
            stop_token_ids=tuple(stop_ids),
            vocab_size=vocab_size,
        )


@dataclass(frozen=True)
class RunConfig:
    data: str = ""
    """Prompts: a JSONL or parquet file, a `datasets` save_to_disk folder, or a hub dataset id."""
    data_split: str = "train"
    """Split of a dataset folder or hub dataset (--data-split)."""
    data_field: str = "problem"
    """Column (or JSONL field) holding the problem text (--data-field)."""
    teacher_field: str = "teacher"
    """With several teachers: the column (or JSONL field) naming each row's teacher (--teacher-field)."""
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
    report_to: tuple[str, ...] = ("jsonl", "tensorboard")
    """Metric destinations (trackers.TRACKERS): jsonl, tensorboard, wandb; a comma list on the command line."""
    keep_last: int = 3
    """Checkpoints kept: older ones are removed once a newer one is complete (0 = keep all; final/ stays)."""
    max_skipped_steps: int = 3
    """Stop after this many consecutive steps with a NaN/inf loss or gradient norm (each one skipped)."""

    def __post_init__(self):
        require(bool(self.data), "run.data (--data)", "a JSONL file of prompts", self.data)
        if isinstance(self.report_to, str | list):
            names = self.report_to.split(",") if isinstance(self.report_to, str) else self.report_to
            object.__setattr__(self, "report_to", tuple(n.strip() for n in names if n.strip()))
        from .trackers import TRACKERS

        require(bool(self.report_to) and all(n in TRACKERS for n in self.report_to), "run.report_to (--report-to)",
                f"a comma list of {', '.join(TRACKERS)}", ",".join(self.report_to))  # fmt: skip
        require(self.keep_last >= 0, "run.keep_last (--keep-last)", "an integer ≥ 0", self.keep_last)
        require(self.max_skipped_steps >= 1, "run.max_skipped_steps (--max-skipped-steps)", "an integer ≥ 1",
                self.max_skipped_steps)  # fmt: skip
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
            allowed = {f.name: f.type for f in fields(classes[name])}
            for key, value in values.items():
                if key not in allowed:
                    raise UserError(
                        f"{source}: unknown key '{name}.{key}' (expected one of {', '.join(allowed)})"
                    )
                if not _has_type(value, allowed[key]):
                    raise UserError(f"{source}: {name}.{key}: expected {allowed[key]}, got {value!r}")
            try:
                built[name] = classes[name](**values)
            except TypeError as err:
                raise UserError(f"{source}: section '{name}': {err}") from None
        if "model" not in built:
            built["model"] = ModelConfig()  # raises: student/teacher are required
        return cls(**built)


def _has_type(value, annotation: str) -> bool:
    """Whether a preset value fits a field's annotation (the scalar ones; containers are checked later)."""
    scalars = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    options = [a.strip() for a in annotation.split("|")]
    if value is None:
        return "None" in options
    if not all(o in scalars or o == "None" for o in options):
        return True
    ok = tuple(t for o in options if o in scalars for t in scalars[o])
    return isinstance(value, ok) and (bool in ok or not isinstance(value, bool))


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
