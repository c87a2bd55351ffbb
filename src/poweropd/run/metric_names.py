"""The names of the metrics a run writes (metrics.jsonl, TensorBoard, wandb), in one place: the loop and
``run.metrics`` write them, the plots and the demo read them. A name is ``area/what``; ``stats`` expands a
prefix into the per-token statistics ``prefix/{mean,std,min,max,p05,p95}``."""

from __future__ import annotations

LOSS = "loss"
"""The batch loss (Σ over micro-batches and processes of Σ_t … / N)."""
LOSS_TERMS = "loss/"
"""Prefix of an objective's scalar terms: ``loss/pg``, ``loss/full_kl``."""
GRAD_NORM = "grad/norm"
"""The pre-clip gradient norm."""
LR = "lr"
REWARD = "reward"
"""Prefix of the trained per-token signal's statistics (−KL for full_kl)."""
LOG_RATIO = "log_ratio"
"""Prefix of log π_T − log π_S's statistics, logged whatever trains."""
REWARD_MEAN, REWARD_MIN, REWARD_MAX = "reward/mean", "reward/min", "reward/max"
LOG_RATIO_MIN = "log_ratio/min"
REWARD_ALPHA = "reward/alpha"
REWARD_STRENGTH = "reward/strength"
"""The global strength the step's reward was scaled by (TV-OPD's c)."""
REWARD_STRENGTH_STATISTIC = "reward/strength_statistic"
"""The step's statistic that moves the strength (TV-OPD: the pooled TV estimate D̂)."""
TEACHER_TEMPERATURE = "teacher/temperature"
"""The temperature of the teacher's log-probs (--teacher-temperature, else the rollout's)."""
"""α at this step (a reward that takes α; moves under --alpha-schedule)."""
STATS = ("mean", "std", "min", "max", "p05", "p95")
RESPONSE_LENGTH_MEAN = "response_length/mean"
RESPONSE_LENGTH_MAX = "response_length/max"
RESPONSE_LENGTH_SUM = "response_length/sum"
TRUNCATED_FRAC = "response/truncated_frac"
STUDENT_PROB_MEAN = "student_prob/mean"
TOKENS_VALID = "tokens/valid"
TOKENS_SELECTED_FRAC = "tokens/selected_frac"
LOGPROB_DIFF_MEAN = "rollout/logprob_diff/mean"
LOGPROB_DIFF_MAX = "rollout/logprob_diff/max"
"""|engine log-prob − trainer log-prob| of the trained tokens (an engine that reports its own: vLLM)."""
TOKENS_PER_S = "tokens_per_s"
MEMORY_PEAK_MB = "memory/peak_mb"
MEMORY_HELD_MB = "memory/held_mb"
SKIPPED_STEPS = "train/skipped_steps"
STEP_SKIPPED = "train/step_skipped"
PHASES = ("sync", "sample", "score", "update", "step")
"""The loop's timed phases (``time/<phase>_s``; ``step`` is the whole step)."""
EVAL = "eval/"
"""Prefix of evaluation results: ``eval/<benchmark>/<metric>``."""
TIMING = ("time/", TOKENS_PER_S, "memory/")
"""Wall-clock fields: the only ones an exact rerun may change."""


def stats(prefix: str) -> dict[str, str]:
    """{statistic: metric name} of a per-token quantity, e.g. stats(REWARD)["p05"] == "reward/p05"."""
    return {s: f"{prefix}/{s}" for s in STATS}


def time_key(phase: str) -> str:
    return f"time/{phase}_s"


def eval_key(benchmark: str, metric: str) -> str:
    return f"{EVAL}{benchmark}/{metric}"


def teacher_key(name: str, what: str) -> str:
    """Per teacher of a multi-teacher run: ``teacher/<name>/{tokens,log_ratio/mean,reward/mean}``."""
    return f"teacher/{name}/{what}"
