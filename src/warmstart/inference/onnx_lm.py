"""Causal-LM generation on ONNX Runtime GenAI, for `generate --backend onnx` (and `auto` on a CPU).

A `generate` process spends most of its life importing torch and transformers (about 4 s of 7 here)
before its first token; ONNX Runtime GenAI's generation loop (KV cache, greedy and sampling search)
needs neither. The model is exported once by GenAI's own model builder (fp32 weights, or int4/int8
MatMulNBits with --quantize: inference/quantize.py; CPU; about 15 s for SmolLM2-135M) into
warmstart's cache, keyed by the model folder's path and files and the weights' format; later
processes load that folder directly and import nothing heavier than onnxruntime_genai. The export
also checks, once, that GenAI's tokenizer encodes and decodes a few probe texts exactly as
transformers does; where it does not, the route is not used.

What it does not do (auto then uses transformers; --backend onnx refuses with the reason): beam
search, typical sampling, no-repeat n-grams, bf16 weights, a model GenAI's builder does not know,
and stop strings while streaming. Greedy output of the fp32 export is the fp32 model's, token for
token (tested against transformers). The server drives the same exports through GenAI's Engine
(serving/gen_engine.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

from warmstart.config import GenerateConfig, given_flags
from warmstart.distributed import omp_threads
from warmstart.errors import UserError
from warmstart.files import atomic_dir, cache_dir
from warmstart.inference import block_grid
from warmstart.inference.generation_options import (
    Generation,
    completion_text,
    finish,
    strategy,
    token_budget,
)
from warmstart.progress import progress_bar

# model_type values GenAI's builder exports (its builders/ folder); others go through transformers.
ARCHITECTURES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "olmo",
    "granite",
    "smollm3",
)
EXPORT_FORMAT = (
    2  # bumped when the export itself changes, to export again (2: the tokenization check)
)
GRID_FORMAT = "grid-1"  # int4 of blocks of 32: a GGUF's own blocks where found (block_grid.py)
SAME_TEXT = "warmstart-same-tokenization.json"
GRID = "warmstart-gguf-blocks.json"  # what block_grid found, in an int4 export made from them
PROBES = (
    "Humanity today is a ",
    "Translate to Spanish: In the beginning God created the heavens.",
    "copy: abc =",
    "  two  spaces, numbers 1234 and accents: café, naïve\nnew line",
    "x",
)


def gpu_present() -> bool:
    """An NVIDIA device node: the machine has a GPU for transformers to use (checked without
    importing torch)."""
    return Path("/dev/nvidiactl").exists()


def threads() -> int:
    """ONNX Runtime's threads: OMP_NUM_THREADS where set (as torch reads it), else every CPU this
    process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return omp_threads() or len(os.sched_getaffinity(0))
    return omp_threads() or os.cpu_count() or 1


def installed() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def model_folder(name: str) -> Path | None:
    """The local folder of --model when it can be read without transformers (the bundled smollm2, or
    a folder with config.json); None otherwise (a hub id in the cache, say: transformers resolves
    those)."""
    if name.strip().lower() == "smollm2":
        from warmstart.models.bundled import smollm2

        return smollm2()
    path = Path(name).expanduser()
    if (path / "model" / "config.json").is_file():  # a finetune run folder
        path = path / "model"
    return path if (path / "config.json").is_file() else None


def model_why_not(name: str) -> str | None:
    """Why GenAI cannot run the model ``name`` at all (None: it can)."""
    if not installed():
        return "onnxruntime-genai is not installed"
    folder = model_folder(name)
    if folder is None:
        return f"'{name}' is not a local folder"
    config = read_json(folder / "config.json")
    if config.get("model_type") not in ARCHITECTURES or config.get("is_encoder_decoder"):
        return (
            f"GenAI's builder does not export a {config.get('model_type', 'model of unknown type')}"
        )
    return None


def why_not(cfg: GenerateConfig, stream: bool) -> str | None:
    """Why the ONNX route cannot answer this request (None: it can)."""
    if not installed():
        return "onnxruntime-genai is not installed"
    if strategy(cfg) == "beam":
        return "beam search"
    given = given_flags(cfg, ("typical_p", "no_repeat_ngram_size"))
    if given:
        return ", ".join(given)
    if cfg.precision == "bf16":
        return "--precision bf16 (the export is fp32)"
    if stream and cfg.stop:
        return "stop strings while streaming"
    return model_why_not(cfg.model)


