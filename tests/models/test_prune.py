"""prune.py: layer specs, and a pruned model computes exactly the chosen layers of the original."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from poweropd.errors import UserError
from poweropd.models.prune import parse_layer_spec, prune_layers


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("0-7", list(range(8))), ("0,3,6,9", [0, 3, 6, 9]), ("0-2, 5,7-8", [0, 1, 2, 5, 7, 8]), ("4", [4])],
)
def test_parse_layer_spec(spec, expected):
    assert parse_layer_spec(spec, 10) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-10", "has 10 layers .* got layer 10"),
        ("1,1,2", "layer 1 appears twice"),
        ("0-3,2", "layer 2 appears twice"),
        ("3,1", "increasing order"),
        ("5-3", "low-high"),
        ("a", "expected layer indices"),
        ("", "expected layer indices"),
        ("-1", "expected layer indices"),
    ],
)
def test_parse_layer_spec_errors_name_the_flag(spec, message):
    with pytest.raises(UserError, match=message) as err:
        parse_layer_spec(spec, 10)
    assert str(err.value).startswith(f"--keep-layers {spec}:")


def _tiny_model() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        use_sliding_window=True,  # layers ≥ max_window_layers are sliding: a per-layer list to keep consistent
        sliding_window=64,
        max_window_layers=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return Qwen3ForCausalLM(config).eval()


def _by_hand(model, keep: list[int], input_ids_BL: torch.Tensor) -> torch.Tensor:
    """embed -> the original's layers ``keep`` -> final norm -> lm_head (sequences shorter than the window)."""
    body = model.model
    L = input_ids_BL.shape[1]
    position_ids_BL = torch.arange(L).unsqueeze(0)
    hidden_BLH = body.embed_tokens(input_ids_BL)
    position_embeddings = body.rotary_emb(hidden_BLH, position_ids_BL)
    causal_11LL = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
    for i in keep:
        hidden_BLH = body.layers[i](
            hidden_BLH,
            attention_mask=causal_11LL,
            position_embeddings=position_embeddings,
            position_ids=position_ids_BL,
        )
    return model.lm_head(body.norm(hidden_BLH))


@torch.no_grad()
def test_pruned_model_runs_the_chosen_layers_of_the_original():
    model = _tiny_model()
    input_ids_BL = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(1))
    logits_before = model(input_ids_BL).logits
    keep = [1, 3]
    pruned = prune_layers(model, keep)

    assert pruned.config.num_hidden_layers == 2
    assert pruned.config.layer_types == ["full_attention", "sliding_attention"]
    assert pruned.config.max_window_layers == 1
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    assert pruned.model.layers[1].self_attn.sliding_window == 64
    torch.testing.assert_close(
        pruned.model.layers[0].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight
    )
    torch.testing.assert_close(
        pruned(input_ids_BL).logits, _by_hand(model, keep, input_ids_BL), rtol=0, atol=1e-5
    )
    assert not torch.allclose(pruned(input_ids_BL).logits, _by_hand(model, [0, 2], input_ids_BL))

    # the original is untouched and shares no storage with the copy
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    torch.testing.assert_close(model(input_ids_BL).logits, logits_before)
    assert (
        pruned.model.layers[0].mlp.up_proj.weight.data_ptr()
        != model.model.layers[1].mlp.up_proj.weight.data_ptr()
    )


@torch.no_grad()
def test_pruned_model_generates_with_a_kv_cache():
    # The cache is indexed by layer_idx: a stale index would break or silently mix layers' keys.
    pruned = prune_layers(_tiny_model(), [0, 3])
    prompt_BL = torch.randint(0, 50, (1, 5), generator=torch.Generator().manual_seed(2))
    out_BL = pruned.generate(prompt_BL, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out_BL.shape == (1, 11)
    # greedy decoding with the cache agrees with a full forward pass on the generated sequence
    logits_BLV = pruned(out_BL).logits
    torch.testing.assert_close(logits_BLV[0, 4:-1].argmax(-1), out_BL[0, 5:])


def test_prune_layers_rejects_bad_indices():
    model = _tiny_model()
    for keep in ([], [2, 1], [0, 0], [4]):
        with pytest.raises(ValueError, match="increasing unique indices"):
            prune_layers(model, keep)
