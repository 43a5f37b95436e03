"""What `--precision auto` means on a CPU: measured on the model's own shapes, not assumed.

bf16 autocast made a MiniLM training step 1.8x *slower* than fp32 on the Intel Xeon this project
first ran on, and 1.47x *faster* on the AMD EPYC (Zen 4) after it: a fixed rule is wrong on one of
them. So auto times a few steps of the model itself in both precisions (forward + backward for
training, forward for inference), keeps bf16 only when it is at least MARGIN faster (its rounding is
not free), and caches the answer per CPU model, torch version, thread count, model and input shape
in warmstart's cache: later runs decide without timing.

Training also times the attention kernel. PyTorch's fused CPU attention (SDPA, transformers'
default) has a bf16 backward pass that was the slowest part of a training step on the AMD EPYC: 55%
of a small BART's step on 96 words, where transformers' plain "eager" attention (matrix products and
a softmax, the same arithmetic) made the step 2.2x faster, and a MiniLM step on 16x256 tokens 1.5x
faster; in fp32 the two were even. So a training step is timed with each kernel too, and eager is
used where it is at least ATTENTION_MARGIN faster.

A CPU without bf16 instructions (AVX2 only, as the AMD EPYC Zen 3 this project later ran on)
emulates bf16: a matrix product was 70-120x slower than fp32's there, and timing one bf16 training
step of a model took longer than the run it was for. So a 256x256 matrix product is timed first
(milliseconds); where bf16 is HOPELESS times slower, the model is timed in fp32 only (its attention
kernels still compared) and fp32 is chosen."""

from __future__ import annotations

import copy
import functools
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from warmstart.files import atomic_write_json, cache_dir

MARGIN = 1.15  # bf16 must be this much faster than fp32 to be chosen
ATTENTION_MARGIN = (
    1.05  # eager attention must be this much faster than the model's own kernel to replace it
)
REPS = 3  # timed steps per precision, interleaved; the fastest of each counts
MAX_ROWS = (
    8  # rows of the timed batch at least (up to the batch size): enough to fill the matrix units
)
TOKEN_BUDGET = (
    2048  # ... and more rows of short texts, up to this many tokens: 96 words of a spelling batch
)
# are not 8 rows of 32 tokens, and the kernels rank differently on the two
HOPELESS = 2.0  # a bf16 matrix product this much slower than fp32's: bf16 is not timed on the model
EAGER = "eager"


@dataclass(frozen=True)
class Choice:
    """The precision auto chose, and the measurement it chose by."""

    precision: str  # fp32 or bf16
    speedup: float  # fp32 step time / bf16 step time
    fp32_ms: float
    bf16_ms: float
    mode: str  # train, infer (a forward pass) or generate (decoding)
    shape: tuple[int, int]  # (rows, tokens) of the timed batch
    cached: bool  # read from the cache rather than measured now
    error: str = ""  # why it could not be measured (then fp32)
    own_attention: str = (
        ""  # train: the model's own attention kernel, timed against eager ("" where not timed)
    )
    eager_speedup: tuple[float, float] = (
        0.0,
        0.0,
    )  # train: own kernel's step time / eager's, in fp32 and bf16
    bf16_matmul: float = (
        0.0  # how many times slower a bf16 matrix product was than fp32's (the probe)
    )

    @property
    def bf16_timed(self) -> bool:
        return self.bf16_ms > 0

    def attention(self, precision: str | None = None) -> str:
        """The attention kernel to train with in ``precision`` (default: the chosen one): eager
        where it was measured at least ATTENTION_MARGIN faster than the model's own, else the
        model's own ("" if not timed)."""
        speedup = self.eager_speedup[(precision or self.precision) == "bf16"]
        return EAGER if self.own_attention and speedup >= ATTENTION_MARGIN else self.own_attention

    def record(self) -> dict:
        """For metrics.json."""
        out = {
            "chosen": self.precision,
            "error": self.error,
            "bf16_speedup": self.speedup,
            "fp32_ms": self.fp32_ms,
            "bf16_ms": self.bf16_ms,
            "mode": self.mode,
            "timed_shape": list(self.shape),
            "cached": self.cached,
            "bf16_matmul_slowdown": self.bf16_matmul,
        }
        if self.own_attention:
            out.update(
                attention=self.attention(),
                eager_attention_speedup=dict(zip(("fp32", "bf16"), self.eager_speedup)),
            )
        return out

    def describe(self, given: str | None = None) -> str:
        """The log line. ``given``: the precision the run was told to use (only the kernel was
        chosen here)."""
        if self.error:
            return f"precision auto → fp32: bf16 could not be timed on this model ({self.error})"
        verb = "cached" if self.cached else "measured"
        rows, tokens = self.shape
        precision = given or self.precision
        said = f"precision {f'{given} (given)' if given else f'auto → {self.precision}'}: "
        if self.bf16_timed:
            said += (
                f"bf16 {self.speedup:.2f}x fp32's speed ({verb}: {self.mode} step on"
                f" {rows}x{tokens} tokens, {self.fp32_ms:.0f} ms fp32 vs {self.bf16_ms:.0f} ms"
                f" bf16; bf16 needs ≥{MARGIN:.2f}x)"
            )
        else:
            said += (
                f"bf16 not timed on the model: a bf16 matrix product is {self.bf16_matmul:.0f}x"
                f" slower than fp32's on this CPU (no bf16 instructions; {verb}: {self.mode} step"
                f" on {rows}x{tokens} tokens, {self.fp32_ms:.0f} ms fp32)"
            )
        if self.own_attention:
            said += (
                f"; attention {self.attention(precision)}: eager"
                f" {self.eager_speedup[precision == 'bf16']:.2f}x {self.own_attention}'s speed in"
                f" {precision} (needs ≥{ATTENTION_MARGIN:.2f}x)"
            )
        return said


