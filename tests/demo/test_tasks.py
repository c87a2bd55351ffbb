"""The embedded arithmetic task: generator, split, tokenizer, and the cached teacher/student zoo."""

from __future__ import annotations

import hashlib
import json
import re
import time

import pytest

from poweropd.data import INSTRUCTION, encode_prompts, read_jsonl, render_prompt
from poweropd.demo.tasks import arithmetic
from poweropd.demo.tasks.recipe import SHIPPED_DIR, TaskConfig, TinyQwen3, prepare_task_models
from poweropd.demo.tasks.sft import SFTConfig, accuracy, encode_sft_batch, load_task_model
from poweropd.demo.tasks.tokenizer import build_tokenizer
from poweropd.errors import UserError
from poweropd.eval.grading import grade
from poweropd.models.hf import stop_token_ids

PROBLEM = re.compile(r"^Compute (\d+)((?: [+-] \d+)+)\.$")
STEP = re.compile(r"^(\d+) ([+-]) (\d+) = (\d+)$")


def parse(problem: str) -> tuple[int, list[tuple[str, int]]]:
    match = PROBLEM.match(problem)
    assert match, problem
    ops = re.findall(r"([+-]) (\d+)", match.group(2))
    return int(match.group(1)), [(op, int(n)) for op, n in ops]


@pytest.fixture(scope="module")
def splits():
    return arithmetic.make_splits(seed=0, n_test=300, n_train=3000)


def test_answers_recomputed_from_the_problem_text(splits):
    for row in splits[0] + splits[1]:
        first, steps = parse(row["problem"])
        assert 1 <= len(steps) <= 3
        assert all(10 <= n <= 99 for n in [first] + [n for _, n in steps])
        value = first
        for op, n in steps:
            value = value + n if op == "+" else value - n
            assert 0 <= value <= 99, row  # the documented range of every intermediate result
        assert row["answer"] == str(value)


def test_reference_steps_are_correct_and_follow_the_problem(splits):
    for row in splits[1]:
        first, steps = parse(row["problem"])
        *lines, last = row["response"].split("\n")
        assert last == f"The answer is \\boxed{{{row['answer']}}}."
        assert len(lines) == len(steps)
        value = first
        for line, (op, n) in zip(lines, steps):
            a, line_op, b, c = STEP.match(line).groups()
            assert (int(a), line_op, int(b)) == (value, op, n)
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            value = int(c)
        assert grade(row["response"], row["answer"])  # the real grader accepts every reference


def test_split_is_disjoint_distinct_and_random(splits):
    train, test = splits
    test_problems = {row["problem"] for row in test}
    assert len(test_problems) == len(test) == 300
    assert test_problems.isdisjoint(row["problem"] for row in train)
    # A hash split once held out exactly the sums ending in 0; a random split covers every last digit,
    # every operation count and both operators.
    assert {row["answer"][-1] for row in test} == set("0123456789")
    assert {len(parse(row["problem"])[1]) for row in test} == {1, 2, 3}
    assert {op for row in test for op, _ in parse(row["problem"])[1]} == {"+", "-"}
    assert all(sum(len(parse(r["problem"])[1]) == k for r in test) > 100 / 4 for k in (1, 2, 3))


def test_validation_split_is_disjoint_from_test_and_train():
    train, validation, test = arithmetic.make_splits(seed=0, n_test=300, n_train=3000, n_validation=200)
    assert test == arithmetic.make_splits(seed=0, n_test=300, n_train=10)[1]  # adding it leaves test alone
    val = {row["problem"] for row in validation}
    assert len(val) == 200
    assert val.isdisjoint(row["problem"] for row in test)
    assert val.isdisjoint(row["problem"] for row in train)


def test_parse_problem_inverts_problem_text(splits):
    for row in splits[1]:
        assert arithmetic.problem_text(*arithmetic.parse_problem(row["problem"])) == row["problem"]


def test_base_response_styles_by_hand():
    class NoSlip:  # an rng whose random() never slips
        def random(self):
            return 0.99

    steps = [("+", 18), ("-", 23)]
    assert arithmetic.base_response(47, steps, "direct", NoSlip(), 0.5) == "The answer is \\boxed{42}."
    assert arithmetic.base_response(47, steps, "steps", NoSlip(), 0.5) == (
        "47 + 18 = 65\n65 - 23 = 42\nThe answer is \\boxed{42}."
    )
    assert arithmetic.base_response(47, steps, "checks", NoSlip(), 0.5) == (
        "47 + 18 = 65\nCheck: 65 - 18 = 47\n65 - 23 = 42\nCheck: 42 + 23 = 65\nThe answer is \\boxed{42}."
    )


