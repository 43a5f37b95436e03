"""`warmstart download ID`: fetch a model from the Hugging Face Hub into the local cache (the one
transformers reads too), to use it later without a network; prints the folder it is in.

Only huggingface_hub is imported (models.download): no torch, no transformers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from warmstart.config import DownloadConfig, make
from warmstart.errors import UserError
from warmstart.models.bundled import ALIASES
from warmstart.models.download import fetch, is_hub_name


@dataclass
class DownloadResult:
    model: str
    commit: str  # the commit --revision (or main) resolved to
    path: Path  # the snapshot folder: --model takes the id again, or this folder
    downloaded: bool  # False: it was in the cache already


def download(config: DownloadConfig | None = None, **kwargs) -> DownloadResult:
    """Fetch ``config.model`` at ``config.revision`` into the Hugging Face cache (safetensors
    weights where the repo has them), unless it is there already."""
    cfg = make(DownloadConfig, config, kwargs)
    name = cfg.model.strip()
    if not name:
        raise UserError("no model to download: pass a Hugging Face id (ORG/NAME)")
    if not is_hub_name(name):
        what = (
            "bundled with warmstart"
            if name.lower() in ALIASES
            else "a local folder"
            if Path(name).expanduser().exists()
            else "not a Hugging Face id (ORG/NAME)"
        )
        raise UserError(f"'{name}' is {what}: nothing to download")
    found = fetch(name, cfg.revision, refresh=True)
    return DownloadResult(name, found.commit, found.path, found.downloaded)


def report(cfg: DownloadConfig, result: DownloadResult) -> str:
    # The folder alone, so that a script can take it: MODEL=$(warmstart download ORG/NAME).
    return f"{result.path}\n"
