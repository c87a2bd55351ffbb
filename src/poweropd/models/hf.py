"""Loading causal LMs and tokenizers, checking a student/teacher pair, and the decoder-body forward.

A model is named by a Hugging Face hub id, a local folder, or an alias of ``aliases.ALIASES`` (offline models
that a package ships, converted once into a cache folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..objectives.logprobs import DEFAULT_CHUNK_SIZE, chunked_token_logprobs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where converted and trained models are kept: $POWEROPD_CACHE, default ~/.cache/poweropd."""
    return Path(os.environ.get("POWEROPD_CACHE", Path.home() / ".cache" / "poweropd"))


def resolve_model(name: str) -> str:
    """An alias becomes its cached local folder; anything else (hub id or folder) is returned unchanged."""
    from .aliases import alias_folder

    folder = alias_folder(name)
    return str(folder) if folder is not None else name


REMOTE_CODE_HINT = "trust_remote_code"


def _remote_code_error(what: str, name: str, err: BaseException) -> UserError | None:
    """The error for a model that ships its own Python code, which we run only when asked."""
    if REMOTE_CODE_HINT not in str(err):
        return None
    return UserError(
        f"{what} {name}: the model needs its own code from its repository; pass --trust-remote-code if you "
        "trust that code (it runs on this machine)"
    )


def load_tokenizer(name: str, what: str = "--model", *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _remote_code_error(what, name, err) or UserError(
            f"{what} {name}: expected a Hugging Face model id or a folder with a tokenizer ({_first_line(err)})"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str, *, dtype: str = "float32", device: str | torch.device = "cpu", what: str = "--model",
    trust_remote_code: bool = False,
):  # fmt: skip
    """The model's weights come from safetensors or the library's own loader; code from the model's
    repository runs only with ``trust_remote_code`` (--trust-remote-code)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, SafetensorError) as err:
        raise _remote_code_error(what, name, err) or UserError(
            f"{what} {name}: expected a Hugging Face causal LM id or folder ({_first_line(err)})"
        ) from None
    return model.to(device)


def save_model(model, tokenizer, folder: str | Path, state_dict: dict | None = None) -> None:
    """save_pretrained of a model (safetensors) and its tokenizer into one folder, loadable by name;
    ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered)."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def stop_token_ids(tokenizer) -> list[int]:
    """The tokenizer's EOS plus ``<|im_end|>`` and ``<|endoftext|>`` where the vocabulary has them.

    Base Qwen3 students end an answer with either token, so sampling must stop on both.
    """
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    return sorted(set(ids))


def check_pair(student_tokenizer, teacher_tokenizer, *, student: str, teacher: str) -> None:
    """Stop unless the two tokenizers map the same strings to the same ids and end on the same token.

    Embedding sizes may differ (Qwen3 pads its output layer to 151,936 rows beyond the 151,669-token
    tokenizer): losses compare the models over the tokenizer's range only.
    """
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        only_s = len(student_vocab.keys() - teacher_vocab.keys())
        only_t = len(teacher_vocab.keys() - student_vocab.keys())
        moved = sum(
            1 for k in student_vocab.keys() & teacher_vocab.keys() if student_vocab[k] != teacher_vocab[k]
        )
        raise UserError(
            f"--student {student} / --teacher {teacher}: expected tokenizers with the same vocabulary and ids "
            f"(student {len(student_vocab)} tokens, teacher {len(teacher_vocab)}; {only_s} only in student, "
            f"{only_t} only in teacher, {moved} with different ids)"
        )
    if student_tokenizer.eos_token != teacher_tokenizer.eos_token:
        raise UserError(
            f"--student {student} / --teacher {teacher}: expected the same end-of-sequence token "
            f"(student {student_tokenizer.eos_token!r}, teacher {teacher_tokenizer.eos_token!r})"
        )


def check_capacity(student, teacher, *, tokenizer_size: int, longest_prompt: int, max_new_tokens: int,
                   names: tuple[str, str], data: str) -> None:  # fmt: skip
    """Both output layers cover the tokenizer, and the longest rollout fits both models' context."""
    for flag, name, model in (("--student", names[0], student), ("--teacher", names[1], teacher)):
        rows = output_layer(model).weight.shape[0]
        if rows < tokenizer_size:
            raise UserError(
                f"{flag} {name}: output layer has {rows} rows, expected at least the tokenizer's {tokenizer_size}"
            )
    context = min(getattr(m.config, "max_position_embeddings", float("inf")) for m in (student, teacher))
    needed = longest_prompt + max_new_tokens
    if needed > context:
        raise UserError(
            f"--data {data}: the longest prompt is {longest_prompt} tokens, so a rollout of --max-new-tokens "
            f"{max_new_tokens} needs {needed} positions, beyond the models' context of {context} positions "
            "(expected shorter prompts or fewer new tokens)"
        )


def check_device(name: str, flag: str) -> torch.device:
    """``name`` as a torch device that this machine has (cpu, cuda, cuda:N), else a one-line error."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    gpus = torch.cuda.device_count()
    ok = device is not None and (
        device.type == "cpu" or (device.type == "cuda" and (device.index or 0) < gpus)
    )
    if not ok:
        raise UserError(
            f"{flag} {name}: expected cpu, cuda or cuda:N of a visible GPU (this machine has {gpus})"
        )
    return device


def enable_checkpointing(model) -> None:
    """transformers' activation checkpointing of every decoder layer (non-reentrant: safe with our split of the
    decoder body and the output layer); ``gradient_checkpointing_enable`` before transformers 5.x."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def output_layer(model) -> torch.nn.Module:
    """The model's vocabulary projection (lm_head)."""
    return model.get_output_embeddings()


def decoder_body(model) -> torch.nn.Module:
    """The model without its output layer: returns final (normed) hidden states (inside a peft wrapper too)."""
    from .lora import base_model

    model = base_model(model)
    return getattr(model, model.base_model_prefix)


def response_hidden_states(model, input_ids_BL: Tensor, attention_mask_BL: Tensor, prompt_len: int) -> Tensor:
    """Final hidden states at the positions that predict the response tokens ``input_ids_BL[:, prompt_len:]``.

    Prompts are left-padded, so position ids come from the attention mask (as ``generate`` computes them);
    the output layer is not applied here (see logprobs.py). Shape (B, L − prompt_len, H).
    """
    position_ids_BL = (attention_mask_BL.long().cumsum(-1) - 1).clamp(min=0)
    out = decoder_body(model)(
        input_ids=input_ids_BL[:, :-1],
        attention_mask=attention_mask_BL[:, :-1],
        position_ids=position_ids_BL[:, :-1],
        use_cache=False,
    )
    return out.last_hidden_state[:, prompt_len - 1 :]


def sampled_logprobs(
    model, rollouts, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE, logprobs: bool = True
) -> tuple[Tensor | None, Tensor]:
    """(logp_BT, hidden_BTH): log π(o_t | c_t) of every response token of ``rollouts`` (float32; None when
    ``logprobs`` is False) and the final hidden states they come from, through the output layer in chunks
    (logprobs.py). The one way the student's diagnostics, the teacher's scores and the batch-statistic rewards
    read a model's log-probs of sampled tokens (the update's loss reads them inside its fused op, losses.py)."""
    hidden_BTH = response_hidden_states(
        model, rollouts.input_ids_BL, rollouts.attention_mask_BL, rollouts.prompt_len
    )
    if not logprobs:
        return None, hidden_BTH
    logp_BT, _ = chunked_token_logprobs(
        output_layer(model),
        hidden_BTH,
        rollouts.response_ids_BT,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    return logp_BT, hidden_BTH
