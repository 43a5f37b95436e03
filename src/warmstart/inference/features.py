"""Hidden states of any encoder or decoder as fixed-size features (the feature-based approach).

``Embedder.load("minilm").embed(texts)`` returns one row per text, in input order: the chosen
layers' hidden states pooled over the tokens (cls, mean, max, or the last real token for decoders),
concatenated or averaged across layers, optionally L2-normalised. It runs through
`inference.batched.batched_outputs`, the same length-sorted, dynamically padded loop as `predict`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from warmstart.config.options import ModelSourceOptions
from warmstart.data.batching import Encoded
from warmstart.data.tables import LABEL_COLUMNS
from warmstart.errors import UserError
from warmstart.inference.batched import batched_outputs
from warmstart.models.device import auto_precision, pick_device
from warmstart.models.registry import (
    ensure_pad_token,
    is_causal,
    load_config,
    load_options,
    load_tokenizer,
    max_length_of,
    resolve,
    set_dropout,
)
from warmstart.models.sentence import sentence_settings

POOLINGS = ("auto", "cls", "mean", "max", "last")


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, tokens, dim) hidden states -> (batch, dim), over the real (mask == 1) tokens of
    right-padded rows."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    if how == "cls":
        return hidden[:, 0]
    if (
        how == "last"
    ):  # the last real token: the only one a causal model has let read the whole text
        last = mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise UserError(f"unknown pooling '{how}' (choose from {', '.join(POOLINGS[1:])})")


def parse_layers(spec: str | int, num_layers: int) -> list[int]:
    """'-1', '-4:', '2,4,6' or '3:5' -> indices into hidden_states (0 = embeddings, num_layers =
    last)."""
    n = num_layers + 1
    text = str(spec).strip()

    def index(s: str) -> int:
        try:
            i = int(s)
        except ValueError:
            raise UserError(
                f"--layers '{spec}' is not a layer number, a list like 2,4,6 or a range like -4:"
            ) from None
        if not -n <= i < n:
            raise UserError(
                f"--layers '{spec}': layer {i} does not exist; this model has layers"
                f" 0..{num_layers} (0: the embeddings) or -1..-{n}"
            )
        return i % n

    if ":" in text:
        a, _, b = text.partition(":")
        start = index(a) if a.strip() else 0
        stop = (index(b) if b.strip() != str(n) else n) if b.strip() else n
        chosen = list(range(start, stop))
    else:
        chosen = [index(s) for s in text.split(",") if s.strip()]
    if not chosen:
        raise UserError(f"--layers '{spec}' selects no layer")
    return chosen


@dataclass
class Embedder:
    """An encoder or decoder body with its tokenizer, turning texts into pooled hidden-state
    features."""

    name: str
    path: str
    model: torch.nn.Module
    tokenizer: object
    pooling: str
    layers: list[int]
    layer_mode: str
    normalize: bool
    max_length: int
    device: torch.device
    precision: str
    decoder: bool

    @classmethod
    def load(
        cls,
        name: str,
        pooling: str = "auto",
        layers: str = "-1",
        layer_mode: str = "concat",
        normalize: bool | None = False,
        max_length: int | None = None,
        cpu: bool = False,
        precision: str = "auto",
        attention_dropout: float | None = None,
        *,
        hub: ModelSourceOptions | None = None,
    ) -> Embedder:
        from transformers import AutoModel

        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling '{pooling}' (choose from {', '.join(POOLINGS)})")
        if layer_mode not in ("concat", "mean"):
            raise UserError(f"unknown --layer-mode '{layer_mode}' (concat or mean)")
        path = resolve(name, hub=hub)
        config = load_config(path)
        # For training (fewshot's SetFit): attention dropout sends CPU attention to a 7x slower
        # kernel.
        set_dropout(config, (attention_dropout, None))
        try:
            model = AutoModel.from_pretrained(path, config=config, **load_options(path))
        except (OSError, ValueError) as e:
            raise UserError(
                f"cannot load a model from '{path}': {str(e).strip().splitlines()[0]}"
            ) from None
        tokenizer = load_tokenizer(path)
        decoder = is_causal(config)
        # Right padding everywhere: pooling reads the mask, and "last" is then the last real token
        # of each row.
        tokenizer.padding_side = "right"
        ensure_pad_token(tokenizer)
        # A sentence-transformers model embeds with its own length, pooling and normalisation unless
        # told otherwise (normalize None), so embed matches SentenceTransformer(...).encode.
        own = sentence_settings(path)
        if pooling == "auto":
            pooling = "last" if decoder else (own.pooling or "mean")
        if normalize is None:
            normalize = own.normalize
        if max_length is None and own.max_seq_length:
            max_length = min(own.max_seq_length, max_length_of(tokenizer, config, None))
        if pooling == "cls" and decoder:
            raise UserError(
                f"pooling 'cls' takes the first token, which a causal model like '{name}' computes "
                "without reading the rest of the text; use last or mean"
            )
        num_layers = (
            getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 0
        )
        device = pick_device(cpu)
        if precision == "auto":
            precision = auto_precision(device)
        model.to(device).eval()
        return cls(
            name,
            path,
            model,
            tokenizer,
            pooling,
            parse_layers(layers, num_layers),
            layer_mode,
            normalize,
            max_length_of(tokenizer, config, max_length),
            device,
            precision,
            decoder,
        )

    @property
    def dim(self) -> int:
        hidden = self.model.config.get_text_config().hidden_size
        return hidden * (len(self.layers) if self.layer_mode == "concat" else 1)

    def encode(self, texts: list[str]) -> Encoded:
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
        )
        ids = [
            x if x else [self.tokenizer.pad_token_id] for x in enc["input_ids"]
        ]  # "" still gets a row
        features = {"input_ids": ids}
        if "token_type_ids" in enc:
            features["token_type_ids"] = enc["token_type_ids"]
        return Encoded(features)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad(rows, padding=True, pad_to_multiple_of=8, return_tensors="pt")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        only_last = self.layers == [self.model.config.get_text_config().num_hidden_layers]
        amp = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with amp:
            out = self.model(**batch, output_hidden_states=not only_last)
        states = (
            [out.last_hidden_state] if only_last else [out.hidden_states[i] for i in self.layers]
        )
        pooled = [pool(h.float(), batch["attention_mask"], self.pooling) for h in states]
        x = (
            torch.cat(pooled, dim=-1)
            if self.layer_mode == "concat"
            else torch.stack(pooled).mean(0)
        )
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        return x

    def embed(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 features, in input order."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return batched_outputs(
            self.forward,
            self.encode(texts),
            batch_size,
            self.collate,
            self.device,
            progress=progress,
            desc="embed",
        )


def is_feature_file(path: str | Path) -> bool:
    """A .parquet file written by `embed` (it has an 'embedding' column), as opposed to a table of
    texts."""
    p = Path(path)
    if p.suffix != ".parquet" or not p.is_file():
        return False
    import pyarrow.parquet as pq

    try:
        return "embedding" in pq.read_schema(p).names
    except Exception:  # not readable as Parquet: read_table will say why
        return False


def read_feature_file(
    path: str | Path, label_column: str | None
) -> tuple[np.ndarray, list | None, str | None]:
    """(features, raw label values or None, label column) of a .parquet written by `embed`."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    x = np.asarray(
        t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        dtype=np.float32,
    )
    x = x.reshape(t.num_rows, -1) if t.num_rows else x.reshape(0, 0)
    names = {c.lower(): c for c in t.column_names if c not in ("id", "embedding")}
    if label_column is not None:
        if label_column not in t.column_names:
            raise UserError(
                f"{path} has no column '{label_column}' (columns: {', '.join(t.column_names)})"
            )
        col = label_column
    else:
        col = next((names[c] for c in LABEL_COLUMNS if c in names), None)
    return x, (t.column(col).to_pylist() if col else None), col
