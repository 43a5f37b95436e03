"""Ways to run a saved classifier: PyTorch (fp32, bf16, int8 dynamic) or ONNX Runtime (fp32, int8).

Each backend is a callable ``forward(batch) -> logits`` for ``inference.batched.batched_outputs``,
so every backend shares the one length-sorted batched loop. ``plan`` turns the user's auto/none
choices into concrete ones.

Measured on a 2-core AVX512-VNNI CPU (benchmarks/inference_throughput.py): ONNX Runtime with fused
attention and int8 weights is the fastest CPU path by far, so it is the CPU default when onnxruntime
is installed; batches of up to ~2,000 tokens beat larger padded batches there (cache-resident
activations)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from warmstart.distributed import omp_threads
from warmstart.errors import UserError
from warmstart.models.device import auto_precision

BACKENDS = ("auto", "torch", "onnx")
QUANTIZE = ("auto", "none", "int8")
PRECISIONS = ("auto", "fp32", "bf16")
ONNX_HINT = (
    "install it with `pip install 'warmstart[onnx]'` (or `make setup`), or pass --backend torch"
)

# Padded tokens per CPU batch: 512-token reviews go four at a time, 64-token texts 32 at a time.
# Measured with the int8 ONNX export on 2 cores (texts/s, batch 1 -> best): 64 tokens 196 -> 329
# (batch 32), 128 tokens 108 -> 165 (16), 512 tokens 26 -> 29 (4), while 8 x 512 tokens fell back to
# 24 (activations leave the cache).
CPU_MAX_TOKENS = 2048
# ONNX Runtime graph fusions left off: SkipLayerNormalization is ~4x slower than Add +
# LayerNormalization.
DISABLED_FUSIONS = ["SkipLayerNormFusion"]
CPU_MAX_BATCH = 64
GPU_BATCH = 64


# int8 keeps a weight matrix fp32 when its largest output channel is this many times the median
# channel's largest weight: one scale per matrix would leave the other channels a handful of int8
# levels. In a MiniLM fine-tuned on IMDb, the FFN output projections of layers 0-3 (ratios 18-43;
# all others < 8) are the ones whose quantisation flipped 4% of predictions; keeping them fp32: 0.2%
# flips, ~10% slower.
OUTLIER_RATIO = 15.0


def outlier_ratio(weight: np.ndarray) -> float:
    """max |w| over the matrix / median over output channels of max |w|, for a (in, out) matrix."""
    per_channel = np.abs(weight).max(axis=0)
    return float(per_channel.max() / max(float(np.median(per_channel)), 1e-12))


@dataclass(frozen=True)
class Plan:
    """The concrete way a classifier runs: backend torch|onnx, quantize none|int8, precision
    fp32|bf16."""

    backend: str
    quantize: str
    precision: str
    device: torch.device

    @property
    def name(self) -> str:
        kind = "int8" if self.quantize == "int8" else self.precision
        return f"{self.backend}-{kind}"


def has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"--backend onnx needs the package onnxruntime: {ONNX_HINT}") from None
    return onnxruntime


def plan(
    backend: str = "auto",
    quantize: str = "auto",
    precision: str = "auto",
    device: torch.device | None = None,
) -> Plan:
    """Resolve auto choices for ``device``: ONNX int8 on CPUs with onnxruntime, else PyTorch (bf16
    on GPUs)."""
    for value, name, allowed in (
        (backend, "backend", BACKENDS),
        (quantize, "quantize", QUANTIZE),
        (precision, "precision", PRECISIONS),
    ):
        if value not in allowed:
            raise UserError(f"option '{name}' must be one of {', '.join(allowed)}, got {value!r}")
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    if backend == "auto":
        # An explicit bf16 request is a PyTorch feature; otherwise ONNX Runtime wins on CPUs.
        backend = "onnx" if not cuda and precision != "bf16" and has_onnxruntime() else "torch"
    if backend == "onnx":
        require_onnxruntime()
        if precision == "bf16":
            raise UserError(
                "--precision bf16 runs with --backend torch; the onnx backend runs fp32 or int8"
            )
        if cuda:
            device = torch.device("cpu")  # the onnxruntime wheel we install runs on the CPU only
        return Plan("onnx", "int8" if quantize == "auto" else quantize, "fp32", device)
    if quantize == "int8":
        if cuda:
            raise UserError(
                "--quantize int8 runs on the CPU; add --cpu, or use --precision bf16 on the GPU"
            )
        if precision == "bf16":
            raise UserError("choose one of --quantize int8 and --precision bf16")
        return Plan("torch", "int8", "fp32", device)
    if precision == "auto" and cuda:
        precision = auto_precision(device)
    return Plan(
        "torch", "none", precision, device
    )  # auto on a CPU: measured on the model (TorchBackend)


def threads() -> int:
    """CPU threads inference may use: $OMP_NUM_THREADS when set, else torch's count (one per
    physical core)."""
    return omp_threads() or torch.get_num_threads()


def auto_batching(p: Plan, batch_size: int | None) -> tuple[int, int | None, int]:
    """(batch size, token budget per batch, parallel workers) for ``p``; a batch size the user gave
    is kept.

    int8 runs every text alone, whatever ``batch_size``: dynamic quantisation scales activations
    over the whole batch, so a text's probabilities depended on its neighbours (0.929 alone, 0.924
    beside another review) and, in `serve`, on other users' requests. Alone, a text is quantised on
    its own values, with no padding. On ONNX Runtime, texts go one per core (one thread each, no
    thread handoffs per op), which measured as fast as batches of 2,048 tokens on 2 cores at 64
    tokens and 10% faster at 512."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if p.quantize == "int8":
        return 1, None, threads() if p.backend == "onnx" else 1
    if batch_size is not None:
        return batch_size, None, 1
    if p.device.type == "cuda":
        return GPU_BATCH, None, 1
    return CPU_MAX_BATCH, CPU_MAX_TOKENS, 1


