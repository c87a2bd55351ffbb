"""Metrics to every --report-to tracker: a real offline wandb run, the tracker's calls, a bad name."""

from conftest import metric_rows, short_run_argv

from poweropd.cli import main


def test_wandb_offline_run_holds_every_metric_name_and_the_config(tiny_pair, tmp_path, monkeypatch):
    """A real offline wandb run: its record file (protobuf, written by wandb's core) holds every metric name
    of metrics.jsonl and the config's values."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert (
        main(short_run_argv(tiny_pair, tiny_pair[2], out, "--report-to", "jsonl,wandb", "--reward", "zscore"))
        == 0
    )
    assert not (out / "tb").exists()  # only the trackers asked for
    records = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 1 and (out / "wandb_id").read_text().strip() in records[0].name
    data = records[0].read_bytes()
    for key in metric_rows(out)[-1]:
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
    argv = short_run_argv(tiny_pair, tiny_pair[2], out, "--report-to", "jsonl,wandb", "--save-every", "1")
    assert main(argv) == 0
    inits = [c for c in calls if c[0] == "init"]
    assert (
        len(inits) == 1 and inits[0][2]["run"]["max_steps"] == 2 and inits[0][2]["reward"]["name"] == "power"
    )
    rows = metric_rows(out)
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
    assert main(short_run_argv(tiny_pair, tiny_pair[2], tmp_path / "run", "--report-to", "jsonl,mlflow")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.report_to (--report-to)" in err[0] and "mlflow" in err[0]
    assert not (tmp_path / "run").exists()
