"""The embedded task's models: a tiny Qwen3 teacher that solves the arithmetic task and a miscalibrated student.

Both ship with the package (``shipped/teacher``, ``shipped/student``: safetensors, tokenizer and a
``poweropd_task.json`` with what they score and the recipe that made them), so every machine starts the demo
from the same weights. ``prepare_task_models`` returns those folders when the configuration is the shipped
one, and otherwise (another seed or shape, or ``retrain=True``: ``poweropd demo --retrain-task-models``)
runs the recipe and caches the result under ``poweropd.models.hf.cache_dir() / "tasks"``:

- the **teacher** learns the reference responses (the working, one line per step) by supervised fine-tuning
  (SFT) from random weights;
- the **student**, smaller (0.59× the teacher's parameters, as the paper distils into smaller students),
  learns the *base corpus* (``arithmetic.iter_base_corpus``): the same problems answered with no working, with
  the working, or with a check after every step, 65% of the step results slipped by ±1 or ±10. Like a base
  model against an instruct teacher it has the format and the skill (greedy) but not the teacher's
  calibration (docs/testbed.md has the search that chose it).

Training is deterministic for a seed: fixed torch seeds, seeded problem streams, a fixed number of steps (not a
time budget), one thread per model, in processes on the pinned float path of ``floatpath``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...errors import require
from ...fsutil import atomic_folder
from ...models.hf import save_model
from . import arithmetic, floatpath
from .sft import SFTConfig, accuracy, num_threads, sampled_accuracy, sft
from .tokenizer import build_tokenizer

META_FILE = "poweropd_task.json"
TOKENIZER_VERSION = 2  # bump when the vocabulary or template changes: it is part of the cache key
SHIPPED_DIR = Path(__file__).parent / "shipped"
ROLES = ("teacher", "student")


@dataclass(frozen=True)
class TinyQwen3:
    """The shape of a tiny ``Qwen3ForCausalLM`` (tied input/output embeddings; head_dim = hidden / heads)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            require(getattr(self, name) >= 1, f"TinyQwen3.{name}", "an integer ≥ 1", getattr(self, name))
        require(
            self.hidden_size % self.num_heads == 0,
            "TinyQwen3.num_heads",
            f"a divisor of hidden_size {self.hidden_size}",
            self.num_heads,
        )
        require(
            self.num_heads % self.num_kv_heads == 0,
            "TinyQwen3.num_kv_heads",
            f"a divisor of num_heads {self.num_heads}",
            self.num_kv_heads,
        )

    def build(self, tokenizer, *, max_positions: int = 256):
        from transformers import Qwen3Config, Qwen3ForCausalLM

        config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.hidden_size // self.num_heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return Qwen3ForCausalLM(config)


@dataclass(frozen=True)
class CorpusConfig:
    """The student's base corpus (``arithmetic.iter_base_corpus``)."""

    mix: tuple[tuple[str, float], ...] = (("direct", 0.25), ("steps", 0.5), ("checks", 0.25))
    """(style, weight) pairs: the answer alone, the working, the working with a check after every step."""
    slip_rate: float = 0.65
    """Probability that a step result is off by ±1 or ±10 (the response goes on from the wrong value). The
    correct result stays the most likely one (0.35 against at most 0.1625 for each wrong value), so the student
    has the skill greedily but samples far below the teacher; 0.5 left full_kl's gain at the edge of the
    testbed's criterion (docs/testbed.md)."""

    def __post_init__(self):
        for style, weight in self.mix:
            require(
                style in arithmetic.STYLES, "CorpusConfig.mix", f"styles among {arithmetic.STYLES}", style
            )
            require(weight >= 0, "CorpusConfig.mix", "weights ≥ 0", weight)
        require(sum(w for _, w in self.mix) > 0, "CorpusConfig.mix", "a positive total weight", self.mix)
        require(0 <= self.slip_rate <= 1, "CorpusConfig.slip_rate", "a number in [0, 1]", self.slip_rate)


