"""The embedded synthetic task of ``poweropd demo``: step-by-step arithmetic, its tokenizer, and a tiny
Qwen3 teacher/student pair trained and cached on first use (issue 4)."""

from .arithmetic import TASK_VERSION, iter_train, make_splits, make_test, write_jsonl
from .models import (
    SFTConfig,
    TaskConfig,
    TaskModels,
    TinyQwen3,
    accuracy,
    load_task_model,
    prepare_task_models,
)
from .tokenizer import build_tokenizer

__all__ = [
    "TASK_VERSION",
    "SFTConfig",
    "TaskConfig",
    "TaskModels",
    "TinyQwen3",
    "accuracy",
    "build_tokenizer",
    "iter_train",
    "load_task_model",
    "make_splits",
    "make_test",
    "prepare_task_models",
    "write_jsonl",
]
