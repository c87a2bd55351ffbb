"""The offline SmolLM2-135M-Instruct alias: GGUF -> safetensors conversion, chat use, a small real evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR

from poweropd.data import encode_prompts
from poweropd.eval.benchmarks import load_benchmark
from poweropd.eval.harness import EvalConfig, evaluate_model
from poweropd.models.hf import load_causal_lm, load_tokenizer, resolve_model, stop_token_ids
from poweropd.rollout.samplers import HFSampler, SamplingConfig

ALIAS = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(folder, model, tokenizer), converted once into a fresh cache for this module."""
    cache = tmp_path_factory.mktemp("poweropd_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POWEROPD_CACHE", str(cache))
        folder = Path(resolve_model(ALIAS))
        assert folder == cache / "models" / ALIAS
        assert resolve_model(ALIAS) == str(folder)  # second call reuses the folder
        tokenizer = load_tokenizer(ALIAS)
        model = load_causal_lm(ALIAS)
    return folder, model, tokenizer


@pytest.mark.slow
def test_conversion_writes_one_complete_safetensors_folder(smollm2):
    folder, model, _ = smollm2
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [ALIAS]  # no temporary folder left behind
    assert type(model).__name__ == "LlamaForCausalLM"
    assert "quantization_config" not in model.config.to_dict()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert model.generation_config.top_k in (None, 0, 50)  # whatever it is, HFSampler passes top_k=0


@pytest.mark.slow
def test_tokenizer_has_chat_template_eos_and_pad(smollm2):
    _, _, tokenizer = smollm2
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\n2+2?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_left_padded_batch_generation_matches_single_prompts(smollm2):
    _, model, tokenizer = smollm2
    prompts = encode_prompts(
        tokenizer, ["What is 2 + 3?", "Natalia sold clips to 48 of her friends in April. How many?"]
    )
    assert len(prompts[0]) != len(prompts[1])  # so the batch really is padded
    cfg = SamplingConfig(max_new_tokens=8, temperature=0, stop_token_ids=tuple(stop_token_ids(tokenizer)))
    sampler = HFSampler(model, tokenizer.pad_token_id, cfg)
    batch = sampler.sample(prompts)
    for b, prompt in enumerate(prompts):
        single = sampler.sample([prompt])
        n = int(single.response_lengths_B[0])
        assert torch.equal(batch.response_ids_BT[b, :n], single.response_ids_BT[0, :n])
    assert batch.response_lengths_B.min() > 0


@pytest.mark.slow
def test_real_model_evaluates_a_few_gsm8k_problems(smollm2):
    _, model, tokenizer = smollm2
    problems = {"gsm8k": load_benchmark("gsm8k", DATA_DIR, limit=3)}
    cfg = EvalConfig(benchmarks=("gsm8k",), n=2, max_new_tokens=48, batch_size=6, seed=0)
    results, samples = evaluate_model(model, tokenizer, problems, cfg, progress=False)
    r = results["gsm8k"]
    assert r["n_problems"] == 3 and len(samples) == 6
    assert 0 <= r["avg@2"] <= r["pass@2"] <= 1
    assert 0 < r["mean_length"] <= 48 and 0 <= r["truncated_frac"] <= 1
    # A real chat model writes English, not token soup; responses decode without special tokens.
    assert all(s["response"].strip() and "<|im_end|>" not in s["response"] for s in samples)
    assert sum(len(re.findall(r"[A-Za-z]{3,}", s["response"])) >= 3 for s in samples) >= 4
