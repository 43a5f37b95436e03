"""What a served model can do, decided from its config (as `predict` and `generate` decide):

- a fine-tuned classifier (a ...ForSequenceClassification checkpoint): /predict, /embed;
- an NLI classifier (its labels include entailment): also /zeroshot (method nli);
- a plain encoder (e.g. minilm): /embed, /zeroshot (method similarity);
- a causal LM (smollm2, GPT-2 folders...): /generate, /embed (last-token pooling), /zeroshot (method prompt).

The part each endpoint needs is loaded on its first use (the embedder, a zero-shot method): a causal LM
served only for /generate never holds a second copy of its weights.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warmstart import lm, models
from warmstart.data import Examples
from warmstart.errors import UserError

ENDPOINTS = {
    "classifier": ("predict", "embed"),
    "nli": ("predict", "embed", "zeroshot"),
    "encoder": ("embed", "zeroshot"),
    "causal-lm": ("generate", "embed", "zeroshot"),
}
ZEROSHOT_METHOD = {"nli": "nli", "encoder": "similarity", "causal-lm": "prompt"}
DESCRIPTION = {"classifier": "a text classifier", "nli": "an NLI classifier", "encoder": "a plain encoder",
               "causal-lm": "a causal language model"}
NEEDS = {"predict": "a fine-tuned classifier (warmstart finetune)", "generate": "a causal language model",
         "zeroshot": "an NLI classifier, an encoder or a causal language model",
         "embed": "an encoder, a classifier or a causal language model"}


def resolve(name: str) -> str:
    """Any servable model: the aliases of encoders and causal LMs (minilm, smollm2), folders, the HF cache."""
    return lm.resolve(name) if name in lm.ALIASES else models.resolve(name)


def kind_of(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    if any("ForSequenceClassification" in a for a in archs) and getattr(config, "id2label", None):
        labels = [str(x).lower() for x in (getattr(config, "label2id", None) or {})]
        return "nli" if any(x.startswith("entail") for x in labels) else "classifier"
    if getattr(config, "is_decoder", False) or any(a.endswith(lm.CAUSAL_SUFFIXES) for a in archs):
        return "causal-lm"
    return "encoder"


@dataclass
class ServedModel:
    name: str
    path: str
    kind: str
    max_length: int | None = None
    cpu: bool = False
    classifier: Any = None  # warmstart.inference.Classifier, for /predict
    causal_lm: Any = None  # warmstart.lm.CausalLM, for /generate
    _parts: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, name: str, max_length: int | None = None, cpu: bool = False, backend: str = "torch",
             quantize: str = "none") -> ServedModel:
        """``backend`` and ``quantize`` choose how a classifier runs /predict (see `Classifier.load`)."""
        from transformers import AutoConfig

        path = resolve(name)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a model from '{path}': {str(e).strip().splitlines()[0]}") from None
        served = cls(name, path, kind_of(config), max_length, cpu)
        if served.kind in ("classifier", "nli"):
            from warmstart.inference import Classifier

            options = {"backend": backend, "quantize": quantize}
            accepted = inspect.signature(Classifier.load).parameters
            served.classifier = Classifier.load(path, max_length=max_length, cpu=cpu,
                                                **{k: v for k, v in options.items() if k in accepted})
        elif served.kind == "causal-lm":
            served.causal_lm = lm.CausalLM.load(name if name in lm.ALIASES else path, cpu=cpu)
        return served

    @property
    def endpoints(self) -> tuple[str, ...]:
        return ENDPOINTS[self.kind]

    @property
    def labels(self) -> list[str] | None:
        return list(self.classifier.labels.names) if self.classifier is not None else None

    @property
    def backend(self) -> str:
        """How /predict runs, e.g. "onnx int8" or "torch fp32"."""
        plan = getattr(self.classifier, "plan", None)
        if plan is None:
            return "torch"
        return plan.backend + (f" {plan.quantize}" if plan.quantize != "none" else f" {plan.precision}")

    @property
    def token_limit(self) -> int | None:
        if self.classifier is not None:
            return int(self.classifier.max_length)
        if self.causal_lm is not None:
            return self.causal_lm.max_positions
        embedder = self._parts.get("embed")  # a plain encoder: known once /embed has loaded it
        return int(embedder.max_length) if embedder is not None else self.max_length

    def unsupported(self, endpoint: str) -> str:
        """Why this model cannot serve ``endpoint``: one sentence."""
        return (f"model '{self.name}' is {DESCRIPTION[self.kind]}, which serves "
                f"{', '.join('/' + e for e in self.endpoints)}; /{endpoint} needs {NEEDS[endpoint]}")

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """(n, labels) class probabilities; ``batch_size`` None: the classifier's own batching for its backend
        (on a CPU, batches of a few hundred padded tokens: a gathered pass is split where that is faster)."""
        ex = Examples(source="request", texts=list(texts), pairs=None, labels=None,
                      rows=list(range(1, len(texts) + 1)))
        if batch_size is None and inspect.signature(self.classifier.probabilities).parameters[
                "batch_size"].default is not None:
            batch_size = 32  # a Classifier without tuned batching
        return self.classifier.probabilities(ex, batch_size)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(n, dim) pooled hidden states (the embedder's default pooling for this kind of model)."""
        return self._part("embed", self._load_embedder).embed(list(texts), batch_size=batch_size)

    def zeroshot(self, texts: list[str], labels: list[str], multi_label: bool = False,
                 batch_size: int = 32) -> np.ndarray:
        """(n, len(labels)) scores: probabilities over the labels, or each label's own with ``multi_label``."""
        method = self._part("zeroshot", self._load_zeroshot)
        return np.asarray(method.scores(list(texts), list(labels), multi_label=multi_label, batch_size=batch_size),
                          dtype=np.float32)

    def embedding_dim(self) -> int | None:
        part = self._parts.get("embed")
        return int(part.dim) if part is not None else None

    def _part(self, key: str, loader) -> Any:
        # Loaded on first use; the lock keeps two first requests from loading it twice.
        with self._lock:
            if key not in self._parts:
                self._parts[key] = loader()
            return self._parts[key]

    def _load_embedder(self) -> Any:
        from warmstart.features import Embedder

        source = self.name if self.name in lm.ALIASES or self.name in models.ALIASES else self.path
        return Embedder.load(source, max_length=self.max_length, cpu=self.cpu)

    def _load_zeroshot(self) -> Any:
        from warmstart.zeroshot_methods import load_method

        source = self.name if self.name in lm.ALIASES or self.name in models.ALIASES else self.path
        extra = {"max_length": self.max_length} if self.max_length else {}
        return load_method(ZEROSHOT_METHOD[self.kind], source, cpu=self.cpu, **extra)
