"""The corpus of bad inputs (docs/reliability.md): each is one line on stderr naming the input and what was
expected, exit code 2, and whatever the output folder held before is still there, byte for byte."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_char_tokenizer

from poweropd.cli import main

SENTINEL = "sentinel.txt"


@pytest.fixture(scope="module")
def world(tiny_pair, tmp_path_factory):
    """Files every case can point at: the tiny pair, prompt files good and bad, tokenizer variants, a run."""
    from transformers import AutoModelForCausalLM

    student, teacher, prompts = tiny_pair
    root = tmp_path_factory.mktemp("bad_inputs")
    files = {"student": student, "teacher": teacher, "prompts": prompts, "root": root}
    (root / "garbled.jsonl").write_text('{"problem": "1+1"}\n{"problem": "2+2"\n')
    (root / "no_field.jsonl").write_text('{"question": "1+1"}\n')
    (root / "not_object.jsonl").write_text('["1+1"]\n')
    (root / "empty.jsonl").write_text("")
    (root / "long.jsonl").write_text(json.dumps({"problem": "x" * 600}) + "\n")
    (root / "bad_type.yaml").write_text("optim:\n  lr: fast\n")
    (root / "unknown_key.yaml").write_text("optim:\n  learning_rate: 0.1\n")
    (root / "garbled.yaml").write_text("optim: [lr: 1\n")
    (root / "a_file").write_text("not a folder")
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"problem": ["1+1"]})}).save_to_disk(
        str(root / "ds")
    )
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "README.md").write_text("hello")

    def variant(name, tokenizer, rows=None):
        folder = root / name
        model = AutoModelForCausalLM.from_pretrained(teacher)
        if rows is not None:
            model.resize_token_embeddings(rows)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        files[name] = folder

    base = make_char_tokenizer()
    bigger = make_char_tokenizer()
    bigger.add_tokens(["<extra>"])
    variant("other_vocab", bigger)
    swapped = make_char_tokenizer(swap=("a", "b"))
    variant("other_ids", swapped)
    other_eos = make_char_tokenizer()
    other_eos.eos_token = "<|endoftext|>"
    variant("other_eos", other_eos)
    variant("few_rows", base, rows=len(base) - 5)

    run = root / "run"
    assert main(_train(files, run, "--save-every", "1")) == 0
    files["run"] = run
    return files


def _train(files, out, *extra):
    return [
        "train", "--student", str(files["student"]), "--teacher", str(files["teacher"]),
        "--data", str(files["prompts"]), "--output-dir", str(out), "--batch-size", "4",
        "--max-new-tokens", "8", "--max-steps", "2", "--no-progress", *extra,
    ]  # fmt: skip


def _set(argv, flag, value):
    """argv with ``flag``'s value replaced."""
    argv = list(argv)
    argv[argv.index(flag) + 1] = str(value)
    return argv


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# (id, builds argv from the files and a fresh output folder, what stderr must name)
# fmt: off
CASES = [
    ("train-data-missing", lambda f, o: _set(_train(f, o), "--data", f["root"] / "nope.jsonl"), "nope.jsonl: file not found"),
    ("train-data-garbled", lambda f, o: _set(_train(f, o), "--data", f["root"] / "garbled.jsonl"), "garbled.jsonl:2: expected one JSON object"),
    ("train-data-no-field", lambda f, o: _set(_train(f, o), "--data", f["root"] / "no_field.jsonl"), "no_field.jsonl:1: expected a non-empty string field 'problem'"),
    ("train-data-not-object", lambda f, o: _set(_train(f, o), "--data", f["root"] / "not_object.jsonl"), "not_object.jsonl:1: expected a JSON object"),
    ("train-data-empty", lambda f, o: _set(_train(f, o), "--data", f["root"] / "empty.jsonl"), "empty.jsonl"),
    ("train-prompt-too-long", lambda f, o: _set(_train(f, o), "--data", f["root"] / "long.jsonl"), "context of 512 positions"),
    ("train-yaml-type", lambda f, o: [*_train(f, o), "--config", str(f["root"] / "bad_type.yaml")], "optim.lr: expected float"),
    ("train-yaml-unknown-key", lambda f, o: [*_train(f, o), "--config", str(f["root"] / "unknown_key.yaml")], "learning_rate"),
    ("train-yaml-garbled", lambda f, o: [*_train(f, o), "--config", str(f["root"] / "garbled.yaml")], "garbled.yaml"),
    ("train-yaml-missing", lambda f, o: [*_train(f, o), "--config", str(f["root"] / "nope.yaml")], "nope.yaml"),
    ("train-alpha-zero", lambda f, o: [*_train(f, o), "--reward", "power", "--alpha", "0"], "alpha"),
    ("train-micro-batch", lambda f, o: [*_set(_train(f, o), "--batch-size", 6), "--micro-batch-size", "4"], "micro_batch_size"),
    ("train-max-new-tokens", lambda f, o: _set(_train(f, o), "--max-new-tokens", 0), "max_new_tokens"),
    ("train-temperature", lambda f, o: [*_train(f, o), "--temperature", "0"], "temperature"),
    ("train-teacher-temperature", lambda f, o: [*_train(f, o), "--teacher-temperature", "-1"], "teacher_temperature"),
    ("train-baseline-reward", lambda f, o: [*_train(f, o), "--reward", "power", "--reward-baseline", "kl"], "reward-baseline"),
    ("train-tv-min-scale", lambda f, o: [*_train(f, o), "--reward", "tv", "--tv-min-scale", "0"], "tv_min_scale"),
    ("train-keep-last", lambda f, o: [*_train(f, o), "--keep-last", "-1"], "keep_last"),
    ("train-merge-without-lora", lambda f, o: [*_train(f, o), "--merge-lora"], "--lora-rank > 0"),
    ("train-lora-dropout", lambda f, o: [*_train(f, o), "--lora-rank", "4", "--lora-dropout", "1.5"], "lora_dropout"),
    ("train-data-split", lambda f, o: [*_set(_train(f, o), "--data", f["root"] / "ds"), "--data-split", "dev"], "expected a split 'dev'"),
    ("train-data-field", lambda f, o: [*_set(_train(f, o), "--data", f["root"] / "ds"), "--data-field", "question"], "expected a column 'question'"),
    ("train-report-to", lambda f, o: [*_train(f, o), "--report-to", "jsonl,mlflow"], "run.report_to"),
    ("train-unknown-reward", lambda f, o: [*_train(f, o), "--reward", "bogus"], "--reward"),
    ("train-tokenizer-vocab", lambda f, o: _set(_train(f, o), "--teacher", f["other_vocab"]), "1 only in teacher"),
    ("train-tokenizer-ids", lambda f, o: _set(_train(f, o), "--teacher", f["other_ids"]), "2 with different ids"),
    ("train-tokenizer-specials", lambda f, o: _set(_train(f, o), "--teacher", f["other_eos"]), "end-of-sequence"),
    ("train-teacher-rows", lambda f, o: _set(_train(f, o), "--teacher", f["few_rows"]), "output layer has"),
    ("train-not-a-model", lambda f, o: _set(_train(f, o), "--student", f["root"] / "not_a_model"), "not_a_model"),
    ("train-output-is-file", lambda f, o: _set(_train(f, o), "--output-dir", f["root"] / "a_file"), "expected a folder, found a file"),
    ("train-output-unwritable", lambda f, o: _set(_train(f, o), "--output-dir", "/proc/poweropd-run"), "expected a writable folder"),
    ("train-existing-run", lambda f, o: _set(_train(f, o), "--output-dir", f["run"]), "already holds a run"),
    ("train-resume-nothing", lambda f, o: [*_train(f, o), "--resume"], "no complete checkpoint"),
    ("train-resume-other-reward", lambda f, o: [*_set(_train(f, o), "--output-dir", f["run"]), "--resume", "--reward", "zscore"], "reward.name"),
    ("train-resume-other-model", lambda f, o: [*_set(_train(f, o), "--output-dir", f["run"]), "--resume", "--student", str(f["teacher"])], "model.student"),
    ("eval-unknown-benchmark", lambda f, o: ["eval", "--model", str(f["student"]), "--benchmarks", "gsm9k", "--output-dir", str(o)], "unknown benchmark"),
    ("eval-n-zero", lambda f, o: ["eval", "--model", str(f["student"]), "--benchmarks", "gsm8k", "--n", "0", "--data-dir", str(f["root"]), "--output-dir", str(o)], "--n"),
    ("eval-output-is-file", lambda f, o: ["eval", "--model", str(f["student"]), "--benchmarks", "gsm8k", "--data-dir", str(f["root"]), "--output-dir", str(f["root"] / "a_file")], "found a file"),
    ("diagnose-data-missing", lambda f, o: ["diagnose", "--teacher", str(f["teacher"]), "--student", str(f["student"]), "--data", str(f["root"] / "nope.jsonl"), "--output-dir", str(o)], "nope.jsonl"),
    ("diagnose-alphas", lambda f, o: ["diagnose", "--teacher", str(f["teacher"]), "--student", str(f["student"]), "--data", str(f["prompts"]), "--alphas", "a,b", "--output-dir", str(o)], "--alphas"),
    ("diagnose-tokenizers", lambda f, o: ["diagnose", "--teacher", str(f["other_ids"]), "--student", str(f["student"]), "--data", str(f["prompts"]), "--output-dir", str(o)], "different ids"),
    ("prune-layers", lambda f, o: ["prune", "--model", str(f["student"]), "--keep-layers", "0-9", "--output-dir", str(o / "pruned")], "--keep-layers"),
    ("prune-not-a-model", lambda f, o: ["prune", "--model", str(f["root"] / "not_a_model"), "--keep-layers", "0", "--output-dir", str(o / "pruned")], "not_a_model"),
    ("demo-method", lambda f, o: ["demo", "--methods", "bogus", "--output-dir", str(o)], "--methods bogus"),
    ("demo-seeds", lambda f, o: ["demo", "--seeds", "0", "--output-dir", str(o)], "--seeds"),
    ("train-vllm-head-size", lambda f, o: [*_train(f, o), "--rollout-engine", "vllm"], "; use --rollout-engine generate, loop or continuous"),  # head size 8, or no vLLM
    ("train-vllm-kv-cache", lambda f, o: [*_train(f, o), "--rollout-engine", "vllm", "--vllm-kv-cache-gb", "0"], "--vllm-kv-cache-gb"),
    ("eval-vllm-gpu-fraction", lambda f, o: ["eval", "--model", str(f["student"]), "--benchmarks", "gsm8k", "--rollout-engine", "vllm", "--vllm-gpu-memory-utilization", "1.5", "--output-dir", str(o)], "--vllm-gpu-memory-utilization"),
    ("demo-vllm-head-size", lambda f, o: ["demo", "--rollout-engine", "vllm", "--output-dir", str(o)], "--rollout-engine vllm with the task student"),
]
# fmt: on


