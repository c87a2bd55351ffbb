"""Prompts through `datasets` (parquet, save_to_disk folders, hub ids) and metrics to every --report-to tracker."""

import json
from pathlib import Path

import pytest
import torch

from poweropd.cli import main
from poweropd.data import load_problems
from poweropd.errors import UserError


@pytest.fixture(scope="module")
def stores(tiny_pair, tmp_path_factory):
    """The tiny pair's prompts as a DatasetDict folder (train/test, column `question`) and a parquet file."""
    import datasets

    root = tmp_path_factory.mktemp("stores")
    rows = [json.loads(line) for line in Path(tiny_pair[2]).read_text().splitlines()]
    questions = [r["problem"] for r in rows]
    folder = root / "dataset"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"question": questions, "answer": [r["answer"] for r in rows]}
            ),
            "test": datasets.Dataset.from_dict({"question": questions[:3], "answer": ["0"] * 3}),
        }
    ).save_to_disk(str(folder))
    parquet = root / "prompts.parquet"
    datasets.Dataset.from_dict({"problem": questions}).to_parquet(str(parquet))
    return {"folder": folder, "parquet": parquet, "questions": questions}


def test_problems_from_jsonl_parquet_and_a_dataset_folder_agree(tiny_pair, stores):
    from_jsonl = load_problems(str(tiny_pair[2]))
    assert from_jsonl == stores["questions"]
    assert load_problems(str(stores["parquet"])) == from_jsonl
    assert load_problems(str(stores["folder"]), field="question") == from_jsonl
    assert load_problems(str(stores["folder"]), split="test", field="question") == from_jsonl[:3]


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("folder", {"field": "problem"}, "expected a column 'problem' (--data-field), found question, answer"),
        ("folder", {"split": "validation", "field": "question"}, "expected a split 'validation' (--data-split), found train, test"),
        ("parquet", {"field": "text"}, "expected a column 'text'"),
        ("hub", {}, "could not load it as a Hugging Face dataset"),
    ],
)  # fmt: skip
def test_dataset_errors_name_the_input(stores, source, kwargs, message, monkeypatch):
    import datasets
    import huggingface_hub.constants

    # read at import time, so set where they are read (an offline machine only fails slower, after retries)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "poweropd-tests/no-such-dataset" if source == "hub" else str(stores[source])
    with pytest.raises(UserError) as err:
        load_problems(name, **kwargs)
    assert message in str(err.value) and name in str(err.value) and "\n" not in str(err.value)


def _train(pair, data, out, *extra):
    student, teacher, _ = pair
    return [
        "train", "--student", str(student), "--teacher", str(teacher), "--data", str(data), "--output-dir",
        str(out), "--batch-size", "4", "--max-new-tokens", "6", "--max-steps", "2", "--save-every", "0",
        "--no-progress", *extra,
    ]  # fmt: skip


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_training_on_a_dataset_folder_equals_training_on_the_jsonl(tiny_pair, stores, tmp_path):
    assert main(_train(tiny_pair, tiny_pair[2], tmp_path / "jsonl")) == 0
    assert main(_train(tiny_pair, stores["folder"], tmp_path / "folder", "--data-field", "question")) == 0
    same = ("loss", "reward/mean", "response_length/mean", "grad/norm")
    assert [[r[k] for k in same] for r in _rows(tmp_path / "jsonl")] == [
        [r[k] for k in same] for r in _rows(tmp_path / "folder")
    ]


