"""Hugging Face ids: a model found in the local cache, else downloaded into it once (unless
offline), and every way that can fail said in one sentence.

Only huggingface_hub is imported here, not transformers, so `warmstart download` starts at once.
The cache is huggingface_hub's own (``HF_HUB_CACHE``, ``HF_HOME``), and so is the token
(``HF_TOKEN`` or ``hf auth login``): a model fetched here is there for plain transformers too, and
the reverse."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from warmstart.config.settings import Choice
from warmstart.errors import UserError
from warmstart.files import disk_error
from warmstart.models.bundled import ALIASES
from warmstart.progress import on_terminal

if TYPE_CHECKING:
    from warmstart.config.options import ModelSourceOptions

# Weights in formats PyTorch transformers does not load (TensorFlow, Flax, ONNX, rust-bert,
# TFLite): never read here, and each often as large as the model itself.
OTHER_FORMATS = ("*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "*.tflite")
# Pickled PyTorch weights: skipped where the repo has its weights as safetensors too (loading
# those runs no code, and is faster).
PICKLED = ("*.bin", "*.pt", "*.pth")
# A cached snapshot is a model only with its config and all its weights: a folder holding just
# config.json (left by a plain AutoConfig call) is not one.
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
LOGIN = "`hf auth login` or set HF_TOKEN"
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Snapshot:
    """A model's files at one commit, in the Hugging Face cache."""

    repo_id: str
    commit: str  # the sha --revision (or main) resolved to: config.yaml records it
    path: Path  # .../models--ORG--NAME/snapshots/<commit>
    downloaded: bool  # fetched now; False: found in the cache


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is spelled as a Hugging Face repo id ('org/name' or 'name')."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_hub_name(name: str) -> bool:
    """Whether --model ``name`` names a Hugging Face id: no alias, nothing on disk, no path."""
    if not name or name.strip().lower() in ALIASES or Path(name).expanduser().exists():
        return False
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and is_hub_id(name)


def snapshot(name: str, hub: ModelSourceOptions | None = None) -> Snapshot:
    """The Hugging Face id ``name`` at the command's --revision: from the cache, else downloaded
    (unless --offline or HF_HUB_OFFLINE=1); refused if its code would have to run and
    --trust-remote-code is not given."""
    return fetch(
        name,
        getattr(hub, "revision", None),
        offline=bool(getattr(hub, "offline", False)),
        check=lambda config: check_code(name, config, bool(getattr(hub, "trust_remote_code", 0))),
    )


def pin(cfg: ModelSourceOptions) -> dict[str, Choice]:
    """Resolve the command's --model once, at its start: for a Hugging Face id, the commit its
    --revision (or main) stands for, as the choice ``config.settle`` records (config.yaml's
    ``revision`` and why), so every later load reads that one snapshot; nothing for an alias or a
    folder, where --revision means nothing and is refused."""
    name = (getattr(cfg, "model", None) or "").strip()
    if not is_hub_name(name):
        if cfg.revision:
            what = f"'{name}' is not one" if name else "no --model is given"
            raise UserError(f"--revision applies to a Hugging Face id as --model; {what}")
        return {}
    found = snapshot(name, cfg)
    if cfg.revision == found.commit:
        return {}
    asked = f"'{cfg.revision}'" if cfg.revision else "the default branch"
    how = "downloaded" if found.downloaded else "from the Hugging Face cache"
    return {"revision": Choice(found.commit, f"{name} at {asked}, {how}")}


def needs_remote_code(config: dict) -> bool:
    """Whether loading a model with this config.json runs code from its repo: it names classes in
    ``auto_map`` and transformers has none of its own for its ``model_type`` (as transformers
    decides in resolve_trust_remote_code)."""
    if not config.get("auto_map"):
        return False
    # transformers only where a config names code of its own: `download` stays light.
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return config.get("model_type") not in CONFIG_MAPPING_NAMES


def check_code(name: str, config: dict, trusted: bool) -> None:
    if trusted or not needs_remote_code(config):
        return
    classes = ", ".join(sorted({str(v) for v in config["auto_map"].values()}))[:200]
    raise UserError(
        f"model '{name}' needs its own Python code to load ({classes}), which would run on this "
        "machine; read that code in the model's files, then pass --trust-remote-code to allow it"
    )