@pytest.mark.parametrize(("name", "build", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(world, tmp_path, capsys, name, build, expected):
    out = tmp_path / "out"
    out.mkdir()
    (out / SENTINEL).write_text("kept")
    before = _snapshot(world["run"])
    argv = build(world, out)
    with pytest.raises(SystemExit) as exited:  # argparse-level errors exit from the parser
        sys.exit(main(argv))
    assert exited.value.code == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert (out / SENTINEL).read_text() == "kept" and sorted(p.name for p in out.iterdir()) == [SENTINEL]
    assert _snapshot(world["run"]) == before  # a refused --resume changes nothing of the run


def test_corrupt_checkpoint_files_are_named(world, tmp_path, capsys):
    for name, cut in (("optimizer.pt", 100), ("model.safetensors", 50), ("rng.pt", 10)):
        run = tmp_path / name
        shutil.copytree(world["run"], run)
        target = run / "checkpoints" / "step-2" / name
        target.write_bytes(target.read_bytes()[:cut])
        before = _snapshot(run)
        assert main([*_set(_train(world, run), "--max-steps", 3), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "step-2" in err[0], err
        assert _snapshot(run) == before


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_what_was_written(world, tmp_path):
    """Files capped at 200 kB (RLIMIT_FSIZE): the first checkpoint's weights do not fit."""
    out = tmp_path / "run"
    argv = _set(_train(world, out, "--save-every", "2"), "--max-steps", 3)
    proc = subprocess.run([sys.executable, "-m", "poweropd.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_limit_file_size, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "disk" in err[0] and str(out) in err[0], err
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]  # every logged step is intact
    assert not list((out / "checkpoints").glob("*"))  # no half checkpoint, not even a temporary one


def test_a_model_with_its_own_code_is_refused_unless_asked(world, tmp_path, capsys):
    """A folder whose config maps the Auto classes to Python files of its own: nothing of it runs."""
    folder = tmp_path / "custom"
    shutil.copytree(world["student"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "poweropd-custom"  # no class of transformers' own: only its code could load it
    config["auto_map"] = {
        "AutoConfig": "configuration_x.XConfig",
        "AutoModelForCausalLM": "modeling_x.XModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_x.py").write_text("raise SystemExit('this code must not run')\n")
    (folder / "configuration_x.py").write_text("raise SystemExit('this code must not run')\n")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(folder), "--keep-layers", "0", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-remote-code" in err[0] and str(folder) in err[0], err
    assert not out.exists()
