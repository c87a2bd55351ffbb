"""The modes of the step benchmark: each a score and an update function (ours, the naive recipes, the floors)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from .common import BenchConfig, Context


# ---------------------------------------------------------------------------------------------------
# The four modes: score (teacher, no grad) then update (student forward + backward, grads in .grad)
# ---------------------------------------------------------------------------------------------------
def _objective(label: str):
    from poweropd.config.sections import RewardConfig
    from poweropd.objectives.losses import make_objective

    return make_objective(RewardConfig.from_label(label))


def _chunk_kwargs(cfg: BenchConfig) -> dict:
    return {} if cfg.chunk_size is None else {"chunk_size": cfg.chunk_size}


def ours_score(ctx: Context, *, keep_hidden: bool):
    from poweropd.teachers.scorers import HFScorer

    scorer = HFScorer(ctx.teacher, **_chunk_kwargs(ctx.cfg))
    return scorer.score(ctx.rollouts, keep_hidden=keep_hidden, logprobs=not keep_hidden)  # as training/loop.py


def ours_update(ctx: Context, scores, *, objective: str) -> float:
    from poweropd.training.update import compute_gradients

    result = compute_gradients(
        ctx.student,
        ctx.rollouts,
        scores,
        _objective(objective),
        micro_batch_size=ctx.cfg.batch,
        vocab_size=ctx.cfg.vocab,
        autocast_dtype=ctx.amp_dtype,
        **_chunk_kwargs(ctx.cfg),
    )
    return result.loss


def full_logits(model, rollouts):
    """``model(...).logits`` at the T positions that predict the response tokens, shape (B, T, V)."""
    r = rollouts
    position_ids_BL = (r.attention_mask_BL.long().cumsum(-1) - 1).clamp(min=0)
    T = r.response_ids_BT.shape[1]
    out = model(
        input_ids=r.input_ids_BL[:, :-1],
        attention_mask=r.attention_mask_BL[:, :-1],
        position_ids=position_ids_BL[:, :-1],
        use_cache=False,
        logits_to_keep=T,
    )
    return out.logits


def naive_token_logprobs(logits_BTV, tokens_BT):
    import torch.nn.functional as F

    logp_BTV = F.log_softmax(logits_BTV.float(), dim=-1)
    return logp_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)


def naive_sampled_score(ctx: Context):
    import torch

    with torch.no_grad():
        return naive_token_logprobs(full_logits(ctx.teacher, ctx.rollouts), ctx.rollouts.response_ids_BT)


def naive_sampled_update(ctx: Context, teacher_logp_BT) -> float:
    import torch

    from poweropd.objectives.losses import policy_gradient_loss
    from poweropd.objectives.rewards import power

    r = ctx.rollouts
    mask_BT = r.loss_mask()
    num_tokens = mask_BT.sum().clamp(min=1).item()
    with ctx.autocast():
        with torch.no_grad():  # the paper repo's separate reward pass
            old_logp_BT = naive_token_logprobs(full_logits(ctx.student, r), r.response_ids_BT)
        reward_BT = power(teacher_logp_BT, old_logp_BT, mask_BT, alpha=1.0)
        logp_BT = naive_token_logprobs(full_logits(ctx.student, r), r.response_ids_BT)
        loss, _ = policy_gradient_loss(logp_BT, reward_BT, mask_BT, num_tokens=num_tokens)
    loss.backward()
    return loss.item()


def full_kl_naive_score(ctx: Context):
    import torch

    with torch.no_grad():
        return full_logits(ctx.teacher, ctx.rollouts)


def full_kl_naive_update(ctx: Context, teacher_logits_BTV) -> float:
    from poweropd.objectives.losses import full_kl_loss, reverse_kl_per_token

    mask_BT = ctx.rollouts.loss_mask()
    with ctx.autocast():
        kl_BT = reverse_kl_per_token(full_logits(ctx.student, ctx.rollouts), teacher_logits_BTV)
        loss, _ = full_kl_loss(kl_BT, mask_BT, num_tokens=mask_BT.sum().clamp(min=1).item())
    loss.backward()
    return loss.item()


def body_floor_score(ctx: Context):
    import torch

    from poweropd.models.hf import response_hidden_states

    r = ctx.rollouts
    with torch.no_grad():
        return response_hidden_states(ctx.teacher, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)


def body_floor_update(ctx: Context, _teacher_hidden_BTH) -> float:
    """The student's decoder body forward and backward with a trivial loss on its hidden states: what
    every mode pays before the output layer."""
    from poweropd.models.hf import response_hidden_states

    r = ctx.rollouts
    with ctx.autocast():
        hidden_BTH = response_hidden_states(ctx.student, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)
        loss = hidden_BTH.float().square().mean()
    loss.backward()
    return loss.item()


def _chunk_size(ctx: Context) -> int:
    from poweropd.objectives.logprobs import DEFAULT_CHUNK_SIZE

    return ctx.cfg.chunk_size or DEFAULT_CHUNK_SIZE


def matmul_floor_score(ctx: Context):
    """The teacher's body and its output-layer matmul, chunk by chunk, and nothing else."""
    import torch

    from poweropd.models.hf import output_layer
    from poweropd.objectives.logprobs import compute_dtype_for

    hidden_BTH = body_floor_score(ctx)
    hidden_NH = hidden_BTH.reshape(-1, hidden_BTH.shape[-1])
    weight_VH, chunk = output_layer(ctx.teacher).weight, _chunk_size(ctx)
    with torch.no_grad():
        for s in range(0, hidden_NH.shape[0], chunk):
            logits_nV = hidden_NH[s : s + chunk].to(compute_dtype_for(hidden_NH)) @ weight_VH.T
            del logits_nV
    return hidden_BTH


