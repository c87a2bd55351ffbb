"""`poweropd train` end to end on tiny random models: every reward, resume, presets, bad inputs."""

import json

import pytest
import torch
from conftest import REPO, metric_rows
from safetensors.torch import load_file

from poweropd.cli import main
from poweropd.collective import SingleProcess
from poweropd.data import DataOrder

CONFIGS = REPO / "configs"


def _train_args(pair, out, *extra):
    student, teacher, prompts = pair
    return [
        "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
        "--output-dir", str(out), "--batch-size", "4", "--max-new-tokens", "8", "--lr", "1e-3",
        "--no-progress", *extra,
    ]  # fmt: skip



REQUIRED_METRICS = [
    "step",
    "loss",
    "grad/norm",
    "reward/mean",
    "reward/std",
    "reward/min",
    "reward/max",
    "reward/p05",
    "reward/p95",
    "log_ratio/mean",
    "log_ratio/min",
    "log_ratio/max",
    "log_ratio/p05",
    "log_ratio/p95",
    "response_length/mean",
    "response_length/max",
    "response/truncated_frac",
    "student_prob/mean",
    "time/sample_s",
    "time/score_s",
    "time/update_s",
    "time/step_s",
    "tokens_per_s",
    "memory/peak_mb",
    "memory/held_mb",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "reward_args",
    [["--reward", "log_ratio"], ["--reward", "clip", "--clip-low", "-0.5", "--clip-high", "0.5"],
     ["--reward", "tanh", "--tanh-tau", "2"], ["--reward", "zscore", "--micro-batch-size", "2"],
     ["--reward", "power", "--alpha", "0.5"], ["--reward", "full_kl", "--micro-batch-size", "2"]],
    ids=lambda a: a[1],
)  # fmt: skip
def test_every_reward_trains_and_logs(tiny_pair, tmp_path, reward_args):
    out = tmp_path / "run"
    assert main(_train_args(tiny_pair, out, "--max-steps", "2", "--save-every", "0", *reward_args)) == 0
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert set(REQUIRED_METRICS) <= row.keys()
        assert row["grad/norm"] > 0 and row["reward/min"] <= row["reward/mean"] <= row["reward/max"]
        assert row["log_ratio/min"] <= row["log_ratio/p05"] <= row["log_ratio/p95"] <= row["log_ratio/max"]
    name = reward_args[1]
    if name in ("clip", "tanh", "power"):
        bound = 0.5 if name == "clip" else 1.0
        assert all(-bound <= r["reward/min"] and r["reward/max"] <= bound for r in rows)
    if name == "zscore":  # standardised over the batch's valid tokens
        assert all(abs(r["reward/mean"]) < 1e-5 and abs(r["reward/std"] - 1) < 1e-3 for r in rows)
    if name == "full_kl":  # the logged signal is −KL ≤ 0
        assert all(r["reward/max"] <= 1e-6 for r in rows)
    positions = [json.loads(line) for line in (out / "positions.jsonl").read_text().splitlines()]
    assert positions[0]["step"] == 1 and positions[0]["buckets"][0]["start"] == 0
    final = out / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer_config.json").exists()
    config = (out / "config.yaml").read_text()
    assert f"name: {name}" in config
    # the student moved
    before = load_file(tiny_pair[0] / "model.safetensors")
    after = load_file(final / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["generate", "continuous"])
