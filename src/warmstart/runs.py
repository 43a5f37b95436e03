"""The run folder: atomic writes, config.yaml, history.jsonl, checkpoints and the final model.

    out/
      config.yaml        resolved config; `warmstart finetune --config out/config.yaml` repeats the run
      history.jsonl      one JSON object per logged step and per epoch
      metrics.json       written last: its presence means the run finished
      model/             best model so far (save_pretrained + tokenizer), replaced atomically
      checkpoints/checkpoint-<step>/
                         model, optimizer, scheduler, RNG (accelerate or the Trainer) + state.json

A folder of the run (model/, a checkpoint) is written whole in .writing/<name> next to it and then
renamed into place; the one it replaces waits in .replaced/<name> between the two renames. A kill at
any moment therefore leaves either the old folder or the new one (``recover`` puts back one caught
between the renames), and a checkpoint is only ever read after ``checkpoint_problem`` found it
complete: state.json, written last, lists the size of every other file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from warmstart.files import atomic_write_json, atomic_write_text, disk_error, read_jsonl

WRITING, REPLACED = ".writing", ".replaced"
MARKER = "state.json"  # written last into a checkpoint: its presence marks it complete


def staging(target: Path) -> Path:
    """Where ``target`` (a folder of the run) is written before it is renamed into place."""
    return target.parent / WRITING / target.name


def swap_in(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``target``. A folder cannot be renamed over another,
    so the old one moves to .replaced/ first and is deleted after; ``recover`` undoes a kill between
    the two renames."""
    old = target.parent / REPLACED / target.name
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, old)
    os.replace(tmp, target)
    discard(old)
    discard(tmp)  # only its .writing/ folder, now empty


def discard(staged: Path) -> None:
    """Delete a folder of .writing/ or .replaced/, and that folder too once empty (they only exist
    while a folder of the run is being replaced)."""
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()


def recover(parent: Path) -> list[str]:
    """Tidy what killed writes left in ``parent``: a folder caught between the two renames of
    ``swap_in`` goes back in place (it was complete), half-written ones are deleted. Returns what
    was done, to be said."""
    done = []
    replaced, writing = parent / REPLACED, parent / WRITING
    for old in sorted(replaced.iterdir()) if replaced.is_dir() else []:
        if not (parent / old.name).exists():
            os.replace(old, parent / old.name)
            done.append(f"put back {old.name} (a kill had interrupted its replacement)")
    for tmp in sorted(writing.iterdir()) if writing.is_dir() else []:
        done.append(f"deleted the half-written {tmp.name} (a kill had interrupted it)")
    for folder in (replaced, writing):
        shutil.rmtree(folder, ignore_errors=True)
    return done


