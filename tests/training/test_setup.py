"""The run's setup: the teacher placed on --teacher-device, a missing device named before anything is written."""

import torch
from conftest import metric_rows, short_run_argv

from poweropd.cli import main


def test_teacher_device_places_the_teacher_there_and_names_a_missing_one(
    tiny_pair, tmp_path, monkeypatch, capsys
):
    """On this CPU machine the only other device name is the same device: the run is the same run, the teacher
    loaded onto the named device; a GPU that is not there is a one-line error before anything is written."""
    import poweropd.models.hf as models_module
    import poweropd.training.setup as setup_module

    placed = {}
    real = models_module.load_causal_lm

    def spy(name, **kwargs):
        placed[kwargs["what"]] = str(kwargs["device"])
        return real(name, **kwargs)

    monkeypatch.setattr(setup_module, "load_causal_lm", spy)  # the student
    monkeypatch.setattr(models_module, "load_causal_lm", spy)  # teachers (teacher.load_teachers)
    assert main(short_run_argv(tiny_pair, tiny_pair[2], tmp_path / "plain")) == 0
    assert (
        main(short_run_argv(tiny_pair, tiny_pair[2], tmp_path / "placed", "--teacher-device", "cpu:0")) == 0
    )
    assert placed["--teacher"] == "cpu:0"
    timing = ("time/", "tokens_per_s", "memory/")
    plain, placed_rows = ([{k: v for k, v in r.items() if not k.startswith(timing)} for r in metric_rows(tmp_path / run)]
                          for run in ("plain", "placed"))  # fmt: skip
    assert plain == placed_rows
    missing = [("--teacher-device", f"cuda:{torch.cuda.device_count()}"), ("--teacher-device", "tpu")]
    missing += [("--device", "cuda")] if not torch.cuda.is_available() else []
    for flag, value in missing:
        capsys.readouterr()
        assert main(short_run_argv(tiny_pair, tiny_pair[2], tmp_path / "missing", flag, value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"poweropd train: error: {flag} {value}: expected cpu, cuda or cuda:N of a visible GPU (this machine "
                       f"has {torch.cuda.device_count()})"]  # fmt: skip
        assert not (tmp_path / "missing").exists()
