"""A saved classifier (of sequences or of tokens) as ONNX, fp32 and int8: what `warmstart export
--onnx` writes and `--backend onnx` runs.

The export folder is self-contained (config.json, tokenizer, model.onnx, model.int8.onnx), so it can
be passed as --model itself. Without --out it goes into the model folder's onnx/ subfolder (or, when
that is not writable, ~/.cache/warmstart/onnx/), which is also where `--backend onnx` looks: the
first ONNX prediction exports once, later ones reuse the export until the model's files change
(`calibrate`, which changes only the temperature in config.json, updates the export's copy instead:
``adopt_config``).

Steps: trace the model with eager attention (the pattern ONNX Runtime's transformer optimizer
recognises), fuse attention, embedding and layer-norm subgraphs, then quantise the weights of the
fused graph to int8 (dynamic quantisation: activations are quantised per batch, so no calibration
data is needed).

A classifier reads only the first token's final state, so the last layer is traced for that one
query (keys and values still come from every token): same logits, about a sixth less work in a
6-layer model. The export checks that the logits match the full model and traces the full model
where they would not."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from warmstart.errors import UserError
from warmstart.files import atomic_dir, atomic_write_json, atomic_write_text, cache_dir
from warmstart.models.bundled import remove_stale
from warmstart.models.classifier import HEADS, load_classifier
from warmstart.models.registry import has_qa_head, has_tagger_head, load_config, load_tokenizer

EXPORT_FORMAT = 3  # bump when the export steps change, so cached exports are redone
MARKER = "warmstart-onnx.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Architectures whose attention ONNX Runtime's "bert" optimizer fuses; others are exported unfused.
FUSABLE = {"bert", "distilbert", "roberta", "xlm-roberta", "electra", "camembert"}


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def onnx_file(folder: str | Path, quantize: str) -> Path:
    return Path(folder) / (INT8_FILE if quantize == "int8" else FP32_FILE)


def default_dir(model_dir: str | Path) -> Path:
    """model/onnx when the model folder is writable, else a folder in warmstart's cache named after
    it."""
    model_dir = Path(model_dir).resolve()
    if os.access(model_dir, os.W_OK):
        return model_dir / "onnx"
    digest = hashlib.sha1(str(model_dir).encode()).hexdigest()[:12]
    return cache_dir() / "onnx" / f"{model_dir.name}-{digest}"


def fingerprint(model_dir: str | Path) -> dict:
    """What an export was made from: the model's files (size, mtime), the export format and
    onnxruntime."""
    import onnxruntime

    files = {
        p.name: [p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(Path(model_dir).iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    return {
        "format": EXPORT_FORMAT,
        "onnxruntime": onnxruntime.__version__,
        "source": str(Path(model_dir).resolve()),
        "files": files,
    }


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _require_packages() -> None:
    from warmstart.inference.backends import ONNX_HINT

    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"exporting to ONNX needs the package {name}: {ONNX_HINT}") from None


def ensure_export(
    model_dir: str,
    out: str | Path | None = None,
    int8: bool = True,
    overwrite: bool = False,
    quiet: bool = False,
) -> tuple[Path, bool]:
    """The export folder of ``model_dir`` (exported now if missing or stale) and whether it was
    reused."""
    _require_packages()
    target = Path(out).expanduser() if out else default_dir(model_dir)
    if target.exists() and not target.is_dir():
        raise UserError(f"export folder '{target}' is a file")
    if target.is_dir() and not is_export(target) and any(target.iterdir()):
        raise UserError(
            f"'{target}' is a folder with other files in it; pass an empty or new --out folder"
        )
    source = fingerprint(model_dir)

    def current() -> bool:
        marker = _marker(target)
        return (
            marker is not None
            and marker.get("source") == source
            and (not int8 or marker.get("int8"))
        )

    if not overwrite and current():
        return target, True
    remove_stale(target)
    if not quiet:
        print(f"exporting {model_dir} to ONNX in {target} (once)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        atomic_dir(target, lambda tmp: _write(model_dir, tmp, source, int8))
    except OSError:
        if not current():  # else another process swapped in the same export first: that one will do
            raise
    if not quiet:
        print(f"exported in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return target, False


def current_export(model_dir: str | Path) -> Path | None:
    """The default export folder of ``model_dir`` (where --backend onnx looks) when it is up to
    date, else None."""
    try:
        source = fingerprint(model_dir)
    except ImportError:  # no onnxruntime: nothing could have used an export
        return None
    target = default_dir(model_dir)
    marker = _marker(target)
    return target if marker is not None and marker.get("source") == source else None


def adopt_config(model_dir: str | Path, folder: Path) -> None:
    """Copy ``model_dir``'s config.json into its export ``folder`` and mark the export as made from
    the model's files as they are now. Only for a change the exported graph does not depend on (the
    calibration temperature, which is applied to the logits outside the graph): the export stays
    current instead of being redone."""
    marker = _marker(folder)
    if marker is None:
        return
    atomic_write_text(
        folder / "config.json", (Path(model_dir) / "config.json").read_text(encoding="utf-8")
    )
    atomic_write_json(folder / MARKER, {**marker, "source": fingerprint(model_dir)})


def _write(model_dir: str, tmp: Path, source: dict, int8: bool) -> None:
    tokenizer = load_tokenizer(model_dir)
    model = _load_eager(model_dir)
    tmp.mkdir(parents=True)
    tokenizer.save_pretrained(tmp)
    model.config.save_pretrained(tmp)
    names = [n for n in INPUTS if n in tokenizer.model_input_names or n == "attention_mask"]
    # Two rows, one padded: tracing sees a real mask, so no shortcut for all-ones masks is baked in.
    dummy = tokenizer(
        ["a short text", "a somewhat longer text to pad the first row"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(dummy[n] if n in dummy else torch.zeros_like(dummy["input_ids"]) for n in names)
    raw = tmp / "raw.onnx"
    # A tagger's logits have a row per token, a question-answering model's too (start, end).
    per_token = has_tagger_head(model.config) or has_qa_head(model.config)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {
        "logits": {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    }
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: dynamic batch and sequence axes, and a graph ONNX Runtime's
        # fusions match.
        torch.onnx.export(
            _Logits(model, names),
            args,
            str(raw),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    _optimize(raw, tmp / FP32_FILE, model.config)
    raw.unlink()
    if int8:
        quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE)
    atomic_write_json(tmp / MARKER, {"source": source, "int8": int8, "inputs": names})


def _load_eager(model_dir: str):
    config = load_config(model_dir)
    head = "qa" if has_qa_head(config) else "tokens" if has_tagger_head(config) else "sequence"
    tagger = head != "sequence"  # per-token logits: every position of the last layer is read
    # The same checks and messages as the torch path (has a head, loads).
    load_classifier(model_dir, head=head)
    model = (
        HEADS[head][0]
        .from_pretrained(model_dir, local_files_only=True, attn_implementation="eager")
        .eval()
    )
    if not tagger:  # a tagger reads every position of the last layer
        cls_only_last_layer(model)
    return model


class _FirstQueryLayer(torch.nn.Module):
    """A BERT-style layer that computes only the first position's output: queries from token 0, keys
    and values from all tokens. The [CLS]-pooled heads of BERT, RoBERTa, ELECTRA... read nothing
    else of it."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *args,
        **kwargs,
    ):
        sa = self.layer.attention.self
        heads, size = sa.num_attention_heads, sa.attention_head_size
        b, n, _ = hidden_states.shape
        first = hidden_states[:, :1]
        q = sa.query(first).view(b, 1, heads, size).transpose(1, 2)
        k = sa.key(hidden_states).view(b, n, heads, size).transpose(1, 2)
        v = sa.value(hidden_states).view(b, n, heads, size).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * sa.scaling
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :1, :]
        context = (
            torch.matmul(torch.softmax(scores, dim=-1), v)
            .transpose(1, 2)
            .reshape(b, 1, heads * size)
        )
        return self.layer.feed_forward_chunk(self.layer.attention.output(context, first))


