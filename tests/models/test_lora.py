"""LoRA through peft: only the adapter trains, the first step equals full fine-tuning's, the adapter loads with
peft, --merge-lora writes a plain model with the same outputs, and --resume is bit-exact."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poweropd.cli import main


def _train(pair, out, *extra):
    student, teacher, prompts = pair
    return [
        "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts), "--output-dir",
        str(out), "--batch-size", "4", "--max-new-tokens", "6", "--lr", "1e-2", "--reward", "power", "--alpha", "1",
        "--save-every", "0", "--no-progress", *extra,
    ]  # fmt: skip


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_run(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    assert main(_train(tiny_pair, out, "--max-steps", "3", "--lora-rank", "4", "--merge-lora")) == 0
    return out


def test_lora_first_step_equals_full_fine_tuning_and_later_steps_differ(tiny_pair, lora_run, tmp_path):
    """peft starts B at zero: at step 1 the LoRA student is the base model, so the same rollouts, rewards and loss."""
    assert main(_train(tiny_pair, tmp_path / "full", "--max-steps", "3")) == 0
    full, lora = _rows(tmp_path / "full"), _rows(lora_run)
    for key in ("loss", "reward/mean", "response_length/mean"):
        assert lora[0][key] == pytest.approx(full[0][key], rel=1e-6, abs=1e-9), key
    assert lora[0]["grad/norm"] != pytest.approx(full[0]["grad/norm"])  # fewer parameters get a gradient
    assert lora[-1]["loss"] != pytest.approx(full[-1]["loss"])


def test_the_adapter_loads_with_peft_and_the_base_weights_are_untouched(tiny_pair, lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = lora_run / "final"
    assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()
    adapter = load_file(final / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # it trained
    original = load_file(Path(tiny_pair[0]) / "model.safetensors")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_pair[0]), str(final))
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in model.state_dict().items() if "lora_" not in k}  # fmt: skip
    assert base.keys() == original.keys()
    assert all(torch.equal(base[k], original[k]) for k in original)


def test_merged_model_gives_the_adapted_outputs(tiny_pair, lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(lora_run / "final-merged")
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_pair[0]), str(lora_run / "final")
    )
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_pair[0])
        assert not torch.allclose(merged(ids).logits, base(ids).logits)


@pytest.mark.slow
def test_lora_resume_is_bit_identical(tiny_pair, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ("--lora-rank", "4", "--save-every", "1")
    assert main(_train(tiny_pair, straight, "--max-steps", "4", *common)) == 0
    assert main(_train(tiny_pair, resumed, "--max-steps", "2", *common)) == 0
    assert main(_train(tiny_pair, resumed, "--max-steps", "4", "--resume", *common)) == 0
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _rows(straight)] == [r["loss"] for r in _rows(resumed)]
