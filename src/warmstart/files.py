"""File helpers every layer may use: atomic writes (a temporary sibling renamed into place, so
a reader sees the old file or the new one, never half of one), warmstart's cache folder, failures
that lie with the disk, and JSON Lines read up to a line torn by a kill."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (one of another user counts): tells a lock or temporary
    folder left by a killed process from one still in use."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cache_dir() -> Path:
    """warmstart's own cache (converted models, token files, ONNX exports of read-only models):
    $WARMSTART_HOME, else ~/.cache/warmstart (or $XDG_CACHE_HOME/warmstart)."""
    if os.environ.get("WARMSTART_HOME"):
        return Path(os.environ["WARMSTART_HOME"]).expanduser()
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "warmstart"
    )


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed onto ``path`` when the block ends without
    an error, so readers see the old file or the new one, never half of one (the one
    temp-file-then-rename in warmstart)."""
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
    """Fill a temporary sibling folder with ``write`` and swap it in, so readers never see half a
    folder. (Its names carry the process id: several processes may race to fill the same shared
    cache folder.)"""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


# Failures to write that lie with the disk, not with warmstart: full, over quota, read-only, not
# allowed, broken.
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
}


def disk_error(e: BaseException) -> str | None:
    """What went wrong when ``e`` is a failure to write to disk (DISK_ERRNOS), else None.
    safetensors (Rust) and torch.save (C++) report such failures in exceptions of their own."""
    if isinstance(e, OSError):
        return (e.strerror or os.strerror(e.errno)) if e.errno in DISK_ERRNOS else None
    text = str(e)
    found = re.search(r'IoError\(.*message: "([^"]+)"', text)  # safetensors' SafetensorError
    if found:
        return found.group(1)
    if (
        isinstance(e, RuntimeError) and "file write failed" in text
    ):  # torch.save's PytorchStreamWriter
        return "file write failed (is the disk full?)"
    return None


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by a kill: everything after it is lost anyway
    return rows
