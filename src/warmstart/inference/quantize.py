"""Quantised causal-LM weights for `generate` and `serve` (--quantize int4|int8|none|auto).

The ONNX route asks GenAI's model builder for MatMulNBits weights (`-p int4` or `-p int8`, blocks
of --quant-block-size input features, round to nearest): each export is made once and cached
beside the fp32 one (inference/onnx_lm.py). The torch route has a CPU kernel for int8 only
(PyTorch's dynamic int8 Linear); int4 there is refused with the way out.

`--quantize auto` is measured, not assumed, as `--precision auto` is (models/precision.py): on
this CPU, each of fp32, int8 and int4 decodes 48 greedy tokens (the fastest of two runs counts)
and scores a few passages written for this purpose (teacher-forced perplexity); the fastest whose
perplexity is within QUALITY_MARGIN of fp32's wins, provided it is at least SPEED_MARGIN faster
(else fp32: quantisation is not free). The answer is cached per CPU, GenAI version, thread count,
model and block size, so later runs decide without timing. The benchmark
(benchmarks/generate_vs_llamacpp.py) measures the same on 200 held-out verses and 100 prompts."""

from __future__ import annotations

import functools
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from warmstart.config.settings import Choice
from warmstart.errors import UserError
from warmstart.files import atomic_write_json, cache_dir

QUALITY_MARGIN = 1.02  # a quantised model's perplexity may be at most 2% above fp32's
SPEED_MARGIN = 1.05  # ... and it must decode at least this much faster to be chosen
SMALL_MB = 32  # smaller fp32 weights are not measured: auto keeps them (see ``choice``)
PROBE_PROMPT = "Humanity today is a "
PROBE_TOKENS = 48
# Plain prose of several registers, written for this probe (not taken from a data set): the
# quality check must run on any machine, offline, in a second.
PASSAGES = (
    "The river had risen overnight, and by morning the lower road was under water. Farmers led "
    "their animals to the hill behind the church, where the ground stayed dry.",
    "To replace a bicycle tyre, first let the remaining air out of the tube, then lever one side "
    "of the tyre over the rim and pull the old tube out.",
    "The committee met on Tuesday to discuss the budget for next year. Most members agreed that "
    "the library needed new shelves before it needed new computers.",
    "She opened the letter slowly, as if the words inside might change if she hurried. It was "
    "from her brother, who had not written in almost ten years.",
    "Water boils at a lower temperature on a high mountain, because the air pressure there is "
    "lower. Cooking pasta at altitude therefore takes a little longer.",
    "The museum's new wing holds paintings from the early twentieth century, most of them "
    "donated by a family that collected art for three generations.",
    "After the storm, volunteers cleared fallen branches from the park and repaired the fence "
    "around the playground, so that children could return by the weekend.",
    "A good night's sleep helps memory: during deep sleep the brain replays what it learned "
    "during the day and stores the most important parts.",
    "The train was late again, and the platform filled with commuters checking their phones, "
    "sighing, and looking down the track for the lights of the engine.",
    "In the small town where I grew up, everyone knew the baker by name, and on Sundays the "
    "queue outside his shop reached the corner of the street.",
    "Please bring your identity card and the signed form to the front desk. Without both "
    "documents we cannot issue your visitor badge.",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and enough milk to make a "
    "smooth batter. Let it rest for half an hour before cooking.",
)


@dataclass(frozen=True)
class Measured:
    """One weight format as measured: its decoding speed and its perplexity on PASSAGES."""

    quantize: str
    tokens_per_s: float
    perplexity: float


@dataclass(frozen=True)
class Decision:
    quantize: str
    measured: tuple[Measured, ...]
    cached: bool

    def reason(self, block_size: int) -> str:
        by = {m.quantize: m for m in self.measured}
        fp32 = by["none"]
        parts = []
        for m in self.measured:
            if m.quantize == "none":
                parts.append(f"fp32 {m.tokens_per_s:.0f} tok/s, perplexity {m.perplexity:.2f}")
            else:
                parts.append(
                    f"{m.quantize} {m.tokens_per_s / fp32.tokens_per_s:.2f}x fp32's speed, "
                    f"perplexity {(m.perplexity / fp32.perplexity - 1) * 100:+.1f}%"
                )
        verb = "cached" if self.cached else "measured"
        chosen = "fp32" if self.quantize == "none" else f"{self.quantize} (blocks of {block_size})"
        return (
            f"quantize auto → {chosen}: {'; '.join(parts)} ({verb} on this CPU: greedy decoding "
            f"and {len(PASSAGES)} passages; needs perplexity within "
            f"{(QUALITY_MARGIN - 1) * 100:.0f}% and ≥{SPEED_MARGIN:.2f}x fp32's speed)"
        )


def pick(measured: list[Measured]) -> str:
    """The fastest format within the quality margin, if it is clearly faster than fp32."""
    fp32 = next(m for m in measured if m.quantize == "none")
    fair = [
        m
        for m in measured
        if m.quantize == "none"
        or (
            m.perplexity <= fp32.perplexity * QUALITY_MARGIN
            and m.tokens_per_s >= fp32.tokens_per_s * SPEED_MARGIN
        )
    ]
    return max(fair, key=lambda m: m.tokens_per_s).quantize


def check_block_size(block_size: int) -> None:
    if block_size not in (16, 32, 64, 128, 256):
        raise UserError(
            f"--quant-block-size must be 16, 32, 64, 128 or 256 (a power of two the MatMulNBits "
            f"kernel takes), got {block_size}"
        )


