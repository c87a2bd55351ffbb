"""The embedded synthetic task of ``poweropd demo``: step-by-step arithmetic (``arithmetic``), its tokenizer,
the recipe of its tiny Qwen3 teacher and student (``recipe``; both ship in ``shipped/``), and SFT (``sft``)."""

from .arithmetic import TASK_VERSION, iter_train, make_splits, make_test, write_jsonl
from .recipe import TaskConfig, TaskModels, TinyQwen3, prepare_task_models
from .sft import SFTConfig, accuracy, load_task_model
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