QUANTIZE = ("none", "int8", "int4")  # what the builder writes: fp32, or MatMulNBits weights
BLOCK_SIZES = (16, 32, 64, 128, 256)


def builder_weights(quantize: str, block_size: int) -> list[str]:
    """The builder's flags for the weights: fp32, or int4/int8 MatMulNBits (round to nearest, per
    block of ``block_size`` input features, symmetric; activations stay fp32 but the CPU kernel
    multiplies in int8, the builder's default accuracy level 4 for CPUs)."""
    if quantize == "none":
        return ["-p", "fp32"]
    return ["-p", quantize, "--extra_options", f"block_size={block_size}"]


def export_key(folder: Path, quantize: str = "none", block_size: int = 32) -> str:
    """What names one export in the cache: the model folder, its files, the weights' format."""
    files = sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in folder.iterdir() if p.is_file()
    )
    weights = [] if quantize == "none" else [quantize, block_size]  # fp32 keeps its old keys
    if quantize == "int4" and block_size == block_grid.BLOCK:
        weights.append(GRID_FORMAT)
    return hashlib.sha256(
        json.dumps([str(folder.resolve()), files, EXPORT_FORMAT, *weights]).encode()
    ).hexdigest()[:16]


def export_dir(folder: Path, quantize: str = "none", block_size: int = 32) -> Path:
    """Where ``export`` puts (or has put) the export of ``folder`` in these weights."""
    suffix = "" if quantize == "none" else f"-{quantize}-b{block_size}"
    return (
        cache_dir() / "genai" / f"{folder.name}{suffix}-{export_key(folder, quantize, block_size)}"
    )