def refuse_on_torch(quantize: str) -> None:
    """One line where the torch route has no kernel for the asked weights."""
    if quantize == "int4":
        raise UserError(
            "--quantize int4 needs the onnx backend (ONNX Runtime GenAI's int4 MatMulNBits): "
            "PyTorch has no int4 CPU kernel for these weights; use --backend onnx (or auto), or "
            "--quantize int8"
        )


def torch_choice(quantize: str) -> Choice:
    """What auto means on the torch route (nothing is measured there)."""
    refuse_on_torch(quantize)
    if quantize != "auto":
        return Choice(quantize)
    return Choice(
        "none",
        "quantize auto → none on the torch backend: its int8 is dynamic (slower than fp32 for "
        "one sequence on a CPU); ask --quantize int8 for it",
    )


def torch_int8(lm):
    """``lm`` (a models.causal.CausalLM) with PyTorch's dynamic int8 Linear layers: weights int8
    per output channel, activations quantised on the fly; the CPU kernels are fbgemm's or
    oneDNN's."""
    import dataclasses

    import torch

    model = lm.model.float() if lm.precision != "fp32" else lm.model
    if next(model.parameters()).device.type != "cpu":
        raise UserError("--quantize int8 on the torch backend runs on the CPU only: add --cpu")
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return dataclasses.replace(lm, model=quantized, precision="int8")


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (cache key), read without importing torch."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file() -> Path:
    return cache_dir() / "genai-quantize.json"


def cache_key(folder: Path, block_size: int) -> str:
    import onnxruntime_genai

    from warmstart.inference.onnx_lm import GRID_FORMAT, export_key, threads

    return json.dumps(
        [
            cpu_name(),
            threads(),
            getattr(onnxruntime_genai, "__version__", "?"),
            export_key(folder),
            block_size,
            GRID_FORMAT,  # int4 changed (a GGUF's own blocks): decide again
        ]
    )


def decide(folder: Path, block_size: int, quiet: bool = False) -> Decision:
    """The auto decision for the causal LM in ``folder``: cached, else measured now (exports
    made as needed) and cached."""
    key = cache_key(folder, block_size)
    try:
        entries = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        entries = {}
    if key in entries:
        e = entries[key]
        return Decision(e["quantize"], tuple(Measured(**m) for m in e["measured"]), True)
    if not quiet:
        print(
            "measuring fp32, int8 and int4 weights on this CPU for --quantize auto (once)",
            file=sys.stderr,
            flush=True,
        )
    measured = [measure(folder, q, block_size, quiet) for q in ("none", "int8", "int4")]
    decision = Decision(pick(measured), tuple(measured), False)
    if not quiet:
        print(decision.reason(block_size), file=sys.stderr, flush=True)
    entries[key] = {"quantize": decision.quantize, "measured": [asdict(m) for m in measured]}
    try:
        atomic_write_json(cache_file(), entries)
    except OSError:  # a read-only cache: decide again next time
        pass
    return decision


def measure(folder: Path, quantize: str, block_size: int, quiet: bool = False) -> Measured:
    from warmstart.inference.onnx_lm import OnnxLM

    lm = OnnxLM(folder, quiet=quiet, quantize=quantize, block_size=block_size)
    return Measured(quantize, decode_rate(lm), perplexity(lm, PASSAGES))


def decode_rate(lm, prompt: str = PROBE_PROMPT, tokens: int = PROBE_TOKENS, runs: int = 2) -> float:
    """New tokens per second of greedy decoding one sequence (the fastest of ``runs``)."""
    og = lm.og
    ids = list(lm.tokenizer.encode(prompt))
    best = math.inf
    for _ in range(runs):
        params = og.GeneratorParams(lm.model)
        params.set_search_options(max_length=len(ids) + tokens, do_sample=False)
        gen = og.Generator(lm.model, params)
        started = time.perf_counter()
        gen.append_tokens(ids)
        n = 0
        while not gen.is_done() and n < tokens:
            gen.generate_next_token()
            n += 1
        best = min(best, (time.perf_counter() - started) / max(n, 1))
    return 1.0 / best


def perplexity(lm, texts) -> float:
    """exp(mean negative log-likelihood) of each text's tokens after its first, teacher-forced
    (every position's logits from one pass over the text)."""
    import numpy as np

    og = lm.og
    total, count = 0.0, 0
    for text in texts:
        ids = list(lm.tokenizer.encode(text))
        if len(ids) < 2:
            continue
        params = og.GeneratorParams(lm.model)
        params.set_search_options(max_length=len(ids) + 1)
        gen = og.Generator(lm.model, params)
        gen.append_tokens(ids)
        logits = np.asarray(gen.get_output("logits"), dtype=np.float64)[0, :-1]
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return math.exp(total / max(count, 1))


def choice(folder: Path | None, requested: str, block_size: int, onnx: bool) -> Choice:
    """--quantize as settled for a causal LM (``folder``; None where it is not a local folder) on
    the ONNX route (``onnx``) or the torch route: auto measured (or read from the cache) on the
    former, none on the latter; int4 refused on the latter."""
    check_block_size(block_size)
    if not onnx or folder is None:
        return torch_choice(requested)
    if requested != "auto":
        return Choice(requested)
    size = weights_mb(folder)
    if size < SMALL_MB:
        return Choice(
            "none",
            f"quantize auto → none: {size:.0f} MB of weights, under {SMALL_MB} MB (decoding such "
            "a model is bound by per-token overheads, not weight traffic: nothing to gain)",
        )
    decision = decide(folder, block_size)
    return Choice(decision.quantize, decision.reason(block_size))


def weights_mb(folder: Path) -> float:
    """The size of the model's weight files, in MB."""
    files = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    return sum(f.stat().st_size for f in files) / 1e6
