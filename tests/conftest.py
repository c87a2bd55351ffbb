"""Shared fixtures: tiny random Qwen3 student/teacher pairs with a character-level chat tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
"""The repository root (benchmarks/, configs/, tests/data/ are read from it)."""
DATA_DIR = REPO.parent / "shared" / "data"
"""The seven benchmarks and the training prompts, beside the clone (never copied into the repository)."""


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def short_run_argv(pair, data, out, *extra) -> list[str]:
    """``poweropd train`` on a tiny pair: 2 steps of 4 rollouts × 6 tokens, no checkpoints, no progress bar."""
    student, teacher, _ = pair
    return [
        "train", "--student", str(student), "--teacher", str(teacher), "--data", str(data), "--output-dir",
        str(out), "--batch-size", "4", "--max-new-tokens", "6", "--max-steps", "2", "--save-every", "0",
        "--no-progress", *extra,
    ]  # fmt: skip


def metric_rows(out) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_char_tokenizer(swap: tuple[str, str] | None = None):
    """Every printable ASCII character is a token; Qwen-style specials (<|im_end|> EOS, <|endoftext|> pad).

    ``swap=("a", "b")`` exchanges two tokens' ids (a tokenizer of the same size that disagrees)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set(string.printable))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    if swap:
        vocab[swap[0]], vocab[swap[1]] = vocab[swap[1]], vocab[swap[0]]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_qwen3(
    vocab_size: int, *, hidden: int = 32, layers: int = 2, seed: int = 0, extra_rows: int = 0,
    head_dim: int | None = None, tied: bool = False, context: int = 512,
):  # fmt: skip
    """A random Qwen3; ``head_dim`` 32 (heads = hidden / 32, one KV head) is the smallest vLLM's CPU attention runs."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size + extra_rows,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4 if head_dim is None else hidden // head_dim,
        num_key_value_heads=2 if head_dim is None else 1,
        head_dim=hidden // 4 if head_dim is None else head_dim,
        max_position_embeddings=context,
        tie_word_embeddings=tied,
    )
    return Qwen3ForCausalLM(config)


def _write_pair(root: Path, shapes) -> tuple[Path, Path, Path]:
    """Student and teacher folders of random models sharing one tokenizer, and 12 prompts (each row also names a
    teacher, "big" or "self", for multi-teacher runs)."""
    tokenizer = make_char_tokenizer()
    for name, seed, kwargs in shapes:
        model = make_tiny_qwen3(len(tokenizer), seed=seed, **kwargs)
        model.generation_config.top_k = 50  # like real models: the sampler must override it
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    prompts = root / "prompts.jsonl"
    rows = [{"id": str(i), "problem": f"Compute {i} + {2 * i}.", "answer": str(3 * i), "teacher": "big" if i % 2
             else "self"} for i in range(12)]  # fmt: skip
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "student", root / "teacher", prompts


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(student_dir, teacher_dir, prompts_jsonl): random models that differ, sharing one tokenizer.

    The teacher's output layer has 7 padding rows beyond the tokenizer (like Qwen3's 151,936 vs 151,669).
    """
    shapes = (("student", 0, {"hidden": 32}), ("teacher", 1, {"hidden": 48, "extra_rows": 7}))
    return _write_pair(tmp_path_factory.mktemp("tiny_pair"), shapes)


@pytest.fixture(scope="session")
def head32_pair(tmp_path_factory):
    """Like ``tiny_pair`` at head size 32, the smallest vLLM's CPU attention runs (tests/test_vllm.py,
    tests/test_served.py)."""
    shapes = (("student", 0, {"hidden": 64, "head_dim": 32, "context": 1024}),
              ("teacher", 1, {"hidden": 96, "head_dim": 32, "context": 1024}))  # fmt: skip
    return _write_pair(tmp_path_factory.mktemp("head32_pair"), shapes)


def untimed_rows(out) -> list[dict]:
    """metrics.jsonl without the wall-clock fields: equal between a run and its exact rerun or resume."""
    from poweropd.run import metric_names

    return [{k: v for k, v in r.items() if not k.startswith(metric_names.TIMING)} for r in metric_rows(out)]


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(folder) / "model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def accelerate_launch(*args, timeout=600, env=None) -> subprocess.CompletedProcess:
    """``accelerate launch`` with 2 CPU processes (gloo), one thread each."""
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
