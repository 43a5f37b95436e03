"""Publishing a saved model to the Hugging Face Hub (or any server speaking its API: HF_ENDPOINT):
what `warmstart push` and `finetune --push-to-hub` do.

One repo create (``exist_ok``: pushing again adds a commit), a branch for ``--revision`` other than
main, then one ``upload_folder`` of the model folder — its card included, rewritten first so that
its usage examples load the repo id — and, with ``with_onnx``, of its ONNX export (exported first
when missing or stale). Files the repo already holds unchanged are not sent again.

Everything the Hub can refuse is one line (a UserError): no token, a token it rejects (401) or that
may not write there (403), a repo or namespace it does not know (404), a server or network it cannot
reach, and offline mode (HF_HUB_OFFLINE=1), which is checked with the token before any request so
that `finetune --push-to-hub` fails before training, not after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from warmstart.errors import UserError
from warmstart.hub import card

LOGIN_HINT = "set HF_TOKEN to a token with write access, or run `hf auth login`"


@dataclass
class Pushed:
    """Where a push went."""

    repo: str  # the repo id as the Hub names it
    url: str  # its page
    commit: str  # the commit the push made (or the head, when nothing had changed)
    revision: str  # the branch
    model_dir: Path
    onnx: Path | None  # the ONNX export uploaded with it, if any


def endpoint() -> str:
    """The Hub's address, read now (huggingface_hub reads HF_ENDPOINT once, when imported)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_ready(repo: str, offline: bool = False) -> None:
    """Everything a push needs that can be checked without the network: a valid repo id, not
    offline (HF_HUB_OFFLINE, or ``offline``: the command's --offline), a token."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise UserError(
            f"--repo '{repo}' is not a Hub repo id: give NAMESPACE/NAME (your user name or an"
            " organization, then the model's name: letters, digits, '-', '_', '.')"
        ) from None
    if offline:
        raise UserError(f"--offline keeps warmstart off the network: pushing to '{repo}' needs it")
    if constants.is_offline_mode():
        raise UserError(
            f"pushing to '{repo}' needs the network, but HF_HUB_OFFLINE=1 keeps warmstart off it:"
            " unset it (or set HF_HUB_OFFLINE=0) to push"
        )
    if not get_token():
        raise UserError(f"no Hugging Face token to push '{repo}' with: {LOGIN_HINT}")


def model_folder(name: str) -> Path:
    """MODEL as `push` takes it: a saved model folder, or a run folder (its model/) of a finished
    run."""
    from warmstart.inference.export import is_export

    path = Path(name).expanduser()
    if not path.is_dir():
        raise UserError(f"model folder '{name}' does not exist (push takes a run or model folder)")
    if not (path / "config.json").is_file() and (path / "model").is_dir():
        path = path / "model"
    run = path.parent
    if (run / "config.yaml").is_file() and not (run / "metrics.json").is_file():
        raise UserError(
            f"the run in '{run}' has not finished (no metrics.json): push it once it has, so its"
            " model card has its test scores"
        )
    if is_export(path):
        raise UserError(
            f"'{name}' is an ONNX export: push the model folder it was made from, with --with-onnx"
        )
    if not (path / "config.json").is_file() and not card.is_adapter(path):
        raise UserError(f"folder '{name}' has no config.json, so it is not a saved model")
    return path


def onnx_export(model_dir: Path, say: Callable[[str], None]) -> Path:
    """The model's ONNX export (fp32 and int8), made now if it is missing or stale."""
    from warmstart.inference.export import ensure_export
    from warmstart.models.registry import has_classifier_head, has_tagger_head, load_config

    config = load_config(str(model_dir))
    if not (has_classifier_head(config) or has_tagger_head(config)):
        raise UserError(
            f"--with-onnx: '{model_dir}' is a {card.pipeline_of(card.model_config(model_dir)).tag}"
            " model; the ONNX export covers classifiers and taggers: push without --with-onnx"
        )
    folder, reused = ensure_export(str(model_dir), quiet=True)
    say(f"ONNX export {'up to date' if reused else 'made'}: {folder}")
    return folder


def push(
    model: str | Path,
    repo: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    with_onnx: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> Pushed:
    """Upload the model folder ``model`` (a run folder's model/) to the Hub repo ``repo``."""
    model_dir = model_folder(str(model))
    check_ready(repo)
    # Exported before any request (a model ONNX does not cover is refused here); the card written
    # below keeps the export current (card.write).
    onnx = onnx_export(model_dir, say) if with_onnx else None
    where = endpoint()
    branch = revision or "main"
    message = commit_message or f"Upload {model_dir.parent.name}/{model_dir.name} with warmstart"
    from huggingface_hub import HfApi

    api = HfApi(endpoint=where)
    with hub_errors(repo, branch, where, model_dir):
        url = api.create_repo(repo, private=private, exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo
        if os.access(model_dir, os.W_OK):
            # A folder saved before cards existed gets one; then it names the repo to load from.
            card.ensure(model_dir)
            text = card.for_repo(model_dir, repo_id)
            if text is not None:
                card.write(model_dir, text)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        inside = onnx is not None and onnx.resolve().parent == model_dir.resolve()
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=model_dir,
            revision=branch,
            commit_message=message,
            # The export lives in model/onnx/ when the folder is writable: sent only when asked.
            ignore_patterns=None if inside else ["onnx/*", "onnx/**"],
        )
        if onnx is not None and not inside:  # an export kept in warmstart's cache
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=onnx,
                path_in_repo="onnx",
                revision=branch,
                commit_message=f"{message} (ONNX export)",
            )
    return Pushed(repo_id, f"{where}/{repo_id}", info.oid, branch, model_dir, onnx)


def network_error(e: BaseException) -> bool:
    """A connection that failed (refused, timed out, no route, bad address) rather than an answer:
    httpx's TransportError in huggingface_hub 1.x and later, requests' ConnectionError before."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException"})


@contextlib.contextmanager
def hub_errors(repo: str, branch: str, where: str, model_dir: Path) -> Iterator[None]:
    """The Hub's refusals as one line each; the model folder is left as it was."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise UserError(
            f"pushing to '{repo}' needs the network, but HF_HUB_OFFLINE=1 keeps warmstart off it:"
            " unset it (or set HF_HUB_OFFLINE=0) to push"
        ) from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        said = (e.server_message or "").strip().splitlines()
        detail = f" (the server said: {said[0]})" if said else ""
        if status == 401:
            raise UserError(
                f"the Hub at {where} refused the token (401 Unauthorized): it is invalid or"
                f" expired; {LOGIN_HINT}"
            ) from None
        if status == 403:
            raise UserError(
                f"the token may not write to '{repo}' at {where} (403 Forbidden){detail}: use a"
                " token with write access to that namespace (a fine-grained token needs write"
                " permission on it)"
            ) from None
        if status == 404:
            raise UserError(
                f"'{repo}' (branch '{branch}') was not found at {where} and could not be created"
                f" (404){detail}: check the namespace is your user name or an organization you"
                " belong to"
            ) from None
        raise UserError(
            f"the Hub at {where} refused the push to '{repo}' ({status}){detail}"
        ) from None
    except Exception as e:
        if not network_error(e):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot reach the Hub at {where} ({reason}): check the network and HF_ENDPOINT, then"
            f" push again (`warmstart push {model_dir} --repo {repo}`)"
        ) from None