@dataclass(frozen=True)
class TaskConfig:
    """Everything that determines the task's data and models; its hash names the cache folders."""

    seed: int = 0
    """Seeds the splits, the SFT problem streams and the model initialisation."""
    n_test: int = 300
    """Held-out problems (test.jsonl), on which final accuracies are measured."""
    n_validation: int = 200
    """Problems for choices made while training (validation.jsonl): in-training curves, the best α."""
    n_train: int = 4000
    """Training prompts written to train.jsonl for on-policy distillation."""
    teacher: TinyQwen3 = TinyQwen3(
        hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256
    )
    """Teacher shape: 0.34M parameters. An MLP of 2× hidden learned faster per step than 4× (seed 0, batch 32,
    lr 3e-3 constant: 86% vs 41% greedy accuracy after 1600 steps) at 0.6× the cost per step."""
    student: TinyQwen3 = TinyQwen3(
        hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=192
    )
    """Student shape: 0.20M parameters, 0.59× the teacher (the paper distils into smaller students). It reaches
    the same greedy accuracy on its corpus as a student of the teacher's shape (0.67 vs 0.68) and trains 12%
    faster per OPD step (docs/testbed.md)."""
    teacher_sft: SFTConfig = SFTConfig(steps=3200, lr=3e-3)
    """Teacher SFT; target: greedy test accuracy ≥ 97% on every seed. Measured (batch 32, cosine to lr/10):
    2400 steps gave 99.3 / 97.0 / 97.7% for seeds 0 / 1 / 2, too close to the target; see docs/testbed.md."""
    student_sft: SFTConfig = SFTConfig(steps=2400, lr=3e-3)
    """Student SFT on the base corpus; target: Avg@8 (temperature 0.6) in 0.15–0.6, far below the teacher's."""
    corpus: CorpusConfig = CorpusConfig()
    """The student's base corpus."""
    num_threads: int = 1
    """torch threads per model while training and evaluating. One: these models are too small for intra-op
    parallelism to pay, and on a busy 2-core machine 2 threads ran 20× slower than 1."""
    parallel: bool = True
    """Train teacher and student at the same time in two processes (the two cores of a laptop)."""
    eval_max_new_tokens: int = 64
    """Generation cap when measuring accuracy: the longest teacher response is 36 tokens, the longest base
    response (three steps, each checked) 63."""

    def __post_init__(self):
        require(self.n_test >= 1, "TaskConfig.n_test", "an integer ≥ 1", self.n_test)
        require(self.n_validation >= 1, "TaskConfig.n_validation", "an integer ≥ 1", self.n_validation)
        require(self.n_train >= 1, "TaskConfig.n_train", "an integer ≥ 1", self.n_train)
        require(self.num_threads >= 1, "TaskConfig.num_threads", "an integer ≥ 1", self.num_threads)
        require(
            self.eval_max_new_tokens >= 1,
            "TaskConfig.eval_max_new_tokens",
            "an integer ≥ 1",
            self.eval_max_new_tokens,
        )

    def data_key(self) -> str:
        return _hash(
            {
                "task": arithmetic.TASK_VERSION,
                "seed": self.seed,
                "n_test": self.n_test,
                "n_validation": self.n_validation,
                "n_train": self.n_train,
            }
        )

    def model_key(self, role: str) -> str:
        """Cache key of the teacher or student: everything that changes its weights or its measured accuracy."""
        return _hash(
            {
                "role": role,
                "data": self.data_key(),
                "tokenizer": TOKENIZER_VERSION,
                "shape": asdict(getattr(self, role)),
                "sft": asdict(getattr(self, f"{role}_sft")),
                **({"corpus": asdict(self.corpus)} if role == "student" else {}),
                "eval_max_new_tokens": self.eval_max_new_tokens,
            }
        )


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TaskModels:
    """Where the prepared task lives, and what the models scored on test_jsonl."""

    teacher_dir: Path
    student_dir: Path
    train_jsonl: Path
    validation_jsonl: Path
    test_jsonl: Path
    teacher_accuracy: float
    """Greedy accuracy on the test problems."""
    student_accuracy: float
    teacher_sft_seconds: float = field(default=0.0)
    """SFT wall time when the teacher was trained (read from its metadata on later calls)."""
    student_sft_seconds: float = field(default=0.0)
    shipped: bool = False
    """True when both models are the files shipped with the package."""