class TorchBackend:
    """A PyTorch classifier in fp32, bf16 weights, or int8 dynamic quantisation of its Linear
    layers."""

    def __init__(self, model: torch.nn.Module, p: Plan):
        model.eval()
        if p.precision == "auto":
            # bf16 weights ran MiniLM 2.65x faster than fp32 on a Zen 4 CPU; on CPUs without native
            # bf16 they are slower. Measured once per CPU and model (models.precision), on a CPU
            # batch of 2,048 tokens.
            p = replace(
                p, precision=auto_precision(p.device, model, rows=8, tokens=CPU_MAX_TOKENS // 8)
            )
        if p.quantize == "int8":
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

            model = model.to("cpu")
            # Linear layers with outlier output channels stay fp32 (see outlier_ratio).
            spec = {
                name: default_dynamic_qconfig
                for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
                and outlier_ratio(m.weight.detach().numpy().T) <= OUTLIER_RATIO
            }
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # quantized-tensor deprecation notice, once per load
                model = quantize_dynamic(model, spec, dtype=torch.qint8)
        elif p.precision == "bf16":
            # Casting the weights beats autocast: no per-op casts, half the memory traffic.
            model = model.to(torch.bfloat16)
        self.model = model.to(p.device)
        self.plan = p

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.model(**batch).logits.float()


class OnnxBackend:
    """An exported classifier (see inference/export.py) in an ONNX Runtime CPU session."""

    def __init__(self, onnx_file: Path, p: Plan):
        ort = require_onnxruntime()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # int8 runs one text per call, several calls at once (see auto_batching): one thread per
        # call.
        so.intra_op_num_threads = 1 if p.quantize == "int8" else threads()
        try:
            # Not re-fused at load either (see inference/export.py: the fused kernel is the slower
            # one).
            self.session = ort.InferenceSession(
                str(onnx_file),
                so,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=DISABLED_FUSIONS,
            )
        except (
            Exception
        ) as e:  # onnxruntime raises its own exception types for unreadable or corrupt files
            raise UserError(
                f"cannot load the ONNX model '{onnx_file}': {str(e).strip().splitlines()[0]}"
            ) from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.plan = p

    def __call__(self, batch: dict) -> np.ndarray:
        feed = {}
        for name in self.inputs:
            value = batch.get(name)
            if value is None and name == "token_type_ids":
                value = torch.zeros_like(batch["input_ids"])
            feed[name] = value.cpu().numpy().astype(np.int64, copy=False)
        return self.session.run(None, feed)[0]
