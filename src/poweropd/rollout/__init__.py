"""Rollout engines behind one protocol (``samplers.Sampler``): transformers' ``generate`` and a plain decode
loop (``samplers``), continuous batching (``continuous``), an in-process vLLM engine (``vllm_engine``), chosen
by name in ``engines`` (the registry, ``--rollout-engine``). A new engine is a new Sampler class there and one
entry in ``engines.SAMPLERS``."""
