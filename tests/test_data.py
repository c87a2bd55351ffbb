"""Prompts through `datasets` (parquet, save_to_disk folders, hub ids): the same problems and the same run as JSONL."""

import json
from pathlib import Path

import pytest
from conftest import metric_rows, short_run_argv

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


def test_training_on_a_dataset_folder_equals_training_on_the_jsonl(tiny_pair, stores, tmp_path):
    assert main(short_run_argv(tiny_pair, tiny_pair[2], tmp_path / "jsonl")) == 0
    assert (
        main(short_run_argv(tiny_pair, stores["folder"], tmp_path / "folder", "--data-field", "question"))
        == 0
    )
    same = ("loss", "reward/mean", "response_length/mean", "grad/norm")
    assert [[r[k] for k in same] for r in metric_rows(tmp_path / "jsonl")] == [
        [r[k] for k in same] for r in metric_rows(tmp_path / "folder")
    ]
