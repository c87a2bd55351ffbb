"""A tiny tokenizer for the embedded task: every printable ASCII character, plus the task's few words.

Each text splits into pieces that are either one of ``WORDS`` (the instruction's words, " \\boxed{", " + ", …)
or a single character; each piece is one token. Digits are always single tokens, which is what lets a tiny
model learn column arithmetic. The words only shorten sequences (a rendered prompt is ~40 tokens instead of
~130 characters), which is most of the cost of SFT and of scoring on a 2-core CPU. Any printable ASCII text
round-trips exactly; other characters become ``<unk>``.

The chat template is Qwen's (``<|im_start|>role\\n…<|im_end|>\\n``), ``<|im_end|>`` is EOS and ``<|endoftext|>``
is pad, so the models look like a Qwen3 pair to the rest of poweropd.
"""

from __future__ import annotations

import re
import string

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHARS = tuple(string.printable[:95]) + ("\n",)  # digits, letters, punctuation, space; then newline
# Multi-character tokens. The regex tries them in this order before falling back to one character, so a
# longer word must come before any word that is its prefix.
WORDS = (
    # Whole phrases that every prompt and response contains: one token each (SFT cost is linear in tokens).
    "\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "The answer is \\boxed{",
    "Please",
    " reason",
    " step",
    " by",
    " and",
    " put",
    " your",
    " final",
    " answer",
    " within",
    " \\boxed{",
    "user",
    "assistant",
    "Compute",
    "The",
    " is",
    " + ",
    " - ",
    " = ",
)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def vocabulary() -> dict[str, int]:
    """Token -> id: special tokens first (so their ids are fixed), then characters, then words."""
    tokens = [*SPECIAL_TOKENS, *CHARS, *WORDS]
    assert len(set(tokens)) == len(tokens), "duplicate token"
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer():
    """The task tokenizer as a ``transformers.PreTrainedTokenizerFast`` (save_pretrained / AutoTokenizer work)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token="<unk>"))
    # One alternation, words first, then any single character ([\s\S] includes the newline).
    pattern = "|".join(re.escape(w) for w in WORDS) + r"|[\s\S]"
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate pieces; WordLevel would otherwise join them with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
