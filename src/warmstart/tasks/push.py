"""`warmstart push MODEL --repo ID`: publish a saved model (a run folder or a model folder, its model
card included) to the Hugging Face Hub, or to the server HF_ENDPOINT names; `--with-onnx` adds its
ONNX export. The steps and every refusal are in hub/publish.py."""

from __future__ import annotations

import sys

from warmstart.config import PushConfig, make
from warmstart.errors import UserError
from warmstart.hub.publish import Pushed
from warmstart.hub.publish import push as publish


def push(config: PushConfig | None = None, **kwargs) -> Pushed:
    """Upload a saved model, its model card included, to a Hugging Face Hub repo."""
    cfg = make(PushConfig, config, kwargs)
    if not cfg.model:
        raise UserError("no model to push: give a run folder or a model folder")
    if not cfg.repo:
        raise UserError("no repo to push to: pass --repo NAMESPACE/NAME")
    return publish(
        cfg.model,
        cfg.repo,
        private=cfg.private,
        revision=cfg.revision,
        commit_message=cfg.commit_message,
        with_onnx=cfg.with_onnx,
        say=lambda line: print(line, file=sys.stderr, flush=True),
    )


def report(cfg: PushConfig, result: Pushed) -> str:
    onnx = " with its ONNX export (onnx/)" if result.onnx else ""
    return (
        f"pushed {result.model_dir}{onnx} to {result.url}"
        f" (branch {result.revision}, commit {result.commit[:12]})\n"
    )
