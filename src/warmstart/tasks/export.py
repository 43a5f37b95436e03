"""`warmstart export MODEL --onnx`: a saved classifier as ONNX, fp32 and int8, for `--backend onnx`
(the steps are in inference/export.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from warmstart.config import ExportConfig, make
from warmstart.errors import UserError
from warmstart.inference.export import FP32_FILE, INT8_FILE, ensure_export, is_export
from warmstart.models import resolve


@dataclass
class ExportResult:
    out: Path
    files: list[Path]
    reused: bool


def export(config: ExportConfig | None = None, **kwargs) -> ExportResult:
    """Export a saved model to ONNX (``onnx=True``), optionally quantised to int8, checked to give the
    PyTorch model's outputs."""
    cfg = make(ExportConfig, config, kwargs)
    if not cfg.onnx:
        raise UserError("choose an export format: --onnx (the only one so far)")
    path = resolve(cfg.model, hub=cfg)
    if is_export(path):
        raise UserError(
            f"'{cfg.model}' is already an ONNX export; pass the model folder it was made from"
        )
    out, reused = ensure_export(path, cfg.out, int8=cfg.quantize == "int8", overwrite=cfg.overwrite)
    files = [p for p in (out / FP32_FILE, out / INT8_FILE) if p.is_file()]
    return ExportResult(out, files, reused)


def report(cfg: ExportConfig, result: ExportResult) -> str:
    return (
        ("up to date: " if result.reused else "exported: ")
        + ", ".join(str(f) for f in result.files)
        + "\n"
    )
