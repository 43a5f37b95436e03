"""Where a model runs and in which precision "auto" means, decided once for every command and the
server."""

from __future__ import annotations

import torch


def pick_device(cpu: bool = False) -> torch.device:
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def auto_precision(
    device: torch.device,
    model: torch.nn.Module | None = None,
    rows: int = 8,
    tokens: int = 256,
    mode: str = "infer",
) -> str:
    """What --precision auto means for running ``model`` on ``device``: bf16 on GPUs that support
    it; on a CPU the faster of fp32 and bf16 weights as measured on this model and CPU for ``mode``
    (infer: a forward pass, generate: decoding; models.precision, cached), or fp32 when there is no
    model to measure."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if model is None:
        return "fp32"
    from warmstart.models.precision import measure

    return measure(model, mode, rows, tokens).precision
