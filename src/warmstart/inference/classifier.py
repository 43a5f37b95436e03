"""A saved sequence classifier ready for batched prediction on the fastest backend for the device.

A text longer than the model's window is read as --long-text says (the model's own choice from
finetune, saved in its config.json, unless overridden): truncated, cut to its head and tail, or read
whole in overlapping windows whose logits are aggregated into the text's (chunk). Each window is a
row of the one batched loop, so chunk runs on every backend, and a text's answer never depends on
the texts batched with it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from warmstart.config.options import CHUNK_AGGREGATIONS, LONG_TEXTS, ModelSourceOptions
from warmstart.data.batching import Encoded, collator, encode, encode_chunks
from warmstart.data.tables import Examples, LabelMap
from warmstart.data.targets import problem_of
from warmstart.errors import UserError
from warmstart.inference import backends
from warmstart.inference.batched import batched_outputs
from warmstart.inference.calibration import saved_temperature
from warmstart.inference.export import ensure_export, is_export, onnx_file
from warmstart.metrics import sigmoid, softmax
from warmstart.models.classifier import load_classifier
from warmstart.models.device import pick_device
from warmstart.models.registry import (
    has_tagger_head,
    load_config,
    load_tokenizer,
    max_length_of,
    resolve,
)


@dataclass
class Classifier:
    """A saved sequence classifier with its tokenizer, ready for batched prediction on one of the
    backends."""

    path: str
    model: torch.nn.Module | None  # the PyTorch model; None on the onnx backend
    tokenizer: object
    labels: LabelMap
    device: torch.device
    max_length: int
    forward: Callable[[dict], torch.Tensor | np.ndarray] | None = None
    plan: backends.Plan | None = None
    long_text: str = "truncate"  # truncate | head+tail | chunk (see long_text_options)
    stride: int | None = (
        None  # chunk: tokens shared by consecutive windows (None: a quarter of the window)
    )
    aggregation: str = "mean"  # chunk: how a text's logits come from its windows' (aggregate)
    temperature: float = (
        1.0  # calibration (inference.calibration): probabilities are softmax(logits / temperature)
    )
    problem: str = (  # or multi-label (sigmoid per label) or regression (the outputs are the values)
        "single-label"
    )
    thresholds: np.ndarray | None = (
        None  # multi-label: per-label thresholds tuned on the valid split (else 0.5)
    )

    @classmethod
    def load(
        cls,
        name: str,
        max_length: int | None = None,
        cpu: bool = False,
        backend: str = "torch",
        quantize: str = "none",
        precision: str = "fp32",
        long_text: str | None = None,
        stride: int | None = None,
        aggregation: str | None = None,
        *,
        hub: ModelSourceOptions | None = None,
    ) -> Classifier:
        """Load ``name`` for ``backend`` (auto|torch|onnx), ``quantize`` (auto|none|int8) and
        ``precision``.

        The defaults keep the fine-tuned model exactly as trained (fp32 PyTorch); predict and
        evaluate pass auto, which picks the fastest backend for the device (see backends.plan).
        ``long_text``, ``stride`` and ``aggregation`` (None: the model's own) say how texts longer
        than ``max_length`` are read; ``hub`` the command's --revision, --offline and
        --trust-remote-code for a Hugging Face id."""
        # How long texts are read is checked first: options that would do nothing are refused
        # before any work (an ONNX export, say).
        reading = long_text_options(
            load_config(resolve(name, hub=hub)), long_text, stride, aggregation
        )
        path, forward, config, p = open_backend(
            name, cpu, backend, quantize, precision, head="sequence", hub=hub
        )
        tokenizer = load_tokenizer(path)
        model = forward.model if isinstance(forward, backends.TorchBackend) else None
        return cls(
            path,
            model,
            tokenizer,
            LabelMap.from_model_config(config),
            p.device,
            max_length_of(tokenizer, config, max_length),
            forward,
            p,
            *reading,
            # From ``path`` itself, never the ONNX export's copy of config.json: `calibrate` writes
            # this one.
            temperature=saved_temperature(path),
            problem=problem_of(config),
            thresholds=(
                None
                if getattr(config, "thresholds", None) is None
                else np.asarray(config.thresholds)
            ),
        )

    def probabilities(
        self, ex: Examples, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Class probabilities, one row per example: softmax(logits / T), T the model's calibration
        temperature (1 when it has none; dividing by T never changes a row's argmax); ``batch_size``
        None: tuned for the device."""
        logits = self.logits(ex, batch_size, progress)
        if self.problem == "multi-label":
            return sigmoid(logits / self.temperature)
        if self.problem == "regression":
            return logits
        return softmax(logits / self.temperature)

    def records(self, outputs: np.ndarray) -> list[dict]:
        """What predict and the server report per text, from rows of ``probabilities``: the label,
        its score and every class's probability; for multi-label every label at or above its
        threshold and each label's score; for regression the value (several targets: each by
        name)."""
        names = self.labels.names
        if self.problem == "regression":
            return [
                (
                    {"value": float(row[0])}
                    if len(names) == 1
                    else {"values": dict(zip(names, map(float, row)))}
                )
                for row in outputs
            ]
        if self.problem == "multi-label":
            cut = self.thresholds if self.thresholds is not None else np.full(len(names), 0.5)
            return [
                {
                    "labels": [n for n, p, t in zip(names, row, cut) if p >= t],
                    "scores": {n: float(p) for n, p in zip(names, row)},
                }
                for row in outputs
            ]
        return label_records(names, outputs)

    def logits(
        self, ex: Examples, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """One row of logits per example, a long text read as ``long_text`` says."""
        p = self.plan or backends.plan("torch", "none", "fp32", self.device)
        forward = self.forward or backends.TorchBackend(self.model, p)
        size, max_tokens, workers = backends.auto_batching(p, batch_size)

        def run(data: Encoded) -> np.ndarray:
            return batched_outputs(
                forward,
                data,
                size,
                collator(self.tokenizer),
                self.device,
                progress,
                max_tokens=max_tokens,
                workers=workers,
            )

        if self.long_text == "chunk":
            windows, counts = encode_chunks(self.tokenizer, ex, self.max_length, self.stride)
            return aggregate(run(windows), counts, self.aggregation)
        return run(encode(self.tokenizer, ex, self.max_length, long_text=self.long_text))


def label_records(names: list[str], probs: np.ndarray) -> list[dict]:
    """Single-label records: the most probable label, its probability, and every class's."""
    return [
        {
            "label": names[int(row.argmax())],
            "score": float(row.max()),
            "probabilities": {n: float(v) for n, v in zip(names, row)},
        }
        for row in probs
    ]


def long_text_options(
    config: object, long_text: str | None, stride: int | None, aggregation: str | None
) -> tuple[str, int | None, str]:
    """(long_text, stride, aggregation) a classifier runs with: each as given, else as saved in the
    model's config by finetune, else truncate (stride: a quarter of the window; aggregation: mean).
    --stride and --chunk-aggregation given to a classifier that does not chunk would silently do
    nothing: refused."""
    mode = long_text or getattr(config, "long_text", None) or "truncate"
    if mode not in LONG_TEXTS:
        raise UserError(f"--long-text must be one of {', '.join(LONG_TEXTS)}, got {mode!r}")
    if mode != "chunk":
        given = [
            flag
            for flag, value in (("--stride", stride), ("--chunk-aggregation", aggregation))
            if value is not None
        ]
        if given:
            how = f"--long-text {long_text}" if long_text else f"its default, --long-text {mode}"
            raise UserError(
                f"{', '.join(given)} only apply to --long-text chunk; this classifier reads long"
                f" texts with {how}"
            )
        return mode, None, "mean"
    # A model trained with chunk saved its window settings too; given ones override them.
    stride = stride if stride is not None else getattr(config, "long_text_stride", None)
    aggregation = aggregation or getattr(config, "chunk_aggregation", None) or "mean"
    if aggregation not in CHUNK_AGGREGATIONS:
        raise UserError(
            f"--chunk-aggregation must be one of {', '.join(CHUNK_AGGREGATIONS)}, got"
            f" {aggregation!r}"
        )
    return mode, stride, aggregation


def aggregate(logits: np.ndarray, counts: np.ndarray, how: str) -> np.ndarray:
    """One row per text from the rows of its windows (``counts[i]`` consecutive rows for text i, at
    least one): their mean, their maximum per class, or the mean of the first and the last window
    (where a review sets out and where it gives its verdict)."""
    if len(counts) == 0:
        return logits
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if how == "mean":
        return (np.add.reduceat(logits, starts, axis=0) / counts[:, None]).astype(np.float32)
    if how == "max":
        return np.maximum.reduceat(logits, starts, axis=0)
    if how == "first+last":
        return (logits[starts] + logits[starts + counts - 1]) / 2
    raise ValueError(f"unknown aggregation {how!r}")


def open_backend(
    name: str,
    cpu: bool,
    backend: str,
    quantize: str,
    precision: str,
    head: str,
    hub: ModelSourceOptions | None = None,
) -> tuple[str, backends.TorchBackend | backends.OnnxBackend, object, backends.Plan]:
    """(path, forward, config, plan) of the saved classifier ``name`` (``head``: sequence or tokens)
    on the backend ``backend``/``quantize``/``precision`` resolve to; auto falls back to PyTorch
    when ONNX fails."""
    path = resolve(name, hub=hub)
    if is_export(path):
        if backend == "torch":
            raise UserError(f"'{name}' is an ONNX export: run it with --backend onnx (or auto)")
        backend = "onnx"
    p = backends.plan(backend, quantize, precision, pick_device(cpu))
    if p.backend == "onnx":
        try:
            forward, config = _onnx_backend(path, p)
            if (
                head == "tokens"
                and not has_tagger_head(config)
                or head == "sequence"
                and has_tagger_head(config)
            ):
                load_classifier(
                    path, head=head
                )  # the torch path's message for a model without this head
            return path, forward, config, p
        except UserError:
            raise
        except Exception as e:
            if backend != "auto":
                raise
            # auto promised the fastest working backend, not ONNX: a model the exporter cannot
            # handle runs on torch
            print(
                "note: running on PyTorch, the ONNX export failed"
                f" ({str(e).strip().splitlines()[0][:200]})",
                file=sys.stderr,
            )
            p = backends.plan(
                "torch", "none" if quantize == "auto" else quantize, precision, pick_device(cpu)
            )
    forward = backends.TorchBackend(load_classifier(path, head=head), p)
    return path, forward, forward.model.config, forward.plan


def _onnx_backend(path: str, p: backends.Plan) -> tuple[backends.OnnxBackend, object]:
    """The ONNX Runtime session for ``path``: an export folder itself, else its (cached) export."""
    # The cache holds both precisions, so switching --quantize never exports again.
    folder = Path(path) if is_export(path) else ensure_export(path, int8=True)[0]
    file = onnx_file(folder, p.quantize)
    if not file.is_file():
        raise UserError(
            f"the export '{folder}' has no {file.name}: export it again with "
            f"`warmstart export MODEL --onnx --quantize {p.quantize}`"
        )
    return backends.OnnxBackend(file, p), load_config(str(folder))
