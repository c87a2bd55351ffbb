"""``--check``: our paths against the naive recipes on one batch (loss, gradient relative error and cosine)."""

from __future__ import annotations

import sys

from .common import BenchConfig, Context, build_context
from .modes import MODES

# ---------------------------------------------------------------------------------------------------
# Equivalence: our path and the naive recipe it replaces give the same loss and gradient
# ---------------------------------------------------------------------------------------------------
PAIRS = (("power_sampled", "naive_sampled"), ("full_kl_chunked", "full_kl_naive"))


def loss_and_grads(mode: str, ctx: Context) -> tuple[float, dict]:
    ctx.student.zero_grad(set_to_none=True)
    loss = MODES[mode].update(ctx, MODES[mode].score(ctx))
    return loss, {n: p.grad.clone() for n, p in ctx.student.named_parameters() if p.grad is not None}


def grad_agreement(grad, ref) -> tuple[float, float]:
    """(‖g − ref‖ / ‖ref‖, cosine) in float64, exact for tiny gradients (F.cosine_similarity clamps
    ‖g‖·‖ref‖ at 1e-8, which turned gradients of norm ~1e-5 into a cosine of 0.13)."""
    g, r = grad.double().flatten(), ref.double().flatten()
    g_norm, r_norm = g.norm().item(), r.norm().item()
    if r_norm == 0.0:
        return (0.0, 1.0) if g_norm == 0.0 else (float("inf"), 0.0)
    cosine = (g @ r).item() / (g_norm * r_norm) if g_norm > 0 else 0.0
    return (g - r).norm().item() / r_norm, cosine


def compare_pair(ctx: Context, ours: str, naive: str) -> dict:
    """Loss of each, and per parameter the gradients' relative error ‖g − g_ref‖/‖g_ref‖ and cosine."""
    loss_ours, grads_ours = loss_and_grads(ours, ctx)
    loss_naive, grads_naive = loss_and_grads(naive, ctx)
    if grads_ours.keys() != grads_naive.keys():
        raise AssertionError(f"{ours} and {naive} fill different gradients")
    rel, cos = {}, {}
    for name, g in grads_ours.items():
        rel[name], cos[name] = grad_agreement(g, grads_naive[name])
    return {
        "ours": ours,
        "naive": naive,
        "loss_ours": loss_ours,
        "loss_naive": loss_naive,
        "max_grad_rel_err": max(rel.values()),
        "min_grad_cosine": min(cos.values()),
        "worst_param": max(rel, key=rel.get),
        "grads_ours": grads_ours,
        "grads_naive": grads_naive,
    }


def check(cfg: BenchConfig) -> list[dict]:
    """Both pairs on one batch at ``cfg``'s shapes, device and dtype (one step, no optimizer)."""
    ctx = build_context(cfg)
    rows = []
    for ours, naive in PAIRS:
        row = compare_pair(ctx, ours, naive)
        del row["grads_ours"], row["grads_naive"]
        rows.append(row)
        print(
            f"  {ours} vs {naive}: loss {row['loss_ours']:.6g} vs {row['loss_naive']:.6g}, "
            f"max grad rel. error {row['max_grad_rel_err']:.2e} ({row['worst_param']}), "
            f"min cosine {row['min_grad_cosine']:.6f}",
            file=sys.stderr,
        )
    return rows