def test_base_corpus_slips_at_its_rate_and_stays_in_range():
    mix = {"direct": 0.25, "steps": 0.5, "checks": 0.25}
    stream = arithmetic.iter_base_corpus(0, set(), mix, slip_rate=0.5)
    rows = [next(stream) for _ in range(4000)]
    styles = [row["style"] for row in rows]
    for style, weight in mix.items():
        assert styles.count(style) / len(rows) == pytest.approx(weight, abs=0.03)
    slipped = total = 0
    for row in rows:
        numbers = [int(x) for x in re.findall(r"\d+", row["response"])]
        assert all(0 <= x <= 99 for x in numbers), row
        boxed = int(re.search(r"boxed\{(\d+)\}", row["response"]).group(1))
        if row["style"] == "direct":
            continue
        value = parse(row["problem"])[0]
        for line in row["response"].split("\n")[:-1]:
            if line.startswith("Check: "):
                continue
            a, op, b, c = STEP.match(line).groups()
            assert int(a) == value  # every step goes on from the previous (possibly slipped) result
            true = int(a) + int(b) if op == "+" else int(a) - int(b)
            total += 1
            slipped += int(c) != true
            assert int(c) - true in (0, -10, -1, 1, 10)
            value = int(c)
        assert boxed == value
    # ~6,000 step lines: the binomial error of the rate is 0.0065; a slip is skipped only where it would
    # leave 0–99 later, so the rate sits at or a little below 0.5
    assert 0.45 < slipped / total < 0.52


def test_split_is_seeded(splits):
    again = arithmetic.make_splits(seed=0, n_test=300, n_train=3000)
    assert again == splits
    other_test = {row["problem"] for row in arithmetic.make_splits(seed=1, n_test=300, n_train=10)[1]}
    assert len(other_test & {row["problem"] for row in splits[1]}) < 30


def test_jsonl_is_readable_by_train_data(tmp_path, splits):
    path = arithmetic.write_jsonl(splits[1][:5], tmp_path / "sub" / "test.jsonl")
    rows = read_jsonl(path, required=("problem", "answer"))
    assert rows == splits[1][:5]
    assert set(rows[0]) == {"id", "problem", "answer", "response"}


def test_tokenizer_round_trips_task_text_and_printable_ascii(splits):
    tokenizer = build_tokenizer()
    texts = [row[k] for row in splits[1] for k in ("problem", "response")]
    texts += ["".join(chr(c) for c in range(32, 127)) + "\n", INSTRUCTION, "Compute 5 - 7.\n\\boxed{-2}"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids
    # Digits stay single tokens (what makes column arithmetic learnable); words shorten the prompt.
    assert tokenizer.tokenize("47 + 18 = 65") == ["4", "7", " + ", "1", "8", " = ", "6", "5"]
    assert len(encode_prompts(tokenizer, ["Compute 47 + 18 - 23."])[0]) < 40


def test_chat_template_and_special_tokens(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer()
    prompt = render_prompt(tokenizer, "Compute 47 + 18.")
    assert prompt == (
        "<|im_start|>user\nCompute 47 + 18.\n" + INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2
    assert ids.count(tokenizer.eos_token_id) == 1
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == "user\nCompute 47 + 18.\n" + INSTRUCTION + "\nassistant\n"
    )

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert render_prompt(reloaded, "Compute 47 + 18.") == prompt
    assert reloaded(prompt, add_special_tokens=False)["input_ids"] == ids
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert stop_token_ids(reloaded) == sorted([tokenizer.eos_token_id, tokenizer.pad_token_id])


def test_sft_labels_cover_the_response_and_its_stop_token_only(splits):
    tokenizer = build_tokenizer()
    rows = splits[1][:4]
    input_ids_BL, attention_mask_BL, labels_BL = encode_sft_batch(tokenizer, rows)
    for i, row in enumerate(rows):
        labelled = labels_BL[i][labels_BL[i] != -100].tolist()
        assert tokenizer.decode(labelled) == row["response"] + "<|im_end|>"
        length = int(attention_mask_BL[i].sum())
        assert (
            tokenizer.decode(input_ids_BL[i, :length].tolist())
            == render_prompt(tokenizer, row["problem"]) + row["response"] + "<|im_end|>"
        )
        assert (input_ids_BL[i, length:] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: TaskConfig(n_test=0), "TaskConfig.n_test"),
        (lambda: TaskConfig(num_threads=0), "TaskConfig.num_threads"),
        (lambda: SFTConfig(steps=10, lr=0.0), "SFTConfig.lr"),
        (lambda: SFTConfig(steps=10, lr=1e-3, warmup_steps=20), "SFTConfig.warmup_steps"),
        (
            lambda: TinyQwen3(
                hidden_size=100, num_layers=2, num_heads=3, num_kv_heads=3, intermediate_size=64
            ),
            "TinyQwen3.num_heads",
        ),
    ],
)
def test_config_validation_names_the_field(make, field):
    with pytest.raises(UserError, match=re.escape(field)):
        make()


