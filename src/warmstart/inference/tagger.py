"""A saved token classifier: tags and entity spans for raw texts or pre-split words, on any backend.

Raw text is split into words with character offsets (data.tagged.split_words); each word's tag comes
from its first sub-token in the window that gives it the most context (data.wordpieces), so long
texts lose nothing. Entities are read from the word tags with seqeval's rules (an I-X after O starts
an entity, as conlleval does); an entity's score aggregates its words' scores: the first word's,
their average (default), or the maximum. Offsets index the original string: ``text[start:end]`` is
the entity's text."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from warmstart.config.options import ModelSourceOptions
from warmstart.data.batching import collator
from warmstart.data.tagged import scheme_of, split_words
from warmstart.data.wordpieces import encode_words
from warmstart.inference import backends
from warmstart.inference.batched import batched_outputs
from warmstart.inference.classifier import open_backend
from warmstart.metrics import softmax
from warmstart.models.registry import load_tokenizer, max_length_of

AGGREGATIONS = ("first", "average", "max")


@dataclass
class Tagged:
    """One text's words (with offsets into ``text``), their tags and scores, and the entities they
    form."""

    text: str
    words: list[str]
    spans: list[tuple[int, int]]
    tags: list[str]
    scores: list[float]
    entities: list[dict] = field(default_factory=list)

    def record(self) -> dict:
        return {
            "text": self.text,
            "entities": self.entities,
            "words": [
                {"word": w, "start": s, "end": e, "tag": t, "score": p}
                for w, (s, e), t, p in zip(self.words, self.spans, self.tags, self.scores)
            ],
        }


@dataclass
class Tagger:
    path: str
    tokenizer: object
    tags: list[str]
    scheme: str
    max_length: int
    stride: int | None
    forward: object
    plan: backends.Plan
    last_windowed: int = 0  # sentences of the last call that needed more than one window

    @classmethod
    def load(
        cls,
        name: str,
        max_length: int | None = None,
        cpu: bool = False,
        backend: str = "torch",
        quantize: str = "none",
        precision: str = "fp32",
        stride: int | None = None,
        *,
        hub: ModelSourceOptions | None = None,
    ) -> Tagger:
        """Load ``name`` as ``Classifier.load`` does (the same backends and defaults)."""
        path, forward, config, p = open_backend(
            name, cpu, backend, quantize, precision, head="tokens", hub=hub
        )
        tokenizer = load_tokenizer(path)
        id2label = {int(k): v for k, v in config.id2label.items()}
        tags = [id2label[i] for i in range(len(id2label))]
        scheme = getattr(config, "tag_scheme", None) or scheme_of(tags)
        return cls(
            path,
            tokenizer,
            tags,
            scheme,
            max_length_of(tokenizer, config, max_length),
            stride,
            forward,
            p,
        )

    def word_probabilities(
        self, sentences: list[list[str]], batch_size: int | None = None, progress: bool = False
    ) -> list[np.ndarray]:
        """Per sentence, one row of tag probabilities per word."""
        ww = encode_words(self.tokenizer, sentences, self.max_length, self.stride)
        self.last_windowed = ww.windowed
        size, max_tokens, workers = backends.auto_batching(self.plan, batch_size)
        rows = batched_outputs(
            self.forward,
            ww.data,
            size,
            collator(self.tokenizer),
            self.plan.device,
            progress,
            desc="tag",
            max_tokens=max_tokens,
            ragged=True,
            workers=workers,
        )
        return [softmax(w) if len(w) else w for w in ww.word_scores(rows)]

    def tag(
        self,
        texts: list[str] | None = None,
        words: list[list[str]] | None = None,
        batch_size: int | None = None,
        aggregation: str = "average",
        progress: bool = False,
    ) -> list[Tagged]:
        """Tag raw ``texts`` (split into words here) or pre-split ``words`` (their text: the words
        joined by single spaces, which their offsets index)."""
        if words is None:
            split = [split_words(t) for t in texts or []]
            words = [[w for w, _, _ in s] for s in split]
            spans = [[(a, b) for _, a, b in s] for s in split]
        else:
            texts, spans = [], []
            for ws in words:
                starts = np.cumsum([0] + [len(w) + 1 for w in ws[:-1]]).tolist()
                texts.append(" ".join(ws))
                spans.append([(s, s + len(w)) for s, w in zip(starts, ws)])
        keep = [i for i, ws in enumerate(words) if ws]  # a text of only spaces has no words to tag
        probs = dict(
            zip(keep, self.word_probabilities([words[i] for i in keep], batch_size, progress))
        )
        out = []
        for i, text in enumerate(texts):
            p = probs.get(i, np.zeros((0, len(self.tags))))
            ids = p.argmax(-1) if len(p) else np.zeros(0, dtype=int)
            tags = [self.tags[j] for j in ids]
            scores = [float(p[k, j]) for k, j in enumerate(ids)]
            t = Tagged(text, words[i], spans[i], tags, scores)
            t.entities = entities(t, self.scheme, aggregation) if self.scheme != "plain" else []
            out.append(t)
        return out


def entities(t: Tagged, scheme: str, aggregation: str = "average") -> list[dict]:
    """Entity spans ``{type, text, start, end, score}`` from ``t``'s word tags, read as the metrics
    read them (metrics.tagging_metrics): IOB2 as conlleval does (an I-X after O starts an entity),
    IOBES strictly (only well-formed B-…E- and S- entities); the score aggregated over the entity's
    words."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}")
    if scheme == "IOBES":
        from seqeval.scheme import IOBES, Entities

        spans = (
            [(e.tag, e.start, e.end - 1) for e in Entities([list(t.tags)], IOBES).entities[0]]
            if t.tags
            else []
        )
    else:
        from seqeval.metrics.sequence_labeling import get_entities

        spans = get_entities(list(t.tags))
    out = []
    for kind, first, last in spans:
        scores = t.scores[first : last + 1]
        score = (
            scores[0]
            if aggregation == "first"
            else max(scores)
            if aggregation == "max"
            else float(np.mean(scores))
        )
        start, end = t.spans[first][0], t.spans[last][1]
        out.append(
            {"type": kind, "text": t.text[start:end], "start": start, "end": end, "score": score}
        )
    return out
