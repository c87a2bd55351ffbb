"""Data parallelism on 2 CPU processes (gloo) through `accelerate launch`.

`accelerate launch --cpu --num_processes 2` starts one process unless MPI is installed (accelerate 1.x runs
multi-CPU jobs through mpirun); `--multi_gpu --num_processes 2` starts two through torchrun, and
`Accelerator(cpu=True)` (our `--device cpu`) makes them a gloo MULTI_CPU group.
"""

import json
from pathlib import Path

import pytest
from conftest import accelerate_launch

WORKER = Path(__file__).parent / "_dist_worker.py"


@pytest.mark.slow
def test_gradient_split_over_two_processes_equals_single_process(tmp_path):
    out = tmp_path / "report.json"
    proc = accelerate_launch(str(WORKER), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2
    for name in ("power", "log_ratio", "zscore", "full_kl"):
        assert report[name]["max_abs_grad"] > 0, name
        assert report[name]["max_abs_diff"] <= 1e-6 * max(1.0, report[name]["max_abs_grad"]), (
            name,
            report[name],
        )


@pytest.mark.slow
def test_two_process_training_run(tiny_pair, tmp_path):
    student, teacher, prompts = tiny_pair
    out = tmp_path / "run"
    proc = accelerate_launch(
        "-m", "poweropd.cli", "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
        "--output-dir", str(out), "--batch-size", "4", "--max-steps", "2", "--max-new-tokens", "6", "--save-every", "0",
        "--reward", "zscore", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one row per step, written by the main process only
    # zscore is standardised over the whole batch of both processes
    assert all(abs(r["reward/mean"]) < 1e-5 and abs(r["reward/std"] - 1) < 1e-3 for r in rows)
    assert (out / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_process_eval_shards_problems_and_gathers_one_process_results(tiny_pair, tmp_path):
    """The default engine over two processes (the streaming one is sharded the same way: test_continuous.py)."""
    from poweropd.cli import main

    engine = "generate"

    student, _, prompts = tiny_pair
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k_test.jsonl").write_text(prompts.read_text())
    argv = ["eval", "--model", str(student), "--benchmarks", "gsm8k", "--data-dir", str(data), "--n", "2"]
    argv += [
        "--limit",
        "5",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
        "--rollout-engine",
        engine,
        "--no-progress",
    ]
    assert main([*argv, "--output-dir", str(tmp_path / "one")]) == 0
    proc = accelerate_launch("-m", "poweropd.cli", *argv, "--output-dir", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    one, two = ((tmp_path / d / "results.json").read_text() for d in ("one", "two"))
    assert json.loads(two) == json.loads(one)  # greedy: the same responses whichever process samples them
    rows = [json.loads(line) for line in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in rows] == [(str(i), s) for i in range(5) for s in range(2)]


@pytest.mark.slow
def test_batch_not_divisible_by_the_processes_is_refused(tiny_pair, tmp_path):
    student, teacher, prompts = tiny_pair
    out = tmp_path / "run"
    proc = accelerate_launch(
        "-m", "poweropd.cli", "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
        "--output-dir", str(out), "--batch-size", "3", "--max-steps", "1", "--no-progress",
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("poweropd train: error:")]
    assert errors and all("--batch-size 3: expected a multiple of the 2 processes" in e for e in errors)
    assert not out.exists()
