"""Every user mistake gets one clear sentence naming file/row/column, exit code 2, no traceback and
no run folder left behind."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from warmstart.cli import main

GOOD = "review,sentiment\nA fine film.,1\nA dull film.,0\nGreat fun.,1\nBoring.,0\n"


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


CASES = {
    "missing_file": (lambda t: ["--data", str(t / "nope.csv")], "nope.csv' does not exist"),
    "unknown_column": (
        lambda t: ["--data", str(write(t, "a.csv", GOOD)), "--text-column", "body"],
        "has no column 'body' (columns: 'review', 'sentiment')",
    ),
    "no_label_column": (
        lambda t: ["--data", str(write(t, "a.csv", "review,stars\nok,1\nbad,0\n"))],
        "no label column found; name it with --label-column (columns: 'review', 'stars')",
    ),
    "empty_text": (
        lambda t: ["--data", str(write(t, "a.csv", GOOD + '"   ",1\n'))],
        "row 5, column 'review': text is empty",
    ),
    "missing_text": (
        lambda t: [
            "--data",
            str(write(t, "a.jsonl", '{"text": "ok", "label": 1}\n{"text": null, "label": 0}\n')),
        ],
        "row 2, column 'text': text is missing",
    ),
    "missing_label": (
        lambda t: ["--data", str(write(t, "a.csv", "review,sentiment\nfine,1\nbad,\nok,0\n"))],
        "row 2, column 'sentiment': label is missing",
    ),
    "unknown_label": (
        lambda t: [
            "--data",
            str(write(t, "a.csv", GOOD)),
            "--test",
            str(write(t, "b.csv", "review,sentiment\nok,1\nmeh,2\n")),
        ],
        "b.csv', row 2, column 'sentiment': unknown label '2' (known: 0, 1)",
    ),
    "single_class": (
        lambda t: ["--data", str(write(t, "a.csv", "review,sentiment\nfine,1\ngood,1\n"))],
        "every row has the label '1'; classification needs at least two classes",
    ),
    "undecodable": (
        lambda t: [
            "--data",
            str(
                write(
                    t,
                    "a.csv.gz",
                    gzip.compress(
                        b'review,sentiment\nfine,1\n"multi\nline",0\nbad \xff byte,1\nok,0\n'
                    ),
                )
            ),
        ],
        "row 3 (line 5) is not valid UTF-8 text: byte 0xff",
    ),
    "empty_file": (lambda t: ["--data", str(write(t, "a.csv", ""))], "a.csv' is empty"),
    "header_only": (
        lambda t: ["--data", str(write(t, "a.tsv", "sentence\tlabel\n"))],
        "a.tsv' has no data rows",
    ),
    "unknown_format": (lambda t: ["--data", str(write(t, "a.xlsx", "x"))], "has an unknown format"),
    "split_too_big": (
        lambda t: ["--data", str(write(t, "a.csv", GOOD)), "--split", "3,2"],
        "--split '3,2' asks for 5 rows but file",
    ),
    "model_not_offline": (
        lambda t: ["--data", str(write(t, "a.csv", GOOD)), "--model", "nobody/no-such-model"],
        "model 'nobody/no-such-model' is not available offline",
    ),
    "model_folder_missing": (
        lambda t: ["--data", str(write(t, "a.csv", GOOD)), "--model", str(t / "m")],
        "does not exist",
    ),
    "config_unknown_key": (
        lambda t: ["--config", str(write(t, "c.yaml", "data: a.csv\nlearning_rate: 1\n"))],
        "unknown option(s) learning_rate",
    ),
    "patience_without_valid": (
        lambda t: ["--data", str(write(t, "a.csv", GOOD)), "--patience", "2"],
        "--patience needs a validation split",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_clear_sentence(case, tmp_path, capsys):
    argv, expected = CASES[case]
    out = tmp_path / "run"
    code = main(["finetune", *argv(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists(), "a failed run must not leave a run folder"


def test_existing_run_folder_is_not_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code = main(["finetune", "--data", str(write(tmp_path, "a.csv", GOOD)), "--out", str(out)])
    assert code == 2 and "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "{}"


def test_console_script_reports_error_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "warmstart",
            "evaluate",
            str(tmp_path / "nomodel"),
            "--data",
            str(write(tmp_path, "a.csv", GOOD)),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model folder") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["finetune", "evaluate", "predict"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "--config" in capsys.readouterr().out


def test_version_flag_prints_the_package_version(capsys):
    import warmstart

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"warmstart {warmstart.__version__}"