def checkpoint_step(folder: Path) -> int | None:
    found = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    return int(found.group(1)) if found else None


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file of a checkpoint but its marker, with its size: what ``checkpoint_problem``
    checks."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def checkpoint_problem(folder: Path, required: tuple[str, ...] = ()) -> str | None:
    """Why ``folder`` cannot be resumed from (incomplete, truncated, garbled), or None when it is
    sound.

    Complete means state.json is there (written last); sound means every file it lists has the size
    it had when written, ``required`` files exist, every JSON file parses and every .safetensors
    file is as long as its header says. (A flipped bit inside the weights would need checksums: not
    checked.)"""
    try:
        state = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"incomplete (no {MARKER}: interrupted while it was written)"
    except (OSError, ValueError):
        return f"{MARKER} is damaged (not valid JSON)"
    if not isinstance(state, dict):
        return f"{MARKER} is damaged (not a JSON object)"
    for name in required:
        if not (folder / name).is_file():
            return f"{name} is missing"
    for name, size in (state.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} is " + (
                f"truncated ({actual} of {size} bytes)"
                if actual < size
                else f"damaged ({actual} bytes, written with {size})"
            )
    for path in sorted(folder.rglob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{path.relative_to(folder)} is damaged (not valid JSON)"
    for path in sorted(folder.rglob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return f"{path.relative_to(folder)} is {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """A .safetensors file is an 8-byte header length, a JSON header giving each tensor's byte
    range, then the data: a file shorter or longer than its header says was cut off (or is not
    one)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                return f"truncated ({size} bytes)"
            header = json.loads(f.read(n))
        end = max(
            (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "damaged (unreadable header)"
    expected = 8 + n + end
    if size < expected:
        return f"truncated ({size} of {expected} bytes)"
    return None if size == expected else f"damaged ({size} bytes, its header says {expected})"


class Run:
    def __init__(self, out: str | Path, quiet: bool = False):
        self.dir = Path(out)
        self.quiet = quiet
        self.started = time.time()
        # Under `accelerate launch` every process holds a Run; only the main one writes or prints.
        from warmstart import distributed

        self.main = distributed.is_main()

    # paths
    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def history_path(self) -> Path:
        return self.dir / "history.jsonl"

    def finished(self) -> bool:
        return (self.dir / "metrics.json").is_file()

    def write_config(self, cfg: dict, notes: list[str] | tuple[str, ...] = ()) -> None:
        """config.yaml: the resolved options, headed by ``notes`` as comments (how an 'auto' was
        resolved)."""
        if self.main:
            head = "".join(f"# {n}\n" for n in notes)
            atomic_write_text(
                self.dir / "config.yaml",
                head + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True),
            )

    def saved_config(self) -> dict:
        """The config.yaml of the run in this folder ({} when there is none)."""
        path = self.dir / "config.yaml"
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}

    def write_metrics(self, metrics: dict) -> None:
        if self.main:
            atomic_write_json(self.dir / "metrics.json", metrics)

    # history
    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def history(self) -> list[dict]:
        return read_jsonl(self.history_path)

    def truncate_history(self, step: int) -> None:
        """On resume: keep what was logged up to the checkpoint, drop what the lost work logged."""
        kept = [r for r in self.history() if r.get("step", 0) <= step]
        if self.main:
            atomic_write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in kept))

    # checkpoints
    def checkpoints(self) -> list[Path]:
        """The complete checkpoints (marked by state.json), oldest first."""
        found = [
            p
            for p in self.checkpoints_dir.glob("checkpoint-*")
            if checkpoint_step(p) is not None and (p / MARKER).is_file()
        ]
        return sorted(found, key=checkpoint_step)

    def save_checkpoint(
        self,
        step: int,
        write: Callable[[Path], None],
        state: dict,
        keep: int | None,
        barrier: Callable[[], None] = lambda: None,
    ) -> Path:
        """``write`` fills the checkpoint folder in .writing/; called by every process (sharded
        optimizers and per-process RNG states are written by their own process), then the main one
        marks it complete with state.json (``state`` and the size of every file), swaps it in and
        keeps the last ``keep`` checkpoints (None: every one). ``barrier`` waits for all processes
        (a no-op for one)."""
        target = self.checkpoints_dir / f"checkpoint-{step}"
        tmp = staging(target)  # one name all processes agree on
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        with self._disk_errors(
            f"could not write the checkpoint '{target}'",
            tmp,
            "the checkpoints written before it are kept; free some space and pass --resume",
        ):
            write(tmp)
            barrier()
            if self.main:
                atomic_write_json(
                    tmp / MARKER, {**state, "files": file_sizes(tmp)}
                )  # last: marks it complete
        if self.main:
            swap_in(tmp, target)
            for stale in self.checkpoints()[:-keep] if keep else []:
                shutil.rmtree(stale, ignore_errors=True)
        barrier()
        return target

    def resume_checkpoint(
        self, required: tuple[str, ...] = (), barrier: Callable[[], None] = lambda: None
    ) -> Path | None:
        """The checkpoint ``--resume`` continues from: the newest one that is complete and sound
        (``checkpoint_problem``; ``required``: files the engine cannot resume without). Newer ones
        that are not are named, skipped and deleted (the resumed run writes them again). None when
        there is none: a run killed before its first checkpoint starts over. A damaged checkpoint
        with none to fall back on is a UserError (deleting it and starting over would be a silent
        loss). Every process calls this."""
        if self.main:
            for done in recover(self.checkpoints_dir) + recover(self.dir):
                self.say(done)
        barrier()  # every process reads the folders as the main one left them
        folders = sorted(
            (
                p
                for p in self.checkpoints_dir.glob("checkpoint-*")
                if checkpoint_step(p) is not None
            ),
            key=checkpoint_step,
            reverse=True,
        )
        chosen, skipped = None, []
        for folder in folders:
            problem = checkpoint_problem(folder, required)
            if problem is None:
                chosen = folder
                break
            skipped.append((folder, problem))
        damaged = [(f, why) for f, why in skipped if (f / MARKER).is_file()]
        if chosen is None and damaged:
            from warmstart.errors import UserError

            raise UserError(
                f"--resume: no checkpoint in '{self.checkpoints_dir}' to resume from: "
                + "; ".join(f"{f.name}: {why}" for f, why in skipped)
                + "; pass --overwrite to start the run again"
            )
        barrier()  # all have read before the main process deletes
        if self.main:
            for folder, problem in skipped:
                self.say(f"skipped {folder.name}: {problem}; deleted it")
                shutil.rmtree(folder, ignore_errors=True)
        barrier()
        return chosen

    @staticmethod
    def checkpoint_state(folder: Path) -> dict:
        """The state a checkpoint was written with (state.json without its list of files)."""
        saved = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        saved.pop("files", None)
        return saved

    def save_model(self, write: Callable[[Path], None]) -> None:
        """Write the model into .writing/model and swap it in for model/ (main process): a kill or a
        full disk leaves the previous model/ as it was. A disk error is one UserError that says
        so."""
        tmp = staging(self.model_dir)
        kept = (
            "the previous model there is intact"
            if self.model_dir.is_dir()
            else "no model was saved"
        )
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with self._disk_errors(f"could not save the model in '{self.model_dir}'", tmp, kept):
            write(tmp)
        swap_in(tmp, self.model_dir)

    @contextlib.contextmanager
    def _disk_errors(self, what: str, tmp: Path, consequence: str) -> Iterator[None]:
        """Delete the half-written ``tmp`` on any error; a disk error (full, read-only...) becomes a
        UserError."""
        try:
            yield
        except BaseException as e:
            discard(tmp)
            reason = disk_error(e)
            if reason is None:
                raise
            from warmstart.errors import UserError

            raise UserError(f"{what}: {reason}; {consequence}") from None

    def say(self, msg: str) -> None:
        if not self.quiet and self.main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)


