"""Every numeric option of every command declares its range once, with the field; a value outside
it, or of the wrong type, is refused before any work, the same way from flags, config files and
keyword arguments."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmstart import config
from warmstart.cli import main
from warmstart.commands import COMMANDS
from warmstart.config import build
from warmstart.errors import UserError


def numeric_fields() -> list[tuple[str, str, type, dict]]:
    """(command, field, int or float, bounds) for every numeric field of every command's
    dataclass."""
    found = []
    for command, spec in COMMANDS.items():
        cls = getattr(config, spec.config)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            base = (
                [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
                or [hints[f.name]]
            )[0]
            if base in (int, float):
                found.append((command, f.name, base, f.metadata.get("bounds") or {}))
    return found


FIELDS = numeric_fields()


def test_every_numeric_option_declares_its_range():
    missing = [f"{command} --{name}" for command, name, _, bounds in FIELDS if not bounds]
    assert not missing, f"numeric options without a declared range: {missing}"


def test_help_shows_each_range(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(≥ 0 and ≤ 1)" in help_text  # --warmup-ratio
    assert "peak learning rate" in help_text and "(> 0)" in help_text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help(command, capsys):
    # argparse %-formats help text: a bare % in one option's help (generate's --quantize) once
    # turned `--help` into a stack trace.
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


@st.composite
def out_of_range(draw) -> tuple[str, str, str]:
    """A command, one of its numeric flags and a value outside the flag's declared range."""
    command, name, base, bounds = draw(st.sampled_from([f for f in FIELDS if f[3]]))
    kind, limit = draw(st.sampled_from(sorted(bounds.items())))
    below = kind in ("ge", "gt")
    if base is int:
        # ge 1 is broken by 0 and below; gt 0 by 0 and below; le 9 by 10 and above; lt 9 by 9 and
        # above.
        edge = (
            (math.ceil(limit) - (kind == "ge")) if below else (math.floor(limit) + (kind == "le"))
        )
        value = draw(st.integers(max_value=edge) if below else st.integers(min_value=edge))
    else:
        exclude = kind in ("ge", "le")
        value = draw(
            st.floats(max_value=limit, exclude_max=exclude, allow_nan=False, allow_infinity=False)
            if below
            else st.floats(
                min_value=limit, exclude_min=exclude, allow_nan=False, allow_infinity=False
            )
        )
    return command, name, repr(value) if base is float else str(value)


@st.composite
def wrong_type(draw) -> tuple[str, str, str]:
    """A command, one of its numeric flags and a value that is not a number of the flag's type."""
    command, name, base, _ = draw(st.sampled_from(FIELDS))
    junk = st.text(alphabet="abcxyz_,;[]{} é", min_size=1, max_size=8)
    if base is int:
        value = draw(
            st.one_of(junk, st.sampled_from(["1.5", "2e3", "0x10", "nan", "inf", "1,000"]))
        )
    else:
        value = draw(st.one_of(junk, st.sampled_from(["nan", "inf", "-inf", "1,5", "1.0.0"])))
    return command, name, value


def exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with for a flag it cannot parse."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def assert_refused(argv: list[str], capsys, folder) -> str:
    code = exit_code(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, captured.err)
    assert "Traceback" not in captured.err and captured.out == ""
    assert not any(folder.iterdir()), f"{argv} wrote {list(folder.iterdir())}"
    return lines[0]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=out_of_range())
def test_an_out_of_range_value_is_one_error_line_exit_2_and_nothing_written(
    case, capsys, tmp_path, monkeypatch
):
    command, name, value = case
    monkeypatch.chdir(tmp_path)
    assert_refused([command, f"--{name.replace('_', '-')}={value}"], capsys, tmp_path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=wrong_type())
def test_a_value_of_the_wrong_type_is_one_error_line_exit_2_and_nothing_written(
    case, capsys, tmp_path, monkeypatch
):
    command, name, value = case
    monkeypatch.chdir(tmp_path)
    assert_refused([command, f"--{name.replace('_', '-')}={value}"], capsys, tmp_path)


@settings(max_examples=100, deadline=None)
@given(
    case=st.sampled_from(FIELDS),
    value=st.one_of(
        st.text(max_size=5),
        st.booleans(),
        st.lists(st.integers()),
        st.just(float("nan")),
        st.just(float("inf")),
    ),
)
def test_config_files_and_keyword_arguments_refuse_the_same_values(case, value):
    """YAML/TOML values and keyword arguments go through the same check as flags."""
    command, name, base, _ = case
    cls = getattr(config, COMMANDS[command].config)
    with pytest.raises(UserError, match=f"option '{name}'"):
        build(cls, {name: value})


def test_a_range_error_names_the_option_its_range_and_the_value(capsys):
    assert exit_code(["finetune", "--warmup-ratio", "1.5"]) == 2
    assert capsys.readouterr().err == "error: option 'warmup_ratio' must be ≥ 0 and ≤ 1, got 1.5\n"
    assert exit_code(["finetune", "--batch-size", "two"]) == 2
    assert (
        capsys.readouterr().err
        == "error: finetune: argument --batch-size: expected int, got 'two' (see --help)\n"
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            [
                "fewshot",
                "--data",
                "d.csv",
                "--test",
                "t.csv",
                "--method",
                "setfit",
                "--template",
                "{text}",
            ],
            "--template does not apply to --method setfit",
        ),
        (
            [
                "fewshot",
                "--data",
                "d.csv",
                "--test",
                "t.csv",
                "--method",
                "setfit",
                "--no-calibrate",
                "--chat",
            ],
            "--calibrate, --chat do not apply to --method setfit",
        ),
        (
            [
                "fewshot",
                "--data",
                "d.csv",
                "--test",
                "t.csv",
                "--method",
                "prompt",
                "--pairs-per-example",
                "8",
            ],
            "--pairs-per-example does not apply to --method prompt",
        ),
        (
            [
                "fewshot",
                "--data",
                "d.csv",
                "--test",
                "t.csv",
                "--method",
                "incontext",
                "--lr",
                "1e-4",
            ],
            "--lr does not apply to --method incontext",
        ),
        (
            [
                "zeroshot",
                "a text",
                "--labels",
                "x,y",
                "--method",
                "similarity",
                "--truncate",
                "head+tail",
            ],
            "--truncate does not apply to --method similarity",
        ),
        (
            ["zeroshot", "a text", "--labels", "x,y", "--method", "prompt", "--multi-label"],
            "--multi-label does not apply to --method prompt",
        ),
        (
            ["pretrain", "--data", "c.txt", "--model", "minilm", "--vocab-size", "500"],
            "--vocab-size does not apply to continued pre-training",
        ),
        (
            ["pretrain", "--data", "c.txt", "--from-scratch", "--model", "minilm"],
            "give one of them",
        ),
        (
            [
                "pretrain",
                "--data",
                "c.txt",
                "--from-scratch",
                "--objective",
                "clm",
                "--mlm-probability",
                "0.3",
            ],
            "--mlm-probability does not apply to --objective clm",
        ),
        (["finetune", "--data", "d.csv", "--resume", "--overwrite"], "give one of them"),
        (
            ["embed", "--data", "d.csv", "--out", "e.npy", "--label-column", "label"],
            "--label-column does not apply to a .npy output",
        ),
    ],
)
def test_options_that_do_not_apply_are_refused_before_any_work(
    argv, expected, capsys, tmp_path, monkeypatch
):
    """Refused before anything is read (the files named do not even exist) or written."""
    monkeypatch.chdir(tmp_path)
    assert expected in assert_refused(argv, capsys, tmp_path)