@functools.cache
def cpu_name() -> str:
    """The CPU, as precise as the cache needs: two hosts both named "AMD EPYC" (a Zen 3 without bf16
    instructions and a Zen 4 with them) differ in family/model and in the instruction set torch
    dispatches to."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    where = (
        f"family {fields['cpu family']} model {fields['model']}, " if "cpu family" in fields else ""
    )
    return f"{name} ({where}{torch.backends.cpu.get_cpu_capability()})"


@functools.cache
def bf16_matmul_slowdown() -> float:
    """How many times slower a 256x256 bf16 matrix product is than an fp32 one here (best of 5
    each)."""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)).to(dtype)
        a @ a  # warm-up
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t)
        best[dtype] = min(times)
    return round(best[torch.bfloat16] / max(best[torch.float32], 1e-9), 1)


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def own_attention(model: torch.nn.Module) -> str:
    """The attention kernel ``model`` runs with (transformers' config._attn_implementation), or ""
    for a model without that choice."""
    kernel = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return (
        kernel
        if isinstance(kernel, str) and callable(getattr(model, "set_attn_implementation", None))
        else ""
    )


def cache_key(model: torch.nn.Module, mode: str, shape: tuple[int, int]) -> str:
    params = sum(p.numel() for p in model.parameters())
    kernel = (
        f" | attention {own_attention(model)} vs {EAGER}"
        if mode == "train" and own_attention(model)
        else ""
    )
    return (
        f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {mode} | "
        f"{type(model).__name__} {params} params | {shape[0]}x{shape[1]}{kernel}"
    )


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
        return Choice(
            **{
                **entry,
                "shape": tuple(entry["shape"]),
                "cached": True,
                "eager_speedup": tuple(entry.get("eager_speedup", (0.0, 0.0))),
            }
        )
    except TypeError:  # written by another version
        return None


def timed_shape(rows: int, tokens: int, mode: str = "train") -> tuple[int, int]:
    """The batch to time. Training: the run's rows (at least MAX_ROWS, or for short texts up to
    TOKEN_BUDGET tokens in all) and its mean length rounded up to a multiple of 8. Inference: at
    most MAX_ROWS rows, tokens rounded up to a multiple of 32, whatever the batch size, so that
    every command scoring a model decides alike (fewer cache entries)."""
    if mode != "train":
        return max(1, min(rows, MAX_ROWS)), max(32, -(-int(tokens) // 32) * 32)
    tokens = max(8, -(-int(tokens) // 8) * 8)
    return max(1, min(rows, max(MAX_ROWS, TOKEN_BUDGET // tokens))), tokens


def measure(model: torch.nn.Module, mode: str, rows: int, tokens: int) -> Choice:
    """Time ``mode`` steps (train: forward + backward under autocast; infer: forward with bf16
    weights) of a copy of ``model`` in fp32 and bf16 on the CPU; cache and return the choice. The
    random number generator is left as it was, so a run that measures and one that reads the cache
    train the same."""
    config = getattr(model, "config", None)
    longest = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    shape = timed_shape(rows, min(tokens, longest) if longest else tokens, mode)
    hit = cached(model, mode, shape)
    if hit is not None:
        return hit
    own = own_attention(model) if mode == "train" else ""
    slowdown = bf16_matmul_slowdown()
    with_bf16 = slowdown < HOPELESS
    try:
        with torch.random.fork_rng(devices=[]):
            fp32_s, bf16_s = _time_both(model, mode, shape, with_bf16=with_bf16)
            # The model's own kernel against eager, where it has another (a training step's backward
            # differs).
            eager = (
                _time_both(model, mode, shape, EAGER, with_bf16=with_bf16)
                if own and own != EAGER
                else None
            )
    except (
        Exception
    ) as e:  # a model these plain inputs do not fit: keep fp32, say why, cache nothing
        return Choice(
            "fp32",
            0.0,
            0.0,
            0.0,
            mode,
            shape,
            False,
            error=(
                f"{type(e).__name__}:"
                f" {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            ),
        )
    eager_speedup = (0.0, 0.0)
    if eager is not None:  # each precision at its faster kernel
        eager_speedup = (
            round(fp32_s / eager[0], 3),
            round(bf16_s / eager[1], 3) if with_bf16 else 0.0,
        )
        fp32_s, bf16_s = min(fp32_s, eager[0]), min(bf16_s, eager[1])
    speedup = fp32_s / bf16_s if with_bf16 else 0.0
    choice = Choice(
        "bf16" if speedup >= MARGIN else "fp32",
        round(speedup, 3),
        round(fp32_s * 1e3, 1),
        round(bf16_s * 1e3, 1) if with_bf16 else 0.0,
        mode,
        shape,
        False,
        own_attention=own if eager else "",
        eager_speedup=eager_speedup,
        bf16_matmul=slowdown,
    )
    entries = _read_cache()
    entries[cache_key(model, mode, shape)] = {
        k: v for k, v in asdict(choice).items() if k not in ("cached", "error")
    }
    try:
        atomic_write_json(cache_file(), entries)
    except OSError:  # a read-only home: measured again next time, nothing else lost
        pass
    return choice


def _time_both(
    model: torch.nn.Module,
    mode: str,
    shape: tuple[int, int],
    attention: str | None = None,
    with_bf16: bool = True,
) -> tuple[float, float]:
    """The fastest of REPS steps in fp32 and in bf16 (seconds; bf16 inf where not ``with_bf16``),
    with ``attention`` as the kernel if given."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None) or 1000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(100, vocab - 1), vocab, shape, generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids[:, : max(1, shape[1] // 4)]
    if mode == "train":
        m32 = m16 = copy.deepcopy(model).cpu().train()
        if attention:
            m32.set_attn_implementation(attention)

        def step(m: torch.nn.Module, bf16: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m(**inputs)
            first = out[0] if isinstance(out, tuple) else next(iter(out.values()))
            first.float().mean().backward()
            m.zero_grad(set_to_none=True)

    elif (
        mode == "generate"
    ):  # decoding: one prompt of ``shape[1]`` tokens, then 8 new tokens one at a time
        m32 = copy.deepcopy(model).cpu().eval()
        m16 = copy.deepcopy(model).cpu().to(torch.bfloat16).eval() if with_bf16 else m32
        prompt = {k: v[:1] for k, v in inputs.items()}

        def step(m: torch.nn.Module, bf16: bool) -> None:
            with torch.inference_mode():
                m.generate(
                    **prompt,
                    max_new_tokens=8,
                    min_new_tokens=8,
                    do_sample=False,
                    pad_token_id=getattr(config, "eos_token_id", None) or 0,
                )

    else:
        m32 = copy.deepcopy(model).cpu().eval()
        m16 = copy.deepcopy(model).cpu().to(torch.bfloat16).eval() if with_bf16 else m32

        def step(m: torch.nn.Module, bf16: bool) -> None:
            with torch.inference_mode():
                m(**inputs)

    best = {False: float("inf"), True: float("inf")}
    for rep in range(
        REPS + 1
    ):  # the first round warms up (allocations, kernel choice) and is not counted
        for bf16 in (False, True) if with_bf16 else (False,):
            t = time.perf_counter()
            step(m16 if bf16 else m32, bf16)
            if rep:
                best[bf16] = min(best[bf16], time.perf_counter() - t)
    return best[False], best[True]
