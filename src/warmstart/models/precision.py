"""What `--precision auto` means on a CPU: measured on the model's own shapes, not assumed.

bf16 autocast made a MiniLM training step 1.8x *slower* than fp32 on the Intel Xeon this project first ran on,
and 1.47x *faster* on the AMD EPYC (Zen 4) after it: a fixed rule is wrong on one of them. So auto times a few
steps of the model itself in both precisions (forward + backward for training, forward for inference), keeps
bf16 only when it is at least MARGIN faster (its rounding is not free), and caches the answer per CPU model,
torch version, thread count, model and input shape in warmstart's cache: later runs decide without timing.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from warmstart.runs import atomic_write_json, cache_dir

MARGIN = 1.15   # bf16 must be this much faster than fp32 to be chosen
REPS = 3        # timed steps per precision, interleaved; the fastest of each counts
MAX_ROWS = 8    # rows of the timed batch: enough to fill the matrix units, cheap enough to time once


@dataclass(frozen=True)
class Choice:
    """The precision auto chose, and the measurement it chose by."""

    precision: str          # fp32 or bf16
    speedup: float          # fp32 step time / bf16 step time
    fp32_ms: float
    bf16_ms: float
    mode: str               # train, infer (a forward pass) or generate (decoding)
    shape: tuple[int, int]  # (rows, tokens) of the timed batch
    cached: bool            # read from the cache rather than measured now
    error: str = ""         # why it could not be measured (then fp32)

    def record(self) -> dict:
        """For metrics.json."""
        return {"chosen": self.precision, "error": self.error, "bf16_speedup": self.speedup, "fp32_ms": self.fp32_ms,
                "bf16_ms": self.bf16_ms, "mode": self.mode, "timed_shape": list(self.shape), "cached": self.cached}

    def describe(self) -> str:
        if self.error:
            return f"precision auto → fp32: bf16 could not be timed on this model ({self.error})"
        verb = "cached" if self.cached else "measured"
        rows, tokens = self.shape
        return (f"precision auto → {self.precision}: bf16 {self.speedup:.2f}x fp32's speed ({verb}: "
                f"{self.mode} step on {rows}x{tokens} tokens, {self.fp32_ms:.0f} ms fp32 vs {self.bf16_ms:.0f} ms bf16"
                f"; bf16 needs ≥{MARGIN:.2f}x)")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def cache_key(model: torch.nn.Module, mode: str, shape: tuple[int, int]) -> str:
    params = sum(p.numel() for p in model.parameters())
    return (f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {mode} | "
            f"{type(model).__name__} {params} params | {shape[0]}x{shape[1]}")


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def cached(model: torch.nn.Module, mode: str, shape: tuple[int, int]) -> Choice | None:
    entry = _read_cache().get(cache_key(model, mode, shape))
    if not entry:
        return None
    try:
        return Choice(**{**entry, "shape": tuple(entry["shape"]), "cached": True})
    except TypeError:  # written by another version
        return None


def timed_shape(rows: int, tokens: int) -> tuple[int, int]:
    """The batch to time: at most MAX_ROWS rows, tokens rounded up to a multiple of 32 (fewer cache entries)."""
    return max(1, min(rows, MAX_ROWS)), max(32, -(-int(tokens) // 32) * 32)


def measure(model: torch.nn.Module, mode: str, rows: int, tokens: int) -> Choice:
    """Time ``mode`` steps (train: forward + backward under autocast; infer: forward with bf16 weights) of a copy
    of ``model`` in fp32 and bf16 on the CPU; cache and return the choice. The random number generator is left
    as it was, so a run that measures and one that reads the cache train the same."""
    config = getattr(model, "config", None)
    longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    shape = timed_shape(rows, min(tokens, longest) if longest else tokens)
    hit = cached(model, mode, shape)
    if hit is not None:
        return hit
    try:
        with torch.random.fork_rng(devices=[]):
            fp32_s, bf16_s = _time_both(model, mode, shape)
    except Exception as e:  # a model these plain inputs do not fit: keep fp32, say why, cache nothing
        return Choice("fp32", 0.0, 0.0, 0.0, mode, shape, False,
                      error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    speedup = fp32_s / bf16_s
    choice = Choice("bf16" if speedup >= MARGIN else "fp32", round(speedup, 3), round(fp32_s * 1e3, 1),
                    round(bf16_s * 1e3, 1), mode, shape, False)
    entries = _read_cache()
    entries[cache_key(model, mode, shape)] = {k: v for k, v in asdict(choice).items() if k not in ("cached", "error")}
    try:
        atomic_write_json(cache_file(), entries)
    except OSError:  # a read-only home: measured again next time, nothing else lost
        pass
    return choice


def _time_both(model: torch.nn.Module, mode: str, shape: tuple[int, int]) -> tuple[float, float]:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None) or 1000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(100, vocab - 1), vocab, shape, generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids[:, : max(1, shape[1] // 4)]
    if mode == "train":
        m32 = m16 = copy.deepcopy(model).cpu().train()

        def step(m: torch.nn.Module, bf16: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m(**inputs)
            first = out[0] if isinstance(out, tuple) else next(iter(out.values()))
            first.float().mean().backward()
            m.zero_grad(set_to_none=True)
    elif mode == "generate":  # decoding: one prompt of ``shape[1]`` tokens, then 8 new tokens one at a time
        m32 = copy.deepcopy(model).cpu().eval()
        m16 = copy.deepcopy(model).cpu().to(torch.bfloat16).eval()
        prompt = {k: v[:1] for k, v in inputs.items()}

        def step(m: torch.nn.Module, bf16: bool) -> None:
            with torch.inference_mode():
                m.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                           pad_token_id=getattr(config, "eos_token_id", None) or 0)
    else:
        m32 = copy.deepcopy(model).cpu().eval()
        m16 = copy.deepcopy(model).cpu().to(torch.bfloat16).eval()

        def step(m: torch.nn.Module, bf16: bool) -> None:
            with torch.inference_mode():
                m(**inputs)

    best = {False: float("inf"), True: float("inf")}
    for rep in range(REPS + 1):  # the first round warms up (allocations, kernel choice) and is not counted
        for bf16 in (False, True):
            t = time.perf_counter()
            step(m16 if bf16 else m32, bf16)
            if rep:
                best[bf16] = min(best[bf16], time.perf_counter() - t)
    return best[False], best[True]
