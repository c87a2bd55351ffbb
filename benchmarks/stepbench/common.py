"""What every mode of the step benchmark shares: its configuration, the models, the rollouts, the targets."""

from __future__ import annotations

from dataclasses import dataclass

QWEN3_VOCAB = 151_936

MODE_NAMES = (
    "power_sampled",
    "power_entropy",
    "tv_sampled",
    "vopd_kl_baseline",
    "naive_sampled",
    "full_kl_naive",
    "full_kl_chunked",
    "body_floor",
    "matmul_floor",
)
DEFAULT_MODES = tuple(m for m in MODE_NAMES if m not in ("power_entropy", "tv_sampled", "vopd_kl_baseline"))
"""What --quick and a plain run measure (the table of BENCHMARKS.md); the options' modes are asked for by name."""

# name -> (layers, hidden, heads, kv heads, head_dim, intermediate, tied embeddings)
SHAPES = {
    "tiny": (2, 32, 4, 2, 8, 64, False),
    "bench-student": (2, 128, 4, 2, 32, 384, False),
    "bench-teacher": (2, 192, 4, 2, 48, 576, False),
    "qwen3-0.6b": (28, 1024, 16, 8, 128, 3072, True),  # as the released Qwen3-0.6B and 4B configs
    "qwen3-4b": (36, 2560, 32, 8, 128, 9728, True),
}

# (ours, reference, metric, bound): ours / reference must be ≤ bound
TARGETS = (
    ("power_sampled", "full_kl_naive", "time_s", 0.6),
    ("power_sampled", "full_kl_naive", "peak_mb", 0.35),
    ("power_sampled", "naive_sampled", "time_s", 0.8),
    ("power_sampled", "naive_sampled", "peak_mb", 0.5),
    ("full_kl_chunked", "full_kl_naive", "peak_mb", 0.5),
)


@dataclass(frozen=True)
class BenchConfig:
    vocab: int = QWEN3_VOCAB
    batch: int = 8
    seq: int = 256
    """Response tokens per rollout (T)."""
    prompt_len: int = 32
    repeats: int = 3
    warmup: int = 1
    chunk_size: int | None = None
    """Positions per output-layer chunk in our paths; None: the library default."""
    device: str = "cpu"
    dtype: str = "float32"
    """float32, or bfloat16: teacher in bf16, student fp32 master weights under bf16 autocast (as training/loop.py)."""
    student_shape: str = "bench-student"
    teacher_shape: str = "bench-teacher"
    threads: int | None = None
    seed: int = 0


# ---------------------------------------------------------------------------------------------------
# Models and batch
# ---------------------------------------------------------------------------------------------------
def char_tokenizer(size: int | None = None, chat_template: str | None = None):
    """Printable characters as tokens after Qwen-style specials (``<|im_end|>`` EOS, ``<|endoftext|>`` pad);
    ``size`` pads the vocabulary with unused tokens (e.g. to Qwen3's 151,669), ``chat_template`` sets one."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(set(string.printable))]
    words += [f"<unused{i}>" for i in range((size or 0) - len(words))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def make_model(shape: str, vocab: int, *, seed: int, device: str, dtype):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    layers, hidden, heads, kv, head_dim, inter, tied = SHAPES[shape]
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: a 4B model initialises in seconds on a GPU
        model = Qwen3ForCausalLM(config)
    return model.to(dtype)


def make_rollouts(cfg: BenchConfig, device: str):
    """A fixed random batch: left-padded prompts of varied length, responses of varied length (stop token 0)."""
    import torch

    from poweropd.rollout.samplers import build_rollouts

    g = torch.Generator().manual_seed(cfg.seed + 1)
    B, P, T = cfg.batch, cfg.prompt_len, cfg.seq
    prompt_BP = torch.randint(1, cfg.vocab, (B, P), generator=g)
    prompt_mask_BP = torch.ones(B, P, dtype=torch.long)
    response_BT = torch.randint(1, cfg.vocab, (B, T), generator=g)
    for b in range(B):
        prompt_mask_BP[b, : (b * P) // (2 * B)] = 0  # up to half the prompt is padding
        prompt_BP[b, : (b * P) // (2 * B)] = 0
        if b % 2:  # odd rows stop early; even rows are truncated at T
            response_BT[b, T - 1 - (b * T) // (2 * B)] = 0
    rollouts = build_rollouts(torch.cat([prompt_BP, response_BT], 1), prompt_mask_BP, (0,), pad_token_id=0)
    return rollouts.to(device)


@dataclass
class Context:
    cfg: BenchConfig
    student: object
    teacher: object
    rollouts: object
    amp_dtype: object  # torch.dtype | None

    def autocast(self):
        import torch

        enabled = self.amp_dtype is not None
        return torch.autocast(self.student.device.type, dtype=self.amp_dtype, enabled=enabled)


def build_context(cfg: BenchConfig) -> Context:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = cfg.dtype == "bfloat16"
    student = make_model(cfg.student_shape, cfg.vocab, seed=cfg.seed, device=cfg.device, dtype=torch.float32)
    teacher_dtype = torch.bfloat16 if bf16 else torch.float32
    teacher = make_model(
        cfg.teacher_shape, cfg.vocab, seed=cfg.seed + 7, device=cfg.device, dtype=teacher_dtype
    )
    student.train()
    teacher.eval().requires_grad_(False)
    return Context(cfg, student, teacher, make_rollouts(cfg, cfg.device), torch.bfloat16 if bf16 else None)