def test_wandb_offline_run_holds_every_metric_name_and_the_config(tiny_pair, tmp_path, monkeypatch):
    """A real offline wandb run: its record file (protobuf, written by wandb's core) holds every metric name
    of metrics.jsonl and the config's values."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(_train(tiny_pair, tiny_pair[2], out, "--report-to", "jsonl,wandb", "--reward", "zscore")) == 0
    assert not (out / "tb").exists()  # only the trackers asked for
    records = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 1 and (out / "wandb_id").read_text().strip() in records[0].name
    data = records[0].read_bytes()
    for key in _rows(out)[-1]:
        assert key.encode() in data, key
    assert b"zscore" in data and b"max_new_tokens" in data


def test_wandb_tracker_logs_the_config_once_and_each_row_by_step(tiny_pair, tmp_path, monkeypatch):
    """The tracker's calls, recorded by a stand-in wandb module: init once with the resolved config, then one
    log per step with the metric names of metrics.jsonl; the same run id again on --resume."""
    import importlib.machinery
    import sys
    import types

    calls = []

    class Run:
        def log(self, row, step):
            calls.append(("log", step, sorted(row)))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.append(("init", kw["id"], kw["config"])) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    argv = _train(tiny_pair, tiny_pair[2], out, "--report-to", "jsonl,wandb", "--save-every", "1")
    assert main(argv) == 0
    inits = [c for c in calls if c[0] == "init"]
    assert (
        len(inits) == 1 and inits[0][2]["run"]["max_steps"] == 2 and inits[0][2]["reward"]["name"] == "power"
    )
    rows = _rows(out)
    scalar = lambda r: sorted(k for k, v in r.items() if k != "step" and isinstance(v, int | float))  # noqa: E731
    assert [c[1:] for c in calls if c[0] == "log"] == [(r["step"], scalar(r)) for r in rows]
    assert calls[-1] == ("finish",)
    calls.clear()
    assert main([*_set_steps(argv, 3), "--resume"]) == 0
    assert [c[1] for c in calls if c[0] == "init"] == [inits[0][1]]  # the same wandb run continues
    assert [c[1] for c in calls if c[0] == "log"] == [3]


def _set_steps(argv, steps):
    argv = list(argv)
    argv[argv.index("--max-steps") + 1] = str(steps)
    return argv


def test_report_to_names_the_bad_tracker(tiny_pair, tmp_path, capsys):
    assert main(_train(tiny_pair, tiny_pair[2], tmp_path / "run", "--report-to", "jsonl,mlflow")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.report_to (--report-to)" in err[0] and "mlflow" in err[0]
    assert not (tmp_path / "run").exists()


def test_gradient_checkpointing_keeps_the_gradient_and_saves_fewer_activations(tiny_pair):
    """The same update with and without --gradient-checkpointing: equal gradients, and the bytes the autograd
    graph keeps for the backward pass (counted by saved_tensors_hooks) drop."""
    import torch
    from transformers import AutoModelForCausalLM

    from poweropd.config import RewardConfig
    from poweropd.losses import make_objective
    from poweropd.models import enable_checkpointing
    from poweropd.rollout import HFSampler, SamplingConfig
    from poweropd.teacher import HFScorer
    from poweropd.update import compute_gradients

    student_dir, teacher_dir, _ = tiny_pair
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    torch.manual_seed(0)
    probe = AutoModelForCausalLM.from_pretrained(student_dir)
    rollouts = HFSampler(probe, 0, SamplingConfig(max_new_tokens=12, stop_token_ids=(2,))).sample(
        [[1, 40, 41]] * 4
    )
    scores = HFScorer(teacher).score(rollouts)
    grads, saved = {}, {}
    for checkpointing in (False, True):
        student = AutoModelForCausalLM.from_pretrained(student_dir).train()
        if checkpointing:
            enable_checkpointing(student)
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            compute_gradients(student, rollouts, scores, make_objective(RewardConfig(name="power", alpha=1.0)),
                              micro_batch_size=4)  # fmt: skip
        grads[checkpointing] = {
            n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None
        }
        saved[checkpointing] = total[0]
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-7)
    assert saved[True] < 0.8 * saved[False], saved


def test_train_with_gradient_checkpointing_gives_the_same_run(tiny_pair, tmp_path):
    assert main(_train(tiny_pair, tiny_pair[2], tmp_path / "plain")) == 0
    assert main(_train(tiny_pair, tiny_pair[2], tmp_path / "ckpt", "--gradient-checkpointing")) == 0
    same = ("loss", "reward/mean", "grad/norm", "response_length/mean")
    plain, ckpt = _rows(tmp_path / "plain"), _rows(tmp_path / "ckpt")
    for a, b in zip(plain, ckpt, strict=True):
        assert [a[k] for k in same] == pytest.approx([b[k] for k in same], rel=1e-5)


def test_teacher_device_places_the_teacher_there_and_names_a_missing_one(
    tiny_pair, tmp_path, monkeypatch, capsys
):
    """On this CPU machine the only other device name is the same device: the run is the same run, the teacher
    loaded onto the named device; a GPU that is not there is a one-line error before anything is written."""
    import poweropd.models as models_module
    import poweropd.setup as setup_module

    placed = {}
    real = models_module.load_causal_lm

    def spy(name, **kwargs):
        placed[kwargs["what"]] = str(kwargs["device"])
        return real(name, **kwargs)

    monkeypatch.setattr(setup_module, "load_causal_lm", spy)  # the student
    monkeypatch.setattr(models_module, "load_causal_lm", spy)  # teachers (teacher.load_teachers)
    assert main(_train(tiny_pair, tiny_pair[2], tmp_path / "plain")) == 0
    assert main(_train(tiny_pair, tiny_pair[2], tmp_path / "placed", "--teacher-device", "cpu:0")) == 0
    assert placed["--teacher"] == "cpu:0"
    timing = ("time/", "tokens_per_s", "memory/")
    plain, placed_rows = ([{k: v for k, v in r.items() if not k.startswith(timing)} for r in _rows(tmp_path / run)]
                          for run in ("plain", "placed"))  # fmt: skip
    assert plain == placed_rows
    missing = [("--teacher-device", f"cuda:{torch.cuda.device_count()}"), ("--teacher-device", "tpu")]
    missing += [("--device", "cuda")] if not torch.cuda.is_available() else []
    for flag, value in missing:
        capsys.readouterr()
        assert main(_train(tiny_pair, tiny_pair[2], tmp_path / "missing", flag, value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"poweropd train: error: {flag} {value}: expected cpu, cuda or cuda:N of a visible GPU (this machine "
                       f"has {torch.cuda.device_count()})"]  # fmt: skip
        assert not (tmp_path / "missing").exists()
