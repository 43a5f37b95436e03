"""`warmstart tune`: Optuna searches over finetune and probe options with tiny models. Each trial is
a real `python -m warmstart finetune|probe` process, so these tests train for real, with few rows
and epochs."""

from __future__ import annotations

import csv
import json
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

import warmstart
from conftest import ROOT, start_warmstart
from warmstart.cli import main
from warmstart.config import FinetuneConfig, TuneConfig, build, read_config_file
from warmstart.errors import UserError
from warmstart.tasks.tune import open_study, plan, read_space, report


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def read_rows(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def best_row(rows: list[dict], direction: str) -> dict:
    """What best.json must name: the best complete trial, the earlier one on a tie."""
    complete = [r for r in rows if r["state"] == "complete"]
    sign = -1 if direction == "maximize" else 1
    return min(complete, key=lambda r: (sign * float(r["value"]), int(r["number"])))


def assert_best_is_a_copy_of(out: Path, row: dict) -> None:
    trial = out / row["run_dir"]
    best = out / "best"
    assert json.loads((best / "metrics.json").read_text()) == json.loads(
        (trial / "metrics.json").read_text()
    )
    assert (best / "config.yaml").read_text() == (trial / "config.yaml").read_text()
    for name in ("model.safetensors", "probe.joblib"):
        for folder in (trial, trial / "model"):
            if (folder / name).is_file():
                assert (best / folder.relative_to(trial) / name).read_bytes() == (
                    folder / name
                ).read_bytes()


@pytest.fixture
def base(tiny_models, imdb_head, tmp_path) -> Path:
    """A finetune of the tiny BERT that takes seconds: 100 training rows of 32 tokens, 2 epochs."""
    return write_yaml(
        tmp_path / "base.yaml",
        {
            "data": str(imdb_head),
            "split": "100,50",
            "model": str(tiny_models["bert"]),
            "max_length": 32,
            "epochs": 2,
            "batch_size": 16,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "logging_steps": 1000,
        },
    )


def test_a_search_prunes_a_hopeless_trial_and_keeps_the_best_trial_not_the_last(base, tmp_path):
    space = write_yaml(
        tmp_path / "space.yaml",
        {
            "lr": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
            "epochs": {"type": "categorical", "choices": [2, 40]},
        },
    )
    out = tmp_path / "tune"
    options = dict(
        base=str(base), space=str(space), trials=3, metric="loss", prune_after=2, out=str(out)
    )
    # Fixed values, so the outcome does not hang on the sampler: two plausible learning rates, then
    # one so large that the first epoch's valid loss is far above theirs (measured: ~8 against
    # ~0.69): the median pruner must stop it after that epoch. It is given 40 epochs, so that
    # stopping it is seen however fast an epoch runs against the search's polling.
    study = open_study(**options)
    for lr, epochs in ((1e-3, 2), (1e-6, 2), (10.0, 40)):
        study.enqueue_trial({"lr": lr, "epochs": epochs})
    result = warmstart.tune(**options)

    rows = read_rows(out)
    assert [(r["number"], r["state"]) for r in rows] == [
        ("0", "complete"),
        ("1", "complete"),
        ("2", "pruned"),
    ]
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-6, 10.0]
    assert rows[2]["epochs"] == "1" and rows[0]["epochs"] == rows[1]["epochs"] == "2"
    pruned = out / "trial-002"
    assert not (pruned / "metrics.json").exists()  # stopped before it finished
    assert (
        1
        <= len(
            [
                r
                for r in map(json.loads, (pruned / "history.jsonl").read_text().splitlines())
                if "valid_loss" in r
            ]
        )
        < 40
    )
    assert not any((out / r["run_dir"] / "checkpoints").exists() for r in rows)

    # The value of a complete trial is the valid loss of the epoch whose model it kept.
    for r in rows[:2]:
        metrics = json.loads((out / r["run_dir"] / "metrics.json").read_text())
        kept = next(e for e in metrics["epochs"] if e["epoch"] == metrics["best_epoch"])
        assert float(r["value"]) == pytest.approx(kept["valid_loss"])
    expected = best_row(rows, "minimize")
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == int(expected["number"]) and best["value"] == pytest.approx(
        float(expected["value"])
    )
    assert best["params"] == {"lr": float(expected["lr"]), "epochs": 2} and best["metric"] == "loss"
    assert_best_is_a_copy_of(out, expected)
    # Not the last trial's model (that one was pruned after epoch 1, its model/ saved then).
    # Measured: trial 0 (lr 1e-3, 0.6925) beat trial 1 (lr 1e-6, 0.6936), so best/ is not the last
    # complete trial's either.
    last = out / "trial-002" / "model" / "model.safetensors"
    assert last.read_bytes() != (out / "best" / "model" / "model.safetensors").read_bytes()
    assert yaml.safe_load((out / "best" / "config.yaml").read_text())["lr"] == float(expected["lr"])
    assert (out / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert result.best_trial == best["trial"] and result.best_dir == out / "best"
    assert result.count("complete") == 2 and result.count("pruned") == 1
    assert f"best: trial {best['trial']}, valid loss" in report(TuneConfig(**options), result)


def _processes_with(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def test_a_killed_search_resumes_where_it_stopped(base, tmp_path):
    space = write_yaml(
        tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    )
    out = tmp_path / "tune"
    proc = start_warmstart(
        ["tune", "--base", str(base), "--space", str(space), "--trials", "2", "--out", str(out)]
    )
    deadline = time.time() + 240
    # Killed once trial 0 has finished and trial 1 is training (its run folder exists).
    while time.time() < deadline and proc.poll() is None:
        if (out / "trial-000" / "metrics.json").is_file() and (
            out / "trial-001" / "config.yaml"
        ).is_file():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    first = (out / "trial-000" / "metrics.json").stat().st_mtime_ns
    if (
        sys.platform == "linux"
    ):  # the trial died with the search (PR_SET_PDEATHSIG): no orphan trains on
        for _ in range(100):
            if not _processes_with(str(out / "logs" / "trial-001.yaml")):
                break
            time.sleep(0.1)
        assert not _processes_with(str(out / "logs" / "trial-001.yaml"))

    result = warmstart.tune(base=str(base), space=str(space), trials=2, out=str(out))
    rows = read_rows(out)
    assert [(r["number"], r["state"]) for r in rows] == [
        ("0", "complete"),
        ("1", "fail"),
        ("2", "complete"),
    ]
    assert (
        rows[2]["lr"] == rows[1]["lr"] and rows[2]["note"] == "rerun of trial 1"
    )  # the cut-off values again
    assert (
        out / "trial-000" / "metrics.json"
    ).stat().st_mtime_ns == first  # trial 0 did not run again
    assert not (out / "trial-001").exists()  # the half-written folder is gone
    expected = best_row(rows, "maximize")  # finetune's default metric: accuracy
    assert result.best_trial == int(expected["number"]) and result.metric == "accuracy"
    assert_best_is_a_copy_of(out, expected)
    assert not (out / ".lock").exists()

    # Run again: all trials are done, nothing runs.
    again = warmstart.tune(base=str(base), space=str(space), trials=2, out=str(out))
    assert again.trials == result.trials


def test_the_time_limit_stops_a_running_trial_which_runs_again_first_later(base, tmp_path):
    space = write_yaml(
        tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    )
    out = tmp_path / "tune"
    # Enough for the first trial to start (opening the study takes well under a second), too little
    # to finish.
    options = dict(base=str(base), space=str(space), trials=2, timeout=4, out=str(out))
    result = warmstart.tune(**options)
    assert [(r["state"], r["note"]) for r in result.trials] == [("fail", "time limit")]
    assert result.best_trial is None and not (out / "best").exists()
    waiting = [t for t in open_study(**options).trials if t.state.name == "WAITING"]
    assert [t.user_attrs for t in waiting] == [{"rerun_of": 0}]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"lr": float(result.trials[0]["lr"])}
    ]