def offline_mode(offline: bool = False) -> bool:
    """--offline, HF_HUB_OFFLINE=1 in the environment now, or huggingface_hub's own offline mode
    (which it reads once, when it is imported)."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return offline or now or bool(constants.HF_HUB_OFFLINE)


def revision_of(path: str | Path) -> str | None:
    """The commit of a folder in the Hugging Face cache (``.../snapshots/<sha>``); None for any
    other folder."""
    p = Path(path)
    return p.name if p.parent.name == "snapshots" and COMMIT.fullmatch(p.name) else None


def complete(folder: Path) -> bool:
    """A snapshot warmstart can load: config.json and every weights file (each shard an index
    names). Files still downloading are ``blobs/*.incomplete`` and not linked here yet."""
    if not (folder / "config.json").is_file():
        return False
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return all((folder / s).is_file() for s in shards)
    return any((folder / w).is_file() for w in WEIGHTS)


def cached(repo_id: str, revision: str | None = None) -> Path | None:
    """The complete snapshot of ``repo_id`` at ``revision`` (a branch or tag the cache has seen,
    or a commit; None: main) in the Hugging Face cache, else None. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a repo id huggingface_hub accepts
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder if complete(folder) else None


def fetch(
    repo_id: str,
    revision: str | None = None,
    offline: bool = False,
    check: Callable[[dict], None] | None = None,
    refresh: bool = False,
) -> Snapshot:
    """``repo_id`` at ``revision`` from the cache, else downloaded (safetensors where the repo has
    them, no weights in other frameworks' formats), unless offline. ``check`` sees config.json
    before any weights are fetched (and a cached config too), and may refuse the model.
    ``refresh`` (`warmstart download`): ask the Hub where the branch or tag points now, even with
    a copy in the cache (its files are not fetched again)."""
    found = None if refresh and not offline_mode(offline) else cached(repo_id, revision)
    if found is not None:
        if check is not None:
            check(json.loads((found / "config.json").read_text(encoding="utf-8")))
        return Snapshot(repo_id, found.name, found, downloaded=False)
    if offline_mode(offline):
        raise UserError(not_offline(repo_id, revision, "--offline" if offline else None))
    try:
        path = _download(repo_id, revision, check)
    except UserError:
        raise
    except Exception as e:
        message = explain(e, repo_id, revision)
        if message is None:
            raise
        raise UserError(message) from None
    return Snapshot(repo_id, path.name, path, downloaded=True)


def _download(repo_id: str, revision: str | None, check: Callable[[dict], None] | None) -> Path:
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    # The default branch by name, as snapshot_download asks for it (a Hub mirror may answer only
    # that form).
    info = HfApi().model_info(
        repo_id, revision=revision or constants.DEFAULT_REVISION, files_metadata=False
    )
    files = [s.rfilename for s in info.siblings or ()]
    if "config.json" not in files:
        raise UserError(
            f"model '{repo_id}' on the Hugging Face Hub has no config.json"
            f"{f' at {revision}' if revision else ''}, so it is not a transformers model "
            "warmstart can load"
        )
    if check is not None:
        # config.json alone first: a model refused for its remote code costs no weights download.
        config = hf_hub_download(repo_id, "config.json", revision=info.sha)
        check(json.loads(Path(config).read_text(encoding="utf-8")))
    ignore = list(OTHER_FORMATS)
    if any(f.endswith(".safetensors") for f in files):
        ignore += PICKLED
    # The requested revision, not info.sha: huggingface_hub then records the branch or tag in the
    # cache's refs/, so the same command finds it offline later.
    path = Path(
        snapshot_download(
            repo_id, revision=revision, ignore_patterns=ignore, tqdm_class=_progress_class()
        )
    )
    if not complete(path):
        raise UserError(
            f"model '{repo_id}' on the Hugging Face Hub has no weights warmstart can load "
            f"({', '.join(WEIGHTS)}, or a sharded index); its files: {', '.join(sorted(files))}"
        )
    return path


def _progress_class() -> type:
    """huggingface_hub's bar, drawn only on a terminal (as warmstart's own bars are)."""
    from huggingface_hub.utils import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = bool(kwargs.get("disable")) or not on_terminal()
            super().__init__(*args, **kwargs)

    return Bar


def _hub() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def aliases(name: str) -> str:
    """'minilm, smollm2' with "; did you mean 'minilm'?" when ``name`` is close to one."""
    close = difflib.get_close_matches(name.strip().lower(), ALIASES, n=1, cutoff=0.6)
    return ", ".join(ALIASES) + (f"; did you mean '{close[0]}'?" if close else "")


def not_offline(repo_id: str, revision: str | None, why: str | None = None) -> str:
    """A Hugging Face id that is not in the cache while downloads are off."""
    at = f" at revision '{revision}'" if revision else ""
    return (
        f"model '{repo_id}'{at} is not available offline: it is not an alias "
        f"({aliases(repo_id)}), a local folder, or in the Hugging Face cache ({_cache()}), "
        f"and downloads are off ({why or 'HF_HUB_OFFLINE=1'}); fetch it where there is a "
        f"network (`warmstart download {repo_id}`) and copy the cache here, or pass the folder "
        "where it is saved"
    )


def _network_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    # huggingface_hub 1.x speaks httpx, 2.x httpx2: a transport failure in either is the network.
    for module in ("httpx2", "httpx"):
        try:
            transport = __import__(module).TransportError
        except (ImportError, AttributeError):
            continue
        if isinstance(e, transport):
            return True
    return False


def _refs(repo_id: str) -> str:
    """'branches: main; tags: v1, v2' of a repo, or '' when the Hub will not say."""
    from huggingface_hub import HfApi

    try:
        refs = HfApi().list_repo_refs(repo_id)
    except Exception:  # only a hint for a message: any failure leaves it out
        return ""
    parts = [
        f"{kind}: {', '.join(r.name for r in found)}"
        for kind, found in (("branches", refs.branches), ("tags", refs.tags))
        if found
    ]
    return f" ({'; '.join(parts)})" if parts else ""


def _exists(repo_id: str) -> bool:
    from huggingface_hub import HfApi, constants

    try:
        HfApi().model_info(repo_id, revision=constants.DEFAULT_REVISION, files_metadata=False)
    except Exception:  # asked only to tell a missing revision from a missing repo
        return False
    return True


def explain(e: BaseException, repo_id: str, revision: str | None) -> str | None:
    """One sentence for a failure to fetch ``repo_id`` from the Hub; None for anything else (a bug:
    it keeps its traceback)."""
    from huggingface_hub import errors

    page = f"{_hub()}/{repo_id}"
    disk = disk_error(e)
    if disk is not None:
        return (
            f"cannot download model '{repo_id}' into the Hugging Face cache ({_cache()}): {disk}; "
            "free some space (or point HF_HUB_CACHE at a disk with room) and run the command "
            "again: files cut short stay blobs/*.incomplete, resumed then and never used as the "
            "model"
        )
    if isinstance(e, errors.GatedRepoError):
        if _has_token():
            return (
                f"model '{repo_id}' is gated and your token has no access to it: accept its "
                f"conditions at {page} with the account of that token (HF_TOKEN or "
                "`hf auth login`)"
            )
        return f"model '{repo_id}' is gated: accept its conditions at {page}, then log in: {LOGIN}"
    if isinstance(e, errors.RevisionNotFoundError) or (
        # Some Hub mirrors answer an unknown revision as an unknown repo: asking for the repo
        # itself tells the two apart.
        revision and isinstance(e, errors.RepositoryNotFoundError) and _exists(repo_id)
    ):
        return (
            f"revision '{revision}' of model '{repo_id}' does not exist on the Hugging Face Hub: "
            f"give a branch, tag or commit of the repo{_refs(repo_id)}"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        private = (
            "your token cannot see it if it is private"
            if _has_token()
            else f"if it is private, log in first: {LOGIN}"
        )
        return (
            f"model '{repo_id}' is not an alias ({aliases(repo_id)}), a local folder, or a "
            f"model on the Hugging Face Hub ({_hub()}); check the name, or {private}"
        )
    if isinstance(e, errors.OfflineModeIsEnabled):
        return not_offline(repo_id, revision)
    if isinstance(e, errors.LocalEntryNotFoundError) or _network_error(e):
        reason = str(e.__cause__ or e).strip().splitlines()
        said = f": {reason[0][:200]}" if reason and reason[0] else ""
        if isinstance(e, errors.LocalEntryNotFoundError) and e.__cause__ is None:
            said = ""
        return (
            f"model '{repo_id}' is not in the Hugging Face cache and the Hub cannot be reached "
            f"({_hub()}{said}); fetch it where there is a network (`warmstart download "
            f"{repo_id}`) and copy the cache ({_cache()}) here, or pass the folder where it is "
            "saved"
        )
    if isinstance(e, errors.HfHubHTTPError):
        first = str(e).strip().splitlines()
        return (
            f"the Hugging Face Hub ({_hub()}) refused to send model '{repo_id}': "
            f"{first[0] if first else type(e).__name__}"
        )
    return None
