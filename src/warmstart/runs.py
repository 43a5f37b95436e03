"""The run folder: atomic writes, config.yaml, history.jsonl, checkpoints and the final model.

    out/
      config.yaml        resolved config; `warmstart finetune --config out/config.yaml` repeats the run
      history.jsonl      one JSON object per logged step and per epoch
      metrics.json       written last: its presence means the run finished
      model/             best model so far (save_pretrained + tokenizer), replaced atomically
      checkpoints/checkpoint-<step>/   model, optimizer, scheduler, RNG (accelerate) + state.json
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml


def cache_dir() -> Path:
    """warmstart's own cache (converted models, token files, ONNX exports of read-only models):
    $WARMSTART_HOME, else ~/.cache/warmstart (or $XDG_CACHE_HOME/warmstart)."""
    if os.environ.get("WARMSTART_HOME"):
        return Path(os.environ["WARMSTART_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "warmstart"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed onto ``path`` when the block ends without an error, so
    readers see the old file or the new one, never half of one (the one temp-file-then-rename in warmstart)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary sibling folder with ``write`` and swap it in, so readers never see half a folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by a kill: everything after it is lost anyway
    return rows


class Run:
    def __init__(self, out: str | Path, quiet: bool = False, tensorboard_dir: str | None = None):
        self.dir = Path(out)
        self.quiet = quiet
        self.started = time.time()
        self.tensorboard_dir = tensorboard_dir
        self._writer = None
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
        """config.yaml: the resolved options, headed by ``notes`` as comments (how an 'auto' was resolved)."""
        if self.main:
            head = "".join(f"# {n}\n" for n in notes)
            atomic_write_text(self.dir / "config.yaml",
                              head + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))

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
        if self.tensorboard_dir:
            self._tensorboard(record)

    def _tensorboard(self, record: dict) -> None:
        """Every number of a history record as a TensorBoard scalar: step records under train/, epochs under epoch/."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from warmstart.errors import UserError

                raise UserError("--logging-dir needs TensorBoard: pip install tensorboard") from None
            self._writer = SummaryWriter(log_dir=self.tensorboard_dir)
        group = "epoch" if "train_loss" in record else "train"
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self._writer.add_scalar(f"{group}/{key}", value, record["step"])
        self._writer.flush()

    def history(self) -> list[dict]:
        return read_jsonl(self.history_path)

    def truncate_history(self, step: int) -> None:
        """On resume: keep what was logged up to the checkpoint, drop what the lost work logged."""
        kept = [r for r in self.history() if r.get("step", 0) <= step]
        if self.main:
            atomic_write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in kept))

    # checkpoints
    def checkpoints(self) -> list[Path]:
        found = [p for p in self.checkpoints_dir.glob("checkpoint-*") if (p / "state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self, step: int, write: Callable[[Path], None], state: dict, keep: int,
                        barrier: Callable[[], None] = lambda: None) -> Path:
        """``write`` fills the checkpoint folder; called by every process (sharded optimizers and per-process
        RNG states are written by their own process), then the main one marks it complete with state.json
        and swaps it in. ``barrier`` waits for all processes (a no-op for one)."""
        target = self.checkpoints_dir / f"checkpoint-{step}"
        tmp = self.checkpoints_dir / f".checkpoint-{step}.tmp"  # one name all processes agree on
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        write(tmp)
        barrier()
        if self.main:
            atomic_write_json(tmp / "state.json", state)  # last: marks the checkpoint complete
            old = self.checkpoints_dir / f".checkpoint-{step}.old"
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
            for stale in self.checkpoints()[:-keep] if keep > 0 else []:
                shutil.rmtree(stale, ignore_errors=True)
        barrier()
        return target

    def say(self, msg: str) -> None:
        if not self.quiet and self.main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)


# Options that do not change what a run computes, so a resumed run may differ in them. (The process count
# may change too: a resumed run keeps the global batch of the run it continues, see engines/native.py.)
NOT_COMPARED = {"out", "resume", "overwrite", "progress", "logging_steps", "logging_dir", "save_steps",
                "save_total_limit", "num_processes"}


def prepare_run_folder(run: Run, cfg: dict, resume: bool, overwrite: bool) -> None:
    """Check that ``--resume`` continues the same run, and that a finished run is never overwritten
    silently (only with ``--overwrite``)."""
    from warmstart.errors import UserError

    saved_path = run.dir / "config.yaml"
    if resume:
        if not saved_path.is_file():
            raise UserError(f"--resume: '{run.dir}' holds no run to resume (no config.yaml)")
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        # None means "the default", resolved the same way again (e.g. max_length from the model); "auto" was
        # resolved when the run started and the resumed run takes that value (training.common.choose_precision).
        differ = sorted(k for k in cfg if k not in NOT_COMPARED and cfg[k] not in (None, "auto")
                        and saved.get(k) != cfg[k])
        if differ:
            raise UserError(f"--resume: options differ from the run in '{run.dir}' ({', '.join(differ)}); "
                            f"resume with `--config {saved_path} --resume`")
        return
    if run.dir.exists() and any(run.dir.iterdir()):
        if not overwrite:
            raise UserError(f"run folder '{run.dir}' already holds a run; pass --resume to continue it or "
                            "--overwrite to replace it")
        from warmstart import distributed

        # Every process has checked the folder above; only then may the main one delete it.
        distributed.barrier()
        if run.main:
            shutil.rmtree(run.dir)
        distributed.barrier()
