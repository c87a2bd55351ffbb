"""Configuration of a run: six validated, frozen sections (``sections``; the reward section in ``reward``),
flags read from the fields and their docstrings (``flags``), YAML presets (``presets``). The public names are
handed on here: ``from poweropd.config import TrainConfig``."""

from .sections import (
    DEVICES,
    DTYPES,
    EVAL_COMMAND,
    RESUMABLE_CHANGES,
    SECTIONS,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TrainConfig,
    methods,
    read_preset,
    write_yaml,
)

__all__ = ["DEVICES", "DTYPES", "EVAL_COMMAND", "RESUMABLE_CHANGES", "SECTIONS", "EvalConfig", "ModelConfig",
           "OptimConfig", "RewardConfig", "RolloutConfig", "RunConfig", "TrainConfig", "methods", "read_preset",
           "write_yaml"]  # fmt: skip