# Options that do not change what a run computes, so a resumed run may differ in them. (The process
# count may change too: a resumed run keeps the global batch of the run it continues, see
# engines/native.py.)
NOT_COMPARED = {
    "out",
    "resume",
    "overwrite",
    "progress",
    "logging_steps",
    "logging_dir",
    "report_to",
    "save_steps",
    "save_total_limit",
    "num_processes",
    "push_to_hub",  # where the finished model is published, not what the run computes
    "offline",  # whether a Hub model may be downloaded; the commit it is (revision) is compared
}


def prepare_run_folder(run: Run, cfg: dict, resume: bool, overwrite: bool) -> None:
    """Check that ``--resume`` continues the same run, and that a finished run is never overwritten
    silently (only with ``--overwrite``)."""
    from warmstart.errors import UserError

    saved_path = run.dir / "config.yaml"
    if resume:
        if not saved_path.is_file():
            raise UserError(f"--resume: '{run.dir}' holds no run to resume (no config.yaml)")
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        # None means "the default", resolved the same way again (e.g. max_length from the model);
        # "auto" was resolved when the run started and the resumed run takes that value
        # (training.common.choose_precision).
        differ = sorted(
            k
            for k in cfg
            if k not in NOT_COMPARED and cfg[k] not in (None, "auto") and saved.get(k) != cfg[k]
        )
        if differ:
            raise UserError(
                f"--resume: options differ from the run in '{run.dir}' ({', '.join(differ)}); "
                f"resume with `--config {saved_path} --resume`"
            )
        return
    if run.dir.exists() and any(run.dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"run folder '{run.dir}' already holds a run; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        from warmstart import distributed

        # Every process has checked the folder above; only then may the main one delete it.
        distributed.barrier()
        if run.main:
            shutil.rmtree(run.dir)
        distributed.barrier()