def test_resume_is_bit_identical(tiny_pair, tmp_path, engine):
    """Each step reseeds the RNG and the continuous engine queues a step's requests at once: both resume exactly."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ("--reward", "power", "--alpha", "2", "--save-every", "2", "--rollout-engine", engine)
    assert main(_train_args(tiny_pair, straight, "--max-steps", "4", *common)) == 0
    assert main(_train_args(tiny_pair, resumed, "--max-steps", "2", *common)) == 0
    assert (resumed / "checkpoints" / "step-2" / "optimizer.pt").exists()
    assert main(_train_args(tiny_pair, resumed, "--max-steps", "4", "--resume", *common)) == 0
    a, b = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(resumed / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run's metrics continue the first part: steps 1..4 once each, same losses as straight
    ra, rb = metric_rows(straight), metric_rows(resumed)
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


def test_data_order_is_a_permutation_per_epoch_and_splits_across_processes():
    order = DataOrder(num_prompts=10, seed=3)
    epoch = [i for step in range(1, 6) for i in order.indices(step, batch_size=2)]
    assert sorted(epoch) == list(range(10))
    assert order.indices(3, 4, rank=0, world_size=2) + order.indices(
        3, 4, rank=1, world_size=2
    ) == order.indices(3, 4)
    assert order.indices(7, 2) == DataOrder(10, 3).indices(7, 2)  # stateless: resume needs only the step
    assert order.indices(1, 10) != DataOrder(10, 4).indices(1, 10)


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_validate(preset):
    from poweropd.cli import build_parser
    from poweropd.commands.train import build_config

    args = build_parser().parse_args(
        ["train", "--config", str(preset), "--data", "x.jsonl", "--output-dir", "o"]
    )
    cfg = build_config(args)
    assert cfg.optim.lr == 5e-7 and cfg.run.batch_size == 32 and cfg.rollout.max_new_tokens == 1024
    assert cfg.run.max_steps == 1500 and cfg.model.dtype == "bfloat16"
    assert cfg.model.student.startswith("Qwen/Qwen3-") and cfg.model.student.endswith("-Base")


def test_flags_override_preset(tmp_path):
    from poweropd.cli import build_parser
    from poweropd.commands.train import build_config

    preset = sorted(CONFIGS.glob("*.yaml"))[0]
    args = build_parser().parse_args(
        ["train", "--config", str(preset), "--data", "d", "--output-dir", "o", "--alpha", "3", "--lr", "1e-6"]
    )
    cfg = build_config(args)
    assert cfg.reward.alpha == 3.0 and cfg.optim.lr == 1e-6 and cfg.run.batch_size == 32


def _bad(tmp_path, tiny_pair, capsys, *args, pair=None):
    code = main(_train_args(pair or tiny_pair, tmp_path / "run", "--max-steps", "1", *args))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--reward", "power", "--alpha", "0"], "reward.alpha (--alpha): expected a number > 0, got 0.0"),
        (["--reward", "power", "--alpha", "-2"], "expected a number > 0"),
        (["--reward", "bogus"], "argument --reward: invalid choice: 'bogus'"),
        (["--clip-low", "1", "--clip-high", "0"], "expected low < high"),
        (["--batch-size", "4", "--micro-batch-size", "3"], "expected a divisor of batch_size 4"),
    ],
)
def test_bad_flags_are_one_line_exit_2(tmp_path, tiny_pair, capsys, args, expected):
    with pytest.raises(SystemExit) if "invalid choice" in expected else _no_raise() as exc:
        code, err = _bad(tmp_path, tiny_pair, capsys, *args)
    if "invalid choice" in expected:
        code, err = exc.value.code, capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was started


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_missing_data_file(tmp_path, tiny_pair, capsys):
    student, teacher, _ = tiny_pair
    code, err = _bad(tmp_path, tiny_pair, capsys, pair=(student, teacher, tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl: file not found" in err and len(err.splitlines()) == 1


def test_malformed_jsonl_line_names_the_line(tmp_path, tiny_pair, capsys):
    student, teacher, _ = tiny_pair
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1 + 1"}\n{"problem": oops}\n')
    code, err = _bad(tmp_path, tiny_pair, capsys, pair=(student, teacher, bad))
    assert (
        code == 2 and "bad.jsonl:2: expected one JSON object per line" in err and len(err.splitlines()) == 1
    )


def test_missing_problem_field(tmp_path, tiny_pair, capsys):
    student, teacher, _ = tiny_pair
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1 + 1"}\n{"question": "2 + 2"}\n')
    code, err = _bad(tmp_path, tiny_pair, capsys, pair=(student, teacher, bad))
    assert code == 2 and "bad.jsonl:2: expected a non-empty string field 'problem'" in err


def test_tokenizer_mismatch_is_refused(tmp_path, tiny_pair, capsys):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    student, teacher, prompts = tiny_pair
    other = tmp_path / "other_teacher"
    other.mkdir()
    for f in teacher.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    vocab = AutoTokenizer.from_pretrained(teacher).get_vocab()
    swapped = {k: (v + 1) % len(vocab) for k, v in vocab.items()}  # same strings, other ids
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(swapped, unk_token="<|endoftext|>")),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(other)
    code, err = _bad(tmp_path, tiny_pair, capsys, pair=(student, other, prompts))
    assert code == 2 and "expected tokenizers with the same vocabulary and ids" in err
    assert f"{len(vocab)} with different ids" in err and len(err.splitlines()) == 1


def test_unknown_preset_key(tmp_path, tiny_pair, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("reward:\n  name: power\n  alpah: 3\n")
    code, err = _bad(tmp_path, tiny_pair, capsys, "--config", str(preset))
    assert code == 2 and "unknown key 'reward.alpah'" in err and "alpha" in err and len(err.splitlines()) == 1


def test_existing_run_is_not_overwritten(tmp_path, tiny_pair, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    code, err = _bad(tmp_path, tiny_pair, capsys)
    assert code == 2 and "already holds a run" in err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("reward", ["power", "zscore", "full_kl"])
def test_bf16_autocast_update_matches_float32(reward):
    """--dtype bfloat16: the student keeps float32 weights and gradients; the bf16 gradient points the same way."""
    from conftest import make_char_tokenizer, make_tiny_qwen3

    from poweropd.config.sections import RewardConfig
    from poweropd.objectives.losses import make_objective
    from poweropd.rollout.samplers import build_rollouts
    from poweropd.teachers.scorers import HFScorer
    from poweropd.training.update import compute_gradients

    vocab = len(make_char_tokenizer())
    student, teacher = make_tiny_qwen3(vocab, seed=0), make_tiny_qwen3(vocab, hidden=48, seed=1)
    sequences_BL = torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    sequences_BL[0, 8] = 2
    rollouts = build_rollouts(sequences_BL, torch.ones(2, 4, dtype=torch.long), (2, 0), pad_token_id=0)
    scores = HFScorer(teacher).score(rollouts, keep_hidden=True)
    grads = []
    for dtype in (None, torch.bfloat16):
        student.zero_grad(set_to_none=True)
        compute_gradients(
            student, rollouts, scores, make_objective(RewardConfig(name=reward)), micro_batch_size=1, vocab_size=vocab, autocast_dtype=dtype,
        )  # fmt: skip
        assert all(p.grad.dtype == torch.float32 for p in student.parameters() if p.grad is not None)
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[1]).all()
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_full_kl_takes_the_teacher_logprobs_from_its_own_pass():
    """The train loop scores with logprobs=False for full_kl: the fused KL op's teacher log-probs give the
    same gradient and the same logged log ratio as the scorer's; a sampled-token reward refuses to run."""
    from conftest import make_char_tokenizer, make_tiny_qwen3

    from poweropd.config.sections import RewardConfig
    from poweropd.objectives.losses import make_objective
    from poweropd.rollout.samplers import build_rollouts
    from poweropd.teachers.scorers import HFScorer
    from poweropd.training.update import compute_gradients

    vocab = len(make_char_tokenizer())
    student, teacher = make_tiny_qwen3(vocab, seed=0), make_tiny_qwen3(vocab, hidden=48, seed=1)
    sequences_BL = torch.randint(3, vocab, (3, 12), generator=torch.Generator().manual_seed(0))
    sequences_BL[0, 8] = 2
    rollouts = build_rollouts(sequences_BL, torch.ones(3, 4, dtype=torch.long), (2, 0), pad_token_id=0)
    scorer = HFScorer(teacher)
    kwargs = {"micro_batch_size": 2, "vocab_size": vocab}
    results, grads = [], []
    for logprobs in (True, False):
        scores = scorer.score(rollouts, keep_hidden=True, logprobs=logprobs)
        assert (scores.logp_BT is None) != logprobs
        student.zero_grad(set_to_none=True)
        objective = make_objective(RewardConfig(name="full_kl"))
        results.append(compute_gradients(student, rollouts, scores, objective, **kwargs))
        grads.append([p.grad.clone() for p in student.parameters()])
    torch.testing.assert_close(results[1].log_ratio_BT, results[0].log_ratio_BT)
    assert results[1].mask_BT.sum() > 0 and results[1].log_ratio_BT.abs().sum() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="needs the teacher's log-probs"):
        compute_gradients(student, rollouts, scores, make_objective(RewardConfig(name="power")), **kwargs)


