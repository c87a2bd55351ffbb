"""Validated, frozen configuration for a training run.

A run's configuration has six sections — ``model``, ``rollout``, ``reward``, ``optim``, ``eval``, ``run`` —
each a frozen dataclass that checks its own fields in ``__post_init__`` with messages that name the field and
the allowed values. A YAML preset (``configs/*.yaml``) holds the same sections; CLI flags override it.
The resolved configuration is written to ``DIR/config.yaml``.

Each field's flag, help, choices and traits (``resumable``) are read from the field and its docstring by
flags.py. The reward section lives in config/reward.py and preset reading/writing in presets.py; both are
re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import UserError, require
from .flags import arg, check_choice, resumable_changes, where
from .presets import has_type, read_preset, write_yaml
from .reward import RewardConfig, methods

DEVICES = ("cpu", "cuda")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    student: str = ""
    """Student: a Hugging Face model id, a local folder, or an alias such as smollm2-135m-instruct."""
    teacher: str = arg("", special=True, resumable=True)
    """Teacher: same forms as the student, or the URL of an OpenAI-compatible vLLM server
    (http://HOST:PORT/v1, served.py); its tokenizer must match the student's."""
    teachers: tuple[str, ...] = arg(
        (), flag="--teacher", special=True, usage="--teacher NAME=SPEC", resumable=True
    )
    """Several teachers as NAME=SPEC (SPEC: a folder, hub id, alias or server URL); each prompt row names its
    teacher in the column ``run.teacher_field`` (multi-teacher OPD). Instead of ``teacher``."""
    teacher_timeout_s: float = arg(120.0, flag="--teacher-timeout", metavar="S", resumable=True)
    """Served teachers: seconds one request may take before it counts as failed."""
    teacher_retries: int = arg(4, resumable=True)
    """Served teachers: tries after the first (backoff 1, 2, 4, … s) before the run stops."""
    teacher_temperature: float | None = arg(None, metavar="T")
    """Temperature of the teacher's log-probs, independent of the rollout temperature (as O³PD, arXiv
    2611.02112, and prime-rl's teacher_tau); default: the rollout temperature. Logged as teacher/temperature."""
    dtype: str = arg("float32", choices=DTYPES)
    """Compute dtype. With bfloat16 the teacher is held in bf16 and the student keeps float32 master weights
    under bf16 autocast (a 5e-7 update is below bf16's resolution for most weights)."""
    device: str = arg(factory=default_device, choices=DEVICES, resumable=True)
    """Device of the student (and of the teacher unless teacher_device is set): cpu or cuda; default cuda
    where a GPU is visible, so that a GPU user does not train on the CPU by accident."""
    teacher_device: str | None = arg(None, metavar="DEV", resumable=True)
    """Device of the teacher, e.g. cuda:1; default: the student's device."""
    trust_remote_code: bool = False
    """Run Python code that ships with a model (transformers' trust_remote_code); off unless asked."""
    gradient_checkpointing: bool = False
    """Recompute the student's decoder layers in the backward pass instead of keeping their activations."""
    lora_rank: int = 0
    """LoRA rank through peft (models/lora.py); 0 = full fine-tune."""
    lora_alpha: float | None = None
    """LoRA scaling α (the update is α/r · BA); default: the rank."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: str = "all-linear"
    """peft target modules: all-linear (every linear layer but the output layer) or a comma list."""
    merge_lora: bool = False
    """Also write final-merged/: the base model with the adapter merged in."""
    fsdp: bool = False
    """Shard the student (weights, gradients, AdamW state) and the teacher over the processes with FSDP2
    (training/fsdp.py); needs 2 or more processes (accelerate launch or torchrun)."""

    @property
    def teacher_specs(self) -> dict[str, str]:
        """{name: spec}; the single teacher of ``teacher`` has the name ""."""
        if not self.teachers:
            return {"": self.teacher}
        return dict(t.split("=", 1) for t in self.teachers)

    @property
    def server_options(self):
        from ..teachers.served import ServerOptions

        return ServerOptions(timeout_s=self.teacher_timeout_s, retries=self.teacher_retries)

    def __post_init__(self):
        import re

        if isinstance(self.teachers, str | list):
            object.__setattr__(
                self, "teachers", (self.teachers,) if isinstance(self.teachers, str) else tuple(self.teachers)
            )
        require(bool(self.student), where(self, "student"), "a model id, folder or alias", self.student)
        require(bool(self.teacher) != bool(self.teachers), where(self, "teacher"),
                "one teacher (a model id, folder, alias or server URL) or several NAME=SPEC", self.teacher or self.teachers)  # fmt: skip
        for entry in self.teachers:
            require(re.fullmatch(r"[A-Za-z0-9_.-]+=.+", entry) is not None, where(self, "teachers"),
                    "NAME=SPEC with NAME of letters, digits, _ . -", entry)  # fmt: skip
        names = [t.split("=", 1)[0] for t in self.teachers]
        require(len(set(names)) == len(names), where(self, "teachers"), "distinct names", names)
        _ = self.server_options  # ServerOptions checks its own fields
        require(self.teacher_temperature is None or self.teacher_temperature > 0, where(self, "teacher_temperature"),
                "a number > 0", self.teacher_temperature)  # fmt: skip
        check_choice(self, "dtype")
        check_choice(self, "device")
        require(self.lora_rank >= 0, where(self, "lora_rank"), "an integer ≥ 0", self.lora_rank)
        require(
            0 <= self.lora_dropout < 1, where(self, "lora_dropout"), "a number in [0, 1)", self.lora_dropout
        )
        require(not self.merge_lora or self.lora_rank > 0, where(self, "merge_lora"), "--lora-rank > 0",
                self.lora_rank)  # fmt: skip
        require(not (self.fsdp and self.lora_rank), where(self, "lora_rank") + " with --fsdp",
                "0 (LoRA under FSDP is not supported)", self.lora_rank)  # fmt: skip


def _benchmark_names() -> str:
    from ..eval.benchmarks import BENCHMARKS

    return f"Known: {', '.join(BENCHMARKS)}, or all."


def _engines() -> tuple[str, ...]:
    from ..rollout.engines import ENGINES

    return ENGINES


def _engine_help() -> str:
    from ..rollout.engines import ENGINE_HELP

    return ENGINE_HELP


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
    engine: str = arg(
        "generate", flag="--rollout-engine", choices=_engines, more=_engine_help, resumable=True
    )
    """Rollout engine:"""
    vllm_kv_cache_gb: float | None = arg(None, metavar="GB", resumable=True)
    """vllm on CPU: GiB of KV cache (vllm_engine.VLLMOptions; default: what a step needs, at most 2)."""
    vllm_gpu_memory_utilization: float = arg(0.3, metavar="F", resumable=True)
    """vllm on CUDA: fraction of the GPU the engine may take; the trainer holds the rest."""
    vllm_enforce_eager: bool | None = arg(None, resumable=True)
    """vllm: no torch.compile / CUDA graphs; default: eager on CPU, graphs on CUDA."""
    vllm_sleep: bool = arg(False, resumable=True)
    """vllm on CUDA: free the engine's weights and KV cache between rollouts (sleep mode)."""
    vllm_max_model_len: int | None = arg(None, metavar="L", resumable=True)
    """vllm: longest prompt + response the engine accepts (default: the first step's need, at least 2048)."""

    @property
    def vllm(self):
        """The vLLM engine's settings (speed and memory only, never the samples)."""
        from ..rollout.vllm_engine import VLLMOptions

        return VLLMOptions(
            kv_cache_gb=self.vllm_kv_cache_gb, gpu_memory_utilization=self.vllm_gpu_memory_utilization,
            enforce_eager=self.vllm_enforce_eager, sleep=self.vllm_sleep, max_model_len=self.vllm_max_model_len,
        )  # fmt: skip

    def __post_init__(self):
        _ = self.vllm  # VLLMOptions checks its own fields
        require(
            self.max_new_tokens >= 1, where(self, "max_new_tokens"), "an integer ≥ 1", self.max_new_tokens
        )
        require(self.temperature > 0, where(self, "temperature"), "a number > 0", self.temperature)
        require(0 < self.top_p <= 1, where(self, "top_p"), "a number in (0, 1]", self.top_p)
        require(self.top_k >= 0, where(self, "top_k"), "an integer ≥ 0", self.top_k)
        check_choice(self, "engine")


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
    """AdamW β1."""
    beta2: float = 0.999
    """AdamW β2."""

    def __post_init__(self):
        require(self.lr > 0, where(self, "lr"), "a number > 0", self.lr)
        require(
            0 <= self.warmup_ratio < 1, where(self, "warmup_ratio"), "a number in [0, 1)", self.warmup_ratio
        )
        require(self.weight_decay >= 0, where(self, "weight_decay"), "a number ≥ 0", self.weight_decay)
        require(self.max_grad_norm > 0, where(self, "max_grad_norm"), "a number > 0", self.max_grad_norm)
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, where(self, "beta1", "beta2"), "numbers in [0, 1)",
                (self.beta1, self.beta2))  # fmt: skip


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: `poweropd eval`, and the ``eval`` section of a training run (``--eval-*`` flags)."""

    every: int = arg(0, train_only=True, resumable=True)
    """Training only: evaluate every K optimizer steps (and after the last); 0 = never."""
    benchmarks: tuple[str, ...] = arg(("gsm8k",), more=lambda: _benchmark_names(), resumable=True)
    """Benchmark names (see `poweropd eval`; a comma-separated string is accepted); the demo evaluates its
    own task."""
    data_dir: str | None = arg(None, metavar="DIR", resumable=True)
    """Folder of benchmark JSONL files; default: the Hugging Face hub."""
    limit: int | None = arg(50, resumable=True)
    """Problems per benchmark (None = all)."""
    n: int = arg(4, resumable=True)
    """Samples per problem (Avg@n, Pass@n; the paper: 8)."""
    max_new_tokens: int = arg(1024, resumable=True)
    """Response length cap; a response that reaches it counts as truncated."""
    temperature: float = 0.6
    """Sampling temperature; 0 = greedy (then all n samples are identical)."""
    top_p: float = 0.95
    """Nucleus sampling mass in (0, 1]."""
    batch_size: int = arg(64, resumable=True)
    """Sequences per sampler call (problems × samples are flattened and cut into batches)."""
    seed: int = 0
    """Sampling seed, reset before each benchmark so a benchmark's results do not depend on the others."""
    engine: str = arg(
        "generate", flag="--rollout-engine", choices=_engines, more=_engine_help, resumable=True
    )
    """A streaming engine (continuous, vllm) takes every problem × n of a benchmark in one call; batch_size then
    does not apply. Rollout engine:"""

    def __post_init__(self):
        if isinstance(self.benchmarks, str):
            object.__setattr__(
                self, "benchmarks", tuple(b.strip() for b in self.benchmarks.split(",") if b.strip())
            )
        require(self.every >= 0, where(self, "every"), "an integer ≥ 0", self.every)
        require(len(self.benchmarks) > 0 and all(self.benchmarks), where(self, "benchmarks"),
                "at least one benchmark name", self.benchmarks)  # fmt: skip
        require(self.n >= 1, where(self, "n"), "an integer ≥ 1", self.n)
        require(self.limit is None or self.limit >= 1, where(self, "limit"), "an integer ≥ 1", self.limit)
        require(
            self.max_new_tokens >= 1, where(self, "max_new_tokens"), "an integer ≥ 1", self.max_new_tokens
        )
        require(self.temperature >= 0, where(self, "temperature"), "a number ≥ 0", self.temperature)
        require(0 < self.top_p <= 1, where(self, "top_p"), "a number in (0, 1]", self.top_p)
        require(self.batch_size >= 1, where(self, "batch_size"), "an integer ≥ 1", self.batch_size)
        check_choice(self, "engine")

    def sampling(self, stop_ids: list[int], vocab_size: int | None = None):
        from ..rollout.samplers import SamplingConfig

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
    data: str = arg("", metavar="SOURCE")
    """Prompts: a JSONL or parquet file, a `datasets` save_to_disk folder, or a hub dataset id."""
    data_split: str = "train"
    """Split of a dataset folder or hub dataset (--data-split)."""
    data_field: str = "problem"
    """Column (or JSONL field) holding the problem text (--data-field)."""
    teacher_field: str = arg("teacher", metavar="NAME")
    """With several teachers: the column (or JSONL field) naming each row's teacher (--teacher-field)."""
    output_dir: str = arg("", metavar="DIR", resumable=True)
    """Run directory: metrics.jsonl, positions.jsonl, config.yaml, checkpoints/, final/, tb/."""
    max_steps: int = arg(1500, resumable=True)
    """Optimizer steps."""
    batch_size: int = 32
    """Rollouts (one per prompt) per optimizer step, over all processes."""
    micro_batch_size: int | None = None
    """Rollouts per forward/backward pass (gradient accumulation); default: the whole per-process batch."""
    seed: int = 0
    """Seeds the data order and each step's sampling."""
    save_every: int = arg(100, resumable=True)
    """Checkpoint every K steps (and after the last); 0 = only the final model."""
    positions_every: int = arg(10, resumable=True)
    """Write per-position reward statistics to positions.jsonl every K steps (and at step 1)."""
    chunk_size: int = 1024
    """Positions per output-layer chunk in the memory-light log-prob and KL computations."""
    report_to: tuple[str, ...] = arg(("jsonl", "tensorboard"), resumable=True)
    """Metric destinations (trackers.TRACKERS): jsonl, tensorboard, wandb; a comma list on the command line."""
    keep_last: int = arg(3, resumable=True)
    """Checkpoints kept: older ones are removed once a newer one is complete (0 = keep all; final/ stays)."""
    max_skipped_steps: int = arg(3, resumable=True)
    """Stop after this many consecutive steps with a NaN/inf loss or gradient norm (each one skipped)."""

    def __post_init__(self):
        require(bool(self.data), where(self, "data"), "a JSONL file of prompts", self.data)
        if isinstance(self.report_to, str | list):
            names = self.report_to.split(",") if isinstance(self.report_to, str) else self.report_to
            object.__setattr__(self, "report_to", tuple(n.strip() for n in names if n.strip()))
        from ..run.trackers import TRACKERS

        require(bool(self.report_to) and all(n in TRACKERS for n in self.report_to), where(self, "report_to"),
                f"a comma list of {', '.join(TRACKERS)}", ",".join(self.report_to))  # fmt: skip
        require(self.keep_last >= 0, where(self, "keep_last"), "an integer ≥ 0", self.keep_last)
        require(self.max_skipped_steps >= 1, where(self, "max_skipped_steps"), "an integer ≥ 1",
                self.max_skipped_steps)  # fmt: skip
        require(bool(self.output_dir), where(self, "output_dir"), "a folder", self.output_dir)
        require(self.max_steps >= 1, where(self, "max_steps"), "an integer ≥ 1", self.max_steps)
        require(self.batch_size >= 1, where(self, "batch_size"), "an integer ≥ 1", self.batch_size)
        mb = self.micro_batch_size
        require(mb is None or (mb >= 1 and self.batch_size % mb == 0), where(self, "micro_batch_size"),
                f"a divisor of batch_size {self.batch_size}", mb)  # fmt: skip
        require(self.save_every >= 0, where(self, "save_every"), "an integer ≥ 0", self.save_every)
        require(
            self.positions_every >= 1, where(self, "positions_every"), "an integer ≥ 1", self.positions_every
        )
        require(self.chunk_size >= 1, where(self, "chunk_size"), "an integer ≥ 1", self.chunk_size)


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
        known, classes = {f.name: f.type for f in fields(cls)}, SECTIONS
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
                if not has_type(value, allowed[key]):
                    raise UserError(f"{source}: {name}.{key}: expected {allowed[key]}, got {value!r}")
            try:
                built[name] = classes[name](**values)
            except TypeError as err:
                raise UserError(f"{source}: section '{name}': {err}") from None
        if "model" not in built:
            built["model"] = ModelConfig()  # raises: student/teacher are required
        return cls(**built)


__all__ = ["DEVICES", "DTYPES", "EVAL_COMMAND", "RESUMABLE_CHANGES", "SECTIONS", "EvalConfig", "ModelConfig",
           "OptimConfig", "RewardConfig", "RolloutConfig", "RunConfig", "TrainConfig", "methods", "read_preset",
           "write_yaml"]  # fmt: skip

SECTIONS = {"model": ModelConfig, "rollout": RolloutConfig, "reward": RewardConfig, "optim": OptimConfig,
            "eval": EvalConfig, "run": RunConfig}  # fmt: skip
"""The sections of a run's configuration (config.yaml, presets) by name."""

EVAL_COMMAND = EvalConfig(benchmarks=("all",), limit=None, n=8, max_new_tokens=2048, batch_size=16)
"""`poweropd eval`'s defaults: every benchmark, all problems, Avg@8 as in the paper, room for long answers."""


RESUMABLE_CHANGES = resumable_changes(SECTIONS)
"""Settings that ``--resume`` may change (the fields' ``resumable`` trait); any other difference from the run's
config.yaml is refused."""
