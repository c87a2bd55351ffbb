"""The measuring code of benchmarks/step_bench.py, importable by tests and by benchmarks/scaling.py."""

from .check import PAIRS, check, compare_pair, grad_agreement, loss_and_grads
from .common import (
    DEFAULT_MODES,
    MODE_NAMES,
    QWEN3_VOCAB,
    SHAPES,
    TARGETS,
    BenchConfig,
    Context,
    build_context,
    make_model,
    make_rollouts,
)
from .measure import (
    MEDIANS,
    SAMPLE_KEYS,
    config_flags,
    merge_rounds,
    run_mode_subprocess,
    run_worker,
    summarize,
)
from .modes import MODES, Mode
from .report import bench, format_report, merge_results, target_rows

__all__ = [
    "DEFAULT_MODES",
    "MEDIANS", "MODES", "MODE_NAMES", "PAIRS", "QWEN3_VOCAB", "SAMPLE_KEYS", "SHAPES", "TARGETS", "BenchConfig",
    "Context", "Mode", "bench", "build_context", "check", "compare_pair", "config_flags", "format_report",
    "grad_agreement", "loss_and_grads", "make_model", "make_rollouts", "merge_results", "merge_rounds",
    "run_mode_subprocess", "run_worker", "summarize", "target_rows",
]  # fmt: skip
