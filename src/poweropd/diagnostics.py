"""Reward statistics as plain data: percentiles, position buckets, per-reward tables (JSON-ready dicts).

The paper's argument is about the *distribution* of the vanilla OPD reward: a heavy negative tail
(log π_T − log π_S near −50), concentrated at the first response tokens. These functions turn
(teacher, student) log-probs into the numbers behind those claims; ``plots/diagnose.py`` draws them.

Everything here takes torch tensors (or numpy arrays) and returns Python floats, lists and dicts. Statistics
of an empty selection are ``None`` (JSON null), never NaN. ``sample_and_score`` at the bottom is the one
function that touches models: it collects the tensors exactly as the training loop does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .objectives.losses import vopd_rewards
from .objectives.rewards import REWARDS

PERCENTILES = {"p01": 1, "p05": 5, "p50": 50, "p95": 95, "p99": 99}
LOG_RATIO_THRESHOLDS = (-5.0, -10.0, -20.0)
FIRST_BUCKET = 8  # positions [0, 8) form the first bucket; later buckets double: [8, 16), [16, 32), ...


def _as_tensor(values) -> Tensor:
    return values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))


def _quantiles(sorted_N: Tensor, qs: list[float]) -> Tensor:
    """Linear interpolation between closest ranks, as ``np.percentile(..., method="linear")`` (its default).

    Done by hand on a sorted copy: ``torch.quantile`` refuses inputs above 2^24 elements.
    """
    n = sorted_N.numel()
    pos_Q = torch.tensor(qs, dtype=torch.float64, device=sorted_N.device) * (n - 1)
    lo_Q = pos_Q.floor().long()
    hi_Q = pos_Q.ceil().long()
    frac_Q = pos_Q - lo_Q
    lo_val, hi_val = sorted_N[lo_Q].double(), sorted_N[hi_Q].double()
    return lo_val + (hi_val - lo_val) * frac_Q


def threshold_key(threshold: float) -> str:
    """-5.0 -> ``frac_below_-5``."""
    return f"frac_below_{threshold:g}"


def summary_stats(values_N, thresholds: tuple[float, ...] = ()) -> dict:
    """{count, mean, std, min, p01, p05, p50, p95, p99, max} of a 1-D tensor/array (+ ``frac_below_<t>``).

    ``std`` is the population std (np.std's default); percentiles interpolate linearly (np.percentile's
    default). One sort and one device→host transfer, so it is cheap enough for per-step training metrics.
    Select the valid tokens first: ``summary_stats(reward_BT[mask_BT])``.
    """
    values_N = _as_tensor(values_N).detach().reshape(-1).double()
    n = values_N.numel()
    keys = ["mean", "std", "min", *PERCENTILES, "max", *(threshold_key(t) for t in thresholds)]
    if n == 0:
        return {"count": 0, **dict.fromkeys(keys)}
    sorted_N = values_N.sort().values
    quantiles = _quantiles(sorted_N, [q / 100 for q in PERCENTILES.values()])
    fractions = [(values_N < t).double().mean() for t in thresholds]
    row = torch.stack(
        [values_N.mean(), values_N.std(correction=0), sorted_N[0], *quantiles, sorted_N[-1], *fractions]
    ).tolist()
    return {"count": n, **dict(zip(keys, row))}


def prefixed(stats: dict, prefix: str, keys: tuple[str, ...] = ("mean", "min", "max", "p05", "p95")) -> dict:
    """``{"mean": x, ...}`` -> ``{"<prefix>/mean": x, ...}``: the names metrics.jsonl uses (``reward/p05``)."""
    return {f"{prefix}/{k}": stats[k] for k in keys}


def histogram(values_N, bins: int = 100, value_range: tuple[float, float] | None = None) -> dict:
    """{"edges": [bins + 1 floats], "counts": [bins ints]} of the finite values (range default: min..max)."""
    values = _as_tensor(values_N).detach().reshape(-1).double().cpu().numpy()
    values = values[np.isfinite(values)]
    if value_range is None:
        value_range = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if value_range[0] == value_range[1]:
        value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    counts, edges = np.histogram(values, bins=bins, range=value_range)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


# ---- positions ------------------------------------------------------------------------------------------


def position_buckets(T: int) -> list[tuple[int, int]]:
    """[0, 8), [8, 16), [16, 32), [32, 64), ... until T is covered; the last bucket may extend past T.

    Fixed boundaries (rather than cut at T) keep buckets comparable across batches of different lengths.
    """
    buckets, start, stop = [], 0, FIRST_BUCKET
    while start < T:
        buckets.append((start, stop))
        start, stop = stop, stop * 2
    return buckets


def position_stats(values_BT, mask_BT) -> list[dict]:
    """Per position bucket (position = index in the response): {start, stop, count, mean, min, max}."""
    values_BT, mask_BT = _as_tensor(values_BT).detach(), _as_tensor(mask_BT).bool()
    rows = []
    for start, stop in position_buckets(values_BT.shape[1]):
        stats = summary_stats(values_BT[:, start:stop][mask_BT[:, start:stop]])
        rows.append({"start": start, "stop": stop, **{k: stats[k] for k in ("count", "mean", "min", "max")}})
    return rows


def early_share(log_ratio_BT, mask_BT, *, stop: int = FIRST_BUCKET, thresholds=LOG_RATIO_THRESHOLDS) -> dict:
    """How much of the negative tail sits at positions [0, stop).

    {"stop", "frac_tokens": share of valid tokens before ``stop``, "share_below_<t>": share of the tokens
    below t that are before ``stop`` (None when there are none)}. FINDINGS.md: 6% of tokens, 73% of those
    below −5 on SmolLM2-135M vs its first 8 layers.
    """
    log_ratio_BT, mask_BT = _as_tensor(log_ratio_BT).detach(), _as_tensor(mask_BT).bool()
    early_BT = torch.zeros_like(mask_BT)
    early_BT[:, :stop] = True
    n = int(mask_BT.sum())
    out = {"stop": stop, "frac_tokens": int((mask_BT & early_BT).sum()) / n if n else None}
    for t in thresholds:
        below_BT = mask_BT & (log_ratio_BT < t)
        n_below = int(below_BT.sum())
        out[f"share_below_{t:g}"] = int((below_BT & early_BT).sum()) / n_below if n_below else None
    return out


def most_negative(values_BT, mask_BT, k: int = 10) -> list[dict]:
    """The k smallest valid values: [{"row", "position", "value"}], most negative first."""
    values_BT, mask_BT = _as_tensor(values_BT).detach().double(), _as_tensor(mask_BT).bool()
    masked_N = torch.where(mask_BT, values_BT, torch.full_like(values_BT, math.inf)).reshape(-1)
    k = min(k, int(mask_BT.sum()))
    values_K, flat_K = masked_N.topk(k, largest=False)
    T = values_BT.shape[1]
    return [
        {"row": int(i) // T, "position": int(i) % T, "value": float(v)}
        for v, i in zip(values_K.tolist(), flat_K.tolist())
    ]


# ---- rewards --------------------------------------------------------------------------------------------


def power_key(alpha: float) -> str:
    """10.0 -> ``power@10`` (the power record's label)."""
    return REWARDS["power"].label({"alpha": alpha})


def reward_values(
    teacher_logp_BT: Tensor,
    student_logp_BT: Tensor,
    mask_BT: Tensor,
    alphas: tuple[float, ...] | list[float],
    *,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    tanh_tau: float = 1.0,
    kl_BT: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every reward of the registry on the same tokens, keyed by its label: "log_ratio", "clip", "tanh",
    "zscore", "power@α" and "proximal@α" for each α that the reward accepts, and any registered reward.

    Each value is (B, T) float32, zero where the mask is False.
    """
    from .config.sections import RewardConfig

    out = {}
    for name, record in REWARDS.items():
        settings = (
            [{"alpha": float(a)} for a in alphas if record.accepts_alpha(a)]
            if "alpha" in record.hparams
            else [{}]
        )
        for extra in settings:
            cfg = RewardConfig(
                name=name, clip_low=clip_range[0], clip_high=clip_range[1], tanh_tau=tanh_tau, **extra
            )
            out[cfg.label] = record.bind(**cfg.hparams)(teacher_logp_BT, student_logp_BT, mask_BT)
    if kl_BT is not None:  # vOPD: the log ratio with its control-variate baseline
        out["log_ratio+kl"] = vopd_rewards(REWARDS["log_ratio"].fn, teacher_logp_BT, student_logp_BT, kl_BT, mask_BT)
    return out


def reward_table(
    teacher_logp_BT: Tensor,
    student_logp_BT: Tensor,
    mask_BT: Tensor,
    alphas: tuple[float, ...] | list[float],
    *,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    tanh_tau: float = 1.0,
    thresholds: tuple[float, ...] = LOG_RATIO_THRESHOLDS,
    kl_BT: Tensor | None = None,
) -> dict[str, dict]:
    """``summary_stats`` of every reward over the valid tokens; the log ratio also gets ``frac_below_<t>``."""
    mask_BT = mask_BT.bool()
    values = reward_values(
        teacher_logp_BT, student_logp_BT, mask_BT, alphas, clip_range=clip_range, tanh_tau=tanh_tau, kl_BT=kl_BT
    )
    return {
        name: summary_stats(reward_BT[mask_BT], thresholds if name == "log_ratio" else ())
        for name, reward_BT in values.items()
    }


def reward_surface(name: str, probs_N, **hparams) -> np.ndarray:
    """The reward as a function of (π_T, π_S) on a grid: array [i, j] = r(π_T = probs[i], π_S = probs[j]).

    Evaluated with the registry's own function, so the picture is the code's reward, not a re-derivation.
    """
    logp_N = torch.as_tensor(np.asarray(probs_N, dtype=np.float64)).float().log()
    teacher_NN = logp_N[:, None].expand(-1, logp_N.numel())
    student_NN = logp_N[None, :].expand(logp_N.numel(), -1)
    mask_NN = torch.ones_like(teacher_NN, dtype=torch.bool)
    return REWARDS[name].bind(**hparams)(teacher_NN, student_NN, mask_NN).double().numpy()


# ---- collecting the tensors (models in, tensors out) ----------------------------------------------------


@dataclass
class ScoredRollouts:
    """Student rollouts with the log-probs both models give each sampled token; (B, T) right-padded."""

    response_ids_BT: Tensor
    mask_BT: Tensor  # rollouts.loss_mask(): response tokens without the final stop token
    teacher_logp_BT: Tensor
    student_logp_BT: Tensor
    truncated_B: Tensor
    response_lengths_B: Tensor  # generated tokens up to and including the stop token
    prompt_index_B: Tensor  # which problem each row answers
    kl_BT: Tensor | None = None  # exact KL(π_S‖π_T) at each position over the tokenizer's range (vOPD's baseline)


def _pad_right(tensors: list[Tensor], width: int, value) -> Tensor:
    rows = sum(t.shape[0] for t in tensors)
    out = torch.full((rows, width), value, dtype=tensors[0].dtype)
    start = 0
    for t in tensors:
        out[start : start + t.shape[0], : t.shape[1]] = t
        start += t.shape[0]
    return out


@torch.no_grad()
def sample_and_score(
    student,
    teacher,
    tokenizer,
    problems: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    samples_per_prompt: int = 1,
    batch_size: int = 8,
    engine: str = "generate",
    vllm=None,
    teacher_temperature: float = 1.0,
) -> ScoredRollouts:
    """Sample student rollouts as training does and score every token with both models.

    Prompts go through ``encode_prompts`` (chat template), sampling through the ``engine`` sampler
    (engines.py, with ``vllm`` its VLLMOptions; a streaming one takes every prompt at once, the others
    ``batch_size`` rollouts) with top_p=1,
    top_k=0 and the tokenizer's stop tokens; scoring goes ``batch_size`` rollouts at a time; the mask is
    ``Rollouts.loss_mask()``. Teacher log-probs come
    from ``HFScorer``, student log-probs from the same hidden-state + chunked output-layer path as the loss.
    Seed the RNG (``torch.manual_seed``) before calling for reproducible samples.
    """
    from .data import encode_prompts
    from .models.hf import output_layer, sampled_logprobs, stop_token_ids
    from .objectives.losses import reverse_kl_without_grad
    from .rollout.engines import make_sampler
    from .rollout.samplers import SamplingConfig
    from .teachers.scorers import HFScorer

    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        stop_token_ids=tuple(stop_token_ids(tokenizer)),
        vocab_size=len(tokenizer),
    )
    sampler = make_sampler(engine, student, tokenizer.pad_token_id, config, vllm=vllm)
    sampler.sync_weights()  # a training run's vLLM engine on this model may hold the weights of a step before
    scorer = HFScorer(teacher, temperature=teacher_temperature)
    student.eval()
    student_device = next(student.parameters()).device
    prompt_ids = encode_prompts(tokenizer, problems)
    n = samples_per_prompt
    rows = [i for i in range(len(prompt_ids)) for _ in range(n)]
    try:
        if sampler.streams:
            every = sampler.sample(prompt_ids, n=n)
            chunks = [every.select(slice(s, s + batch_size)) for s in range(0, len(rows), batch_size)]
        else:
            chunks = [
                sampler.sample([prompt_ids[i] for i in rows[s : s + batch_size]])
                for s in range(0, len(rows), batch_size)
            ]
    finally:
        sampler.close()
    keys = ("ids", "mask", "teacher", "student", "truncated", "lengths", "index", "kl")
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for start, rollouts in zip(range(0, len(rows), batch_size), chunks):
        batch = rows[start : start + batch_size]
        scores = scorer.score(rollouts, keep_hidden=True)
        teacher_logp_BT = scores.logp_BT
        r = rollouts.to(student_device)
        student_logp_BT, hidden_BTH = sampled_logprobs(student, r)
        kl_BT, _, _ = reverse_kl_without_grad(output_layer(student), scores.head, hidden_BTH, scores.hidden_at(1.0),
                                              r.response_ids_BT, vocab_size=len(tokenizer))  # fmt: skip
        parts["kl"].append(kl_BT.float().cpu())
        parts["ids"].append(rollouts.response_ids_BT.cpu())
        parts["mask"].append(rollouts.loss_mask().cpu())
        parts["teacher"].append(teacher_logp_BT.float().cpu())
        parts["student"].append(student_logp_BT.float().cpu())
        parts["truncated"].append(rollouts.truncated_B.cpu())
        parts["lengths"].append(rollouts.response_lengths_B.cpu())
        parts["index"].append(torch.tensor(batch))
    sampler.close()
    width = max(t.shape[1] for t in parts["ids"])
    return ScoredRollouts(
        response_ids_BT=_pad_right(parts["ids"], width, tokenizer.pad_token_id),
        mask_BT=_pad_right(parts["mask"], width, False),
        teacher_logp_BT=_pad_right(parts["teacher"], width, 0.0),
        student_logp_BT=_pad_right(parts["student"], width, 0.0),
        kl_BT=_pad_right(parts["kl"], width, 0.0),
        truncated_B=torch.cat(parts["truncated"]),
        response_lengths_B=torch.cat(parts["lengths"]),
        prompt_index_B=torch.cat(parts["index"]),
    )