def prepare_task_models(
    config: TaskConfig = TaskConfig(), *, retrain: bool = False, progress: bool = True
) -> TaskModels:
    """The task's teacher and student (shipped, cached, or trained now) and its train/validation/test JSONL.

    A model comes from ``shipped/`` when its recipe key equals the shipped one and ``retrain`` is False;
    otherwise from ``cache_dir()/tasks/<role>-<key>/``, trained by the recipe when missing (or when
    ``retrain``). Every folder is written to a temporary folder and renamed, so an interrupted run leaves
    nothing half-written, and a retrained model replaces its cached folder only once it is complete.
    """
    from ...models.hf import cache_dir

    root = cache_dir() / "tasks"
    data_dir = root / f"arithmetic-{config.data_key()}"
    if not (data_dir / "test.jsonl").is_file():
        splits = arithmetic.make_splits(config.seed, config.n_test, config.n_train, config.n_validation)

        def write_data(tmp: Path) -> None:
            for name, rows in zip(("train", "validation", "test"), splits):
                arithmetic.write_jsonl(rows, tmp / f"{name}.jsonl")

        atomic_folder(data_dir, write_data)
    test_rows = [json.loads(line) for line in (data_dir / "test.jsonl").read_text().splitlines()]

    folders = {}
    for role in ROLES:
        shipped = SHIPPED_DIR / role
        if not retrain and _read_meta(shipped).get("key") == config.model_key(role):
            folders[role] = shipped
        else:
            folders[role] = root / f"{role}-{config.model_key(role)}"
    missing = [
        r for r in ROLES if retrain and folders[r].parent == root or not (folders[r] / META_FILE).is_file()
    ]
    if missing:
        # Fresh processes on the pinned float path, one thread each; two at a time on two cores.
        with floatpath.pinned_pool(2 if config.parallel else 1) as pool:
            jobs = [
                pool.submit(
                    _train_folder, config, role, test_rows, folders[role], progress and role == "teacher"
                )
                for role in missing
            ]
            for job in jobs:
                job.result()
    metas = {role: _read_meta(folders[role]) for role in ROLES}
    return TaskModels(
        teacher_dir=folders["teacher"],
        student_dir=folders["student"],
        train_jsonl=data_dir / "train.jsonl",
        validation_jsonl=data_dir / "validation.jsonl",
        test_jsonl=data_dir / "test.jsonl",
        teacher_accuracy=metas["teacher"]["accuracy"],
        student_accuracy=metas["student"]["accuracy"],
        teacher_sft_seconds=metas["teacher"]["sft_seconds"],
        student_sft_seconds=metas["student"]["sft_seconds"],
        shipped=all(folders[role].parent == SHIPPED_DIR for role in ROLES),
    )


def _read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _train_folder(config: TaskConfig, role: str, test_rows: list[dict], folder: Path, progress: bool) -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()  # transformers' per-file bars; the SFT bar is ours
    atomic_folder(folder, lambda tmp: _train_and_save(config, role, test_rows, tmp, progress), replace=True)


def sft_rows(config: TaskConfig, role: str, test_rows: list[dict]) -> Iterator[dict]:
    """The SFT stream of a role: reference responses for the teacher, the base corpus for the student;
    never a test problem."""
    exclude = {row["problem"] for row in test_rows}
    if role == "teacher":
        return arithmetic.iter_train(config.seed, exclude)
    return arithmetic.iter_base_corpus(config.seed, exclude, dict(config.corpus.mix), config.corpus.slip_rate)


def _train_and_save(config: TaskConfig, role: str, test_rows: list[dict], out: Path, progress: bool) -> None:
    tokenizer = build_tokenizer()
    shape, sft_config = getattr(config, role), getattr(config, f"{role}_sft")
    with num_threads(config.num_threads):
        torch.manual_seed(_seed(config.seed, role))
        model = shape.build(tokenizer)
        start = time.perf_counter()
        final_loss = sft(
            model,
            tokenizer,
            sft_rows(config, role, test_rows),
            sft_config,
            progress=progress,
            desc=f"{role} SFT",
        )
        seconds = time.perf_counter() - start
        acc = accuracy(model, tokenizer, test_rows, max_new_tokens=config.eval_max_new_tokens)
    save_model(model, tokenizer, out)
    avg = sampled_accuracy(model, tokenizer, test_rows, max_new_tokens=config.eval_max_new_tokens)
    meta = {
        "role": role,
        "key": config.model_key(role),
        "accuracy": acc,
        "avg@8": avg,
        "sft_seconds": round(seconds, 2),
        "final_loss": final_loss,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": asdict(config),
        "task_version": arithmetic.TASK_VERSION,
        "torch": torch.__version__,
        "float_path": _float_path_here(),
        "sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if progress:
        print(
            f"{role}: {meta['parameters']:,} parameters, SFT {seconds:.0f} s, greedy test accuracy {acc:.1%}"
        )


def _float_path_here() -> str:
    # in a recipe worker, which is already on the pinned path: hash the same computation as fingerprint()
    return floatpath._fingerprint_here() if floatpath._is_pinned() else "unpinned"


def _seed(seed: int, role: str) -> int:
    return int(hashlib.sha256(f"{role}-{seed}".encode()).hexdigest()[:8], 16)


__all__ = [
    "META_FILE",
    "ROLES",
    "SHIPPED_DIR",
    "CorpusConfig",
    "TaskConfig",
    "TaskModels",
    "TinyQwen3",
    "prepare_task_models",
    "sft_rows",
]
