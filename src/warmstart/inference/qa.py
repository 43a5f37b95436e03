"""Extractive question answering with a saved model: the best answer span of each question over all
the windows of its context, with its character offsets in the original text and a score.

Span decoding follows the Hugging Face recipe's ``postprocess_qa_predictions`` (examples/pytorch/
question-answering/utils_qa.py), which in turn follows BERT's SQuAD code: a span's score is its
start logit plus its end logit; spans must lie inside the context, end no earlier than they start
and hold at most ``max_answer_length`` tokens; the n best over all windows of a context are kept
and their probability is the softmax of their scores. Two differences, both BERT's own: every pair
of positions is scored (not only the 20 best starts x 20 best ends), and a span must start in a
token its window answers for (the "maximum context" rule, data.windows.owners), so a span near a
window's edge is read where it has context on both sides.

SQuAD v2 (questions without an answer): the null score is the lowest [CLS] start+end over the
context's windows, and the answer is empty when null score - best span score > the threshold
(0 by default; `finetune` on v2 data tunes it on the valid part and saves it with the model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from warmstart.config.options import ModelSourceOptions
from warmstart.data.batching import collator
from warmstart.data.squad import QAExamples, QAWindows, encode_qa
from warmstart.inference import backends
from warmstart.inference.batched import batched_outputs
from warmstart.inference.classifier import open_backend
from warmstart.metrics import squad_f1
from warmstart.models.registry import load_tokenizer, max_length_of

N_BEST = 20
MAX_ANSWER_LENGTH = 30  # tokens: the recipe's default


@dataclass
class Answer:
    """One question's answer: ``context[start:end] == answer`` (empty, with start = end = -1, for
    "no answer in the context")."""

    question: str
    answer: str
    start: int
    end: int
    score: float  # probability among the n best candidates (the null answer among them for v2)
    id: str | None = None
    null_score_diff: float | None = None  # v2 models: null score - best span score

    def record(self) -> dict:
        out = {"id": self.id, "question": self.question, "answer": self.answer}
        out |= {"start": self.start, "end": self.end, "score": round(self.score, 6)}
        if self.null_score_diff is not None:
            out["null_score_diff"] = round(self.null_score_diff, 4)
        return {k: v for k, v in out.items() if v is not None}


def best_spans(
    windows: QAWindows,
    logits: list[np.ndarray],
    ex: QAExamples,
    max_answer_length: int = MAX_ANSWER_LENGTH,
    null_threshold: float | None = None,
    n_best: int = N_BEST,
) -> list[Answer]:
    """Each question's answer from its windows' (tokens, 2) start/end logits. ``null_threshold``
    None: the model never says "no answer" (a SQuAD v1.1 model)."""
    by_question: list[list[int]] = [[] for _ in range(len(ex))]
    for w, i in enumerate(windows.example):
        by_question[int(i)].append(w)
    out = []
    for i, ws in enumerate(by_question):
        cands: list[tuple[float, int, int]] = []  # (score, first token, last token) in the context
        null = np.inf
        for w in ws:
            rows = logits[w]
            null = min(null, float(rows[windows.cls, 0] + rows[windows.cls, 1]))
            s, e = windows.span[w]
            n = e - s
            if n == 0:
                continue
            at = int(windows.first[w])
            start, end = rows[at : at + n, 0], rows[at : at + n, 1]
            scores = start[:, None] + end[None, :]
            allowed = _band(n, max_answer_length) & windows.owned[w][:, None]
            scores = np.where(allowed, scores, -np.inf)
            flat = scores.ravel()
            k = min(n_best, int(allowed.sum()))
            if k == 0:
                continue
            top = np.argpartition(-flat, k - 1)[:k]
            cands.extend((float(flat[j]), s + j // n, s + j % n) for j in top)
        cands = sorted(cands, key=lambda c: -c[0])[:n_best]
        off = windows.offsets[i]
        context = ex.contexts[i]
        if not cands:
            out.append(Answer(ex.questions[i], "", -1, -1, 0.0, ex.ids[i]))
            continue
        scores = np.array([c[0] for c in cands] + ([null] if null_threshold is not None else []))
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        best, first, last = cands[0]
        a, b = int(off[first, 0]), int(off[last, 1])
        answer = Answer(ex.questions[i], context[a:b], a, b, float(probs[0]), ex.ids[i])
        if null_threshold is not None:
            answer.null_score_diff = null - best
            if null - best > null_threshold:
                answer.answer, answer.start, answer.end = "", -1, -1
                answer.score = float(probs[-1])
        out.append(answer)
    return out


_BANDS: dict[tuple[int, int], np.ndarray] = {}


def _band(n: int, max_answer_length: int) -> np.ndarray:
    """(n, n): True at (i, j) where a span from token i to token j holds 1..max_answer_length
    tokens (cached: one per window size)."""
    key = (n, max_answer_length)
    if key not in _BANDS:
        d = np.subtract.outer(np.arange(n), np.arange(n))  # i - j
        _BANDS[key] = (d <= 0) & (d > -max_answer_length)
    return _BANDS[key]


def best_threshold(answers: list[Answer], references: list[list[str]]) -> float:
    """The null-score threshold with the best F1 (the official v2 script's find_best_thresh), from
    answers decoded with no threshold (every question's best span, and its null_score_diff): a
    question turns "no answer" where its null_score_diff exceeds the threshold."""
    diffs = [a.null_score_diff or 0.0 for a in answers]
    kept = [
        max((squad_f1(a.answer, r) for r in refs), default=float(not a.answer))
        for a, refs in zip(answers, references)
    ]
    empty = [float(not refs) for refs in references]
    best_t, best = 0.0, -1.0
    for t in sorted({min(diffs, default=0.0) - 1.0, *diffs}):
        f1 = sum(e if d > t else k for d, k, e in zip(diffs, kept, empty))
        if f1 > best:
            best_t, best = t, f1
    return float(best_t)


@dataclass
class Reader:
    """A saved question-answering model on a backend (PyTorch, ONNX fp32 or int8)."""

    path: str
    tokenizer: object
    max_length: int
    stride: int | None
    forward: object
    plan: backends.Plan
    null_threshold: float | None  # None: a v1.1 model, always answers
    last_windowed: int = 0

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
        null_threshold: float | None = None,
        *,
        hub: ModelSourceOptions | None = None,
    ) -> Reader:
        path, forward, config, p = open_backend(
            name, cpu, backend, quantize, precision, head="qa", hub=hub
        )
        tokenizer = load_tokenizer(path)
        if null_threshold is None and getattr(config, "qa_with_negatives", False):
            null_threshold = float(getattr(config, "qa_null_threshold", 0.0) or 0.0)
        return cls(
            path,
            tokenizer,
            max_length_of(tokenizer, config, max_length),
            stride if stride is not None else getattr(config, "qa_stride", None),
            forward,
            p,
            null_threshold,
        )

    def logits(
        self, ex: QAExamples, batch_size: int | None = None, progress: bool = False
    ) -> tuple[QAWindows, list[np.ndarray]]:
        windows = encode_qa(self.tokenizer, ex, self.max_length, self.stride)
        self.last_windowed = windows.windowed
        size, max_tokens, workers = backends.auto_batching(self.plan, batch_size)
        rows = batched_outputs(
            self.forward,
            windows.data,
            size,
            collator(self.tokenizer),
            self.plan.device,
            progress,
            desc="answer",
            max_tokens=max_tokens,
            ragged=True,
            workers=workers,
        )
        return windows, rows

    def answer(
        self,
        ex: QAExamples,
        batch_size: int | None = None,
        max_answer_length: int = MAX_ANSWER_LENGTH,
        progress: bool = False,
    ) -> list[Answer]:
        windows, rows = self.logits(ex, batch_size, progress)
        return best_spans(windows, rows, ex, max_answer_length, self.null_threshold)


def questions(pairs: list[tuple[str, str]], ids: list[str] | None = None) -> QAExamples:
    """Unlabelled questions over their contexts (predict's --question/--context, a request)."""
    n = len(pairs)
    return QAExamples(
        "request",
        [q for q, _ in pairs],
        [c for _, c in pairs],
        [[] for _ in range(n)],
        ids or [None] * n,  # type: ignore[list-item]
        [f"question {i + 1}" for i in range(n)],
        [False] * n,
    )