def export(folder: Path, quiet: bool = False, quantize: str = "none", block_size: int = 32) -> Path:
    """The GenAI export of the causal LM in ``folder`` (CPU; fp32 weights, or with ``quantize``
    int4/int8 the builder's MatMulNBits weights in blocks of ``block_size``), made once and
    cached."""
    target = export_dir(folder, quantize, block_size)
    if (target / "genai_config.json").is_file():
        return target
    import onnxruntime_genai

    builder = Path(onnxruntime_genai.__file__).parent / "models" / "builder.py"
    if not quiet:
        what = "" if quantize == "none" else f" ({quantize}, blocks of {block_size})"
        print(
            f"exporting {folder} for ONNX Runtime GenAI{what} into {target} (once)",
            file=sys.stderr,
            flush=True,
        )
    started = time.perf_counter()
    if quantize == "int4" and block_size == block_grid.BLOCK:
        # A de-quantised GGUF keeps its own 4-bit blocks exactly (block_grid.py) rather than being
        # rounded a second time by the builder.
        fp32 = export(folder, quiet)
        found: dict[str, int] = {}

        def convert(tmp: Path) -> None:
            found.update(block_grid.convert(fp32, tmp))
            if found["fp32"] < sum(found.values()):
                (tmp / GRID).write_text(json.dumps(found), encoding="utf-8")
            else:
                raise block_grid.NotFound

        try:
            atomic_dir(target, convert)
        except block_grid.NotFound:
            pass
        else:
            if not quiet:
                print(
                    f"kept the model's own GGUF blocks ({grid_summary(found)}) in "
                    f"{time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            return target

    def write(tmp: Path) -> None:
        cmd = [
            sys.executable,
            str(builder),
            "-i",
            str(folder),
            "-o",
            str(tmp),
            *builder_weights(quantize, block_size),
            "-e",
            "cpu",
            "-c",
            str(tmp / ".build-cache"),
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(
                f"exporting {folder} for ONNX Runtime GenAI failed: {last} (--backend torch"
                " avoids it)"
            )
        for leftover in (tmp / ".build-cache").glob("**/*"):
            if leftover.is_file():
                leftover.unlink()
        (tmp / SAME_TEXT).write_text(json.dumps(same_tokenization(folder, tmp)), encoding="utf-8")

    atomic_dir(target, write)
    if not quiet:
        print(f"exported in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return target


def grid_summary(found: dict[str, int]) -> str:
    """E.g. "150 Q4_1, 1 Q8_0 weights, exact"."""
    kinds = [f"{n} {kind}" for kind, n in found.items() if n and kind != "fp32"]
    kept = f"; {found['fp32']} kept fp32" if found.get("fp32") else ""
    return f"{', '.join(kinds)} weights, exact{kept}"


def same_tokenization(folder: Path, export_dir: Path) -> bool:
    """Whether GenAI's tokenizer reads and writes texts as transformers does for this model (checked
    once, at export; a tokenizer it parses differently would change prompts and outputs, so the
    route is not used)."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    try:
        ours = og.Tokenizer(og.Model(str(export_dir)))
    except RuntimeError:
        return False
    for text in PROBES:
        ids = reference(text)["input_ids"]
        if list(ours.encode(text)) != ids or ours.decode(ids) != reference.decode(
            ids, skip_special_tokens=True
        ):
            return False
    return True


class Unreadable(Exception):
    """GenAI could not load the exported model or its tokenizer (e.g. a tokenizer.json it cannot
    parse)."""


class OnnxLM:
    """An exported causal LM with its tokenizer, chat template and generation defaults.
    ``max_batch``: how many requests GenAI's Engine (the server's) decodes together."""

    def __init__(
        self,
        folder: Path,
        quiet: bool = False,
        quantize: str = "none",
        block_size: int = 32,
        max_batch: int | None = None,
    ):
        import onnxruntime_genai as og

        self.og, self.folder = og, folder
        self.quantize, self.block_size, self.max_batch = quantize, block_size, max_batch
        exported = export(folder, quiet, quantize, block_size)
        self.exported = exported
        try:
            config = og.Config(str(exported))
            # GenAI's default thread pool decoded at about half the speed of two explicit threads
            # on a 2-core machine (72-91 vs 135 tokens/s for SmolLM2 int4): name them.
            config.overlay(
                json.dumps(
                    {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads()}}}}
                )
            )
            if max_batch:
                # The CPU Engine batches statically (continuous batching needs paged attention,
                # which GenAI's builder makes for CUDA and WebGPU only); its default batch is 4.
                config.overlay(
                    json.dumps({"engine": {"static_batching": {"max_batch_size": max_batch}}})
                )
            self.model = og.Model(config)
            self.tokenizer = og.Tokenizer(self.model)
        except RuntimeError as e:
            raise Unreadable(
                f"ONNX Runtime GenAI cannot load {folder}: {str(e).strip().splitlines()[0]}"
            ) from None
        if read_json(exported / SAME_TEXT) is not True:
            raise Unreadable(
                f"ONNX Runtime GenAI's tokenizer reads the texts of {folder} differently from "
                "transformers"
            )
        config = read_json(folder / "config.json")
        # Attributes, as a transformers config has them: CausalLM.prompt_ids reads this one too
        # when the server wraps this model.
        self.config = SimpleNamespace(**config)
        self.max_positions = config.get("max_position_embeddings")
        self.defaults = read_json(folder / "generation_config.json")
        eos = self.defaults.get("eos_token_id", config.get("eos_token_id"))
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        template = folder / "chat_template.jinja"
        self.template = (
            template.read_text(encoding="utf-8")
            if template.is_file()
            else read_json(folder / "tokenizer_config.json").get("chat_template")
        )

    def prompt_ids(self, prompt: str, chat: bool, system: str | None) -> list[int]:
        """As models.causal.CausalLM.prompt_ids: a model from `finetune --task causal-lm` is
        prompted in the format it was trained with (its saved template, chat and system message)."""
        template = getattr(self.config, "instruction_template", None)
        prompt = template.replace("{source}", prompt) if template else prompt
        chat = chat or bool(getattr(self.config, "instruction_chat", None))
        system = system if system is not None else getattr(self.config, "instruction_system", None)
        if not chat:
            return list(self.tokenizer.encode(prompt))
        if not self.template:
            raise UserError(
                f"model '{self.folder}' has no chat template, so --chat cannot be used with it"
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        text = self.tokenizer.apply_chat_template(
            json.dumps(messages), template_str=self.template, add_generation_prompt=True
        )
        # The template writes the special tokens itself; encoding adds none for Llama-style
        # tokenizers.
        return list(self.tokenizer.encode(text))

    @property
    def weights(self) -> str:
        """What /info and the log say: fp32, or e.g. int4 (blocks of 32)."""
        if self.quantize == "none":
            return "fp32"
        found = read_json(self.exported / GRID)
        if found:
            return f"{self.quantize} (the GGUF's own blocks of 32: {grid_summary(found)})"
        return f"{self.quantize} (blocks of {self.block_size})"

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def complete(
        self,
        prompt: str,
        ids: list[int],
        budget: int,
        cfg: GenerateConfig,
        stops: list[str],
        stream_to: TextIO | None = None,
    ) -> Generation:
        """The completions of one prompt: ``num_return_sequences`` rows of one batch, each at most
        ``budget`` new tokens, cut at a stop string (the loop ends when every row has one) or ended
        by the model."""
        og = self.og
        n = cfg.num_return_sequences
        sample = strategy(cfg, bool(self.defaults.get("do_sample"))) == "sample"
        options: dict = {"max_length": len(ids) + budget, "do_sample": sample, "batch_size": n}
        if sample:
            for name, default in (("temperature", 1.0), ("top_k", 50), ("top_p", 1.0)):
                value = getattr(cfg, name)
                options[name] = value if value is not None else self.defaults.get(name, default)
            if options["top_k"] == 0:  # transformers' "all tokens"
                options["top_k"] = 1 << 30
        if cfg.repetition_penalty is not None:
            options["repetition_penalty"] = cfg.repetition_penalty
        if cfg.seed is not None:
            options["random_seed"] = cfg.seed
        params = og.GeneratorParams(self.model)
        params.set_search_options(**options)
        gen = og.Generator(self.model, params)
        gen.append_tokens([ids] * n)
        stream = self.tokenizer.create_stream() if stream_to is not None else None
        new: list[list[int]] = [[] for _ in range(n)]
        while not gen.is_done() and len(new[0]) < budget:
            gen.generate_next_token()
            for row, token in zip(new, gen.get_next_tokens()):
                row.append(int(token))
            if stream is not None:
                stream_to.write(stream.decode(new[0][-1]))
                stream_to.flush()
            if stops and all(
                any(s in completion_text(self.text, ids, row) for s in stops) for row in new
            ):
                break
        done = [finish(self.text, ids, row, budget, stops, self.eos) for row in new]
        return Generation(
            prompt, [d[0] for d in done], len(ids), [d[1] for d in done], [d[2] for d in done]
        )


def load(cfg: GenerateConfig) -> OnnxLM:
    """The model of a request ``why_not`` accepted; raises Unreadable where GenAI cannot load it.
    The last one loaded stays loaded, so that a program calling `warmstart.generate` again does
    not read the weights again (as a transformers pipeline object keeps its model)."""
    folder = model_folder(cfg.model)
    assert folder is not None
    quantize = cfg.quantize if cfg.quantize in QUANTIZE else "none"
    lm = LOADED.get(loaded_key(export_dir(folder, quantize, cfg.quant_block_size)))
    if lm is None:
        LOADED.clear()  # one model kept at a time: the old one goes before the next is read
        lm = OnnxLM(folder, quantize=quantize, block_size=cfg.quant_block_size)
        LOADED[loaded_key(lm.exported)] = lm
    return lm


def loaded_key(exported: Path) -> tuple:
    """The export's folder and its own files: one made again, or found to read texts differently,
    is loaded again."""
    return (
        exported,
        *(json.dumps(read_json(exported / f)) for f in ("genai_config.json", SAME_TEXT)),
    )


LOADED: dict[tuple, OnnxLM] = {}  # the last model ``load`` made, by export key


def generate(
    lm: OnnxLM,
    cfg: GenerateConfig,
    prompts: list[str],
    stops: list[str],
    stream_to: TextIO | None,
    header,
) -> list[Generation]:
    """Every prompt's Generation, one prompt at a time (its sequences are one batch)."""
    ids = [lm.prompt_ids(p, cfg.chat, cfg.system) for p in prompts]
    budgets = [
        token_budget(cfg, len(x), lm.max_positions, f"prompt {i + 1}") for i, x in enumerate(ids)
    ]
    out = []
    rows = enumerate(zip(prompts, ids, budgets))
    if cfg.progress and stream_to is None:  # --progress (off by default: tqdm is not imported)
        rows = progress_bar(rows, total=len(prompts), desc="generate", unit="prompt", leave=False)
    for i, (prompt, x, budget) in rows:
        if stream_to is not None:
            stream_to.write(header(i, 0, len(ids), 1))
            if not cfg.chat:
                stream_to.write(prompt)
        out.append(lm.complete(prompt, x, budget, cfg, stops, stream_to))
        if stream_to is not None:
            stream_to.write("\n")
    return out