def matmul_floor_update(ctx: Context, _teacher_hidden_BTH) -> float:
    """The student's body forward and backward around the three vocabulary-sized matmuls of a fused
    output layer (logits, ∂hidden, ∂W) with the logits standing in for their gradient: no softmax, no
    loss. The floor that the matmuls set; our paths add the elementwise passes to it."""
    import torch

    from poweropd.models.hf import output_layer, response_hidden_states

    r = ctx.rollouts
    weight_VH, chunk = output_layer(ctx.student).weight, _chunk_size(ctx)
    with ctx.autocast():
        hidden_BTH = response_hidden_states(ctx.student, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)
    dtype = ctx.amp_dtype or hidden_BTH.dtype  # the matmul dtype of the fused ops under this autocast
    hidden_NH = hidden_BTH.detach().reshape(-1, hidden_BTH.shape[-1]).to(dtype)
    weight_c = weight_VH.detach().to(dtype)
    grad_hidden_NH = torch.empty_like(hidden_NH)
    grad_weight_VH = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device)
    for s in range(0, hidden_NH.shape[0], chunk):
        h_nH = hidden_NH[s : s + chunk]
        logits_nV = h_nH @ weight_c.T
        grad_hidden_NH[s : s + chunk] = logits_nV @ weight_c
        grad_weight_VH.add_((logits_nV.T @ h_nH).float())
        del logits_nV
    hidden_BTH.backward(grad_hidden_NH.view(hidden_BTH.shape).to(hidden_BTH.dtype) * 1e-6)
    weight_VH.grad = (
        grad_weight_VH.to(weight_VH.dtype) if weight_VH.grad is None else weight_VH.grad + grad_weight_VH
    )
    return 0.0


@dataclass(frozen=True)
class Mode:
    score: Callable  # ctx -> teacher data
    update: Callable  # (ctx, teacher data) -> loss; fills the student's .grad


MODES: dict[str, Mode] = {
    "power_sampled": Mode(
        functools.partial(ours_score, keep_hidden=False), functools.partial(ours_update, objective="power@1")
    ),
    # token selection (--token-select entropy:0.5): an entropy pass, then the gradient pass on half the rows
    "power_entropy": Mode(
        functools.partial(ours_score, keep_hidden=False),
        functools.partial(ours_update, objective="power@1+entropy:0.5"),
    ),
    # TV-OPD (--reward tv): c · sign(log ratio) through the same fused op as power
    "tv_sampled": Mode(
        functools.partial(ours_score, keep_hidden=False), functools.partial(ours_update, objective="tv")
    ),
    # vOPD (--reward log_ratio --reward-baseline kl): the teacher's hidden states, a no-grad KL pass over both
    # output layers, then the fused surrogate
    "vopd_kl_baseline": Mode(
        functools.partial(ours_score, keep_hidden=True), functools.partial(ours_update, objective="log_ratio+kl")
    ),
    "naive_sampled": Mode(naive_sampled_score, naive_sampled_update),
    "full_kl_naive": Mode(full_kl_naive_score, full_kl_naive_update),
    "full_kl_chunked": Mode(
        functools.partial(ours_score, keep_hidden=True), functools.partial(ours_update, objective="full_kl")
    ),
    "body_floor": Mode(body_floor_score, body_floor_update),
    "matmul_floor": Mode(matmul_floor_score, matmul_floor_update),
}