def cls_only_last_layer(model: torch.nn.Module, atol: float = 1e-4) -> bool:
    """Swap the last encoder layer of a first-token-pooled classifier for ``_FirstQueryLayer``, in
    place, when the logits stay the same (checked on two padded texts); False (model unchanged)
    otherwise."""
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    last = layers[-1] if layers else None
    parts = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output",
    )
    if (
        last is None
        or not all(_has(last, p) for p in parts)
        or not hasattr(last, "feed_forward_chunk")
    ):
        return False  # not a BERT-style layer (DistilBERT, ...): exported whole
    if getattr(model.config, "is_decoder", False) or getattr(last, "add_cross_attention", False):
        return False
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(1000, model.config.vocab_size), (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        layers[-1] = _FirstQueryLayer(last)
        try:
            after = model(input_ids=ids, attention_mask=mask).logits
            same = after.shape == before.shape and torch.allclose(
                after, before, atol=atol, rtol=1e-4
            )
        except Exception:  # an architecture whose head or layer does not fit the assumption
            same = False
    if not same:
        layers[-1] = last
    return same


def _has(module: torch.nn.Module, dotted: str) -> bool:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return False
    return True


class _Logits(torch.nn.Module):
    """Positional inputs -> logits, as torch.onnx.export wants."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).logits


def _optimize(raw: Path, out: Path, config) -> None:
    """Fuse attention, embedding and layer norms with ONNX Runtime's transformer optimizer (graph
    only)."""
    import onnx

    if config.model_type not in FUSABLE:
        onnx.save(onnx.load(str(raw)), str(out))
        return
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    options = FusionOptions("bert")
    # Residual add + LayerNormalization stay two ops: the fused SkipLayerNormalization CPU kernel
    # took 330 us on (300, 384) with 2 threads, Add + LayerNormalization 84 us (12 of them per
    # MiniLM pass: ~14% of it).
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # opt_level 0: our fusions only; the session applies ONNX Runtime's own graph optimisations
        # at load.
        optimize_model(
            str(raw),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            opt_level=0,
            optimization_options=options,
        ).save_model_to_file(str(out))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of every MatMul/Attention weight (VNNI on x86 CPUs that have it),
    with one scale per output channel. Fine-tuned BERTs have FFN output matrices whose largest
    channel is 18-43x the median one (MiniLM on IMDb, layers 0-3): one scale per matrix flipped 4.7%
    of labels on 1,000 reviews, one per channel 1.7%, at the speed of the per-matrix scheme with
    those matrices left in fp32."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "please run pre-processing" advice on every call
    try:
        # DefaultTensorType: shape inference cannot type the outputs of fused (com.microsoft) ops.
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().setLevel(quiet)
