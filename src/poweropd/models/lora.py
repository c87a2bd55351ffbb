"""LoRA through peft (``--lora-rank R``): only the adapters train; the base weights, output layer included,
stay frozen and still go through the fused output-layer ops (their gradient then flows to the hidden states
only).

A LoRA run's checkpoints and ``final/`` hold the adapter (``adapter_model.safetensors``, loadable with
``peft.PeftModel.from_pretrained(base, folder)``); ``--merge-lora`` also writes ``final-merged/``, the base
model with the adapter merged in, loadable by name like any causal LM. peft initialises LoRA's B matrices to
zero, so the first step of a LoRA run sees exactly the base model (tests/test_lora.py).
"""

from __future__ import annotations

from pathlib import Path


def attach_lora(model, model_cfg, adapter_dir: str | Path | None = None, *, seed: int = 0):
    """``model`` wrapped in a trainable LoRA adapter: a new one (its random A matrices drawn from ``seed``, the
    caller's RNG untouched), or the one saved in ``adapter_dir`` (resume)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    targets = model_cfg.lora_target_modules
    config = LoraConfig(
        r=model_cfg.lora_rank,
        lora_alpha=model_cfg.lora_alpha if model_cfg.lora_alpha is not None else model_cfg.lora_rank,
        lora_dropout=model_cfg.lora_dropout,
        target_modules="all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def base_model(model):
    """The transformers model inside a peft wrapper (its modules carry the LoRA layers), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_merged(model, tokenizer, folder: Path) -> None:
    """The base weights with the adapter merged in, as a plain causal LM (the adapter stays on ``model``)."""
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
