"""What a served model can do, decided by the task kind that reads its folder (kinds.for_model):

- a fine-tuned classifier (a ...ForSequenceClassification checkpoint): /predict, /embed;
- a tagger (a ...ForTokenClassification checkpoint from `finetune --task tokens`): /tag, /embed;
- a question-answering model (a ...ForQuestionAnswering checkpoint, `finetune --task qa`): /answer,
  /embed;
- an NLI classifier (its labels include entailment): also /zeroshot (method nli);
- a plain encoder (e.g. minilm): /embed, /zeroshot (method similarity);
- a causal LM (smollm2, GPT-2 folders...): /generate, /embed (last-token pooling), /zeroshot (method
  prompt);
- a text-to-text model (an encoder-decoder from `finetune --task seq2seq`): /generate (its output
  for the prompt).

The part each endpoint needs is loaded on its first use (the embedder, a zero-shot method): a causal
LM served only for /generate never holds a second copy of its weights."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warmstart import kinds
from warmstart.config.options import ModelSourceOptions
from warmstart.data.tables import Examples
from warmstart.errors import UserError
from warmstart.inference.classifier import Classifier, label_records
from warmstart.inference.features import Embedder
from warmstart.inference.qa import Reader, best_spans, questions
from warmstart.inference.seq2seq import TextToText
from warmstart.inference.tagger import Tagger
from warmstart.lowshot.zeroshot import load_method
from warmstart.models.causal import CausalLM
from warmstart.models.registry import ALIASES, load_config, resolve

# What each route needs, for the sentence that says a model cannot serve it.
NEEDS = {
    "predict": "a fine-tuned classifier (warmstart finetune)",
    "tag": "a tagger (warmstart finetune --task tokens)",
    "answer": "a question-answering model (warmstart finetune --task qa)",
    "generate": "a causal language model or a text-to-text model",
    "zeroshot": "an NLI classifier, an encoder or a causal language model",
    "embed": "an encoder, a classifier or a causal language model",
    "rerank": "a reranker (warmstart finetune --task rerank)",
}


@dataclass
class ServedModel:
    name: str
    path: str
    kind: str
    max_length: int | None = None
    cpu: bool = False
    classifier: Classifier | None = None  # for /predict
    tagger: Tagger | None = None  # for /tag
    reader: Reader | None = None  # for /answer
    causal_lm: CausalLM | None = None  # for /generate
    text_to_text: TextToText | None = None  # for /generate
    reranker: Any = None  # for /rerank: inference.retrieval.CrossEncoderScorer
    _parts: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(
        cls,
        name: str,
        max_length: int | None = None,
        cpu: bool = False,
        backend: str = "torch",
        quantize: str = "none",
        long_text: str | None = None,
        stride: int | None = None,
        chunk_aggregation: str | None = None,
        hub: ModelSourceOptions | None = None,
        quant_block_size: int = 32,
        max_batch_size: int = 16,
    ) -> ServedModel:
        """``backend`` and ``quantize`` choose how a classifier runs /predict (see
        `Classifier.load`), and ``long_text``, ``stride`` and ``chunk_aggregation`` how it reads
        long texts (None: the model's own); ``stride`` is also a tagger's. ``hub``: the command's
        --revision, --offline and --trust-remote-code for a Hugging Face id."""
        path = resolve(name, hub=hub)
        kind, found = kinds.for_model(load_config(path))
        options = {
            "max_length": max_length,
            "cpu": cpu,
            "backend": backend,
            "quantize": quantize,
            "long_text": long_text,
            "stride": stride,
            "chunk_aggregation": chunk_aggregation,
            # a causal LM's: int4/int8 blocks, and how many requests GenAI's Engine batches
            "quant_block_size": quant_block_size,
            "max_batch_size": max_batch_size,
        }
        refused = kind.serve_refuses(options)
        if refused:
            raise UserError(
                f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to model"
                f" '{name}', {kind.describe_model(found)}: they say how /predict reads long texts"
            )
        source = name if name in ALIASES else path
        return cls(name, path, found, max_length, cpu, **kind.serve(path, source, found, options))

    @property
    def source(self) -> str:
        """What the parts load from: the alias itself (the name users see in messages), else the
        folder."""
        return self.name if self.name in ALIASES else self.path

    @property
    def endpoints(self) -> tuple[str, ...]:
        return kinds.describe(self.kind).endpoints

    @property
    def description(self) -> str:
        return kinds.describe(self.kind).description

    @property
    def zeroshot_method(self) -> str | None:
        return kinds.describe(self.kind).zeroshot

    @property
    def labels(self) -> list[str] | None:
        if self.tagger is not None:
            return list(self.tagger.tags)
        return list(self.classifier.labels.names) if self.classifier is not None else None

    @property
    def backend(self) -> str:
        """How /predict (or /tag) runs, e.g. "onnx int8" or "torch fp32"."""
        plan = getattr(self.classifier or self.tagger or self.reader, "plan", None)
        if plan is None and self.causal_lm is not None:  # e.g. "onnx-genai int4 (blocks of 32)"
            onnx = type(self.causal_lm.model).__name__ == "OnnxLM"
            return f"{'onnx-genai' if onnx else 'torch'} {self.causal_lm.precision}"
        if plan is None:
            return "torch"
        return plan.backend + (
            f" {plan.quantize}" if plan.quantize != "none" else f" {plan.precision}"
        )

    @property
    def token_limit(self) -> int | None:
        if self.classifier is not None or self.tagger is not None or self.reader is not None:
            return int((self.classifier or self.tagger or self.reader).max_length)
        if self.causal_lm is not None:
            return self.causal_lm.max_positions
        if self.text_to_text is not None:
            return self.text_to_text.max_length
        embedder = self._parts.get("embed")  # a plain encoder: known once /embed has loaded it
        return int(embedder.max_length) if embedder is not None else self.max_length

    def unsupported(self, endpoint: str) -> str:
        """Why this model cannot serve ``endpoint``: one sentence."""
        return (
            f"model '{self.name}' is {self.description}, which serves "
            f"{', '.join('/' + e for e in self.endpoints)}; /{endpoint} needs {NEEDS[endpoint]}"
        )

    def records(self, outputs: np.ndarray) -> list[dict]:
        """/predict's answer per text, from ``predict``'s rows (see Classifier.records)."""
        if self.classifier is not None:
            return self.classifier.records(outputs)
        return label_records(self.labels or [], outputs)

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """(n, labels) class probabilities; ``batch_size`` None: the classifier's own batching for
        its backend (on a CPU, batches of a few hundred padded tokens: a gathered pass is split
        where that is faster)."""
        ex = Examples(
            source="request",
            texts=list(texts),
            pairs=None,
            labels=None,
            rows=list(range(1, len(texts) + 1)),
        )
        return self.classifier.probabilities(ex, batch_size)

    def tag(self, texts: list[str], aggregation: str = "average") -> list[dict]:
        """Per text: its words with offsets, tags and scores, and its entities (see
        inference.tagger)."""
        return [t.record() for t in self.tagger.tag(list(texts), aggregation=aggregation)]

    def answer(
        self,
        pairs: list[tuple[str, str]],
        max_answer_length: int = 30,
        null_threshold: float | None = None,
    ) -> list[dict]:
        """Per (question, context): the answer span with its offsets into the context and score
        (see inference.qa)."""
        saved = self.reader.null_threshold
        threshold = saved if null_threshold is None or saved is None else null_threshold
        ex = questions(list(pairs))
        windows, rows = self.reader.logits(ex)
        answers = best_spans(windows, rows, ex, max_answer_length, threshold)
        return [{k: v for k, v in a.record().items() if k != "question"} for a in answers]

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(n, dim) pooled hidden states (the embedder's default pooling for this kind of model)."""
        return self._part("embed", self._load_embedder).embed(list(texts), batch_size=batch_size)

    def rerank(self, query: str, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(n,) relevance of each text to ``query``, by the cross-encoder."""
        return self.reranker.scores([(query, t) for t in texts], batch_size)

    def zeroshot(
        self, texts: list[str], labels: list[str], multi_label: bool = False, batch_size: int = 32
    ) -> np.ndarray:
        """(n, len(labels)) scores: probabilities over the labels, or each label's own with
        ``multi_label``."""
        method = self._part("zeroshot", self._load_zeroshot)
        return np.asarray(
            method.scores(
                list(texts), list(labels), multi_label=multi_label, batch_size=batch_size
            ),
            dtype=np.float32,
        )

    def _part(self, key: str, loader) -> Any:
        # Loaded on first use; the lock keeps two first requests from loading it twice.
        with self._lock:
            if key not in self._parts:
                self._parts[key] = loader()
            return self._parts[key]

    def _load_embedder(self) -> Embedder:
        return Embedder.load(self.source, max_length=self.max_length, cpu=self.cpu)

    def _load_zeroshot(self) -> Any:
        return load_method(
            self.zeroshot_method, self.source, cpu=self.cpu, max_length=self.max_length
        )
