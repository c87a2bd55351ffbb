"""Flags, help, choices and traits read from the config fields (flags.py; issue #24, point 4)."""

from __future__ import annotations

import dataclasses

import pytest

from poweropd.cli import build_parser
from poweropd.config.flags import docstrings, field_flags, flag_name
from poweropd.config.sections import SECTIONS, EvalConfig, ModelConfig, RewardConfig, RolloutConfig, RunConfig
from poweropd.errors import UserError

REQUIRED = ["--student", "s", "--teacher", "t", "--data", "d.jsonl", "--output-dir", "o"]


def _train_help() -> str:
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    return sub.format_help()


def _build(*flags: str):
    from poweropd.commands.train import build_config

    return build_config(build_parser().parse_args(["train", *REQUIRED, *flags]))


def test_every_field_is_a_flag_of_train_with_its_docstring_and_default():
    text = " ".join(_train_help().split())
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            flag = flag_name(cls, f.name, "eval-" if section == "eval" else "")
            if (section == "eval" and f.metadata.get("train") is False) or f.name == "extra":
                continue  # extra: the flags of registered rewards' own hyperparameters (test below)
            assert f"{flag} " in text, flag
            assert f.name in docstrings(cls), f"{section}.{f.name} has no docstring"
    assert "Optimizer steps. (default 1500)" in text  # computed from the field, not copied
    assert "--rollout-engine {generate,loop,continuous,vllm,auto}" in text  # engines.ENGINES


def test_new_flags_reach_their_fields():
    cfg = _build("--top-k", "5", "--warmup-ratio", "0.1", "--eval-temperature", "0", "--chunk-size", "64",
                 "--eval-rollout-engine", "loop", "--no-vllm-enforce-eager", "--teacher-timeout", "3")  # fmt: skip
    assert (cfg.rollout.top_k, cfg.optim.warmup_ratio, cfg.eval.temperature, cfg.run.chunk_size) == (
        5,
        0.1,
        0.0,
        64,
    )
    assert (cfg.eval.engine, cfg.rollout.vllm_enforce_eager, cfg.model.teacher_timeout_s) == (
        "loop",
        False,
        3.0,
    )
    assert _build().rollout.top_k == 0  # a flag not given leaves the field default


def test_messages_name_the_field_and_its_flags():
    cases = [
        (lambda: ModelConfig(student="s", teacher="t", dtype="int8"), "model.dtype (--dtype): expected one of float32, bfloat16"),
        (lambda: RolloutConfig(engine="x"), "rollout.engine (--rollout-engine): expected one of generate, loop"),
        (lambda: EvalConfig(engine="x"), "eval.engine (--rollout-engine, --eval-rollout-engine)"),
        (lambda: EvalConfig(every=-1), "eval.every (--eval-every)"),
        (lambda: RewardConfig(name="x"), "reward.name (--reward): expected one of log_ratio"),
        (lambda: RewardConfig(name="clip", alpha_end=2.0), "reward.alpha_end (--alpha-schedule)"),
        (lambda: RunConfig(data="d", output_dir="o", keep_last=-1), "run.keep_last (--keep-last)"),
        (lambda: ModelConfig(student="s", teachers=("x",)), "model.teachers (--teacher NAME=SPEC)"),
    ]  # fmt: skip
    for make, expected in cases:
        with pytest.raises(UserError) as err:
            make()
        assert expected in str(err.value)
    assert field_flags(EvalConfig, "n") == ("--n", "--eval-n")


def test_resumable_is_a_trait_of_the_fields():
    from poweropd.config import sections as config

    assert config.RESUMABLE_CHANGES["model"] >= {"device", "teacher", "teachers"}
    assert "lr" not in config.RESUMABLE_CHANGES.get("optim", set())


def test_eval_command_defaults_are_its_named_preset():
    from poweropd.config.sections import EVAL_COMMAND

    args = build_parser().parse_args(["eval", "--model", "m"])
    given = {key: getattr(args, dest) for dest, (_, key) in args._fields.items()}
    assert EvalConfig(**given) == EVAL_COMMAND
    before = {"benchmarks": ("all",), "limit": None, "n": 8, "max_new_tokens": 2048, "batch_size": 16,
              "temperature": 0.6, "top_p": 0.95, "seed": 0, "engine": "generate", "data_dir": None}  # fmt: skip
    assert {k: getattr(EVAL_COMMAND, k) for k in before} == before  # what `poweropd eval` always defaulted to
    assert (args.device, args.dtype, args.trust_remote_code) == ("cpu", "float32", False)


@pytest.mark.parametrize("command", ["train", "eval", "diagnose", "demo"])
def test_shared_flags_are_the_fields_flags(command):
    """--rollout-engine and the vLLM flags: one declaration (the RolloutConfig fields) in every command."""
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    actions = {a.option_strings[0]: a for a in sub._actions if a.option_strings}
    assert actions["--rollout-engine"].choices == ("generate", "loop", "continuous", "vllm", "auto")
    if command != "demo":
        assert "--vllm-gpu-memory-utilization" in actions and actions["--trust-remote-code"].help.startswith(
            "Run"
        )


def test_a_registered_reward_with_a_new_hyperparameter_gets_a_flag_a_range_and_its_value():
    """One function and one record: no config field, no flag, no check written for the new hyperparameter."""
    import torch

    from poweropd.objectives.rewards import REWARDS, HParam, Reward, register

    def shifted(teacher_logp_BT, student_logp_BT, mask_BT, *, shift):
        return torch.where(mask_BT.bool(), teacher_logp_BT - student_logp_BT + shift, 0.0)

    doc = "Added to every token's log ratio."
    register(Reward("shifted", shifted, "a test's own reward",
                    {"shift": HParam("reward_shift", 0.5, doc, low=0.0, high=1.0, closed=(False, True))}))  # fmt: skip
    try:
        text = " ".join(_train_help().split())
        assert f"--reward-shift X {doc} (shifted: a number in (0, 1]; default 0.5)" in text
        cfg = _build("--reward", "shifted", "--reward-shift", "0.25")
        assert cfg.reward.extra == {"reward_shift": 0.25} and cfg.reward.hparams == {"shift": 0.25}
        assert RewardConfig(name="shifted").hparams == {"shift": 0.5}  # the record's default
        ones = torch.ones(1, 2, dtype=torch.bool)
        reward = cfg.reward.record.bind(**cfg.reward.hparams)(torch.zeros(1, 2), torch.zeros(1, 2), ones)
        assert torch.equal(reward, torch.full((1, 2), 0.25))
        with pytest.raises(
            UserError, match=r"reward.reward_shift \(--reward-shift\): expected a number in \(0, 1\]"
        ):
            _build("--reward", "shifted", "--reward-shift", "2")
        with pytest.raises(UserError, match="reward.extra"):
            RewardConfig(extra={"bogus": 1.0})
    finally:
        REWARDS.pop("shifted", None)
    assert "--reward-shift" not in _train_help()