def test_cache_key_follows_what_changes_the_models():
    base = TaskConfig()
    assert base.model_key("teacher") == TaskConfig().model_key("teacher")
    assert base.model_key("teacher") != TaskConfig(seed=1).model_key("teacher")
    student_only = TaskConfig(student_sft=SFTConfig(steps=10, lr=1e-3, warmup_steps=5))
    assert student_only.model_key("teacher") == base.model_key("teacher")
    assert student_only.model_key("student") != base.model_key("student")


def test_shipped_models_are_used_without_training_and_score_what_they_claim(tmp_path, monkeypatch):
    """An empty cache gets the shipped teacher and student (no SFT, seconds), and they score here, measured
    from the files, what their metadata says: a teacher that solves the task, a student far below it."""
    monkeypatch.setenv("POWEROPD_CACHE", str(tmp_path))
    start = time.perf_counter()
    task = prepare_task_models(progress=False)
    assert time.perf_counter() - start < 5.0
    assert task.shipped and task.teacher_dir == SHIPPED_DIR / "teacher"
    assert not any(tmp_path.rglob("*.safetensors"))  # only the JSONL splits were written
    test_rows = read_jsonl(task.test_jsonl, required=("problem", "answer"))
    for role in ("teacher", "student"):
        folder = getattr(task, f"{role}_dir")
        meta = json.loads((folder / "poweropd_task.json").read_text())
        assert meta["key"] == TaskConfig().model_key(role)
        assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == meta["sha256"]
        model, tokenizer = load_task_model(folder)
        assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
        # greedy decisions could flip on a near-tie on another float path: agree to 1% of the problems
        assert accuracy(model, tokenizer, test_rows, max_new_tokens=64) == pytest.approx(
            meta["accuracy"], abs=0.01
        )
    assert task.teacher_accuracy >= 0.97
    student_meta = json.loads((task.student_dir / "poweropd_task.json").read_text())
    assert 0.15 <= student_meta["avg@8"] <= 0.6  # miscalibrated: it samples far below the teacher


def test_retraining_a_shipped_config_goes_to_the_cache(tmp_path, monkeypatch):
    """--retrain-task-models never writes into the package: a retrained model lands in the cache. (Small splits
    and a short evaluation cap: the caching is what is tested; the default 300 test problems × 64 tokens made
    this test 2 min 18 s of CI.)"""
    monkeypatch.setenv("POWEROPD_CACHE", str(tmp_path))
    config = TaskConfig(
        teacher_sft=SFTConfig(steps=3, lr=1e-3, warmup_steps=1),
        student_sft=SFTConfig(steps=3, lr=1e-3, warmup_steps=1),
        n_test=16,
        n_validation=8,
        n_train=32,
        eval_max_new_tokens=8,
    )
    task = prepare_task_models(config, progress=False)
    assert not task.shipped and task.teacher_dir.is_relative_to(tmp_path)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "tasks").rglob("*") if p.is_file()}
    assert prepare_task_models(config, progress=False) == task  # cached: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "tasks").rglob("*") if p.is_file()} == files
    again = prepare_task_models(config, retrain=True, progress=False)
    assert again.teacher_dir == task.teacher_dir
    assert (again.teacher_dir / "model.safetensors").stat().st_mtime_ns != files[
        task.teacher_dir / "model.safetensors"
    ]


@pytest.mark.slow
def test_the_recipe_writes_the_shipped_files(tmp_path, monkeypatch):
    """The recipe, rerun from scratch here, reaches its targets; on the float path the shipped files were made
    on (the pinned path of tasks/floatpath.py, compared by fingerprint) it writes them bit for bit."""
    from poweropd.demo.tasks.floatpath import fingerprint

    monkeypatch.setenv("POWEROPD_CACHE", str(tmp_path))
    task = prepare_task_models(retrain=True, progress=False)
    assert not task.shipped
    same_path = (
        fingerprint()
        == json.loads((SHIPPED_DIR / "teacher" / "poweropd_task.json").read_text())["float_path"]
    )
    for role in ("teacher", "student"):
        made = json.loads((getattr(task, f"{role}_dir") / "poweropd_task.json").read_text())
        shipped = json.loads((SHIPPED_DIR / role / "poweropd_task.json").read_text())
        assert made["key"] == shipped["key"]
        if same_path:
            assert made["sha256"] == shipped["sha256"], (
                f"{role}: the recipe no longer writes the shipped weights"
            )
            assert made["accuracy"] == shipped["accuracy"] and made["avg@8"] == shipped["avg@8"]
        else:  # another float path: another trajectory, which the recipe's margins must absorb
            assert made["avg@8"] == pytest.approx(shipped["avg@8"], abs=0.1)
    assert task.teacher_accuracy >= 0.95