def test_resume_keeps_the_teacher_also_for_a_checkpoint_that_does_not_record_it(tiny_pair, tmp_path, capsys):
    """Checkpoints record the teachers (name and model); one written before they did is compared by the run's
    config.yaml instead, so an older run cannot be resumed against another teacher either."""
    student, teacher, prompts = tiny_pair
    out = tmp_path / "run"
    assert main(_train_args(tiny_pair, out, "--max-steps", "2", "--save-every", "2")) == 0
    state = out / "checkpoints" / "step-2" / "state.json"
    assert json.loads(state.read_text())["teachers"] == {"": str(teacher)}
    older = {k: v for k, v in json.loads(state.read_text()).items() if k != "teachers"}
    state.write_text(json.dumps(older))
    other = _train_args((student, student, prompts), out, "--max-steps", "3", "--save-every", "2", "--resume")
    assert main(other) == 2 and "expected the same names and models" in capsys.readouterr().err
    assert main(_train_args(tiny_pair, out, "--max-steps", "3", "--save-every", "2", "--resume")) == 0


@pytest.mark.slow
def test_tv_opd_strength_falls_logs_and_resumes_bit_exactly(tiny_pair, tmp_path):
    """--reward tv: the strength starts at 1, follows TV-OPD eq. 11 from the logged TV estimates (recomputed here
    from the rows), and a run resumed from step 2 ends with the same weights, strengths and losses."""
    from poweropd.objectives.rewards import tv_strength

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ("--reward", "tv", "--tv-alpha", "4", "--tv-beta", "0.5", "--save-every", "2")
    assert main(_train_args(tiny_pair, straight, "--max-steps", "6", *common)) == 0
    assert main(_train_args(tiny_pair, resumed, "--max-steps", "2", *common)) == 0
    assert main(_train_args(tiny_pair, resumed, "--max-steps", "6", "--resume", *common)) == 0
    rows = metric_rows(straight)
    state = {"scale": 1.0, "ema": None, "ref": None}
    for row in rows:  # the strength a step used comes from the estimates of the steps before it
        assert row["reward/strength"] == pytest.approx(state["scale"], rel=1e-12)
        assert 0 <= row["reward/strength_statistic"] <= 1
        state = tv_strength(state, row["reward/strength_statistic"], alpha=4.0, beta=0.5, min_scale=0.1)
    assert rows[0]["reward/strength"] == 1.0
    assert all(abs(r["reward/max"]) <= r["reward/strength"] + 1e-7 for r in rows)  # c · sign(·)
    a, b = (load_file(d / "final" / "model.safetensors") for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(r["loss"], r["reward/strength"]) for r in rows] == [
        (r["loss"], r["reward/strength"]) for r in metric_rows(resumed)
    ]
    saved = json.loads((resumed / "checkpoints" / "step-2" / "state.json").read_text())["reward_strength"]
    expected = {"scale": 1.0, "ema": None, "ref": None}
    for row in rows[:2]:
        expected = tv_strength(expected, row["reward/strength_statistic"], alpha=4.0, beta=0.5, min_scale=0.1)
    assert saved == expected and saved["ref"] == rows[0]["reward/strength_statistic"]


