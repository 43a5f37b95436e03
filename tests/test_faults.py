"""Faults a training run survives, with both engines: a kill at each phase of writing a checkpoint,
a damaged checkpoint, a full disk while the model is saved. Kills are simulated deterministically: a
finished run is copied and its checkpoints cut back to what a kill at that moment leaves, then
`--resume` must end with the metrics of the uninterrupted run."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from test_resume import _stable
from warmstart.cli import main

ENGINES = ["native", "trainer"]
# 80 training rows in batches of 16: 5 steps an epoch, 10 in all; checkpoints at steps 3, 5 (epoch
# end), 6, 9 and 10 (end). A kill while checkpoint-9 is written must resume from checkpoint-6, one
# step into epoch 2.
BROKEN, PREVIOUS = "checkpoint-9", "checkpoint-6"


def finetune_args(engine: str, model: Path, data: Path) -> list[str]:
    return [
        "finetune",
        "--engine",
        engine,
        "--data",
        str(data),
        "--split",
        "80,40,40",
        "--model",
        str(model),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--save-steps",
        "3",
        "--logging-steps",
        "2",
        "--save-total-limit",
        "none",
        "--no-progress",
    ]


@pytest.fixture(scope="module", params=ENGINES)
def finished(request, tiny_models, imdb_head, tmp_path_factory) -> tuple[list[str], Path]:
    """An uninterrupted run of each engine, keeping every checkpoint (--save-total-limit none)."""
    args = finetune_args(request.param, tiny_models["bert"], imdb_head)
    out = tmp_path_factory.mktemp(request.param) / "full"
    assert main([*args, "--out", str(out)]) == 0
    assert steps(out) == [3, 5, 6, 9, 10]
    return args, out


def steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))


def killed_copy(full: Path, to: Path, last: str = BROKEN) -> Path:
    """``full`` as a kill just after checkpoint ``last`` left it: unfinished, no later
    checkpoints."""
    shutil.copytree(full, to)
    (to / "metrics.json").unlink()
    for p in (to / "checkpoints").glob("checkpoint-*"):
        if int(p.name.split("-")[1]) > int(last.split("-")[1]):
            shutil.rmtree(p)
    return to


def resume_and_compare(args: list[str], run: Path, full: Path) -> None:
    assert main([*args, "--out", str(run), "--resume"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, run))
    assert b["test"] == a["test"]
    assert _stable(b["epochs"]) == _stable(a["epochs"])
    history = [
        [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()] for d in (full, run)
    ]
    assert [(h["step"], h.get("loss")) for h in history[1]] == [
        (h["step"], h.get("loss")) for h in history[0]
    ]
    # every checkpoint written again, complete; nothing half-written left
    assert steps(run) == steps(full)
    assert all((p / "state.json").is_file() for p in (run / "checkpoints").glob("checkpoint-*"))
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def keep_only(folder: Path, names: set[str]) -> None:
    for p in folder.iterdir():
        if p.name not in names:
            p.unlink()


# What a kill leaves of the checkpoint being written, in the order the engines write it: the Trainer
# starts with config.json, accelerate with the weights; the optimizer, scheduler and RNG states
# follow, state.json comes last.
PHASES = {
    "first_file_only": lambda c: keep_only(
        c, {"config.json"} if (c / "config.json").is_file() else {"model.safetensors"}
    ),
    "weights_without_optimizer": lambda c: keep_only(
        c,
        {
            p.name
            for p in c.iterdir()
            if not p.name.startswith(
                ("optimizer", "scheduler", "rng", "random", "trainer_state", "state", "custom")
            )
        },
    ),
    "all_but_state_json": lambda c: (c / "state.json").unlink(),
}


@pytest.mark.parametrize("phase", PHASES)
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(
    phase, finished, tmp_path
):
    """Also the issue's case: a Trainer checkpoint-N holding only config.json made --resume
    crash."""
    args, full = finished
    run = killed_copy(full, tmp_path / "killed")
    PHASES[phase](run / "checkpoints" / BROKEN)
    resume_and_compare(args, run, full)


def test_leftovers_of_killed_writes_are_tidied_on_resume(finished, tmp_path):
    """A checkpoint half-written in .writing/ is deleted; one caught between the two renames that
    replace a folder is put back (it was complete) and resumed from; a half-written model folder is
    deleted."""
    args, full = finished
    run = killed_copy(full, tmp_path / "killed")
    ckpts = run / "checkpoints"
    (ckpts / ".writing").mkdir()
    shutil.move(ckpts / BROKEN, ckpts / ".writing" / BROKEN)
    (ckpts / ".writing" / BROKEN / "state.json").unlink()
    (ckpts / ".replaced").mkdir()
    shutil.move(ckpts / PREVIOUS, ckpts / ".replaced" / PREVIOUS)
    shutil.copytree(run / "model", run / ".writing" / "model")
    resume_and_compare(args, run, full)


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x00garbled" + data[8:])


# (what, how): the Trainer's own state is trainer_state.json, the native engine's the optimizer's
DAMAGES = {
    "truncated_weights": ("model.safetensors", "truncate"),
    "garbled_state_json": ("state.json", "garble"),
    "truncated_engine_state": (("trainer_state.json", "optimizer.bin"), "truncate"),
}


@pytest.mark.parametrize("damaged", DAMAGES)
def test_a_damaged_checkpoint_is_skipped_for_an_earlier_complete_one(
    damaged, finished, tmp_path, capsys
):
    args, full = finished
    run = killed_copy(full, tmp_path / "damaged")
    names, how = DAMAGES[damaged]
    folder = run / "checkpoints" / BROKEN
    name = next(
        n for n in ((names,) if isinstance(names, str) else names) if (folder / n).is_file()
    )
    damage(folder / name, how)
    resume_and_compare(args, run, full)
    assert f"skipped {BROKEN}: {name} is " in capsys.readouterr().err


def test_a_damaged_checkpoint_with_none_to_fall_back_on_is_one_clear_error(
    finished, tmp_path, capsys
):
    args, full = finished
    run = killed_copy(full, tmp_path / "damaged", last="checkpoint-3")
    damage(run / "checkpoints" / "checkpoint-3" / "model.safetensors", "truncate")
    capsys.readouterr()
    assert main([*args, "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: --resume: no checkpoint in")
    assert "checkpoint-3: model.safetensors is truncated" in last and "pass --overwrite" in last
    assert steps(run) == [3]  # nothing deleted: the user decides


def test_save_total_limit_none_keeps_every_checkpoint_and_0_is_refused(finished, tmp_path, capsys):
    args, full = finished
    assert steps(full) == [3, 5, 6, 9, 10]  # --save-total-limit none (the fixture)
    assert main([*args, "--save-total-limit", "0", "--out", str(tmp_path / "r")]) == 2
    assert "option 'save_total_limit' must be ≥ 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def full_disk_on_second_save(monkeypatch) -> dict:
    """Make every epoch a new best (so the model is saved twice) and the second save fail with a
    full disk once the weights are written: the tokenizer's files run out of space. Returns what the
    model folder held then."""
    from transformers import PreTrainedTokenizerBase

    from warmstart.training import common

    monkeypatch.setattr(common, "better", lambda metric, new, old: True)
    real = PreTrainedTokenizerBase.save_pretrained
    seen: dict = {"saves": 0}

    def save_pretrained(self, folder, *a, **k):
        if Path(folder).parts[-2:] != (
            ".writing",
            "model",
        ):  # a checkpoint (the Trainer's hold the tokenizer)
            return real(self, folder, *a, **k)
        seen["saves"] += 1
        if seen["saves"] == 1:
            return real(self, folder, *a, **k)
        model_dir = Path(folder).parent.parent / "model"
        seen["before"] = {p.name: p.read_bytes() for p in model_dir.iterdir()}
        (Path(folder) / "tokenizer.json").write_text('{"trunc')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save_pretrained)
    return seen


@pytest.mark.parametrize("engine", ENGINES)
def test_a_full_disk_while_saving_the_model_keeps_the_previous_one(
    engine, tiny_models, imdb_head, tmp_path, monkeypatch, capsys
):
    seen = full_disk_on_second_save(monkeypatch)
    out = tmp_path / "run"
    args = finetune_args(engine, tiny_models["bert"], imdb_head)
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err
        and err.splitlines()[-1]
        == f"error: could not save the model in '{out / 'model'}': No space left on device; the"
        " previous model there is intact"
    ), err
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == seen["before"]
    assert not (out / ".writing").exists()


def test_a_full_disk_while_pretrain_saves_its_model_keeps_the_previous_one(
    tiny_models, tmp_path, monkeypatch, capsys
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(
            f"Review {i}: the film was {'good' if i % 2 else 'long'} and the cast did well.\n"
            for i in range(60)
        )
    )
    seen = full_disk_on_second_save(monkeypatch)
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(corpus),
                "--objective",
                "mlm",
                "--model",
                str(tiny_models["bert"]),
                "--block-size",
                "32",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err
        and err.splitlines()[-1]
        == f"error: could not save the model in '{out / 'model'}': No space left on device; the"
        " previous model there is intact"
    ), err
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == seen["before"]


def test_a_full_disk_while_checkpointing_keeps_the_earlier_checkpoints_and_resumes(
    finished, tmp_path, monkeypatch, capsys
):
    """The optimizer's file (torch.save, both engines) of checkpoint-6 runs out of space: one clear
    error, the checkpoints before it intact, and once there is space again --resume ends like the
    uninterrupted run."""
    import torch

    args, full = finished
    real = torch.save

    def save(obj, f, *a, **k):
        if "checkpoint-6" in str(f):
            Path(f).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err
        and err.splitlines()[-1]
        == f"error: could not write the checkpoint '{run / 'checkpoints' / 'checkpoint-6'}': No"
        " space left on device; the checkpoints written before it are kept; free some space and"
        " pass --resume"
    ), err
    assert steps(run) == [3, 5] and not (run / "checkpoints" / ".writing").exists()
    monkeypatch.undo()
    resume_and_compare(args, run, full)
