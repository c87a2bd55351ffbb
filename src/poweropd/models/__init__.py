"""Models: loading and checking Hugging Face models and the forward pieces the loop uses (``hf``), LoRA through
peft (``lora``), layer pruning (``prune``), offline aliases (``aliases``) and the GGUF conversion behind them
(``from_gguf``)."""