def test_the_strength_moves_with_the_pooled_estimate_of_an_accepted_step():
    """update.advance_strength pools Σ d / Σ valid tokens (not a mean of rows) and applies eq. 11."""
    from poweropd.config import RewardConfig
    from poweropd.run.metrics import UpdateResult
    from poweropd.training.update import advance_strength

    cfg = RewardConfig(name="tv", extra={"tv_alpha": 1.0, "tv_beta": 0.5})
    mask_BT = torch.tensor([[True, True, True], [True, False, False]])
    student_BT = torch.log(torch.full((2, 3), 0.5))
    ratio_BT = torch.log(torch.tensor([[0.5, 1.0, 2.0], [0.25, 1.0, 1.0]])) * mask_BT  # d = 1/2, 0, 0 | 3/4
    result = UpdateResult(0.0, ratio_BT, ratio_BT, student_BT, mask_BT, mask_BT)
    state, statistic = advance_strength(cfg, {"scale": 1.0, "ema": 0.8, "ref": 0.8}, result, SingleProcess())
    assert statistic == pytest.approx((0.5 + 0.75) / 4)  # pooled over the 4 valid tokens
    assert state["ema"] == pytest.approx(0.5 * 0.8 + 0.5 * statistic)
    assert state["scale"] == pytest.approx((state["ema"] + 1e-8) / (0.8 + 1e-8))


@pytest.mark.slow
def test_the_kl_baseline_and_a_teacher_temperature_train_and_are_logged(tiny_pair, tmp_path):
    """--reward log_ratio --reward-baseline kl trains (the teacher's hidden states kept, its log ratio logged);
    --teacher-temperature 2 is logged as teacher/temperature and changes the signal; the default logs the rollout
    temperature."""
    runs = {"plain": (), "vopd": ("--reward-baseline", "kl"), "hot": ("--teacher-temperature", "2")}
    for name, extra in runs.items():
        assert main(_train_args(tiny_pair, tmp_path / name, "--max-steps", "2", "--reward", "log_ratio", *extra)) == 0
    plain, vopd, hot = (metric_rows(tmp_path / n) for n in runs)
    assert [r["teacher/temperature"] for r in plain + vopd] == [1.0] * 4
    assert [r["teacher/temperature"] for r in hot] == [2.0] * 2
    # step 1 samples the same rollouts in all three runs; vOPD's reward is its log ratio + KL ≥ 0 at every token;
    # the teacher at its own temperature gives another log ratio
    assert vopd[0]["response_length/mean"] == plain[0]["response_length/mean"] == hot[0]["response_length/mean"]
    assert vopd[0]["reward/mean"] > vopd[0]["log_ratio/mean"] and plain[0]["reward/mean"] == plain[0]["log_ratio/mean"]
    assert hot[0]["log_ratio/mean"] != pytest.approx(plain[0]["log_ratio/mean"], abs=1e-3)