def test_probe_tuning_searches_c(tiny_models, imdb_head, tmp_path):
    base = write_yaml(
        tmp_path / "probe.yaml",
        {
            "data": str(imdb_head),
            "split": "100,50",
            "model": str(tiny_models["bert"]),
            "max_length": 32,
        },
    )
    space = write_yaml(
        tmp_path / "space.yaml", {"c": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}}
    )
    out = tmp_path / "tune"
    result = warmstart.tune(
        base=str(base), space=str(space), command="probe", trials=2, out=str(out)
    )
    rows = read_rows(out)
    assert [r["state"] for r in rows] == ["complete", "complete"] and all(
        r["epochs"] == "0" for r in rows
    )
    for r in rows:
        metrics = json.loads((out / r["run_dir"] / "metrics.json").read_text())
        assert float(r["value"]) == metrics["valid"]["accuracy"]
        assert metrics["c"] == pytest.approx(float(r["c"])) and metrics["c_chosen_on"] == "given"
    expected = best_row(rows, "maximize")
    assert result.best_trial == int(expected["number"]) and result.metric == "accuracy"
    assert_best_is_a_copy_of(out, expected)
    assert (out / "best" / "probe.joblib").is_file()


GOOD = {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"learning_rate": GOOD}, "key 'learning_rate': unknown option of finetune"),
        (
            {"lr": {"type": "normal", "low": 1e-5, "high": 1e-3}},
            "key 'lr': type must be float, int or categorical",
        ),
        (
            {"lr": {"type": "float", "low": 1e-5, "hihg": 1e-3}},
            "key 'lr': unknown key(s) hihg for type float",
        ),
        (
            {"lr": {"type": "float", "low": "abc", "high": 1e-3}},
            "key 'lr': low must be a number, got 'abc'",
        ),
        (
            {"lr": {"type": "float", "low": 0.0, "high": 1e-3}},
            "'lr': 0.0 is not a valid value: option 'lr' must be > 0",
        ),
        (
            {"warmup_ratio": {"type": "float", "low": 0.1, "high": 2}},
            "key 'warmup_ratio': 2.0 is not a valid value",
        ),
        (
            {"batch_size": {"type": "int", "low": 0, "high": 16}},
            "key 'batch_size': 0 is not a valid value",
        ),
        (
            {"batch_size": {"type": "float", "low": 8, "high": 16}},
            "option 'batch_size' must be int",
        ),
        (
            {"batch_size": {"type": "int", "low": 8.5, "high": 16}},
            "key 'batch_size': low must be an integer",
        ),
        (
            {"optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}},
            "'sgd' is not a valid value",
        ),
        ({"optimizer": {"type": "categorical", "choices": []}}, "choices must be a non-empty list"),
        (
            {"lr": {"type": "float", "low": 1e-3, "high": 1e-5}},
            "key 'lr': low (0.001) must be below high (1e-05)",
        ),
        (
            {"lr": {"type": "float", "low": -1, "high": 1e-3, "log": True}},
            "key 'lr': a log scale needs low > 0",
        ),
        ({"lr": [1e-5, 1e-3]}, "key 'lr': must be a mapping"),
        ({"out": {"type": "categorical", "choices": ["a", "b"]}}, "key 'out': is set by tune"),
        ({}, "names no option to search"),
    ],
)
def test_a_bad_space_file_is_one_error_naming_the_file_and_key_and_nothing_is_written(
    space, expected, base, tmp_path, capsys
):
    path = write_yaml(tmp_path / "space.yaml", space)
    out = tmp_path / "tune"
    assert main(["tune", "--base", str(base), "--space", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert expected in err and f"space file '{path}'" in err
    assert not out.exists()


def test_bad_tune_options_are_refused_before_any_work(base, imdb_head, tmp_path):
    space = write_yaml(tmp_path / "space.yaml", {"lr": GOOD})
    probe_space = write_yaml(tmp_path / "probe-space.yaml", {"c": GOOD})
    no_valid = write_yaml(tmp_path / "no-valid.yaml", {"data": str(imdb_head), "split": "100"})
    probe_base = write_yaml(tmp_path / "probe.yaml", {"data": str(imdb_head), "split": "100,50"})
    out = tmp_path / "tune"
    cases = [
        (dict(space=str(space)), "--base FILE"),
        (dict(base=str(base)), "--space FILE"),
        (
            dict(base=str(tmp_path / "missing.yaml"), space=str(space)),
            "missing.yaml' does not exist",
        ),
        (dict(base=str(no_valid), space=str(space)), "compared on a validation split"),
        (dict(base=str(base), space=str(probe_space)), "key 'c': unknown option of finetune"),
        (
            dict(base=str(base), space=str(probe_space), command="probe"),
            "unknown option(s) epochs, logging_steps",
        ),
        (
            dict(base=str(probe_base), space=str(probe_space), command="probe", metric="loss"),
            "a probe's valid metrics",
        ),
        (
            dict(base=str(probe_base), space=str(probe_space), command="probe", pruner="hyperband"),
            "--pruner does not apply to --command probe",
        ),
        (
            dict(base=str(base), space=str(space), pruner="none", prune_warmup=1),
            "--prune-warmup does not apply",
        ),
    ]
    for kwargs, expected in cases:
        with pytest.raises(UserError) as e:
            warmstart.tune(out=str(out), **kwargs)
        assert expected in str(e.value), (kwargs, str(e.value))
        assert not out.exists()


def test_a_folder_with_another_search_or_other_files_is_refused(base, tmp_path):
    space = write_yaml(tmp_path / "space.yaml", {"lr": GOOD})
    other = write_yaml(
        tmp_path / "other.yaml", {"lr": GOOD, "batch_size": {"type": "categorical", "choices": [8]}}
    )
    out = tmp_path / "tune"
    open_study(base=str(base), space=str(space), out=str(out))  # a search, no trial run yet
    with pytest.raises(
        UserError, match=r"holds a search with other settings \(space\); pass --overwrite"
    ):
        warmstart.tune(base=str(base), space=str(other), out=str(out))
    with pytest.raises(UserError, match=r"other settings \(direction, metric\)"):
        warmstart.tune(base=str(base), space=str(space), metric="loss", out=str(out))
    open_study(base=str(base), space=str(other), out=str(out), overwrite=True)  # starts again
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds something other than a search"):
        warmstart.tune(base=str(base), space=str(space), out=str(tmp_path / "busy"))


def test_the_example_space_and_options_in_configs_are_valid(monkeypatch):
    monkeypatch.chdir(ROOT)  # their paths are relative to the repository, like make demo's
    params, _ = read_space("configs/tune/space.yaml", FinetuneConfig, {}, "finetune")
    for name in ("demo.yaml", "short.yaml"):
        search = plan(build(TuneConfig, read_config_file(f"configs/tune/{name}")))
        assert search.params and search.direction == "maximize"
        assert {p.name for p in params} == {p.name for p in search.params}


# ---- epochs through the events pipe, the tuned command's own flags ----

# While a list, the path of every file this process opens (a sys audit hook: it sees open(),
# Path.read_text and os.open alike). Hooks cannot be removed, so one is added once and then idles.
OPENED: dict[str, list[str] | None] = {"paths": None}


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and OPENED["paths"] is not None:
        OPENED["paths"].append(str(args[0]))


@pytest.fixture
def opened_files():
    if not getattr(_record_opens, "added", False):
        sys.addaudithook(_record_opens)
        _record_opens.added = True
    OPENED["paths"] = []
    try:
        yield OPENED["paths"]
    finally:
        OPENED["paths"] = None


def tuned_options(tiny_models, imdb_head, **more) -> dict:
    """The base fixture's options, as the Python API's ``options`` (and the CLI's flags) give them."""
    return {
        "data": str(imdb_head),
        "split": "100,50",
        "model": str(tiny_models["bert"]),
        "max_length": 32,
        "batch_size": 16,
        "warmup_ratio": 0.0,
        "precision": "fp32",
        "logging_steps": 1000,
        **more,
    }


def test_a_trial_is_pruned_on_the_epochs_its_callbacks_send_up_the_pipe_not_on_its_files(
    tiny_models, imdb_head, tmp_path, opened_files, monkeypatch
):
    from warmstart.tuning import trials

    space = write_yaml(
        tmp_path / "space.yaml",
        {
            "lr": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
            "epochs": {"type": "categorical", "choices": [1, 40]},
        },
    )
    out = tmp_path / "tune"
    search = dict(space=str(space), trials=2, metric="loss", prune_after=1, out=str(out))
    options = tuned_options(tiny_models, imdb_head)
    # A plausible learning rate for one epoch, then one so large that its first valid loss is far
    # above the first's (about 8 against 0.69): the median pruner stops it after that epoch, out of
    # 40 it would otherwise train.
    study = open_study(options=options, **search)
    for lr, epochs in ((1e-3, 1), (10.0, 40)):
        study.enqueue_trial({"lr": lr, "epochs": epochs})
    watching: list[str] = []  # the files opened while a trial runs and tune waits for its epochs

    def watch(*args, **kwargs):
        start = len(opened_files)
        try:
            return real_watch(*args, **kwargs)
        finally:
            watching.extend(opened_files[start:])

    real_watch = trials.watch
    monkeypatch.setattr(trials, "watch", watch)
    result = warmstart.tune(options=options, **search)
    seen = list(opened_files)
    OPENED["paths"] = None

    assert [(r["state"], r["epochs"]) for r in result.trials] == [("complete", 1), ("pruned", 1)]
    # Told to stop after its first epoch, the trial ended that epoch whole (its line in the log says
    # why, its model is saved) and was then stopped before it scored or wrote metrics.json.
    assert "(pruned by tune: valid loss" in (out / "logs" / "trial-001.log").read_text()
    assert (out / "trial-001" / "model" / "model.safetensors").is_file()
    assert not (out / "trial-001" / "metrics.json").exists()
    # What Optuna was told is each epoch's record as the trial wrote it, yet tune never opened a
    # trial's history.jsonl while the trial ran, nor the pruned trial's at all (the complete one's
    # is copied into best/ afterwards): the values came through the pipe.
    assert not [p for p in watching if p.endswith("history.jsonl")], watching
    assert str(out / "trial-001" / "history.jsonl") not in seen
    assert str(out / "trial-000" / "metrics.json") in seen  # (the hook sees what tune reads)
    for t in open_study(options=options, **search).trials:
        history = map(json.loads, (out / f"trial-{t.number:03d}" / "history.jsonl").open())
        epochs = {r["epoch"]: r["valid_loss"] for r in history if "valid_loss" in r}
        assert t.intermediate_values == pytest.approx(epochs) and len(epochs) == 1
        if t.state.name == "PRUNED":
            assert result.trials[t.number]["value"] == pytest.approx(epochs[1])


def test_the_pipe_callback_sends_epochs_up_and_stops_training_on_the_verdict_sent_down(
    monkeypatch,
):
    import os

    from warmstart.callbacks import Control, pipe

    for name in (pipe.EVENTS_VARIABLE, pipe.VERDICTS_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    assert pipe.from_environment() is None  # not a tune trial: no callback
    events_in, events_out = os.pipe()
    verdicts_in, verdicts_out = os.pipe()
    fds = [events_in, events_out, verdicts_in, verdicts_out]
    try:
        for name, value in pipe.environment(events_out, verdicts_in).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("RANK", "1")
        assert pipe.from_environment() is None  # a launched process other than the main one
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv(pipe.EVENTS_VARIABLE, str(verdicts_in))
        assert pipe.from_environment() is None  # the number names another file here
        monkeypatch.setenv(pipe.EVENTS_VARIABLE, str(events_out))
        callback = pipe.from_environment()
        assert callback is not None and not os.get_inheritable(events_out)

        # The search's verdicts, written ahead: the callback waits for one after each epoch.
        os.write(verdicts_out, b'{"stop": false}\n{"stop": true, "reason": "pruned by tune"}\n')
        callback.on_log({"step": 1, "loss": 0.7})  # not sent: the search wants epochs
        first, second = Control(), Control()
        callback.on_epoch_end({"step": 7, "epoch": 1, "valid_loss": 0.69}, first)
        callback.on_epoch_end({"step": 14, "epoch": 2, "valid_loss": 0.71}, second)
        assert (first.stop, second.stop, second.reason) == (False, True, "pruned by tune")
        # A pruned trial then waits to be ended; a search that closes its end lets it go on.
        os.close(verdicts_out)
        fds.remove(verdicts_out)
        callback.on_train_end({"best_epoch": 1, "stopped_early": True})
        os.close(events_out)
        fds.remove(events_out)
        with os.fdopen(events_in, "rb") as f:
            fds.remove(events_in)
            lines = [json.loads(line) for line in f]
        assert lines == [
            {"event": "epoch_end", "record": {"step": 7, "epoch": 1, "valid_loss": 0.69}},
            {"event": "epoch_end", "record": {"step": 14, "epoch": 2, "valid_loss": 0.71}},
            {"event": "train_end", "summary": {"best_epoch": 1, "stopped_early": True}},
        ]
    finally:
        for fd in fds:
            os.close(fd)


def exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with for a flag it cannot parse."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def flags(options: dict) -> list[str]:
    return [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def test_the_tuned_commands_flags_run_the_same_trials_as_a_base_file(
    tiny_models, imdb_head, tmp_path, capsys
):
    from warmstart.cli import parse
    from warmstart.tuning.trials import trial_options

    options = tuned_options(tiny_models, imdb_head, epochs=1)
    base = write_yaml(tmp_path / "base.yaml", options)
    space = write_yaml(
        tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    )
    out = tmp_path / "tune"
    tune_flags = ["--space", str(space), "--trials", "1", "--out", str(out)]
    # As the issue writes it: the tuned command's flags mixed with tune's, no --base.
    argv = ["tune", *flags(options)[:4], *tune_flags, *flags(options)[4:]]
    assert main(argv) == 0
    assert "best: trial 0" in capsys.readouterr().out
    row = read_rows(out)[0]
    from_base = plan(TuneConfig(base=str(base), space=str(space), out=str(out)))
    from_flags = plan(TuneConfig(space=str(space), out=str(out)), parse(argv)["options"])
    assert from_flags.base == from_base.base
    expected = trial_options(from_base, {"lr": float(row["lr"])}, out / "trial-000")
    assert yaml.safe_load((out / "logs" / "trial-000.yaml").read_text()) == expected

    # The same search for the study: the base file resumes it, with nothing left to run.
    first = (out / "trial-000" / "metrics.json").stat().st_mtime_ns
    assert main(["tune", "--base", str(base), *tune_flags]) == 0
    assert (
        len(read_rows(out)) == 1
        and (out / "trial-000" / "metrics.json").stat().st_mtime_ns == first
    )

    # Both: the flags override the file's values; tune's own --command chooses the flags' command.
    both = parse(["tune", "--base", str(base), "--epochs", "3", *tune_flags])
    assert both["options"] == {"epochs": 3.0} and both["tune"]["base"] == str(base)
    assert plan(build(TuneConfig, both["tune"]), both["options"]).base == {**options, "epochs": 3.0}
    probe = parse(["tune", "--command", "probe", "--c", "0.5", *tune_flags])
    assert probe["command"] == "tune" and probe["tune"]["command"] == "probe"
    assert probe["options"] == {"c": 0.5}


def test_a_flag_of_no_command_is_one_error_line_with_exit_code_2(
    tiny_models, imdb_head, tmp_path, capsys
):
    space = write_yaml(tmp_path / "space.yaml", {"lr": GOOD})
    out = tmp_path / "tune"
    given = [
        "--data",
        str(imdb_head),
        "--split",
        "100,50",
        "--space",
        str(space),
        "--out",
        str(out),
    ]
    for wrong, named in (  # argparse exits (SystemExit 2), tune's own checks return 2
        (["--epochz", "2"], "unrecognized arguments: --epochz 2"),
        (["--c", "0.5"], "--c could match"),  # probe's, not finetune's
        (["--resume"], "option(s) resume of finetune: set by tune for every trial"),
    ):
        assert exit_code(["tune", *given, *wrong]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err
        assert not out.exists()
    with pytest.raises(UserError, match=r"unknown option\(s\) epochz in the options of finetune"):
        warmstart.tune(
            space=str(space), out=str(out), options={"data": str(imdb_head), "epochz": 2}
        )
    with pytest.raises(SystemExit) as e:
        main(["tune", "--help"])
    assert e.value.code == 0
    assert "options of finetune, the command tuned" in capsys.readouterr().out
